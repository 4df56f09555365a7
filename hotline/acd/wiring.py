"""Builds the phone line's parts from settings: ACD, emergency desk, routes, tasks.

`hotline/app.py` calls `build_phone_line` and appends its cleanup context. The
switch is given (tests with the in-memory switch) or is FreeSWITCH over the event
socket (`hotline.phone.EslLine`: our outbound server for callers, the inbound
client for everything else); `--demo` points that same line at the in-process
simulator. With `HOTLINE_ESL_HOST` empty there is no switch: agents can log in and
the API answers, but no call can arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

import ivr
from citizen_card.ledger import Ed25519Signer
from citizen_card.service import CardDeps
from hotline.acd.domain import Rules, Strategy
from hotline.acd.routes import acd_routes
from hotline.acd.service import AcdConfig, AcdService
from hotline.acd.switch import Switch, SwitchError
from hotline.calls import store
from hotline.emergency import EmergencyDesk, build_lines
from hotline.metrics import Metrics
from hotline.phone import EslLine, build_call_entry
from hotline.phone.demo import demo_simulator, demo_traffic
from hotline.settings import Settings
from ticketing.handlers import Deps
from ticketing.store import log_pass_failure
from ticketing.webkit import RouteSpec

log = logging.getLogger(__name__)


def acd_config(settings: Settings) -> AcdConfig:
    rules = Rules(
        strategy=Strategy(settings.acd_strategy),
        ring_timeout_s=settings.acd_ring_timeout_s,
        missed_ring_limit=settings.acd_missed_ring_limit,
        wrap_up_s=settings.acd_wrap_up_s,
        max_wait_s=settings.acd_max_wait_s,
        queue_capacity=settings.acd_queue_capacity,
        service_level_s=settings.acd_service_level_s,
        chat_weight=settings.acd_chat_weight,
        max_load=settings.acd_max_load,
    )
    return AcdConfig(
        rules=rules,
        announce_every_s=settings.acd_announce_every_s,
        callback_due_s=settings.acd_callback_due_s,
        recording_dir=settings.recording_dir.resolve() if settings.record_calls else None,
        dial_template=settings.acd_dial_template,
        prompt_dir=Path(ivr.__file__).resolve().parent / "prompts",
        language=settings.prompt_language,
    )


@dataclass
class PhoneLine:
    service: AcdService
    desk: EmergencyDesk
    switch: Switch
    routes: list[RouteSpec]
    settings: Settings
    demo: bool = False
    esl: EslLine | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    simulator: Any = None  # the demo's FreeSwitchSimulator

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        await self.service.start()
        if self.esl is not None:
            await self._start_esl()
        self.tasks.append(asyncio.create_task(self.desk.run_outbox(), name="emergency-outbox"))
        self.tasks.append(
            asyncio.create_task(
                recording_cleanup(
                    self.service.deps,
                    self.settings.recording_dir,
                    self.settings.recording_retention_days,
                ),
                name="recording-cleanup",
            )
        )
        yield
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.simulator is not None:
            # the simulated callers hang up first, so the ACD records their calls as
            # ended instead of being cut off in the middle of writing them
            for ch in list(self.simulator.channels.values()):
                self.simulator.hangup(ch, "SYSTEM_SHUTDOWN")
            for _ in range(60):
                if not self.service.calls:
                    break
                await asyncio.sleep(0.05)
            await self.simulator.stop()
        if self.esl is not None:
            await self.esl.stop()
        await self.service.stop()

    async def _start_esl(self) -> None:
        assert self.esl is not None
        if self.demo:  # the simulated FreeSWITCH takes the real one's place, in-process
            self.simulator = sim = demo_simulator(self.settings.esl_password)
            await sim.start()
            self.esl.inbound.host, self.esl.inbound.port = sim.host, sim.port
        await self.esl.start()
        if self.simulator is not None:
            sim = self.simulator
            await self.esl.wait_listening()
            sim.socket_target = (self.esl.server.host, self.esl.server.port)
            self.tasks.append(
                asyncio.create_task(demo_traffic(self.service, sim), name="demo-traffic")
            )


def build_phone_line(
    settings: Settings,
    deps: Deps,
    service_key: Any,
    metrics: Metrics,
    *,
    switch: Switch | None = None,
    demo: bool = False,
    card_deps: CardDeps | None = None,
) -> PhoneLine:
    esl: EslLine | None = None
    if switch is None:
        if settings.esl_host or demo:
            esl = EslLine(settings)
            switch = esl.switch
        else:
            switch = UnreachableSwitch()
    config = acd_config(settings)
    service = AcdService(deps, switch, config, registry=metrics.registry)
    assert service.metrics is not None
    desk = EmergencyDesk(
        deps,
        switch,
        build_lines(
            settings.emergency_dial, settings.emergency_alternate, settings.emergency_endpoints
        ),
        Ed25519Signer(service_key, key_id=f"{settings.city_code.lower()}-service"),
        acd=service,
        answer_timeout_s=settings.emergency_answer_timeout_s,
        metrics=service.metrics,
        city_code=settings.city_code,
    )
    service.emergency = desk
    if esl is not None:
        esl.attach(
            build_call_entry(
                settings, deps, card_deps, service, desk, esl, registry=metrics.registry
            )
        )
        metrics.registry.register(LinkStateCollector(esl))
    return PhoneLine(service, desk, switch, acd_routes(service), settings, demo, esl)


LINK_STATES = ("connected", "connecting", "access_denied", "auth_failed")


class LinkStateCollector(Collector):
    """`hotline_esl_link_state{state}`: 1 for the event socket link's state now, and the
    link's trouble counters (`hotline_esl_*_total`), read at scrape time. Alert on
    `access_denied` or `auth_failed`: FreeSWITCH refuses us (its ACL, our password) and
    only an operator can fix it; the line retries meanwhile."""

    def __init__(self, esl: EslLine) -> None:
        self.esl = esl

    def collect(self) -> Any:
        state = self.esl.inbound.state
        family = GaugeMetricFamily(
            "hotline_esl_link_state",
            "FreeSWITCH event socket link: 1 for its current state",
            labels=["state"],
        )
        for name in LINK_STATES:
            family.add_metric([name], 1.0 if state == name else 0.0)
        yield family
        inbound, server = self.esl.inbound, self.esl.server
        for name, help_text, value in (
            (
                "hotline_esl_command_timeouts",
                "Replies FreeSWITCH never sent in time (each dropped the inbound link)",
                inbound.commands_timed_out,
            ),
            (
                "hotline_esl_job_timeouts",
                "bgapi jobs whose result did not come in time",
                inbound.jobs_timed_out,
            ),
            (
                "hotline_esl_late_job_results",
                "bgapi results that came after their job was given up",
                inbound.late_job_results,
            ),
            (
                "hotline_esl_calls_lost",
                "Call sockets dropped because a reply never came",
                server.calls_lost,
            ),
        ):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], float(value))
            yield counter


class UnreachableSwitch:
    """Stands in until the ESL client is wired: every command fails as FreeSWITCH being
    down would, so agents can log in and the API answers while no call can arrive."""

    async def _down(self, *_: Any, **__: Any) -> Any:
        raise SwitchError("no switch connected")

    ring = bridge = play = music_on_hold = stop_media = hold = unhold = _down
    transfer = conference = end_conference = record = read_digit = _down

    async def hangup(self, uuid: str, cause: str = "NORMAL_CLEARING") -> None:
        return None

    async def wait_hangup(self, uuid: str) -> str:
        return "NO_SWITCH"


async def recording_cleanup(
    deps: Deps, directory: Path, retention_days: int, every_s: float = 3600.0
) -> None:
    """Delete recordings past retention (files, then the paths on their calls)."""
    while True:
        try:
            await cleanup_recordings_once(deps, directory, retention_days)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log_pass_failure(log, exc, "recording cleanup failed; retrying in an hour")
        await asyncio.sleep(every_s)


async def cleanup_recordings_once(deps: Deps, directory: Path, retention_days: int) -> int:
    cutoff = deps.clock() - timedelta(days=retention_days)
    paths = await store.clear_old_recordings(deps, cutoff)

    def remove() -> int:
        root = directory.resolve()
        removed = 0
        for p in paths:
            path = Path(p).resolve()
            if root not in path.parents:  # only ever delete inside our own directory
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        # files whose rows are gone (or never written) age out by their own time
        if root.is_dir():
            limit = time.time() - retention_days * 86400
            for f in root.rglob("*.wav"):
                with contextlib.suppress(OSError):
                    if f.stat().st_mtime < limit:
                        f.unlink()
                        removed += 1
        return removed

    return await asyncio.to_thread(remove)
