"""The GeoReport v2 endpoints under /open311/v2, answering in the spec's own formats.

Public routes (no staff session): reading needs nothing, POST needs an api_key.
Every answer, errors included, is XML or JSON as the URL's extension asks (XML when
the extension itself is the problem), never problem+json: Open311 clients parse
only the spec's `errors` list. Bad input is a 400/403/404 there, never a 500.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from channels.open311 import const
from channels.open311.definitions import Definitions, load_definitions
from channels.open311.forms import (
    FORM_TYPES,
    MULTIPART,
    Open311Error,
    Pairs,
    RequestQuery,
    check_jurisdiction,
    legacy_charset,
    parse_multipart,
    parse_new_request,
    parse_pairs,
    parse_request_query,
    single_values,
)
from channels.open311.keys import key_owner
from channels.open311.render import errors_response, render, respond
from channels.open311.services import Service, build_services
from channels.open311.store import SideRowWriter, find_requests, number_for_token
from channels.open311.submit import Submitter, request_digest
from channels.open311.views import request_view, w3c
from ticketing.handlers import Deps
from ticketing.intake import Intake
from ticketing.store import StoreUnavailable
from ticketing.webkit import RouteSpec

log = logging.getLogger(__name__)
IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class Open311Config:
    base_url: str | None = None  # public URL of /open311/v2; None: from the request
    contact: str = "12345"
    key_service: str = "Ask the 12345 centre's operators for an API key."
    definitions_file: Path | None = None  # None: the packaged services.yaml
    jurisdiction_id: str = "city.gov"  # HOTLINE_OPEN311_JURISDICTION; the spec's example


Handler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


def _guarded(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Format check, then the spec's error answers for everything that goes wrong."""

    async def run(request: web.Request) -> web.StreamResponse:
        fmt = request.match_info.get("fmt", "").lower()
        if fmt not in const.FORMATS:
            return errors_response(
                const.DEFAULT_FORMAT,
                404,
                [f"format {fmt!r} is not supported; use {' or '.join(const.FORMATS)}"],
            )
        try:
            return await handler(request, fmt)
        except Open311Error as exc:
            return errors_response(fmt, exc.status, exc.descriptions)
        except StoreUnavailable:
            resp = errors_response(fmt, 503, ["the service cannot reach its database; retry"])
            resp.headers["Retry-After"] = "5"
            return resp
        except Exception:
            log.exception("open311 %s %s failed", request.method, request.path)
            return errors_response(fmt, 500, ["something went wrong on our side"])

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def open311_routes(deps: Deps, intake: Intake, config: Open311Config) -> list[RouteSpec]:
    defs: Definitions = load_definitions(config.definitions_file)
    submitter = Submitter(deps, intake, SideRowWriter(deps.db))
    cache: dict[str, Any] = {"categories": None, "services": {}}
    changes: dict[str, Any] = {"fingerprint": None, "at": None, "stale": True}
    # what depends only on the service list, made once per catalog: the list per format
    # (90 services took ~0.25 ms to render per request) and the changeset's fingerprint
    rendered: dict[str, bytes] = {}

    def services() -> dict[str, Service]:
        cats = deps.catalog.categories
        if cache["categories"] is not cats:  # the catalog swaps the dict on every reload
            cache["services"] = build_services(cats, defs)
            cache["categories"] = cats
            rendered.clear()
            changes["stale"] = True
        return cache["services"]

    def changeset(now: datetime) -> str:
        """When this instance first saw the current service list and definitions."""
        svc = services()
        if changes["stale"]:
            listing = [(s.listing(), s.definition()) for s in svc.values()]
            fingerprint = hashlib.sha256(repr(listing).encode()).hexdigest()
            changes["stale"] = False
            if fingerprint != changes["fingerprint"]:
                changes["fingerprint"], changes["at"] = fingerprint, now
        return w3c(changes["at"], deps.tz) or ""

    def query_pairs(request: web.Request, *form: Pairs) -> list[tuple[str, str]]:
        """The query string, validated, once its jurisdiction_id (and the form's, for
        POST) is known to be ours or absent: every method checks that first."""
        query = parse_pairs(request.rel_url.raw_query_string, "query string")
        check_jurisdiction(config.jurisdiction_id, query, *form)
        return query

    async def open311_discovery(request: web.Request, fmt: str) -> web.StreamResponse:
        query_pairs(request)  # asking another jurisdiction's discovery here is a 404 too
        base = config.base_url or f"{request.scheme}://{request.host}{const.PREFIX}"
        stamp = changeset(deps.clock())
        return respond(
            fmt,
            "discovery",
            {
                "changeset": stamp,
                "contact": config.contact,
                "key_service": config.key_service,
                "endpoints": [
                    {
                        "specification": const.SPECIFICATION,
                        "url": base.rstrip("/"),
                        "changeset": stamp,
                        "type": "production",
                        "formats": list(const.FORMATS.values()),
                    }
                ],
                # an extension, last so readers of the spec's four fields are undisturbed:
                # the id clients must send (or may omit) as jurisdiction_id
                "jurisdiction_id": config.jurisdiction_id,
            },
        )

    async def open311_discovery_above_versions(
        request: web.Request, fmt: str
    ) -> web.StreamResponse:
        """The same document at /open311/discovery.*, where the Service Discovery spec
        puts it: it "is meant to supercede the base URL for the Open311 endpoint"."""
        return await open311_discovery(request, fmt)

    async def open311_services(request: web.Request, fmt: str) -> web.StreamResponse:
        query_pairs(request)  # validated and jurisdiction checked; nothing else in it counts
        svc = services()
        body = rendered.get(fmt)
        if body is None:
            body = rendered[fmt] = render(fmt, "services", [s.listing() for s in svc.values()])
        return web.Response(body=body, content_type=const.FORMATS[fmt], charset="utf-8")

    async def open311_service_definition(request: web.Request, fmt: str) -> web.StreamResponse:
        query_pairs(request)
        code = request.match_info["service_code"]
        service = services().get(code)
        if service is None:
            raise Open311Error(404, f"service_code {code!r} was not found")
        return respond(fmt, "service_definition", service.definition())

    async def form_pairs(request: web.Request) -> Pairs:
        """The POST body's fields. The spec sends a urlencoded form and has the server
        assume UTF-8 whatever the charset label says; multipart/form-data is read too."""
        ctype = request.content_type if "Content-Type" in request.headers else ""
        if ctype not in (*FORM_TYPES, MULTIPART):
            raise Open311Error(400, f"send application/x-www-form-urlencoded, not {ctype}")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Open311Error(413, "the request body is too large") from None
        fallback = legacy_charset(request.charset)
        if ctype == MULTIPART:
            return parse_multipart(raw, request.headers["Content-Type"], fallback)
        return parse_pairs(raw, fallback=fallback)

    async def open311_create_request(request: web.Request, fmt: str) -> web.StreamResponse:
        pairs = await form_pairs(request)
        # jurisdiction_id may come in the form or the query string; before the api_key,
        # so a client aimed at the wrong city learns that, not that its key is unknown
        query = query_pairs(request, pairs)
        # some clients put api_key in the query string (as Swagger descriptions show)
        key = single_values(pairs, ["api_key"]).get("api_key") or single_values(
            query, ["api_key"]
        ).get("api_key")
        if not key:
            raise Open311Error(403, "api_key is missing -- can't proceed with create_request.")
        owner = await key_owner(deps.db, key)
        if owner is None:
            raise Open311Error(
                403, "Invalid api_key received -- can't proceed with create_request."
            )
        idem = request.headers.get(IDEMPOTENCY_HEADER)
        if idem is not None and not (
            1 <= len(idem) <= const.MAX_TOKEN and idem.isascii() and idem.isprintable()
        ):
            raise Open311Error(
                400, f"{IDEMPOTENCY_HEADER} must be 1 to 255 printable ASCII characters"
            )
        req = parse_new_request(pairs, services(), deps.tz)
        number = await submitter.submit(owner, req, request_digest(pairs), idem)
        return respond(
            fmt,
            "service_requests",
            [
                {
                    "service_request_id": number,
                    "service_notice": req.service.notice,
                    "account_id": req.account_id,
                }
            ],
        )

    def views(rows: list[Any]) -> list[dict[str, Any]]:
        svc = services()
        return [
            request_view(
                r,
                categories=deps.catalog.categories,
                departments=deps.catalog.departments,
                services=svc,
                defs=defs,
                tz=deps.tz,
            )
            for r in rows
        ]

    async def open311_list_requests(request: web.Request, fmt: str) -> web.StreamResponse:
        known = services().keys() | deps.catalog.categories.keys()
        q = parse_request_query(query_pairs(request), known, deps.tz, deps.clock())
        rows = await find_requests(deps.db, q)
        return respond(fmt, "service_requests", views(rows))

    async def open311_get_request(request: web.Request, fmt: str) -> web.StreamResponse:
        query_pairs(request)
        number = request.match_info["service_request_id"]
        rows = []
        if number.isascii() and number.isdigit() and len(number) <= 20:
            rows = await find_requests(deps.db, RequestQuery(ids=(number,)))
        if not rows:
            raise Open311Error(404, f"service_request_id {number!r} was not found")
        return respond(fmt, "service_requests", views(rows))

    async def open311_token(request: web.Request, fmt: str) -> web.StreamResponse:
        query_pairs(request)
        token = request.match_info["token"]
        if not (1 <= len(token) <= const.MAX_TOKEN and token.isprintable()):
            raise Open311Error(400, "token is not a token this service could have issued")
        number = await number_for_token(deps.db, token)
        if number is None:
            raise Open311Error(404, f"token {token!r} was not found")
        return respond(fmt, "service_requests", [{"service_request_id": number, "token": token}])

    async def open311_not_found(request: web.Request) -> web.StreamResponse:
        """Any other path under /open311/v2 (a missing extension, a typo): the spec's 404
        in its own error format, as the extension asks, not the hotline's problem+json."""
        ext = request.match_info["tail"].rpartition(".")[2].lower()
        return errors_response(
            ext if ext in const.FORMATS else const.DEFAULT_FORMAT,
            404,
            [f"no such GeoReport v2 resource; see {const.PREFIX}/discovery.xml"],
        )

    async def open311_not_found_below(request: web.Request) -> web.StreamResponse:
        """The same for two segments (requests/123 without its extension)."""
        return await open311_not_found(request)

    p = const.PREFIX
    fmt = "{fmt}"
    tag = "open311"
    xml_or_json = {200: "GeoReport v2 XML (text/xml) or JSON, as the extension says"}
    errors = {400: "invalid request (GeoReport v2 errors list)", 404: "not found"}
    jur = ("jurisdiction_id", f"optional; if given, {config.jurisdiction_id} (any case)")
    other = "another jurisdiction_id"
    return [
        RouteSpec(
            "GET",
            f"{p}/discovery.{fmt}",
            _guarded(open311_discovery),
            "Open311 service discovery (+ jurisdiction_id, an extension)",
            tag=tag,
            query=(jur,),
            responses={**xml_or_json, 404: other},
        ),
        RouteSpec(  # Service Discovery "is meant to supercede the base URL for the Open311
            # endpoint" and route to every version: the same document above /v2 too
            "GET",
            f"{const.ROOT}/discovery.{fmt}",
            _guarded(open311_discovery_above_versions),
            "Open311 service discovery at the versionless URL (the same document)",
            tag=tag,
            query=(jur,),
            responses={**xml_or_json, 404: other},
        ),
        RouteSpec(
            "GET",
            f"{p}/services.{fmt}",
            _guarded(open311_services),
            "Open311 GET Service List (our leaf categories)",
            tag=tag,
            query=(jur,),
            responses={**xml_or_json, 404: other},
        ),
        RouteSpec(
            "GET",
            f"{p}/services/{{service_code}}.{fmt}",
            _guarded(open311_service_definition),
            "Open311 GET Service Definition (attributes)",
            tag=tag,
            query=(jur,),
            responses={**xml_or_json, 404: f"unknown service_code or {other}"},
        ),
        RouteSpec(
            "POST",
            f"{p}/requests.{fmt}",
            _guarded(open311_create_request),
            "Open311 POST Service Request (form-encoded, api_key; Idempotency-Key honoured)",
            tag=tag,
            query=((jur[0], f"{jur[1]}; may come in the form instead"),),
            raw_body="application/x-www-form-urlencoded",
            responses={
                **xml_or_json,
                **errors,
                403: "missing or invalid api_key",
                404: f"unknown service_code or {other}",
            },
        ),
        RouteSpec(
            "GET",
            f"{p}/requests.{fmt}",
            _guarded(open311_list_requests),
            "Open311 GET Service Requests (90 days / 1000 records by default)",
            tag=tag,
            query=(
                jur,
                ("service_request_id", "comma-separated ids; overrides every other filter"),
                ("service_code", "comma-separated service codes"),
                ("start_date", "ISO 8601; window at most 90 days"),
                ("end_date", "ISO 8601"),
                ("status", "open, closed or both, comma-separated"),
                ("page", "extension: page number from 1"),
                ("page_size", "extension: 1 to 1000"),
            ),
            responses={**xml_or_json, 400: errors[400], 404: other},
        ),
        RouteSpec(
            "GET",
            f"{p}/requests/{{service_request_id}}.{fmt}",
            _guarded(open311_get_request),
            "Open311 GET Service Request (a list of one)",
            tag=tag,
            query=(jur,),
            responses={**xml_or_json, 404: f"unknown service_request_id or {other}"},
        ),
        RouteSpec(
            "GET",
            f"{p}/tokens/{{token}}.{fmt}",
            _guarded(open311_token),
            "Open311 GET service_request_id from a token (an Idempotency-Key sent with POST)",
            tag=tag,
            query=(jur,),
            responses={**xml_or_json, 404: f"unknown token or {other}"},
        ),
    ] + [  # last: only what no route above matched (one or two path segments)
        RouteSpec(
            method,
            f"{p}/{path}",
            handler,
            "Any other Open311 path: 404 in the spec's error format",
            tag=tag,
            responses={404: "no such resource (GeoReport v2 errors list)"},
        )
        for path, handler in (
            ("{tail}", open311_not_found),
            ("{head}/{tail}", open311_not_found_below),
        )
        for method in ("GET", "POST")
    ]
