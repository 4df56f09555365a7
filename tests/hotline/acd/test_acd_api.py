"""Agent control over HTTP: log in, take a call, hold, hand to 119, supervise, KPIs."""

from __future__ import annotations

import asyncio

import pytest

from hotline.acd.memory_switch import MemorySwitch
from hotline.appkeys import DEPS, PHONE_LINE
from tests.conftest import Api, _seed, make_settings
from tests.hotline.acd.acd_rig import eventually


@pytest.fixture
async def phone_api(aiohttp_client, db_url, tmp_path):  # type: ignore[no-untyped-def]
    from hotline.app import create_app
    from hotline.bootstrap import build_deps

    settings = make_settings(
        tmp_path,
        db_url,
        recording_dir=tmp_path / "rec",
        acd_ring_timeout_s=0.3,
        acd_wrap_up_s=0.05,
        emergency_answer_timeout_s=0.2,
    )
    deps = build_deps(settings)
    await deps.db.create_all()
    switch = MemorySwitch()
    app = create_app(settings, deps=deps, migrate=False, watch_deadlines=False, phone_switch=switch)
    client = await aiohttp_client(app)
    await _seed(app[DEPS])
    api = Api(client, app)
    api.switch = switch  # type: ignore[attr-defined]
    return api


async def test_agent_logs_in_takes_a_call_and_supervisor_sees_it(phone_api) -> None:  # type: ignore[no-untyped-def]
    api, switch = phone_api, phone_api.switch
    r = await api.get("/api/v1/agents/me")
    assert (await r.json())["state"] == "logged_out"
    r = await api.post("/api/v1/agents/me/login", {"extension": "1001", "skills": ["card"]})
    assert r.status == 200, await r.text()
    body = await r.json()
    assert (body["state"], body["dial_string"], body["skills"]) == (
        "available",
        "user/1001",
        ["card"],
    )
    switch.phone("user/1001")
    service = api.app[PHONE_LINE].service
    uuid = switch.new_call("+8613800138000")
    task = asyncio.ensure_future(service.handle_call(uuid, "+8613800138000"))
    await eventually(lambda: uuid in service.calls and service.calls[uuid].recording)
    r = await api.get("/api/v1/calls")
    [call] = (await r.json())["calls"]
    assert (call["uuid"], call["state"], call["agent"], call["caller"]) == (
        uuid,
        "talking",
        "agent",
        "138****8000",
    )
    assert call["recording"].endswith(f"{uuid}.wav")
    r = await api.post(f"/api/v1/calls/{uuid}/hold")
    assert (await r.json())["state"] == "held"
    r = await api.post(f"/api/v1/calls/{uuid}/hold", as_="agent2")
    assert r.status == 403
    assert (await r.json())["type"] == "/problems/forbidden"
    r = await api.post(f"/api/v1/calls/{uuid}/unhold")
    assert (await r.json())["state"] == "talking"
    r = await api.get("/api/v1/agents", as_="supervisor")
    [agent] = (await r.json())["agents"]
    assert (agent["username"], agent["state"], agent["call_uuid"]) == ("agent", "on_call", uuid)
    r = await api.get("/api/v1/agents", as_="agent")
    assert r.status == 403
    r = await api.post(f"/api/v1/calls/{uuid}/hangup")
    assert r.status == 200
    assert await asyncio.wait_for(task, 2) == "completed"
    r = await api.get(f"/api/v1/calls/{uuid}")
    detail = await r.json()
    assert detail["state"] == "ended"
    assert [e["kind"] for e in detail["events"]] == [
        "queued",
        "offered",
        "answered",
        "held",
        "talking",
        "ended",
    ]
    r = await api.get("/api/v1/acd/kpis", as_="supervisor")
    k = await r.json()
    assert (k["offered"], k["answered"], k["abandoned"], k["service_level"]) == (1, 1, 0, 1.0)
    r = await api.get("/metrics", as_=None)
    text = await r.text()
    assert "hotline_calls_answered_total 1.0" in text
    assert "hotline_calls_offered_total 1.0" in text


async def test_state_changes_and_refusals(phone_api) -> None:  # type: ignore[no-untyped-def]
    api = phone_api
    r = await api.client.put(
        "/api/v1/agents/me/state",
        json={"state": "break"},
        headers=await api.headers("agent"),
    )
    assert r.status == 409  # not logged in to the queue
    await api.post("/api/v1/agents/me/login", {"extension": "1001"})
    r = await api.client.put(
        "/api/v1/agents/me/state",
        json={"state": "break", "reason": "lunch"},
        headers=await api.headers("agent"),
    )
    body = await r.json()
    assert (r.status, body["state"], body["reason"]) == (200, "break", "lunch")
    r = await api.client.put(
        "/api/v1/agents/me/state",
        json={"state": "on_call"},
        headers=await api.headers("agent"),
    )
    assert r.status == 422  # the ACD's state, not the agent's
    r = await api.post("/api/v1/agents/me/login", {"extension": "1001; rm -rf"}, as_="agent2")
    assert r.status == 400
    assert (await r.json())["type"] == "/problems/invalid-request"
    r = await api.post("/api/v1/calls/nope/hangup")
    assert r.status == 404
    r = await api.post("/api/v1/calls/nope/transfer", {"mode": "sideways"})
    assert r.status == 422
    r = await api.post("/api/v1/agents/me/logout")
    assert (await r.json())["state"] == "logged_out"
    api.client.session.cookie_jar.clear()  # the login above left a session cookie
    r = await api.get("/api/v1/calls", as_=None)
    assert r.status == 401


