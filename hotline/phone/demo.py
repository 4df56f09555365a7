"""`serve --demo`: a simulated FreeSWITCH in-process, agents' phones and a trickle of callers.

Calls flow through the real protocol: the simulator connects each caller to our
outbound socket server and answers our inbound client's `originate` to the agents'
simulated phones, so a newcomer watches the queue, the API and `/metrics` move as
they would on a real switch. Never started when a real switch is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

from hotline.acd.esl_switch import MUSIC_ON_HOLD
from hotline.acd.service import AcdService
from hotline.telephony.simulator import AgentPhone, CallerScript, FreeSwitchSimulator

log = logging.getLogger(__name__)

DEMO_CARD_NUMBER = "12345-2"


def demo_simulator(password: str, *, time_scale: float = 1.0) -> FreeSwitchSimulator:
    sim = FreeSwitchSimulator(password=password, time_scale=time_scale, playback_seconds=2.0)
    sim.media_seconds[MUSIC_ON_HOLD] = 3600.0  # a local stream never ends on its own
    return sim


async def demo_traffic(
    service: AcdService,
    sim: FreeSwitchSimulator,
    *,
    agents: int = 4,
    mean_gap_s: float = 10.0,
    card_number: str = DEMO_CARD_NUMBER,
    seed: int = 12345,
) -> None:
    """Agents log in with simulated phones; callers keep arriving until cancelled."""
    rng = random.Random(seed)
    for i in range(agents):
        ext = str(1001 + i)
        sim.add_agent(
            AgentPhone(
                ext,
                answer_after=rng.uniform(1, 4),
                talk_time=rng.uniform(8, 25),
                behaviour="no_answer" if i == agents - 1 else "answer",  # one sleepy agent
            )
        )
        with contextlib.suppress(Exception):
            await service.login(f"demo-agent-{i + 1}", ext, ["citizen_card"] if i % 2 else [])
    pending: set[asyncio.Task[Any]] = set()
    try:
        while True:
            await asyncio.sleep(rng.expovariate(1 / mean_gap_s))
            task = asyncio.create_task(sim.place_call(_caller(rng, card_number)))
            pending.add(task)
            task.add_done_callback(pending.discard)
    finally:
        for t in pending:
            t.cancel()


def _caller(rng: random.Random, card_number: str) -> CallerScript:
    number = f"139{rng.randrange(10**8):08d}"
    roll = rng.random()
    if roll < 0.2:  # the card-service line: balance (an unknown card), then an agent
        return CallerScript(
            caller_number=number,
            destination=card_number,
            presses=["1", f"{rng.randrange(10**15):016d}#", "135790#", "0", "1"],
            hangup_after=rng.uniform(60, 180),
        )
    if roll < 0.35:  # gives up while waiting
        return CallerScript(caller_number=number, hangup_after=rng.uniform(4, 25))
    # the 12345 line: no menu; answers the survey after the agent hangs up
    return CallerScript(
        caller_number=number, presses=[rng.choice("1112")], hangup_after=rng.uniform(90, 240)
    )
