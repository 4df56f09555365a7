"""The aiohttp application factory: composes the packages' routes and resources.

Every long-lived resource is one cleanup context, started in order and stopped in
reverse: store and bus, then the intake writer, then the deadline watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

import channels
from channels import app as city_app
from channels import telegram as channels_telegram
from channels.open311 import Open311Config, open311_routes
from citizen_card.medical_routes import medical_admin_routes, medical_routes
from citizen_card.partner_auth import CitySigner, SqlNonceStore, SqlPartnerRegistry
from citizen_card.partner_routes import partner_admin_routes, partner_app
from citizen_card.routes import CardRoute, card_routes
from citizen_card.self_service import resident_card_routes
from citizen_card.service import CardDeps
from hotline import appkeys
from hotline.acd.switch import Switch
from hotline.acd.wiring import PhoneLine, build_phone_line
from hotline.auth import LoginPolicy, SessionStore, auth_middleware, auth_routes
from hotline.bootstrap import build_card_deps, build_deps
from hotline.card_binding import binding_routes, bound_resident
from hotline.console import Console
from hotline.errors import install_problem_parser_errors, problem_middleware
from hotline.gc_tuning import quiet_gc
from hotline.idempotency import idempotency_middleware
from hotline.metrics import Metrics
from hotline.migrate import upgrade_head_async
from hotline.openapi import build_openapi
from hotline.routes import service_routes
from hotline.settings import Settings
from hotline.staff import staff_routes
from ticketing import deadline_watcher, workqueue
from ticketing.events import CardCacheInvalidated, CatalogChanged, DomainEvent
from ticketing.handlers import Deps
from ticketing.intake import Intake
from ticketing.lifecycle import Role
from ticketing.ports import Principal
from ticketing.report_routes import report_routes
from ticketing.routes import ticket_routes
from ticketing.store import log_pass_failure
from ticketing.wal_checkpoint import checkpointing
from ticketing.webkit import RouteSpec, principal_of

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return version("hotline12345")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(
    settings: Settings,
    *,
    deps: Deps | None = None,
    card_deps: CardDeps | None = None,
    migrate: bool = True,
    watch_deadlines: bool = True,
    phone_switch: Switch | None = None,
    demo: bool = False,
) -> web.Application:
    # aiosqlite logs every statement with its parameters at DEBUG: personal data must
    # not reach the logs even when an operator turns debugging on
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    install_problem_parser_errors()  # requests aiohttp cannot parse get problem+json too
    deps = deps or build_deps(settings)
    card_deps = card_deps or build_card_deps(settings, deps.db, deps.cipher)
    metrics = Metrics()
    deps.observers.append(metrics.observe)
    sessions = SessionStore(
        deps,
        settings.session_ttl_s,
        LoginPolicy(
            settings.login_max_failures,
            settings.login_lockout_s,
            settings.login_max_failures_per_ip,
        ),
    )
    intake = Intake(deps)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            metrics.middleware(),
            problem_middleware,
            auth_middleware(sessions),
            idempotency_middleware(deps.db),
        ],
    )
    app[appkeys.SETTINGS] = settings
    app[appkeys.DEPS] = deps
    app[appkeys.CARD_DEPS] = card_deps
    app[appkeys.INTAKE] = intake
    app[appkeys.SESSIONS] = sessions
    app[appkeys.METRICS] = metrics

    specs: list[RouteSpec] = []
    specs += auth_routes(sessions, settings.cookie_secure)
    specs += staff_routes(deps, sessions)
    specs += ticket_routes(
        deps,
        intake,
        settings.attachment_dir,
        {"max_bytes": settings.attachment_max_bytes, "types": settings.allowed_attachment_types},
    )
    specs += report_routes(deps)
    specs += [_card_spec(r) for r in card_routes(card_deps, _staff)]
    partners = SqlPartnerRegistry(card_deps.engine, card_deps.cipher, changes=card_deps.changes)
    specs += [_card_spec(r) for r in partner_admin_routes(card_deps, partners, _staff)]
    specs += [_card_spec(r) for r in medical_admin_routes(card_deps, _staff)]
    city_signer = CitySigner(f"{settings.city_code.lower()}-service", card_deps.service_key)
    nonce_store = SqlNonceStore(card_deps.engine, write_lock=card_deps.write_lock)
    app[appkeys.PARTNER_JOURNAL] = nonce_store.journal
    app.add_subapp(  # signed partner API: documented in docs/partner-api.md, not OpenAPI
        "/partner/v1",
        partner_app(
            card_deps,
            registry=partners,
            nonce_store=nonce_store,
            city_signer=city_signer,
            medical_routes=medical_routes(card_deps, hospital_levels=settings.hospital_level_map),
        ),
    )
    openapi: dict = {}
    console = Console(deps, settings.deadline_warn_fraction)
    app[appkeys.CONSOLE] = console
    specs += console.routes()
    specs += open311_routes(
        deps,
        intake,
        Open311Config(
            base_url=settings.open311_base_url,
            contact=settings.open311_contact,
            key_service=settings.open311_key_service,
            jurisdiction_id=settings.open311_jurisdiction,
        ),
    )
    channel_hub = channels.setup(app, deps, intake, settings)  # + the /wechat webhook
    channels_telegram.setup(app, channel_hub, settings)  # /telegram/webhook + the bot
    specs += channels.routes(channel_hub)
    app_channel = city_app.setup(app, channel_hub, intake, settings)  # /api/v1/app
    specs += city_app.routes(app_channel)
    specs += binding_routes(card_deps, app_channel)
    specs += [
        _app_card_spec(r)
        for r in resident_card_routes(card_deps, bound_resident(card_deps, app_channel))
    ]
    phone_line = build_phone_line(
        settings,
        deps,
        card_deps.service_key,
        metrics,
        switch=phone_switch,
        demo=demo,
        card_deps=card_deps,
    )
    app[appkeys.PHONE_LINE] = phone_line
    console.attach_phone(phone_line.service)  # the wall's live phone figures
    deps.claim_filter = _chat_capacity(phone_line)
    specs += phone_line.routes
    specs += service_routes(deps, metrics, openapi)
    openapi.update(build_openapi(specs, _version()))
    app.add_routes([s.route() for s in specs])
    app[appkeys.ROUTE_SPECS] = specs  # read by the OpenAPI test

    async def store_and_bus(app: web.Application) -> AsyncIterator[None]:
        if migrate:
            await upgrade_head_async(settings.database_url)
        await deps.bus.start()

        async def on_event(ev: DomainEvent) -> None:
            await sessions.on_event(ev)
            if isinstance(ev, CardCacheInvalidated):  # another instance changed a card
                card_deps.changes.received(ev.topic, ev.key)
            if isinstance(ev, CatalogChanged):
                await deps.catalog.reload(deps.db)

        unsubscribe = deps.bus.subscribe(on_event)

        async def announce_card_change(topic: str, key: str) -> None:
            await deps.bus.publish(CardCacheInvalidated(topic, key))

        card_deps.changes.publish = announce_card_change
        await deps.catalog.reload(deps.db)
        yield
        unsubscribe()
        await deps.bus.stop()
        await deps.db.dispose()

    async def wal_checkpoints(app: web.Application) -> AsyncIterator[None]:
        async with checkpointing(deps.db.sqlite_file):
            yield

    async def intake_writer(app: web.Application) -> AsyncIterator[None]:
        await intake.start()
        yield
        await intake.stop()

    async def watcher(app: web.Application) -> AsyncIterator[None]:
        task = None
        if watch_deadlines:
            task = asyncio.create_task(
                deadline_watcher.run_forever(
                    deps, settings.deadline_scan_s, settings.deadline_warn_fraction
                ),
                name="deadline-watcher",
            )
        yield
        if task:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def ledger_settler(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_settle_forever(card_deps), name="ledger-settler")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.extend([store_and_bus, wal_checkpoints, intake_writer, watcher, ledger_settler])
    app.cleanup_ctx.append(console.lifecycle)  # after the bus: it subscribes
    app.on_shutdown.append(console.on_shutdown)
    app.cleanup_ctx.append(channel_hub.context)  # after the bus and the ticket intake
    app.cleanup_ctx.append(phone_line.context)  # after the bus: calls publish events
    if settings.gc_freeze:
        app.cleanup_ctx.append(quiet_gc)  # last: freezes what start-up built
    return app


def _staff(request: web.Request, roles: tuple[str, ...]) -> Principal:
    return principal_of(request, *(Role(r) for r in roles))


def _card_spec(r: CardRoute) -> RouteSpec:
    roles = None if r.roles is None else tuple(Role(x) for x in r.roles)
    return RouteSpec(
        r.method,
        r.path,
        r.handler,
        r.summary,
        r.body,
        roles,
        tag="citizen-card",
        query=r.query,
        responses=r.responses,
    )


def _app_card_spec(r: CardRoute) -> RouteSpec:
    """A citizen-card route of the app: the resident's bearer token, tag "app"."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await r.handler(request)

    handler.__name__ = f"app_card_{r.handler.__name__.removeprefix('app_')}"
    return RouteSpec(
        r.method,
        r.path,
        handler,
        r.summary,
        r.body,
        (),
        tag="app",
        query=r.query,
        responses=r.responses,
    )


def _chat_capacity(
    phone_line: PhoneLine,
) -> Callable[[AsyncConnection, str], Awaitable[frozenset[str]]]:
    """Calls and chats share people: an agent signed in to the phone line is handed no
    further conversation from the queue when their call and the conversations they
    hold already fill their load (HOTLINE_ACD_CHAT_WEIGHT, HOTLINE_ACD_MAX_LOAD)."""
    none: frozenset[str] = frozenset()
    chats = frozenset({workqueue.CONVERSATION})

    async def claim_filter(conn: AsyncConnection, username: str) -> frozenset[str]:
        service = phone_line.service
        if service is None or service.acd.chat_allowed(username, 0) is None:
            return none  # not on the phone line: the line has no say
        held = await workqueue.held_by(conn, workqueue.CONVERSATION, username, service.deps.clock())
        return none if service.acd.chat_allowed(username, held) else chats

    return claim_filter


async def _settle_forever(card_deps: CardDeps, interval_s: float = 5.0) -> None:
    """Fold buffered merchant credits into balances (the ledger keeps hot rows unlocked)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await card_deps.ledger.settle()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log_pass_failure(log, exc, "ledger settle failed; retrying")
