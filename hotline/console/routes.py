"""HTTP and websocket routes of the console: the static app, the live queue, the
knowledge base, the dispatch preview and the supervisor wall.

Agents' states are not here: the console sets them through the ACD's own API
(`/api/v1/agents/me/...`), the one record of who is available."""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import Field, model_validator

from hotline.auth import request_token, token_hash
from hotline.console import kb
from hotline.console.feed import QueueFeed, Subscriber
from hotline.console.wall import DRILL_METRICS, Wall
from ticketing import workqueue
from ticketing.deadlines import Urgency, due_at
from ticketing.handlers import Deps, TicketNotFound, get_ticket, limits_for
from ticketing.lifecycle import Role
from ticketing.schemas import Code, Strict
from ticketing.webkit import RouteSpec, json_response, principal_of, problem, read_body, row_id

STATIC = Path(__file__).with_name("static")
FLOOR = (Role.AGENT, Role.SUPERVISOR)
EDITORS = (Role.SUPERVISOR, Role.ADMIN)
WATCHERS = (Role.SUPERVISOR, Role.ADMIN)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# what the console asks to learn whether the other parts have landed
FEATURE_ROUTES = {"conversations": "/api/v1/conversations", "phone": "/api/v1/agents/me"}
# the states an agent picks in the console (ringing, on_call, wrap_up are the ACD's doing)
AGENT_CHOICES = ("available", "break", "logged_out")


class ArticleIn(Strict):
    question: Annotated[str, Field(min_length=1, max_length=300)]
    answer: Annotated[str, Field(min_length=1, max_length=5000)]
    category: Code | None = None
    owner_department: Code | None = None
    valid_from: date | None = None
    valid_to: date | None = None

    @model_validator(mode="after")
    def _dates(self) -> ArticleIn:
        if self.valid_from and self.valid_to and self.valid_to < self.valid_from:
            raise ValueError("valid_to is before valid_from")
        return self


class ArticlePatch(Strict):
    question: Annotated[str, Field(min_length=1, max_length=300)] | None = None
    answer: Annotated[str, Field(min_length=1, max_length=5000)] | None = None
    category: Code | None = None
    owner_department: Code | None = None
    valid_from: date | None = None
    valid_to: date | None = None
    version: int | None = Field(None, description="the version edited; 409 if it changed")


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_static(root: Path = STATIC) -> dict[str, StaticFile]:
    """Every shipped asset, read once: the URL space is exactly this dict (no traversal)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            body = path.read_bytes()
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if path.suffix == ".js":
                ctype = "text/javascript"
            out[path.relative_to(root).as_posix()] = StaticFile(
                body, ctype, '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            )
    return out


def _same_origin(request: web.Request) -> bool:
    """Browsers always send Origin on a websocket handshake: refuse other sites'
    pages riding on the session cookie (cross-site websocket hijacking)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser (bench, scripts): the bearer token is the proof
    return urlsplit(origin).netloc == request.host


