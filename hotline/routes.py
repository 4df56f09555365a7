"""Service-level routes: health, readiness, metrics, the OpenAPI document, problem docs."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hotline.metrics import Metrics
from ticketing.handlers import Deps
from ticketing.webkit import PROBLEM_TITLES, RouteSpec, json_response, problem, problem_response

INDEX = """<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">
<title>12345 hotline engine</title></head><body>
<h1>12345 市民服务热线 engine</h1>
<ul><li><a href="/console/">Agent console / 坐席工作台</a></li>
<li><a href="/api/v1/openapi.json">API (OpenAPI 3.1)</a></li>
<li><a href="/open311/v2/discovery.json">Open311 GeoReport v2</a></li>
<li><a href="/metrics">Metrics</a></li><li><a href="/healthz">Health</a></li>
<li><a href="/readyz">Readiness</a></li></ul>
<p>Staff sign in at <a href="/console/">/console/</a> or with
<code>POST /api/v1/auth/login</code>.</p></body></html>"""


def service_routes(deps: Deps, metrics: Metrics, openapi: dict[str, Any]) -> list[RouteSpec]:
    async def healthz(request: web.Request) -> web.StreamResponse:
        return json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.StreamResponse:
        if await deps.db.ping():
            return json_response({"status": "ready", "database": "ok"})
        resp = problem_response("service-unavailable")
        resp.headers["Retry-After"] = "5"
        return resp

    async def metrics_page(request: web.Request) -> web.StreamResponse:
        body = await metrics.render(deps)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    async def openapi_doc(request: web.Request) -> web.StreamResponse:
        return json_response(openapi)

    async def problem_doc(request: web.Request) -> web.StreamResponse:
        slug = request.match_info["slug"]
        if slug not in PROBLEM_TITLES:
            raise problem("not-found", f"no problem type {slug!r}")
        status, title = PROBLEM_TITLES[slug]
        return json_response({"type": f"/problems/{slug}", "status": status, "title": title})

    async def index(request: web.Request) -> web.StreamResponse:
        return web.Response(text=INDEX, content_type="text/html")

    ops = "ops"
    return [
        RouteSpec("GET", "/", index, "Start page", tag=ops),
        RouteSpec("GET", "/healthz", healthz, "Liveness", tag=ops),
        RouteSpec(
            "GET",
            "/readyz",
            readyz,
            "Readiness (database reachable)",
            tag=ops,
            responses={200: "ready", 503: "database unreachable"},
        ),
        RouteSpec("GET", "/metrics", metrics_page, "Prometheus metrics", tag=ops),
        RouteSpec("GET", "/api/v1/openapi.json", openapi_doc, "This document", tag=ops),
        RouteSpec(
            "GET",
            "/problems/{slug}",
            problem_doc,
            "What a problem type means",
            tag=ops,
            responses={200: "the problem type", 404: "unknown type"},
        ),
    ]
