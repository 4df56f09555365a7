"""The GeoReport v2 endpoints under /open311/v2, answering in the spec's own formats.

Public routes (no staff session): reading needs nothing, POST needs an api_key.
Every answer, errors included, is XML or JSON as the URL's extension asks (XML when
the extension itself is the problem), never problem+json: Open311 clients parse
only the spec's `errors` list. Bad input is a 400/403/404 there, never a 500.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
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
    with_query_fields,
)
from channels.open311.keys import key_owner
from channels.open311.render import errors_response, render, respond
from channels.open311.services import Service, build_services
from channels.open311.store import SideRowWriter, find_requests, number_for_token
from channels.open311.submit import Submitter, request_digest
from channels.open311.views import request_view, w3c
from ticketing.handlers import Deps
from ticketing.intake import Intake
from ticketing.store import answers_unavailable
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
Guarded = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The path parameters of a request this module routed itself (a doubled slash, the bare
# base URL): aiohttp's match_info belongs to the catch-all route that received it.
MATCHED: web.RequestKey[dict[str, str]] = web.RequestKey("open311_matched", dict)
_SLASHES = re.compile(r"/{2,}")
_ROUTE_PARAM = re.compile(r"{([a-z_]+)}")


def path_params(request: web.Request) -> Mapping[str, str]:
    """The path parameters of the route this request reached, however it got there."""
    matched: dict[str, str] | None = request.get(MATCHED)
    return matched if matched is not None else request.match_info


def _path_pattern(template: str) -> re.Pattern[str]:
    """A route template as aiohttp matches it: `{name}` is one non-empty segment."""
    parts = _ROUTE_PARAM.split(template)
    return re.compile(
        "".join(
            f"(?P<{part}>[^{{}}/]+)" if odd else re.escape(part)
            for odd, part in ((i % 2 == 1, part) for i, part in enumerate(parts))
        )
    )


@dataclass(frozen=True)
class _RestOfPathSpec(RouteSpec):
    """A route whose last parameter, `{rest}`, takes the rest of the path, slashes and
    empty segments included. Documented as the plain `{rest}` (OpenAPI has no
    multi-segment parameter), registered with aiohttp's `{rest:.*}`."""

    def route(self) -> web.RouteDef:
        return web.route(self.method, self.path.replace("{rest}", "{rest:.*}"), self.handler)


