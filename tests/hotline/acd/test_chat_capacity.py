"""Calls and chats share people: the unified queue does not hand an agent on a call
more conversations than their load allows (call 1.0, chat HOTLINE_ACD_CHAT_WEIGHT,
at most HOTLINE_ACD_MAX_LOAD), while text-only agents are not limited by the line."""

from __future__ import annotations

import asyncio

from channels import HUB
from hotline.appkeys import PHONE_LINE
from tests.channels.helpers import text
from tests.hotline.acd.acd_rig import eventually
from tests.hotline.acd.test_acd_api import phone_api  # noqa: F401  (fixture)


async def claim(api, who: str = "agent"):  # type: ignore[no-untyped-def]
    r = await api.post("/api/v1/queue/claim", {}, as_=who)
    assert r.status in (200, 204), await r.text()
    return (await r.json()) if r.status == 200 else None


async def test_an_agent_on_a_call_gets_chats_only_up_to_the_load(phone_api) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    api, switch = phone_api, phone_api.switch
    hub = api.app[HUB]
    for i in range(4):  # four residents waiting on WeChat
        await hub.receive(text(f"路灯坏了 {i}", sender=f"openid-{i}"))
    r = await api.post("/api/v1/agents/me/login", {"extension": "1001"})
    assert r.status == 200, await r.text()
    switch.phone("user/1001")
    service = api.app[PHONE_LINE].service
    uuid = switch.new_call("+8613800138000")
    task = asyncio.ensure_future(service.handle_call(uuid, "+8613800138000"))
    await eventually(lambda: uuid in service.calls and service.acd.agents["agent"].call == uuid)

    # defaults: weight 0.25, max load 1.5 -> a call and two chats
    got = [await claim(api) for _ in range(3)]
    assert [g["kind"] if g else None for g in got] == ["conversation", "conversation", None]

    # a text-only agent (not on the phone line) is not limited by it
    assert (await claim(api, "agent2"))["kind"] == "conversation"

    r = await api.post(f"/api/v1/calls/{uuid}/hangup")
    assert r.status == 200
    await asyncio.wait_for(task, 2)
    await eventually(lambda: service.acd.agents["agent"].call is None)
    # off the call (wrap-up, then available): two chats held, room for more
    assert (await claim(api))["kind"] == "conversation"
