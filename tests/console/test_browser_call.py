"""A phone call through the console, the switch being the FreeSWITCH simulator.

The whole service runs with its event-socket link to the simulator on loopback (the
phone line's own test rig): a caller dials 12345, the ACD rings the agent who went
available in the console, the call panel shows the caller (masked) and their open
tickets before anyone speaks, the agent answers with the console's button, presses
119 and confirms, and the simulator holds the three-way conference of caller, agent
and the fire centre: the attended hand-off, as FreeSWITCH would have it.
"""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from hotline.calls.models import EmergencyHandoff
from hotline.telephony.simulator import AgentPhone
from tests.console.browser_kit import login
from tests.hotline.acd.phone_rig import eventually, phone_rig

handoff_t = EmergencyHandoff.__table__  # type: ignore[attr-defined]
CALLER = "13800138000"


@pytest.fixture
async def rig(aiohttp_client, tmp_path, sqlite_url):  # type: ignore[no-untyped-def]
    phones = [
        # rings until the console answers (then the ACD rings it again with auto-answer)
        AgentPhone("1001", answer_after=10_000.0),
        AgentPhone("119", answer_after=0.5),  # the fire centre picks up
    ]
    async with phone_rig(
        aiohttp_client,
        tmp_path,
        sqlite_url,
        agents=phones,
        time_scale=1.0,  # real time: a person's browser is watching
        acd_ring_timeout_s=60,
    ) as r:
        r.api.base = str(r.api.client.make_url("")).rstrip("/")
        yield r


async def test_a_call_rings_the_agent_who_answers_and_hands_it_to_119(browser, rig, tmp_path):
    api = rig.api
    t = await api.post(
        "/api/v1/tickets",
        {
            "kind": "complaint",
            "title": "楼道灯不亮",
            "description": "三单元楼道灯坏了",
            "channel": "phone",
            "contact": {"name": "王女士", "phone": "+86" + CALLER},
        },
    )
    assert t.status == 201, await t.text()
    earlier = (await t.json())["number"]

    page = await login(browser, api, "agent")
    page.on("dialog", lambda d: asyncio.ensure_future(d.accept("1001")))  # first sign-in
    await page.select_option("#agent-state", "available")
    await eventually(lambda: rig.agent_state("agent") == "available", what="agent available")

    caller = await rig.call(caller_number=CALLER)
    await page.wait_for_selector("#call-status:text('振铃中')", timeout=10_000)
    await page.wait_for_selector("#call-info li button", timeout=3000)  # the screen pop
    info = await page.inner_text("#call-info")
    assert "138****8000" in info and CALLER not in info  # masked, never the number
    assert earlier in info and "楼道灯不亮" in info  # the caller's open ticket
    assert await page.is_enabled("#call-panel button[data-call='answer']")
    assert await page.is_disabled("#call-panel button[data-line='119']")
    await page.screenshot(path=str(tmp_path / "call-ringing.png"), full_page=True)

    rig.sim.agents["1001"].answer_after = 0.2  # its SIP phone auto-answers on the click
    await page.click("#call-panel button[data-call='answer']")
    await page.wait_for_selector("#call-status:text('通话中')", timeout=10_000)
    live = rig.acd.calls[caller.uuid]
    assert live.agent == "agent" and live.agent_leg is not None
    agent_leg = live.agent_leg
    assert caller.partner is not None and caller.partner.uuid == agent_leg

    await page.click("#call-panel button[data-line='119']")
    await page.wait_for_selector("#confirm:not([hidden])")
    assert "119" in await page.inner_text("#confirm-text")
    assert await page.evaluate("document.activeElement.textContent") == "取消"  # safe default
    await page.click("#confirm-yes")
    room = f"emergency-119-{caller.uuid}"

    def conferenced() -> bool:
        return len(rig.sim.rooms.get(room, ())) == 3

    await eventually(conferenced, limit_s=10, what="the three-way conference")
    fire = next(ch for ch in rig.sim.channels.values() if ch.destination == "user/119")
    # the switch holds caller, agent and the fire centre in one room: attended, three-way
    assert rig.sim.rooms[room] == {caller.uuid, agent_leg, fire.uuid}
    assert rig.sim.agents["119"].answered == 1
    await page.wait_for_selector("#call-status:text('三方通话中')", timeout=5000)
    async with rig.deps.db.read() as conn:
        handoff = (
            await conn.execute(sa.select(handoff_t).where(handoff_t.c.call_uuid == caller.uuid))
        ).one()
    assert (handoff.line, handoff.outcome, handoff.agent) == ("119", "connected", "agent")
    await page.screenshot(path=str(tmp_path / "call-emergency.png"), full_page=True)

    # the supervisor's wall counts the hand-off and the answered call, from the records
    r = await api.get("/api/v1/console/wall", as_="supervisor")
    phone = (await r.json())["phone"]
    assert phone["emergency_handoffs_today"] == 1
    assert phone["answered_today"] == 1
    rig.sim.hangup(caller)
    assert page.errors == []