def _guarded(handler: Handler) -> Guarded:
    """Format check, then the spec's error answers for everything that goes wrong."""

    async def run(request: web.Request) -> web.StreamResponse:
        fmt = path_params(request).get("fmt", "").lower()
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
        except Exception as exc:
            if answers_unavailable(exc):
                log.warning("open311 %s %s: database unavailable", request.method, request.path)
                resp = errors_response(fmt, 503, ["the service cannot reach its database; retry"])
                resp.headers["Retry-After"] = "5"
                return resp
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
        code = path_params(request)["service_code"]
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
        body = await form_pairs(request)
        # jurisdiction_id may come in the form or the query string; before the api_key,
        # so a client aimed at the wrong city learns that, not that its key is unknown
        query = query_pairs(request, body)
        # every field, api_key included, may come in the query string (as Swagger
        # descriptions of Open311 servers show); the body's value wins
        pairs = with_query_fields(body, query)
        key = single_values(pairs, ["api_key"]).get("api_key")
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
        number = path_params(request)["service_request_id"]
        rows = []
        if number.isascii() and number.isdigit() and len(number) <= 20:
            rows = await find_requests(deps.db, RequestQuery(ids=(number,)))
        if not rows:
            raise Open311Error(404, f"service_request_id {number!r} was not found")
        return respond(fmt, "service_requests", views(rows))

    async def open311_token(request: web.Request, fmt: str) -> web.StreamResponse:
        query_pairs(request)
        token = path_params(request)["token"]
        if not (1 <= len(token) <= const.MAX_TOKEN and token.isprintable()):
            raise Open311Error(400, "token is not a token this service could have issued")
        number = await number_for_token(deps.db, token)
        if number is None:
            raise Open311Error(404, f"token {token!r} was not found")
        return respond(fmt, "service_requests", [{"service_request_id": number, "token": token}])

    def not_found(tail: str) -> web.StreamResponse:
        """The spec's 404 in its own error format, as the path's extension asks."""
        ext = tail.rpartition("/")[2].rpartition(".")[2].lower()
        return errors_response(
            ext if ext in const.FORMATS else const.DEFAULT_FORMAT,
            404,
            [f"no such GeoReport v2 resource; see {const.PREFIX}/discovery.xml"],
        )

    def base_format(request: web.Request) -> str:
        """XML, the required format, unless the client's Accept asks for JSON only."""
        accept = request.headers.get("Accept", "").lower()
        return "json" if "json" in accept and "xml" not in accept else const.DEFAULT_FORMAT

    async def open311_base(request: web.Request) -> web.StreamResponse:
        """The base URL itself (what a client configured with it may try first): the
        discovery document, in XML unless the Accept header asks for JSON only."""
        request[MATCHED] = {"fmt": base_format(request)}
        return await guarded_discovery(request)

    async def open311_elsewhere(request: web.Request) -> web.StreamResponse:
        """Every other path under /open311/v2/.

        A client whose base URL ends in "/" and that adds "/services.xml" asks for
        /open311/v2//services.xml: repeated slashes inside the Open311 path are read as
        one and the request answered as if it had come without them (a redirect would
        not do: LWP, FixMyStreet's agent, and most libraries do not repeat a POST at the
        new address). Only the Open311 routes are matched that way, nothing else in the
        service. /open311/v2/ alone is the base URL; the rest is the spec's 404."""
        rest = request.match_info["rest"]
        if not rest.strip("/"):
            if request.method == "GET":
                return await open311_base(request)
            return not_found(rest)
        if "//" not in rest and not rest.startswith("/"):
            return not_found(rest)
        path = f"{const.PREFIX}/{_SLASHES.sub('/', rest).lstrip('/')}"
        allowed: list[str] = []
        for method, pattern, handler in table:
            m = pattern.fullmatch(path)
            if m is None:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            request[MATCHED] = m.groupdict()
            return await handler(request)
        if allowed:
            ext = path.rpartition(".")[2].lower()
            resp = errors_response(
                ext if ext in const.FORMATS else const.DEFAULT_FORMAT,
                405,
                [f"{request.method} is not allowed here; use {' or '.join(allowed)}"],
            )
            resp.headers["Allow"] = ", ".join(allowed)
            return resp
        return not_found(rest)

    guarded_discovery = _guarded(open311_discovery)
    table: list[tuple[str, re.Pattern[str], Guarded]] = []

    p = const.PREFIX
    fmt = "{fmt}"
    tag = "open311"
    xml_or_json = {200: "GeoReport v2 XML (text/xml) or JSON, as the extension says"}
    errors = {400: "invalid request (GeoReport v2 errors list)", 404: "not found"}
    jur = ("jurisdiction_id", f"optional; if given, {config.jurisdiction_id} (any case)")
    other = "another jurisdiction_id"
    specs = [
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
    ]
    table.extend((spec.method, _path_pattern(spec.path), spec.handler) for spec in specs)
    return [
        *specs,
        RouteSpec(
            "GET",
            p,
            open311_base,
            "The Open311 base URL: the discovery document (XML unless Accept asks for JSON)",
            tag=tag,
            responses=xml_or_json,
        ),
        *(  # last: only what no route above matched
            _RestOfPathSpec(
                method,
                f"{p}/{{rest}}",
                open311_elsewhere,
                "Any other Open311 path: repeated slashes read as one, /open311/v2/ is the"
                " base URL, anything else a 404 in the spec's error format",
                tag=tag,
                responses={
                    **(xml_or_json if method == "GET" else {}),
                    404: "no such resource (GeoReport v2 errors list)",
                },
            )
            for method in ("GET", "POST")
        ),
    ]
