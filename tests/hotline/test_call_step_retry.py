"""A call step retried after a COMMIT whose answer never came is not written twice.

The connection may drop after the server committed and before we heard so (asyncpg's
connection error, StoreUnavailable to the writer): the writer keeps the batch and
retries it, and the retry must find the steps in rather than write a second trail
entry, a second emergency hand-off row and a second notice to the centre.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citizen_card.ledger import Ed25519Signer
from hotline.calls import store
from hotline.emergency import EmergencyDesk, Line, handoff_t, notice_t
from tests.hotline.acd.acd_rig import eventually, make_rig, new_ticket
from ticketing.handlers import ticket_events
from ticketing.lifecycle import Role
from ticketing.ports import Principal
from ticketing.store import StoreUnavailable

CALLER = "+8613800138000"


class UnheardCommits:
    """The call writer's next `n` transactions that write something commit in the
    database, and then the writer hears StoreUnavailable instead of the answer (the
    connection lost after the server's COMMIT). `rolled_back`: the same failure, but
    the transaction did not commit (the writer cannot tell the two apart)."""

    def __init__(
        self, deps: Any, monkeypatch: pytest.MonkeyPatch, n: int = 1, rolled_back: bool = False
    ) -> None:
        self.left = n
        self.lost = 0
        armed: list[Any] = []
        apply = store._apply

        async def tracked(conn: Any, db: Any, batch: list[Any]) -> None:
            await apply(conn, db, batch)
            writes = any(s.maybe is None or not s.maybe.committed for s in batch)
            if self.left > 0 and writes:
                self.left -= 1
                armed.append(conn)

        write = deps.db.write

        @contextlib.asynccontextmanager
        async def unheard() -> AsyncIterator[Any]:
            async with write() as conn:
                yield conn
                if rolled_back and any(c is conn for c in armed):
                    armed.remove(conn)
                    self.lost += 1
                    raise StoreUnavailable("connection lost before COMMIT (simulated)")
            if any(c is conn for c in armed):
                armed.remove(conn)
                self.lost += 1
                raise StoreUnavailable("connection lost after COMMIT (simulated)")

        monkeypatch.setattr(store, "_apply", tracked)
        deps.db.write = unheard


async def _drain(deps: Any) -> None:
    """Every step handed in written (a flush stops at an attempt that fails: again)."""
    for _ in range(20):
        if await store.flush_call_writes(deps, 10) == 0:
            return
    raise AssertionError("call steps still wait")


async def _events(deps: Any, uuid: str) -> list[str]:
    call = await store.get_call(deps, uuid)
    assert call is not None
    return [e["kind"] for e in call["events"]]


async def _step_keys(deps: Any) -> list[str | None]:
    async with deps.db.read() as conn:
        return list((await conn.execute(sa.select(store.call_event_t.c.step_key))).scalars())


async def _steps_of_three_calls(deps: Any) -> list[Any]:
    now = deps.clock()
    store._writer(deps).retry_s = (0.01, 0.05)
    return await asyncio.gather(
        store.insert_call(deps, "r1", CALLER, 2, "queued", now),
        store.insert_call(deps, "r2", CALLER, 2, "queued", now),
        store.update_call(deps, "r1", now, event="offered", state="ringing"),
        store.update_call(deps, "r2", now, event="abandoned", state="abandoned", leave_queue=True),
        store.update_call(deps, "r1", now, state="talking", wait_s=3.0),  # columns only
        store.record_survey(deps, "r2", now, {"score": 5}),
        store.insert_call(deps, "r3", CALLER, 2, "queued", now),
    )


@pytest.mark.parametrize("times", [1, 3])
async def test_steps_whose_commit_went_unanswered_are_written_once(
    deps: Any, monkeypatch: pytest.MonkeyPatch, times: int, caplog: pytest.LogCaptureFixture
) -> None:
    unheard = UnheardCommits(deps, monkeypatch, n=times)
    await _steps_of_three_calls(deps)
    await _drain(deps)
    assert unheard.lost >= 1
    assert await _events(deps, "r1") == ["queued", "offered"]
    assert await _events(deps, "r2") == ["queued", "abandoned", "survey"]
    assert await _events(deps, "r3") == ["queued"]
    r1 = await store.get_call(deps, "r1")
    assert r1 is not None and (r1["state"], r1["wait_s"]) == ("talking", 3.0)
    keys = await _step_keys(deps)
    assert len(keys) == 6 and None not in keys and len(set(keys)) == 6
    assert store.deferred_call_steps(deps) == 0
    # found by the look-up, not stopped by the unique index (a failed step)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_steps_whose_unanswered_commit_was_rolled_back_are_written(
    deps: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    unheard = UnheardCommits(deps, monkeypatch, rolled_back=True)
    await _steps_of_three_calls(deps)
    await _drain(deps)
    assert unheard.lost == 1
    assert await _events(deps, "r1") == ["queued", "offered"]
    assert await _events(deps, "r2") == ["queued", "abandoned", "survey"]
    assert await _events(deps, "r3") == ["queued"]


def _statements(deps: Any) -> list[str]:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_a: Any) -> None:
        seen.append(statement)

    sa.event.listen(deps.db.engine.sync_engine, "before_cursor_execute", count)
    return seen


async def test_a_commit_that_is_answered_costs_no_look_up(deps: Any) -> None:
    now = deps.clock()
    for i in range(10):
        await store.insert_call(deps, f"n{i}", CALLER, 2, "queued", now)
    seen = _statements(deps)
    # one batch: the first step goes alone, the others wait for it and go together
    await asyncio.gather(
        *(
            store.update_call(deps, f"n{i}", now, event="offered", state="ringing")
            for i in range(10)
        )
    )
    sql = [s for s in seen if s.split(None, 1)[0].upper() in ("SELECT", "INSERT", "UPDATE")]
    # before keys: an UPDATE and an INSERT per transaction, never a SELECT; the same now
    # (the key rides in the trail entry's INSERT)
    assert len(sql) in (2, 4)
    assert not any(s.upper().startswith("SELECT") for s in sql)
    assert not any("call_step_mark" in s for s in sql)


@pytest.mark.parametrize("via", ["ivr", "agent"])
async def test_an_emergency_hand_off_retried_after_an_unanswered_commit_is_recorded_once(
    tmp_path: Any, db_url: str, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    centre: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        centre.append(await request.read())
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/notice", handle)
    endpoint = str((await aiohttp_server(app)).make_url("/notice"))
    async with make_rig(tmp_path, db_url) as rig:
        await rig.deps.catalog.reload(rig.deps.db)
        store._writer(rig.deps).retry_s = (0.01, 0.05)
        line = Line("120", "sofia/gateway/pstn/120", None, endpoint)
        desk = EmergencyDesk(
            rig.deps,
            rig.switch,
            {"120": line},
            Ed25519Signer(Ed25519PrivateKey.generate(), key_id="city-service"),
            acd=rig.acd if via == "agent" else None,
            answer_timeout_s=0.2,
        )
        number = await new_ticket(rig.deps)
        if via == "agent":
            rig.switch.phone("user/1001")
            await rig.acd.login("li", "1001")
            uuid, task = rig.call(CALLER)
            await eventually(lambda: rig.named("call.answered"))
            rig.acd.calls[uuid].ticket = number
        else:
            uuid = rig.switch.new_call(CALLER)
        rig.switch.phone("sofia/gateway/pstn/120", answer_after_s=0.02)
        # the opening's COMMIT, then whatever comes next, land unheard
        unheard = UnheardCommits(rig.deps, monkeypatch, n=3)
        result = await desk.hand_off(uuid, "120", agent="li", caller=CALLER, ticket=number)
        assert result["outcome"] == "connected"
        await _drain(rig.deps)
        assert unheard.lost >= 1
        async with rig.deps.db.read() as conn:
            handoffs = (await conn.execute(sa.select(handoff_t))).all()
            notices = (await conn.execute(sa.select(notice_t))).all()
        [row] = handoffs
        assert row.outcome == "connected"
        [notice] = notices
        assert notice.handoff_id == row.id
        call = await store.get_call(rig.deps, uuid)
        emergency = [e for e in call["events"]] if call else []
        if via == "agent":
            [step] = [e for e in emergency if e["kind"] == "emergency"]
            assert step["data"]["handoff"] == row.id
        trail = await ticket_events(rig.deps, number, Principal("sup", Role.SUPERVISOR))
        assert [e["action"] for e in trail].count("emergency_handoff") == 1
        # the outbox sends the one notice once
        async with aiohttp.ClientSession() as session:
            await desk.send_due(session)
        await eventually(lambda: len(centre) >= 1, what="the notice")
        await asyncio.sleep(0.1)
        assert len({body for body in centre}) == 1
        if via == "agent":
            await rig.switch.hangup(uuid)
            await asyncio.wait_for(task, 2)