def console_routes(deps: Deps, feed: QueueFeed, wall: Wall) -> list[RouteSpec]:
    files = load_static()

    def today() -> date:
        return deps.clock().astimezone(deps.tz).date()

    async def index_redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/console/")

    def serve(name: str, request: web.Request) -> web.StreamResponse:
        f = files.get(name)
        if f is None:
            raise problem("not-found", f"no console file {name!r}")
        headers = {
            "Content-Type": f.content_type,
            "Cache-Control": "no-cache",
            "ETag": f.etag,
            "X-Content-Type-Options": "nosniff",
        }
        if name == "index.html":
            headers["Content-Security-Policy"] = CSP
            headers["Referrer-Policy"] = "no-referrer"
        if request.headers.get("If-None-Match") == f.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=f.body, headers=headers)

    async def console_page(request: web.Request) -> web.StreamResponse:
        return serve("index.html", request)

    async def asset(request: web.Request) -> web.StreamResponse:
        return serve(request.match_info["name"], request)

    async def i18n(request: web.Request) -> web.StreamResponse:
        return serve("i18n/" + request.match_info["name"], request)

    async def config(request: web.Request) -> web.StreamResponse:
        who = principal_of(request)
        known = {r.canonical for r in request.app.router.resources()}
        return json_response(
            {
                "user": {
                    "username": who.username,
                    "role": who.role.value,
                    "department": who.department_code,
                },
                "audiences": workqueue.audiences_for(who),
                "instance": feed.instance,
                "features": {k: path in known for k, path in FEATURE_ROUTES.items()},
                "agent_states": list(AGENT_CHOICES),
                "timezone": str(deps.tz),
            }
        )

    async def queue_snapshot(request: web.Request) -> web.StreamResponse:
        who = principal_of(request)
        await feed.ready.wait()
        async with feed.fresh():
            return json_response(feed.snapshot(workqueue.audiences_for(who)))

    async def websocket(request: web.Request) -> web.StreamResponse:
        who = principal_of(request)
        if not _same_origin(request):
            raise problem("forbidden", "websocket from another origin")
        q = request.query
        after: int | None
        try:
            after = int(q["after"]) if q.get("after") else None
        except ValueError:
            after = None
        # uncompressed: one encoded frame is shared by every socket (see feed.py)
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096, compress=False)
        if not ws.can_prepare(request).ok:
            raise problem("invalid-request", "this URL speaks websocket only")
        await ws.prepare(request)
        await feed.ready.wait()
        token, _ = request_token(request)
        sub = Subscriber(
            ws,
            who.username,
            who.role.value,
            frozenset(workqueue.audiences_for(who)),
            token_hash(token) if token else None,
            transport=request.transport,
        )
        async with feed.fresh():
            feed.attach(sub, instance=q.get("instance") or None, after=after)
        try:
            async for msg in ws:
                if msg.type == web.WSMsgType.TEXT and msg.data == "ping":
                    await ws.send_str('{"type":"pong"}')
        finally:
            await feed.detach(sub)
        return ws

    async def dispatch_preview(request: web.Request) -> web.StreamResponse:
        """What a dispatch would do now: lead department and deadlines, before confirming."""
        who = principal_of(request, *FLOOR)
        q = request.query
        category = q.get("category") or None
        district = q.get("district") or None
        urgency_text = q.get("urgency") or None
        if q.get("ticket"):
            try:
                t = await get_ticket(deps, q["ticket"], who)
            except TicketNotFound:
                raise problem("not-found", f"no ticket {q['ticket']}") from None
            category = category or t["category"]["code"]
            district = district or t["location"]["district"]
            urgency_text = urgency_text or t["urgency"]
        cat = deps.catalog.category(category) if category else None
        if category and cat is None:
            raise problem("validation-error", errors=[{"field": "category", "message": "unknown"}])
        try:
            urgency = Urgency(urgency_text or (cat["urgency"] if cat else "normal"))
        except ValueError:
            raise problem(
                "validation-error", errors=[{"field": "urgency", "message": "unknown"}]
            ) from None
        lead, how = q.get("department") or None, "chosen"
        if lead is None and cat and cat["default_department"]:
            lead, how = cat["default_department"], "category"
        if lead is None:
            lead, how = deps.catalog.fallback_for_district(district), "district_fallback"
        dept = deps.catalog.department(lead) if lead else None
        if lead and dept is None:
            raise problem(
                "validation-error", errors=[{"field": "department", "message": "unknown"}]
            )
        now = deps.clock()
        dispatch_limit, feedback_limit = limits_for(deps, category, urgency)
        return json_response(
            {
                "lead": lead,
                "lead_name": dept["name"] if dept else None,
                "routed_by": how if lead else None,
                "urgency": urgency.value,
                "dispatch_limit": str(dispatch_limit),
                "feedback_limit": str(feedback_limit),
                "dispatch_due_at": _iso(due_at(now, dispatch_limit, deps.calendar, deps.tz)),
                "feedback_due_at": _iso(due_at(now, feedback_limit, deps.calendar, deps.tz)),
            }
        )

    # ---------------------------------------------------------------- knowledge base

    def _check_refs(category: str | None, department: str | None) -> None:
        errors = []
        if category and deps.catalog.category(category) is None:
            errors.append({"field": "category", "message": "unknown category"})
        if department and deps.catalog.department(department) is None:
            errors.append({"field": "owner_department", "message": "unknown department"})
        if errors:
            raise problem("validation-error", errors=errors)

    def _article_id(request: web.Request) -> int:
        value = row_id(request.match_info["id"])
        if value is None:
            raise problem("not-found", "no such article")
        return value

    async def _article(article_id: int) -> dict[str, Any]:
        try:
            return kb.article_view(await kb.get_article(deps.db, article_id), today())
        except kb.ArticleNotFound:
            raise problem("not-found", f"no article {article_id}") from None

    async def kb_search(request: web.Request) -> web.StreamResponse:
        who = principal_of(request)
        q = request.query
        try:
            limit = int(q.get("limit", "10"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 50:
            raise problem("validation-error", errors=[{"field": "limit", "message": "1 to 50"}])
        include_retired = q.get("include_retired") in ("1", "true") and who.role in EDITORS
        items = await kb.search(
            deps.db,
            (q.get("q") or "")[:200],
            today(),
            category=q.get("category") or None,
            include_retired=include_retired,
            limit=limit,
        )
        return json_response({"items": items})

    async def kb_get(request: web.Request) -> web.StreamResponse:
        principal_of(request)
        return json_response(await _article(_article_id(request)))

    async def kb_create(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *EDITORS)
        body = await read_body(request, ArticleIn)
        _check_refs(body.category, body.owner_department)
        fields = kb.ArticleFields(
            body.question,
            body.answer,
            body.category,
            body.owner_department,
            body.valid_from,
            body.valid_to,
        )
        article_id = await kb.create_article(deps.db, fields, who.username, deps.clock())
        return json_response(
            await _article(article_id),
            status=201,
            headers={"Location": f"/api/v1/kb/articles/{article_id}"},
        )

    async def _update(request: web.Request, changes: dict[str, Any], version: int | None) -> Any:
        who = principal_of(request, *EDITORS)
        article_id = _article_id(request)
        try:
            current = await kb.get_article(deps.db, article_id)
            vf = changes.get("valid_from", current.valid_from)
            vt = changes.get("valid_to", current.valid_to)
            if vf and vt and vt < vf:
                raise problem(
                    "validation-error",
                    errors=[{"field": "valid_to", "message": "before valid_from"}],
                )
            await kb.update_article(
                deps.db, article_id, changes, who.username, deps.clock(), version
            )
        except kb.ArticleNotFound:
            raise problem("not-found", f"no article {article_id}") from None
        except kb.StaleArticle:
            raise problem("conflict", "the article changed since you loaded it") from None
        return json_response(await _article(article_id))

    async def kb_patch(request: web.Request) -> web.StreamResponse:
        principal_of(request, *EDITORS)
        body = await read_body(request, ArticlePatch)
        raw = body.model_dump(exclude_unset=True)
        version = raw.pop("version", None)
        names = {"category": "category_code"}
        changes = {names.get(k, k): v for k, v in raw.items()}
        _check_refs(changes.get("category_code"), changes.get("owner_department"))
        for required in ("question", "answer"):
            if required in changes and changes[required] is None:
                raise problem(
                    "validation-error", errors=[{"field": required, "message": "required"}]
                )
        return await _update(request, changes, version)

    async def kb_retire(request: web.Request) -> web.StreamResponse:
        return await _update(request, {"status": "retired"}, None)

    async def kb_restore(request: web.Request) -> web.StreamResponse:
        return await _update(request, {"status": "active"}, None)

    # ---------------------------------------------------------------- supervisor wall

    async def wall_numbers(request: web.Request) -> web.StreamResponse:
        principal_of(request, *WATCHERS)
        return json_response(await wall.numbers())

    async def wall_drill(request: web.Request) -> web.StreamResponse:
        principal_of(request, *WATCHERS)
        metric = request.match_info["metric"]
        if metric not in DRILL_METRICS:
            raise problem("not-found", f"no wall metric {metric!r}")
        value = request.query.get("value")
        items = await wall.drill(metric, value if value is not None else None)
        return json_response({"metric": metric, "value": value, "items": items})

    c, tag = "/api/v1/console", "console"
    a = "/api/v1/kb/articles"
    return [
        RouteSpec("GET", "/console", index_redirect, "The agent console", tag=tag,
                  responses={302: "to /console/"}),
        RouteSpec("GET", "/console/", console_page, "The agent console (single page)", tag=tag),
        RouteSpec("GET", "/console/{name}", asset, "Console asset", tag=tag,
                  responses={200: "the file", 404: "no such file"}),
        RouteSpec("GET", "/console/i18n/{name}", i18n, "Console message catalogue", tag=tag,
                  responses={200: "the catalogue", 404: "no such language"}),
        RouteSpec("GET", c + "/config", config, "Who I am and what is connected",
                  roles=(), tag=tag),
        RouteSpec("GET", c + "/queue", queue_snapshot,
                  "Queue snapshot with the feed sequence it reflects", roles=(), tag=tag),
        RouteSpec("GET", c + "/ws", websocket, "Live queue (websocket; see console README)",
                  roles=(), tag=tag, query=(("instance", "instance id of the last frame"),
                                            ("after", "last seq applied")),
                  responses={101: "switching to websocket", 400: "not a websocket request"}),
        RouteSpec("GET", c + "/dispatch-preview", dispatch_preview,
                  "Lead department and deadlines a dispatch would give now", roles=FLOOR,
                  tag=tag, query=(("ticket", "ticket number (its category, urgency, district)"),
                                  ("category", "category code"), ("urgency", "urgency"),
                                  ("department", "chosen lead department"),
                                  ("district", "district, for the fallback unit"))),
        RouteSpec("GET", c + "/wall", wall_numbers, "Supervisor wall KPIs", roles=WATCHERS,
                  tag=tag),
        RouteSpec("GET", c + "/wall/{metric}", wall_drill, "The list behind a wall number",
                  roles=WATCHERS, tag=tag, query=(("value", "department, channel, state..."),)),
        RouteSpec("GET", a, kb_search, "Search the knowledge base", roles=(), tag="kb",
                  query=(("q", "words or Chinese text"), ("category", "category code"),
                         ("include_retired", "editors only"), ("limit", "1..50"))),
        RouteSpec("POST", a, kb_create, "Create an article", ArticleIn, EDITORS, tag="kb",
                  responses={201: "created"}),
        RouteSpec("GET", a + "/{id}", kb_get, "One article", roles=(), tag="kb"),
        RouteSpec("PATCH", a + "/{id}", kb_patch, "Edit an article", ArticlePatch, EDITORS,
                  tag="kb", responses={200: "edited", 409: "changed meanwhile"}),
        RouteSpec("POST", a + "/{id}/retire", kb_retire, "Retire an article", roles=EDITORS,
                  tag="kb"),
        RouteSpec("POST", a + "/{id}/restore", kb_restore, "Bring a retired article back",
                  roles=EDITORS, tag="kb"),
    ]  # fmt: skip


def _iso(dt: Any) -> str:
    return dt.isoformat().replace("+00:00", "Z")
