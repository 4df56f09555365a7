"""HTTP conventions every package's routes share: problem+json, strict bodies, specs.

Problems (RFC 9457) carry a stable `type` (`/problems/<slug>`, resolved against
the API's origin); clients branch on it, never on the human `title`/`detail`.
Routes are declared as `RouteSpec`s so the OpenAPI document is built from the
same list the router is, and cannot drift from it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from ticketing.lifecycle import Role
from ticketing.ports import Principal

PROBLEM_JSON = "application/problem+json"
# request-scoped state, set by the hotline's middlewares
PRINCIPAL = web.RequestKey("principal", Principal)
IDEMPOTENCY = web.RequestKey("idempotency", object)  # an intake.IdempotencySpec
IDEMPOTENCY_RECORDED = web.RequestKey("idempotency_recorded", bool)

PROBLEM_TITLES: dict[str, tuple[int, str]] = {
    "malformed-body": (400, "The request body could not be read"),
    "malformed-request": (400, "The HTTP request could not be parsed"),
    "invalid-request": (400, "The request is not acceptable"),
    "unauthorized": (401, "Sign in first"),
    "forbidden": (403, "Your role may not do this"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "illegal-transition": (409, "That move is not allowed for this ticket now"),
    "conflict": (409, "Someone else changed this at the same time; reload and retry"),
    "payload-too-large": (413, "The request body is too large"),
    "unsupported-media-type": (415, "Unsupported content type"),
    "validation-error": (422, "Some fields are not valid"),
    "idempotency-key-reuse": (422, "This Idempotency-Key was used for a different request"),
    "idempotency-in-progress": (409, "A request with this Idempotency-Key is still running"),
    "too-many-requests": (429, "Too many requests; wait as Retry-After says and retry"),
    "internal-error": (500, "Something went wrong on our side"),
    "service-unavailable": (503, "The service cannot reach its database; retry shortly"),
}


def problem_body(slug: str, detail: str | None = None, **ext: Any) -> tuple[int, dict[str, Any]]:
    status, title = PROBLEM_TITLES[slug]
    body: dict[str, Any] = {"type": f"/problems/{slug}", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(ext)
    return status, body


def problem(slug: str, detail: str | None = None, **ext: Any) -> web.HTTPException:
    """An aiohttp exception whose body is problem+json: raise it from any handler."""
    status, body = problem_body(slug, detail, **ext)
    exc = web.HTTPException(text=json.dumps(body, ensure_ascii=False), content_type=PROBLEM_JSON)
    exc.set_status(status)
    return exc


def field_problem(message: str, field: str | None, where: str = "(body)") -> web.HTTPException:
    """422 naming the one field at fault (`where` when the domain did not say which)."""
    return problem(
        "validation-error", message, errors=[{"field": field or where, "message": message}]
    )


def problem_response(slug: str, detail: str | None = None, **ext: Any) -> web.Response:
    status, body = problem_body(slug, detail, **ext)
    return web.Response(
        status=status, text=json.dumps(body, ensure_ascii=False), content_type=PROBLEM_JSON
    )


_ORJSON_OPTS = orjson.OPT_NON_STR_KEYS


def dumps_json(data: Any) -> bytes:
    """Compact UTF-8 JSON, as `json.dumps(ensure_ascii=False, separators=(",", ":"))`.

    orjson is about ten times faster on a ticket view, which every answer of the API
    carries. What it cannot encode the way the standard library would (integers past
    64 bits, lone surrogates) goes through the standard library, so nothing that
    encoded before fails now. Floats may be spelt differently (1e-05 vs 0.00001),
    with the same value.
    """
    try:
        return orjson.dumps(data, option=_ORJSON_OPTS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def json_response(data: Any, status: int = 200, **kw: Any) -> web.Response:
    return web.Response(
        status=status,
        body=dumps_json(data),
        content_type="application/json",
        charset="utf-8",
        **kw,
    )


M = TypeVar("M", bound=BaseModel)


async def read_body(request: web.Request, model: type[M]) -> M:
    """Strict JSON: declared content type, UTF-8, an object, no unknown fields."""
    # aiohttp reports a missing Content-Type as application/octet-stream
    ctype = request.content_type if "Content-Type" in request.headers else ""
    if ctype not in ("application/json", "") and not ctype.endswith("+json"):
        raise problem("unsupported-media-type", f"send application/json, not {ctype}")
    raw = await request.read()
    if raw.strip() and NUL_ESCAPE not in raw:
        # fast path: pydantic parses and validates in one pass (no dict in between);
        # any failure takes the careful path below for a precise problem
        try:
            return model.model_validate_json(raw)
        except ValidationError:
            pass
    try:
        text = raw.decode("utf-8")
        data = json.loads(text) if text.strip() else {}
    except UnicodeDecodeError:
        raise problem("malformed-body", "the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise problem("malformed-body", f"invalid JSON: {exc.msg} at {exc.pos}") from None
    except RecursionError:
        raise problem("malformed-body", "the JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise problem("malformed-body", "the body must be a JSON object")
    nul = nul_fields(data) if NUL_ESCAPE in raw else []
    if nul:
        raise problem(
            "validation-error", errors=[{"field": f, "message": NUL_MESSAGE} for f in nul]
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise problem("validation-error", errors=validation_errors(exc)) from None


# JSON can carry NUL only as this escape (a raw control character is invalid JSON).
# PostgreSQL's text cannot store NUL, and no field of ours has a use for it: it is
# refused here rather than failing in the database after the request was accepted.
NUL_ESCAPE = b"\\u0000"
NUL_MESSAGE = "must not contain NUL characters"


def nul_fields(data: Any) -> list[str]:
    """Dotted paths of the strings (keys included) in parsed JSON that hold a NUL.

    Iterative: json.loads accepts nesting almost as deep as the recursion limit, and
    a recursive walk from inside a request handler would hit it (a 500)."""
    # paths are linked (parent, key) pairs, spelled out only for a hit: spelling every
    # element's path would cost depth x elements of memory on a deep, wide body
    found: list[str] = []
    stack: list[tuple[Any, Any]] = [(None, data)]
    while stack:
        at, node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                found.append(_spell(at))
        elif isinstance(node, dict):
            for k, v in node.items():
                if "\x00" in k:
                    found.append(_spell((at, k)))
                else:
                    stack.append(((at, k), v))
        elif isinstance(node, list):
            stack.extend(((at, i), v) for i, v in enumerate(node))
    return sorted(found)


MAX_ROW_ID = 2**31 - 1  # the INTEGER primary keys on both databases


def row_id(raw: str) -> int | None:
    """A path segment as a row id, or None: ASCII digits only ('²' and '٣' pass
    `isdigit()` and fail or surprise `int()`) and within the INTEGER range, so a
    lookup never fails in the driver."""
    if raw.isascii() and raw.isdigit() and len(raw) <= 10:
        value = int(raw)
        if 0 < value <= MAX_ROW_ID:
            return value
    return None


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        out.append({"field": loc, "message": msg})
    return out


def principal_of(request: web.Request, *roles: Role) -> Principal:
    """The signed-in staff member, or 401; with roles given, 403 for any other role."""
    who: Principal | None = request.get(PRINCIPAL)
    if who is None:
        raise problem("unauthorized", "send a bearer token or the session cookie")
    if roles and who.role not in roles:
        raise problem(
            "forbidden",
            f"this needs the role {' or '.join(r.value for r in roles)}; you are {who.role.value}",
        )
    return who


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    roles: tuple[Role, ...] | None = None  # None: public; (): any signed-in staff
    tag: str = "tickets"
    query: tuple[tuple[str, str], ...] = ()  # (name, description)
    responses: dict[int, str] = field(default_factory=lambda: {200: "OK"})
    raw_body: str | None = None  # content type of a non-JSON body (uploads)

    def route(self) -> web.RouteDef:
        return web.route(self.method, self.path, self.handler)


def _spell(at: Any) -> str:
    """`a.0.b` from the linked (parent, key) pairs of a JSON path."""
    keys: list[str] = []
    while at is not None:
        at, key = at
        keys.append(str(key))
    return ".".join(reversed(keys)) or "(body)"
