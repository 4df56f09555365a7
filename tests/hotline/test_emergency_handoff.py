"""Emergency hand-off: attended transfer into a three-way call, alternates, data push."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citizen_card.ledger import Ed25519Signer
from hotline.acd.domain import AgentState
from hotline.calls import store
from hotline.emergency import (
    EmergencyDesk,
    Line,
    UnknownLine,
    backoff_s,
    build_lines,
    handoff_t,
    notice_t,
    notice_verifier,
    parse_routes,
)
from tests.hotline.acd.acd_rig import eventually, make_rig, new_ticket, store_down, store_up
from ticketing.handlers import ticket_events
from ticketing.lifecycle import Role
from ticketing.ports import Principal

CALLER = "+8613912345678"
KEY = Ed25519PrivateKey.generate()


def desk_for(rig, **lines) -> EmergencyDesk:  # type: ignore[no-untyped-def]
    configured = {
        "110": Line("110", "sofia/gateway/pstn/110", "sofia/gateway/backup/110", None),
        "119": Line("119", "sofia/gateway/pstn/119", "sofia/gateway/backup/119", None),
        "122": Line("122", "sofia/gateway/pstn/122", None, None),
        **lines,
    }
    desk = EmergencyDesk(
        rig.deps,
        rig.switch,
        configured,
        Ed25519Signer(KEY, key_id="city-service"),
        acd=rig.acd,
        answer_timeout_s=0.2,
        metrics=rig.acd.metrics,
    )
    rig.acd.emergency = desk
    return desk


async def talking(rig) -> tuple[str, asyncio.Task[str], str]:  # type: ignore[no-untyped-def]
    rig.switch.phone("user/1001")
    await rig.acd.login("li", "1001")
    uuid, task = rig.call(CALLER)
    await eventually(lambda: rig.named("call.answered"))
    return uuid, task, rig.acd.calls[uuid].agent_leg


async def test_agent_hands_a_call_to_119_in_a_three_way_call(tmp_path, db_url) -> None:  # type: ignore[no-untyped-def]
    async with make_rig(tmp_path, db_url) as rig:
        await rig.deps.catalog.reload(rig.deps.db)
        desk = desk_for(rig)
        uuid, task, agent_leg = await talking(rig)
        number = await new_ticket(rig.deps, CALLER)
        await store.attach_ticket(rig.deps, uuid, number, Principal("li", Role.AGENT))
        rig.acd.calls[uuid].ticket = number
        rig.switch.phone("sofia/gateway/pstn/119", answer_after_s=0.02)
        result = await desk.hand_off(uuid, "119", agent="li", summary="kitchen fire")
        assert result["outcome"] == "connected" and result["route"] == "primary"
        em_leg = rig.switch.leg_of("sofia/gateway/pstn/119")
        room = f"emergency-119-{uuid}"
        assert rig.switch.room_members(room) == {uuid, agent_leg, em_leg}
        assert "emergency_notice" in rig.switch.channels[uuid].heard
        # the agent leaves; caller and fire brigade stay together
        await rig.switch.hangup(agent_leg)
        await eventually(lambda: rig.acd.acd.agents["li"].state is not AgentState.ON_CALL)
        assert rig.switch.room_members(room) == {uuid, em_leg}
        await rig.switch.hangup(uuid)
        assert await asyncio.wait_for(task, 2) == "completed"
        assert not rig.switch.up(em_leg)
        trail = await ticket_events(rig.deps, number, Principal("sup", Role.SUPERVISOR))
        entry = next(e for e in trail if e["action"] == "emergency_handoff")
        assert entry["data"]["line"] == "119" and entry["data"]["outcome"] == "connected"
        assert entry["data"]["agent"] == "li"
        [handed] = rig.named("emergency.handoff")
        assert (handed.line, handed.outcome, handed.ticket) == ("119", "connected", number)
        assert rig.named("emergency.alert") == []


async def test_primary_busy_tries_the_alternate_and_alerts_a_supervisor(
    tmp_path, sqlite_url
) -> None:  # type: ignore[no-untyped-def]
    async with make_rig(tmp_path, sqlite_url) as rig:
        desk = desk_for(rig)
        uuid, task, _ = await talking(rig)
        rig.switch.phone("sofia/gateway/pstn/110", "busy")
        rig.switch.phone("sofia/gateway/backup/110")
        result = await desk.hand_off(uuid, "110")
        assert (result["outcome"], result["route"]) == ("connected", "alternate")
        assert result["attempts"] == [("primary", "busy"), ("alternate", "answered")]
        [alert] = rig.named("emergency.alert")
        assert alert.line == "110" and "primary" in alert.reason and "busy" in alert.reason
        [h] = await desk.handoffs_for(uuid)
        assert h["route"] == "alternate" and h["agent"] == "li"
        await rig.switch.hangup(uuid)
        await task


async def test_no_route_answers_the_caller_stays_with_the_agent(tmp_path, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    async with make_rig(tmp_path, sqlite_url) as rig:
        desk = desk_for(rig)
        uuid, task, agent_leg = await talking(rig)
        rig.switch.phone("sofia/gateway/pstn/120", "no_answer")
        desk.lines["120"] = Line("120", "sofia/gateway/pstn/120", None, None)
        result = await desk.hand_off(uuid, "120")
        assert result["outcome"] == "failed"
        assert rig.switch.channels[uuid].peer == agent_leg  # back with the agent
        reasons = [a.reason for a in rig.named("emergency.alert")]
        assert reasons == ["primary route no_answer", "every route failed; caller kept"]
        await rig.switch.hangup(uuid)
        await task


async def test_an_emergency_never_waits_in_the_normal_queue(tmp_path, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    async with make_rig(tmp_path, sqlite_url) as rig:
        desk = desk_for(rig)
        uuid, task = rig.call(CALLER)  # nobody is logged in: the caller waits
        await eventually(lambda: rig.named("call.queued"))
        rig.switch.phone("sofia/gateway/pstn/110")
        result = await desk.hand_off(uuid, "110", summary="IVR key 0")
        assert result["outcome"] == "connected"
        assert uuid not in rig.acd.acd.queue
        em_leg = rig.switch.leg_of("sofia/gateway/pstn/110")
        assert rig.switch.channels[uuid].peer == em_leg
        await rig.switch.hangup(uuid)
        assert await task == "completed"
        assert not rig.switch.up(em_leg)
        row = await store.get_call(rig.deps, uuid)
        assert "emergency" in [e["kind"] for e in row["events"]]


async def test_ivr_hand_off_without_the_acd_bridges_caller_and_centre(tmp_path, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    async with make_rig(tmp_path, sqlite_url) as rig:
        desk = desk_for(rig)
        desk.acd = None
        uuid = rig.switch.new_call(CALLER)
        rig.switch.phone("sofia/gateway/pstn/122")
        result = await desk.hand_off(uuid, "122", caller=CALLER, location="G15 K32")
        assert result["outcome"] == "connected"
        em_leg = rig.switch.leg_of("sofia/gateway/pstn/122")
        assert rig.switch.channels[uuid].peer == em_leg
        await rig.switch.hangup(em_leg)
        await eventually(lambda: not rig.switch.up(uuid))


async def test_unknown_line_is_refused(tmp_path, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    async with make_rig(tmp_path, sqlite_url) as rig:
        with pytest.raises(UnknownLine):
            await desk_for(rig).hand_off("x", "999")


async def test_signed_notice_is_pushed_and_retried_until_delivered(
    tmp_path, sqlite_url, aiohttp_server
) -> None:  # type: ignore[no-untyped-def]
    received: list[tuple[bytes, dict]] = []
    fail_first = [True]

    async def centre(request: web.Request) -> web.Response:
        body = await request.read()
        if fail_first[0]:
            fail_first[0] = False
            return web.Response(status=503)
        received.append((body, dict(request.headers)))
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/notice", centre)
    server = await aiohttp_server(app)
    endpoint = str(server.make_url("/notice"))
    async with make_rig(tmp_path, sqlite_url) as rig:
        desk = desk_for(rig, **{"120": Line("120", "sofia/gateway/pstn/120", None, endpoint)})
        uuid, task, _ = await talking(rig)
        rig.switch.phone("sofia/gateway/pstn/120")
        await desk.hand_off(uuid, "120", summary="老人摔倒", location="幸福小区3号楼")
        async with rig.deps.db.read() as conn:
            [row] = (await conn.execute(sa.select(notice_t))).all()
        assert CALLER not in row.body and "老人" not in row.body  # encrypted at rest
        async with aiohttp.ClientSession() as session:
            assert await desk.send_due(session) == 0  # 503: kept, retried later
            async with rig.deps.db.read() as conn:
                [row] = (await conn.execute(sa.select(notice_t))).all()
            assert (row.attempts, row.delivered_at, row.last_error) == (1, None, "HTTP 503")
            assert await desk.send_due(session) == 0  # not due yet (backoff)
            async with rig.deps.db.write() as conn:
                await conn.execute(sa.update(notice_t).values(next_attempt_at=rig.deps.clock()))
            assert await desk.send_due(session) == 1
            assert await desk.send_due(session) == 0  # delivered once only
        [(body, headers)] = received
        notice = json.loads(body)
        assert notice["caller"] == CALLER and notice["line"] == "120"
        assert notice["summary"] == "老人摔倒" and notice["location"] == "幸福小区3号楼"
        assert notice["agent"] == "li" and notice["service"] == "ambulance"
        assert headers["X-Hotline-Key-Id"] == "city-service"
        verify = notice_verifier(KEY.public_key())
        assert verify(body, headers["X-Hotline-Signature"])
        assert not verify(body.replace(b"120", b"110"), headers["X-Hotline-Signature"])
        await rig.switch.hangup(uuid)
        await task


def test_routes_parse_and_reject_unknown_lines() -> None:
    lines = build_lines(
        "110=sofia/gateway/pstn/110,119=sofia/gateway/pstn/119",
        "110=sofia/gateway/b/110",
        "119=https://fire.example/notice",
    )
    assert lines["110"] == Line("110", "sofia/gateway/pstn/110", "sofia/gateway/b/110", None)
    assert lines["119"].endpoint == "https://fire.example/notice"
    assert "120" not in lines
    with pytest.raises(ValueError, match="999"):
        parse_routes("999=user/1")
    with pytest.raises(ValueError):
        parse_routes("110")


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff_s(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert backoff_s(30) == 300


# ---------------------------------------------------------------- with the database away
# The caller is put through whatever our store does; the records follow when it is back.


class Centre:
    """A fake emergency centre: counts the notices it is sent, by their id."""

    def __init__(self) -> None:
        self.by_id: collections.Counter[str] = collections.Counter()
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        notice = json.loads(body)
        self.by_id[notice["id"]] += 1
        self.bodies.append(notice)
        return web.Response(status=202)


async def _centre(aiohttp_server: Any) -> tuple[Centre, str]:
    centre = Centre()
    app = web.Application()
    app.router.add_post("/notice", centre.handle)
    server = await aiohttp_server(app)
    return centre, str(server.make_url("/notice"))


async def _records(rig: Any, uuid: str, number: str) -> dict[str, Any]:
    """What the database holds of the hand-off: rows, notices, call steps, trail."""
    async with rig.deps.db.read() as conn:
        handoffs = (await conn.execute(sa.select(handoff_t))).all()
        notices = (await conn.execute(sa.select(notice_t))).all()
    call = await store.get_call(rig.deps, uuid)
    assert call is not None
    trail = await ticket_events(rig.deps, number, Principal("sup", Role.SUPERVISOR))
    return {
        "handoffs": handoffs,
        "notices": notices,
        "steps": [e for e in call["events"] if e["kind"] == "emergency"],
        "trail": [e for e in trail if e["action"] == "emergency_handoff"],
    }


async def test_with_the_store_down_the_caller_is_put_through_and_records_follow(
    tmp_path, db_url, aiohttp_server, caplog
) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="hotline.emergency")
    centre, endpoint = await _centre(aiohttp_server)
    async with make_rig(tmp_path, db_url) as rig:
        await rig.deps.catalog.reload(rig.deps.db)
        store._writer(rig.deps).retry_s = (0.01, 0.05)
        desk = desk_for(rig, **{"120": Line("120", "sofia/gateway/pstn/120", None, endpoint)})
        outbox = asyncio.create_task(desk.run_outbox(poll_s=0.05))
        try:
            uuid, task, agent_leg = await talking(rig)
            number = await new_ticket(rig.deps, CALLER)
            await store.attach_ticket(rig.deps, uuid, number, Principal("li", Role.AGENT))
            rig.acd.calls[uuid].ticket = number
            rig.switch.phone("sofia/gateway/pstn/120", answer_after_s=0.02)

            store_down(rig.deps)
            result = await desk.hand_off(uuid, "120", agent="li", summary="老人摔倒")
            # the line was rung and joined as ever
            assert (result["outcome"], result["route"]) == ("connected", "primary")
            em_leg = rig.switch.leg_of("sofia/gateway/pstn/120")
            assert rig.switch.room_members(f"emergency-120-{uuid}") == {uuid, agent_leg, em_leg}
            assert (result["recorded"], result["deferred"], result["id"]) == (False, True, None)
            assert store.deferred_call_steps(rig.deps) > 0
            warned = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert any("ran with the database out of reach" in r.getMessage() for r in warned)
            # the centre has the data while our database is away: sent straight, once
            await eventually(lambda: len(centre.by_id) == 1, what="the notice sent straight")
            [(notice_id, sends)] = centre.by_id.items()
            assert sends == 1 and re.fullmatch(r"city-emergency-[0-9a-f]{32}", notice_id)
            assert centre.bodies[0]["summary"] == "老人摔倒"
            await asyncio.sleep(0.2)  # the outbox keeps trying meanwhile
            waits = [r for r in caplog.records if "outbox waits" in r.getMessage()]
            assert len(waits) == 1 and waits[0].exc_info is None  # once, not every poll

            store_up(rig.deps)
            await eventually(lambda: store.deferred_call_steps(rig.deps) == 0, what="drain")
            got = await _records(rig, uuid, number)
            [row] = got["handoffs"]
            assert (row.outcome, row.route, row.agent) == ("connected", "primary", "li")
            assert [a["result"] for a in row.attempts] == ["answered"]
            [notice] = got["notices"]
            assert notice.handoff_id == row.id
            [step] = got["steps"]
            assert step["data"] == {"line": "120", "handoff": row.id}
            [entry] = got["trail"]
            assert entry["data"]["outcome"] == "connected" and entry["data"]["line"] == "120"
            landed = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
            assert any("deferred records are written" in m for m in landed)
            # its row records that delivery: the outbox does not send it again
            assert notice.delivered_at is not None and notice.attempts == 1
            assert json.loads(rig.deps.cipher.decrypt(notice.body))["id"] == notice_id
            await asyncio.sleep(0.2)
            assert centre.by_id == {notice_id: 1}
            assert await desk.handoffs_for(uuid) == [
                {
                    "id": row.id,
                    "line": "120",
                    "route": "primary",
                    "outcome": "connected",
                    "agent": "li",
                    "ticket": number,
                    "attempts": row.attempts,
                }
            ]
            await rig.switch.hangup(uuid)
            assert await asyncio.wait_for(task, 2) == "completed"
        finally:
            outbox.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await outbox


async def test_the_store_dropping_mid_hand_off_defers_the_outcome_only(
    tmp_path, db_url, aiohttp_server
) -> None:  # type: ignore[no-untyped-def]
    centre, endpoint = await _centre(aiohttp_server)
    async with make_rig(tmp_path, db_url) as rig:
        await rig.deps.catalog.reload(rig.deps.db)
        store._writer(rig.deps).retry_s = (0.01, 0.05)
        line = Line("119", "sofia/gateway/pstn/119", "sofia/gateway/backup/119", endpoint)
        desk = desk_for(rig, **{"119": line})
        uuid, task, agent_leg = await talking(rig)
        number = await new_ticket(rig.deps, CALLER)
        await store.attach_ticket(rig.deps, uuid, number, Principal("li", Role.AGENT))
        rig.acd.calls[uuid].ticket = number
        rig.switch.phone("sofia/gateway/pstn/119", "busy")
        rig.switch.phone("sofia/gateway/backup/119")
        ring = rig.switch.ring

        async def ring_then_drop(*a: Any, **kw: Any) -> Any:
            """The first insert is in; the database goes while the line rings."""
            if ring_then_drop.first:  # type: ignore[attr-defined]
                ring_then_drop.first = False  # type: ignore[attr-defined]
                assert await store.flush_call_writes(rig.deps) == 0
                store_down(rig.deps)
            return await ring(*a, **kw)

        ring_then_drop.first = True  # type: ignore[attr-defined]
        rig.switch.ring = ring_then_drop  # type: ignore[method-assign]
        result = await desk.hand_off(uuid, "119", agent="li", summary="kitchen fire")
        assert (result["outcome"], result["route"]) == ("connected", "alternate")
        assert rig.switch.room_members(f"emergency-119-{uuid}") == {
            uuid,
            agent_leg,
            rig.switch.leg_of("sofia/gateway/backup/119"),
        }
        assert result["recorded"] is False and result["deferred"] is True
        handoff_id = result["id"]
        assert isinstance(handoff_id, int)  # the row went in before the database left
        # the notice was in the outbox before the drop: it goes out now, at most once
        async with aiohttp.ClientSession() as session:
            store_up(rig.deps)
            await eventually(lambda: store.deferred_call_steps(rig.deps) == 0, what="drain")
            assert await desk.send_due(session) == 1
            assert await desk.send_due(session) == 0
        [(notice_id, sends)] = centre.by_id.items()  # the outbox's, under the fixed id
        assert sends == 1 and notice_id.startswith("city-emergency-")
        got = await _records(rig, uuid, number)
        [row] = got["handoffs"]
        assert (row.id, row.outcome, row.route) == (handoff_id, "connected", "alternate")
        assert [a["result"] for a in row.attempts] == ["busy", "answered"]
        assert len(got["notices"]) == 1
        [step] = got["steps"]
        assert step["data"]["handoff"] == handoff_id
        [entry] = got["trail"]
        assert entry["data"]["attempts"] == [["primary", "busy"], ["alternate", "answered"]]
        await rig.switch.hangup(uuid)
        await task


async def test_the_store_up_the_answer_says_recorded(tmp_path, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    async with make_rig(tmp_path, sqlite_url) as rig:
        desk = desk_for(rig)
        uuid, task, _ = await talking(rig)
        rig.switch.phone("sofia/gateway/pstn/122")
        result = await desk.hand_off(uuid, "122")
        assert (result["recorded"], result["deferred"]) == (True, False)
        [h] = await desk.handoffs_for(uuid)
        assert (h["id"], h["outcome"]) == (result["id"], "connected")
        row = await store.get_call(rig.deps, uuid)
        assert [e["data"] for e in row["events"] if e["kind"] == "emergency"] == [
            {"line": "122", "handoff": result["id"]}
        ]
        await rig.switch.hangup(uuid)
        await task