async def _talking_with_ticket(api, line: str):  # type: ignore[no-untyped-def]
    """An agent logged in and talking to a caller whose call has a ticket; the
    emergency line `line` answers when rung. Returns (uuid, the call's task, ticket)."""
    switch = api.switch
    await api.post("/api/v1/agents/me/login", {"extension": "1001"})
    switch.phone("user/1001")
    switch.phone(f"sofia/gateway/pstn/{line}")
    service = api.app[PHONE_LINE].service
    uuid = switch.new_call("+8613800138000")
    task = asyncio.ensure_future(service.handle_call(uuid, "+8613800138000"))
    await eventually(lambda: uuid in service.calls and service.calls[uuid].state == "talking")
    ticket = await api.new_ticket(contact={"phone": "13800138000"})
    r = await api.post(f"/api/v1/calls/{uuid}/ticket", {"ticket": ticket["number"]})
    assert r.status == 200, await r.text()
    return uuid, task, ticket


async def test_emergency_button_hands_the_call_to_110(phone_api) -> None:  # type: ignore[no-untyped-def]
    api, switch = phone_api, phone_api.switch
    uuid, task, ticket = await _talking_with_ticket(api, "110")
    r = await api.post(
        f"/api/v1/calls/{uuid}/emergency",
        {"line": "110", "summary": "有人持刀", "location": "南门"},
    )
    assert r.status == 200, await r.text()
    body = await r.json()
    assert (body["line"], body["outcome"], body["ticket"]) == ("110", "connected", ticket["number"])
    r = await api.get(f"/api/v1/tickets/{ticket['number']}/events")
    actions = [e["action"] for e in (await r.json())["items"]]
    assert "call_attached" in actions and "emergency_handoff" in actions
    r = await api.post(f"/api/v1/calls/{uuid}/emergency", {"line": "999"})
    assert r.status == 422
    await switch.hangup(uuid)
    assert await asyncio.wait_for(task, 2) == "completed"


async def test_emergency_button_works_with_the_database_down(phone_api) -> None:  # type: ignore[no-untyped-def]
    """The caller is put through and the API answers 200; the records follow."""
    from hotline.calls import store
    from tests.hotline.acd.acd_rig import store_down, store_up

    api, switch = phone_api, phone_api.switch
    deps = api.app[DEPS]
    store._writer(deps).retry_s = (0.01, 0.05)
    service = api.app[PHONE_LINE].service
    uuid, task, ticket = await _talking_with_ticket(api, "119")

    store_down(deps)
    r = await api.post(f"/api/v1/calls/{uuid}/emergency", {"line": "119", "summary": "起火"})
    assert r.status == 200, await r.text()
    body = await r.json()
    assert (body["line"], body["outcome"], body["route"]) == ("119", "connected", "primary")
    assert (body["recorded"], body["deferred"], body["id"]) == (False, True, None)
    room = f"emergency-119-{uuid}"  # caller, agent and fire brigade joined
    assert switch.room_members(room) == {
        uuid,
        service.calls[uuid].agent_leg,
        switch.leg_of("sofia/gateway/pstn/119"),
    }

    store_up(deps)
    await eventually(lambda: store.deferred_call_steps(deps) == 0, what="the drain")
    [handoff] = await service.emergency.handoffs_for(uuid)
    assert (handoff["outcome"], handoff["ticket"]) == ("connected", ticket["number"])
    r = await api.get(f"/api/v1/tickets/{ticket['number']}/events")
    actions = [e["action"] for e in (await r.json())["items"]]
    assert actions.count("emergency_handoff") == 1
    await switch.hangup(uuid)
    assert await asyncio.wait_for(task, 2) == "completed"


async def test_callbacks_listed_and_closed(phone_api) -> None:  # type: ignore[no-untyped-def]
    from hotline.calls import store

    api = phone_api
    deps = api.app[DEPS]
    cb = await store.create_callback(
        deps, "+8613800138000", "ivr", deps.clock(), call_uuid=None, due_in_s=60
    )
    r = await api.get("/api/v1/callbacks")
    [item] = (await r.json())["callbacks"]
    assert (item["id"], item["caller"], item["status"]) == (cb, "138****8000", "open")
    r = await api.get("/api/v1/queue")
    assert any(i["kind"] == "callback" for i in (await r.json())["items"])
    r = await api.post(f"/api/v1/callbacks/{cb}/close", {"status": "done", "note": "ok"})
    assert (await r.json())["status"] == "done"
    r = await api.post(f"/api/v1/callbacks/{cb}/close", {"status": "done"})
    assert r.status == 409
