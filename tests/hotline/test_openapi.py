"""The OpenAPI document matches the router exactly; metrics and health are served."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any

from hotline.appkeys import DEPS, ROUTE_SPECS
from ticketing.webkit import PROBLEM_TITLES

METHODS = {"get", "post", "put", "patch", "delete"}


async def openapi(api) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    r = await api.client.get("/api/v1/openapi.json")
    assert r.status == 200
    assert r.content_type == "application/json"
    return await r.json()


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method in ops
        if method in METHODS
    }


def registered(app) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    out = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        if route.resource.canonical.startswith("/partner/v1/"):
            continue  # the signed partner sub-app, documented in docs/partner-api.md
        path = re.sub(r"{([^}:]+)(:[^}]*)?}", r"{\1}", route.resource.canonical)
        out.add((route.method, path))
    return out


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


# ---------------------------------------------------------------- the document


async def test_openapi_document_is_3_1(sqlite_api):
    doc = await openapi(sqlite_api)
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] == "12345 hotline and citizen card engine"
    assert doc["info"]["version"]
    assert doc["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer"},
        "cookie": {"type": "apiKey", "in": "cookie", "name": "hotline_session"},
    }


async def test_every_registered_route_is_documented_and_nothing_else(sqlite_api):
    app = sqlite_api.app
    doc = await openapi(sqlite_api)
    routes = registered(app)
    assert ("POST", "/api/v1/tickets") in routes
    assert ("GET", "/api/v1/tickets/{number}") in routes
    assert documented(doc) == routes
    specs = {(s.method, s.path) for s in app[ROUTE_SPECS]}
    assert specs == routes
    assert len(app[ROUTE_SPECS]) == len(routes)  # no route declared twice


async def test_operations_have_unique_ids_and_their_path_parameters(sqlite_api):
    doc = await openapi(sqlite_api)
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for path, ops in doc["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        for method, op in ops.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (method, path)
            assert op["responses"], (method, path)


async def test_request_bodies_reference_existing_component_schemas(sqlite_api):
    app = sqlite_api.app
    doc = await openapi(sqlite_api)
    schemas = doc["components"]["schemas"]
    for spec in app[ROUTE_SPECS]:
        op = doc["paths"][spec.path][spec.method.lower()]
        if spec.body is None:
            assert spec.raw_body or "requestBody" not in op, spec.path
            continue
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{spec.body.__name__}"
        assert ref.removeprefix("#/components/schemas/") in schemas
    # and every $ref anywhere resolves (nested models included)
    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


async def test_ticket_schema_and_problem_schema(sqlite_api):
    doc = await openapi(sqlite_api)
    schemas = doc["components"]["schemas"]
    ticket_in = schemas["TicketIn"]
    assert ticket_in["additionalProperties"] is False
    assert set(ticket_in["required"]) == {"kind", "title", "description", "channel"}
    assert schemas["Problem"]["required"] == ["type", "title", "status"]
    assert schemas["Problem"]["properties"]["type"]["enum"] == [
        f"/problems/{slug}" for slug in PROBLEM_TITLES
    ]
    create = doc["paths"]["/api/v1/tickets"]["post"]
    assert create["security"] == [{"bearer": []}, {"cookie": []}]
    assert set(create["responses"]) == {"201", "401", "403", "422"}
    assert create["responses"]["422"]["content"] == {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
    }
    assert "security" not in doc["paths"]["/healthz"]["get"]
    upload = doc["paths"]["/api/v1/tickets/{number}/attachments"]["post"]
    assert upload["requestBody"]["content"] == {
        "*/*": {"schema": {"type": "string", "format": "binary"}}
    }


# ---------------------------------------------------------------- metrics and health


async def test_metrics_count_tickets_latency_status_and_overdue(api, monkeypatch):
    deps = api.app[DEPS]
    real_clock = deps.clock
    monkeypatch.setattr(deps, "clock", lambda: real_clock() - timedelta(days=10))
    await api.new_ticket()  # created ten days ago: long overdue for dispatch
    monkeypatch.setattr(deps, "clock", real_clock)
    t = await api.new_ticket(kind="request", channel="wechat")
    await api.move(t["number"], "dispatch")
    assert (await api.client.get("/no-such-page")).status == 404

    text = ""
    for _ in range(50):  # ticket.created is counted just after the commit
        r = await api.client.get("/metrics")
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
        if 'kind="request"} 1.0' in text:
            break
        await asyncio.sleep(0.02)
    lines = set(text.splitlines())
    assert 'hotline_tickets_created_total{channel="phone",kind="complaint"} 1.0' in lines
    assert 'hotline_tickets_created_total{channel="wechat",kind="request"} 1.0' in lines
    assert 'hotline_ticket_transitions_total{action="dispatch",to="dispatched"} 1.0' in lines
    assert 'hotline_tickets_by_status{status="new"} 1.0' in lines
    assert 'hotline_tickets_by_status{status="dispatched"} 1.0' in lines
    assert 'hotline_tickets_by_status{status="closed"} 0.0' in lines
    assert "hotline_tickets_overdue 1.0" in lines
    assert (
        'hotline_http_request_duration_seconds_count{method="POST",route="/api/v1/tickets",'
        'status="201"} 2.0'
    ) in lines
    assert (
        'hotline_http_request_duration_seconds_count{method="POST",'
        'route="/api/v1/tickets/{number}/dispatch",status="200"} 1.0'
    ) in lines
    assert (
        'hotline_http_request_duration_seconds_count{method="GET",route="unmatched",'
        'status="404"} 1.0'
    ) in lines
    assert "# TYPE hotline_http_request_duration_seconds histogram" in lines
    assert not any("_created{" in line or "_created " in line for line in lines)


async def test_healthz_and_readyz(sqlite_api):
    r = await sqlite_api.client.get("/healthz")
    assert r.status == 200
    assert await r.json() == {"status": "ok"}
    r = await sqlite_api.client.get("/readyz")
    assert r.status == 200
    assert await r.json() == {"status": "ready", "database": "ok"}


async def test_problem_types_are_documented(sqlite_api):
    r = await sqlite_api.client.get("/problems/illegal-transition")
    assert r.status == 200
    assert await r.json() == {
        "type": "/problems/illegal-transition",
        "status": 409,
        "title": "That move is not allowed for this ticket now",
    }
    r = await sqlite_api.client.get("/problems/nonsense")
    assert r.status == 404
    assert r.content_type == "application/problem+json"
