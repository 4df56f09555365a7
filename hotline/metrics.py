"""Prometheus metrics for what a 12345 centre is judged by.

Counters move on this instance's own events (not the bus, which would count other
instances' work twice); gauges of the whole centre (open tickets by status,
overdue) are read from the database at scrape time, cached for a few seconds so
a busy scraper cannot load the store.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from ticketing.events import (
    DeadlineBreached,
    DeadlineWarning,
    DomainEvent,
    TicketCreated,
    TicketTransitioned,
)
from ticketing.handlers import Deps, overdue_clause, ticket_t
from ticketing.lifecycle import Role, Status
from ticketing.performance import Period, performance
from ticketing.ports import Principal

SCRAPE_CACHE_S = 5.0
RATES_CACHE_S = 300.0  # a month of tickets and their trail (~1 s per 50k tickets): not every scrape
RATES_DAYS = 30
CENTRE = Principal("metrics", Role.SUPERVISOR)  # the whole centre's figures
MAX_CACHED_CHILDREN = 4096  # label combinations remembered per metric (methods are client input)


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # *_created series only confuse dashboards
        self.registry = CollectorRegistry()
        r = self.registry
        self.created = Counter(
            "hotline_tickets_created", "Tickets created", ["channel", "kind"], registry=r
        )
        self.transitions = Counter(
            "hotline_ticket_transitions", "Ticket lifecycle moves", ["action", "to"], registry=r
        )
        self.deadline_warnings = Counter(
            "hotline_deadline_warnings", "Deadline warnings raised", ["deadline"], registry=r
        )
        self.deadline_breaches = Counter(
            "hotline_deadline_breaches", "Deadline breaches (SLA)", ["deadline"], registry=r
        )
        self.by_status = Gauge(
            "hotline_tickets_by_status", "Tickets by current status", ["status"], registry=r
        )
        self.overdue = Gauge("hotline_tickets_overdue", "Tickets past a deadline", registry=r)
        # the rates a 12345 centre is judged by, over the tickets received in the last 30
        # local days (the same figures as GET /api/v1/reports/performance); NaN while
        # there is nothing to rate
        self.rates = {
            name: Gauge(f"hotline_{name}_ratio_30d", help_text, registry=r)
            for name, help_text in (
                ("dispatch_on_time", "Dispatched within the dispatch deadline, last 30 days"),
                ("on_time_completion", "Completed within the feedback deadline (按时办结率)"),
                ("satisfaction", "Follow-ups satisfied or basically satisfied (满意率)"),
            )
        }
        self.latency = Histogram(
            "hotline_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self._refreshed = 0.0
        self._rates_refreshed = -RATES_CACHE_S
        # `labels()` validates and hashes its arguments under a lock on every call; the
        # children never change, so look each combination up once.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= MAX_CACHED_CHILDREN:
                self._children.clear()
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, ev: DomainEvent) -> None:
        if isinstance(ev, TicketCreated):
            self._child(self.created, ev.channel, ev.kind).inc()
        elif isinstance(ev, TicketTransitioned):
            self._child(self.transitions, ev.action, ev.to_status).inc()
        elif isinstance(ev, DeadlineWarning):
            self._child(self.deadline_warnings, ev.deadline).inc()
        elif isinstance(ev, DeadlineBreached):
            self._child(self.deadline_breaches, ev.deadline).inc()

    async def render(self, deps: Deps) -> bytes:
        if time.monotonic() - self._refreshed > SCRAPE_CACHE_S:
            async with deps.db.read() as conn:
                counts = dict(
                    (
                        await conn.execute(
                            sa.select(ticket_t.c.status, sa.func.count()).group_by(
                                ticket_t.c.status
                            )
                        )
                    ).all()
                )
                overdue = (
                    await conn.execute(
                        sa.select(sa.func.count())
                        .select_from(ticket_t)
                        .where(overdue_clause(deps.clock()))
                    )
                ).scalar_one()
            for status in Status:
                self.by_status.labels(status.value).set(counts.get(status.value, 0))
            self.overdue.set(overdue)
            self._refreshed = time.monotonic()
        if time.monotonic() - self._rates_refreshed > RATES_CACHE_S:
            # taken before the query: scrapes meanwhile read the last values, not re-run it
            self._rates_refreshed = time.monotonic()
            today = deps.clock().astimezone(deps.tz).date()
            period = Period(today - timedelta(days=RATES_DAYS - 1), today, deps.tz)
            try:
                figures = (await performance(deps, period, None, CENTRE)).total.view()
            except BaseException:
                self._rates_refreshed = -RATES_CACHE_S
                raise
            for name, gauge in self.rates.items():
                value = figures[f"{name}_rate"]
                gauge.set(math.nan if value is None else value)
        return generate_latest(self.registry)

    def middleware(self) -> Any:
        @web.middleware
        async def timing(request: web.Request, handler: Any) -> web.StreamResponse:
            start = time.perf_counter()
            status = 500
            try:
                resp = await handler(request)
                status = resp.status
                return resp
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                info = request.match_info.route.resource
                route = info.canonical if info is not None else "unmatched"
                self._child(self.latency, request.method, route, str(status)).observe(
                    time.perf_counter() - start
                )

        return timing
