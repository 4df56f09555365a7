"""Test rig: an ACD service on a real store with the in-memory switch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from hotline.acd.domain import Rules
from hotline.acd.memory_switch import MemorySwitch
from hotline.acd.service import AcdConfig, AcdService
from hotline.bootstrap import build_deps
from tests.conftest import make_settings
from ticketing.events import DomainEvent
from ticketing.intake import Intake, NewTicket
from ticketing.lifecycle import Role
from ticketing.ports import Principal
from ticketing.store import StoreUnavailable

CALLER = "+8613800138000"


async def eventually(cond: Callable[[], Any], limit_s: float = 10.0, what: str = "") -> None:
    """Poll a condition the ACD reaches asynchronously (calls are concurrent by nature);
    the limit is for a loaded CI machine: a condition that holds returns at once."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _refused(*_a: Any, **_kw: Any) -> AsyncIterator[Any]:
    raise StoreUnavailable("connection refused")
    yield  # pragma: no cover


def store_down(deps: Any) -> None:
    """The database out of reach for this process: every transaction refused."""
    deps.db.write = deps.db.read = _refused


def store_up(deps: Any) -> None:
    del deps.db.write, deps.db.read


async def new_ticket(deps: Any, caller: str = CALLER) -> str:
    """A ticket to hand calls to (through the intake, as the API makes them)."""
    intake = Intake(deps)
    await intake.start()
    try:
        view = await intake.create(
            NewTicket(
                "request",
                "家中起火",
                "居民报告厨房起火",
                "phone",
                Principal("li", Role.AGENT),
                contact_phone=caller,
            )
        )
    finally:
        await intake.stop()
    return str(view["number"])


FAST = Rules(
    ring_timeout_s=0.2,
    wrap_up_s=0.05,
    max_wait_s=60,
    missed_ring_limit=2,
    service_level_s=15,
)


class Rig:
    def __init__(self, deps: Any, switch: MemorySwitch, acd: AcdService) -> None:
        self.deps = deps
        self.switch = switch
        self.acd = acd
        self.events: list[DomainEvent] = []

    def named(self, name: str) -> list[DomainEvent]:
        return [e for e in self.events if e.name == name]

    def call(self, caller: str = "+8613800138000", **kw: Any) -> tuple[str, asyncio.Task[str]]:
        uuid = self.switch.new_call(caller, kw.pop("digits", ()))
        task = asyncio.ensure_future(self.acd.handle_call(uuid, caller, **kw))
        return uuid, task


@contextlib.asynccontextmanager
async def make_rig(
    tmp_path: Any, db_url: str, rules: Rules = FAST, **config: Any
) -> AsyncIterator[Rig]:
    deps = build_deps(make_settings(tmp_path, db_url))
    await deps.db.create_all()
    await deps.bus.start()
    switch = MemorySwitch()
    cfg = AcdConfig(rules=rules, tick_s=0.02, ring_cycle_s=0.01, **config)
    acd = AcdService(deps, switch, cfg, registry=CollectorRegistry())
    rig = Rig(deps, switch, acd)

    async def collect(e: DomainEvent) -> None:
        rig.events.append(e)

    deps.bus.subscribe(collect)
    await acd.start()
    try:
        yield rig
    finally:
        await acd.stop()
        await deps.bus.stop()
        await deps.db.dispose()
