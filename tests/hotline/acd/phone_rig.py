"""Test rig: the whole service wired to FreeSWITCH's event socket, FreeSWITCH being the
simulator on loopback (our outbound server for callers, our inbound client for the
agents' phones), so calls go through the real protocol end to end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from hotline.acd.esl_switch import MUSIC_ON_HOLD
from hotline.acd.service import AcdService
from hotline.acd.wiring import PhoneLine
from hotline.app import create_app
from hotline.appkeys import DEPS, PHONE_LINE
from hotline.bootstrap import build_deps
from hotline.telephony.simulator import AgentPhone, CallerScript, FreeSwitchSimulator, SimChannel
from tests.conftest import Api, _seed, make_settings

SCALE = 0.02  # one simulated second is 20 ms
EMERGENCY_DIAL = "110=user/110,119=user/119,120=user/120,122=user/122"


async def eventually(cond: Callable[[], Any], limit_s: float = 5.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.01)


class PhoneRig:
    def __init__(self, sim: FreeSwitchSimulator, api: Api, line: PhoneLine) -> None:
        self.sim = sim
        self.api = api
        self.line = line

    @property
    def acd(self) -> AcdService:
        return self.line.service

    @property
    def deps(self) -> Any:
        return self.api.app[DEPS]

    async def login(self, username: str, extension: str, skills: Iterable[str] = ()) -> None:
        await self.acd.login(username, extension, list(skills))

    async def call(self, **script: Any) -> SimChannel:
        return await self.sim.place_call(CallerScript(**script))

    def sim_seconds(self, real_s: float) -> float:
        return real_s / self.sim.time_scale

    async def api_card(self, make: Callable[..., Any], *args: Any) -> Any:
        """Run a citizen-card test helper that takes the `api` fixture."""
        return await make(self.api, *args)

    def agent_state(self, username: str) -> str:
        return self.acd.agent_view(username)["state"]


@contextlib.asynccontextmanager
async def phone_rig(
    aiohttp_client: Any,
    tmp_path: Any,
    db_url: str,
    *,
    agents: Iterable[AgentPhone] = (),
    time_scale: float = SCALE,
    **overrides: Any,
) -> AsyncIterator[PhoneRig]:
    sim = FreeSwitchSimulator(time_scale=time_scale, playback_seconds=1.0, agents=agents)
    sim.media_seconds[MUSIC_ON_HOLD] = 3600.0
    await sim.start()
    values: dict[str, Any] = {
        "esl_host": "127.0.0.1",
        "esl_port": sim.port,
        "esl_listen": "127.0.0.1:0",
        "emergency_dial": EMERGENCY_DIAL,
        "emergency_answer_timeout_s": 5,
        "acd_ring_timeout_s": 5,
        "acd_wrap_up_s": 0.05,
        "ivr_survey": False,
        **overrides,
    }
    settings = make_settings(tmp_path, db_url, **values)
    deps = build_deps(settings)
    await deps.db.create_all()
    app = create_app(settings, deps=deps, migrate=False, watch_deadlines=False)
    client = await aiohttp_client(app)
    await _seed(deps)
    line = app[PHONE_LINE]
    assert line.esl is not None
    esl = line.esl
    await eventually(lambda: esl.inbound.connected and esl.listening, what="ESL up")
    sim.socket_target = (esl.server.host, esl.server.port)
    rig = PhoneRig(sim, Api(client, app), line)
    try:
        yield rig
    finally:
        # callers hang up and the service finishes its bookkeeping before it stops,
        # so no store write is cut off halfway by the shutdown
        for ch in list(sim.channels.values()):
            sim.hangup(ch, "NORMAL_CLEARING")
        with contextlib.suppress(AssertionError):
            await eventually(lambda: not rig.acd.calls and not esl.server.legs, 5.0)
        await client.close()
        await sim.stop()
