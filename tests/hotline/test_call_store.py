"""Call records in the store: what the ACD and the post-call survey read and write per call.

The arrival reads the caller once (queue priority and screen pop from one look-up), and
each step of a call is one transaction with as few statements as it needs; these tests
hold those functions to what the readers (API, console, wall, survey) rely on.
"""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import channels.models  # noqa: F401  (the contacts' table)
import citizen_card.models  # noqa: F401  (the residents' table)
from hotline.calls import store
from ticketing import workqueue

CALLER = "+8613800138000"
OTHER = "+8613900139000"


async def _ticket(deps: Any, number: str, phone: str, status: str) -> None:
    now = deps.clock()
    row = {
        "number": number,
        "kind": "complaint",
        "title": f"ticket {number}",
        "description": "-",
        "channel": "phone",
        "urgency": "normal",
        "status": status,
        "contact_phone_bidx": deps.cipher.blind_index(phone),
        "assist_departments": [],
        "contact_ids": {},
        "created_by": "li",
        "created_at": now,
        "updated_at": now,
    }
    async with deps.db.write() as conn:
        await conn.execute(sa.insert(store.ticket_t), [row])


async def test_a_first_time_caller_has_no_history_and_is_not_returning(deps) -> None:  # type: ignore[no-untyped-def]
    returning, history = await store.caller_profile(deps, CALLER, "c1", deps.clock(), 24)
    assert returning is False
    assert history == {"open_tickets": [], "previous_calls": 0, "contact": None, "resident": None}
    # an unknown number (anonymous caller) is never returning either
    assert (await store.caller_profile(deps, "", "c1", deps.clock(), 24))[0] is False


async def test_an_earlier_call_within_the_window_makes_a_returning_caller(deps) -> None:  # type: ignore[no-untyped-def]
    now = deps.clock()
    await store.insert_call(deps, "old", CALLER, 2, "queued", now - timedelta(hours=30))
    await store.insert_call(deps, "other", OTHER, 2, "queued", now - timedelta(hours=1))
    # 30 h ago: counted in the history, but too long ago to be served first
    returning, history = await store.caller_profile(deps, CALLER, "c2", now, 24)
    assert (returning, history["previous_calls"]) == (False, 1)
    await store.insert_call(deps, "recent", CALLER, 2, "queued", now - timedelta(hours=2))
    returning, history = await store.caller_profile(deps, CALLER, "c2", now, 24)
    assert (returning, history["previous_calls"]) == (True, 2)


async def test_the_call_itself_never_counts_as_an_earlier_call(deps) -> None:  # type: ignore[no-untyped-def]
    """FreeSWITCH retries a socket connect: the call's row may exist when it is read."""
    now = deps.clock()
    await store.insert_call(deps, "c3", CALLER, 2, "queued", now)
    returning, history = await store.caller_profile(deps, CALLER, "c3", now, 24)
    assert (returning, history["previous_calls"]) == (False, 0)


async def test_open_tickets_make_a_returning_caller_and_show_in_the_screen_pop(deps) -> None:  # type: ignore[no-untyped-def]
    await _ticket(deps, "2026000001", CALLER, "closed")
    returning, history = await store.caller_profile(deps, CALLER, "c4", deps.clock(), 24)
    assert (returning, history["open_tickets"]) == (False, [])  # a closed one does not count
    await _ticket(deps, "2026000002", CALLER, "dispatched")
    await _ticket(deps, "2026000003", OTHER, "new")
    returning, history = await store.caller_profile(deps, CALLER, "c4", deps.clock(), 24)
    assert returning is True
    assert history["open_tickets"] == [
        {"number": "2026000002", "title": "ticket 2026000002", "status": "dispatched"}
    ]


async def test_the_screen_pop_names_the_contact_and_the_resident_by_handle(deps) -> None:  # type: ignore[no-untyped-def]
    from channels.models import ChannelContact
    from citizen_card.models import Resident

    now, bidx = deps.clock(), deps.cipher.blind_index(CALLER)
    async with deps.db.write() as conn:
        await conn.execute(
            sa.insert(Resident.__table__),  # type: ignore[attr-defined]
            [
                {
                    "handle": "r-7f3a",
                    "name": "Zhang San",
                    "id_number_enc": "x",
                    "id_number_bidx": "id-bidx",
                    "phone_bidx": bidx,
                    "birth_date": date(1980, 1, 1),
                    "sex": "M",
                    "created_at": now,
                }
            ],
        )
        res = await conn.execute(
            sa.insert(ChannelContact.__table__).returning(ChannelContact.__table__.c.id),  # type: ignore[attr-defined]
            [{"channel": "phone", "external_id": bidx, "created_at": now}],
        )
        contact_id = res.scalar_one()
    _, history = await store.caller_profile(deps, CALLER, "c5", now, 24)
    assert (history["resident"], history["contact"]) == ("r-7f3a", f"contact:{contact_id}")
    _, history = await store.caller_profile(deps, OTHER, "c5", now, 24)
    assert (history["resident"], history["contact"]) == (None, None)


async def test_a_calls_record_after_every_step_has_its_times_outcome_and_trail(deps) -> None:  # type: ignore[no-untyped-def]
    """The steps of an answered call as the ACD writes them, read back as the API does."""
    t0 = deps.clock()
    await store.insert_call(deps, "c6", CALLER, 1, "queued", t0, work_due=t0)
    await store.insert_call(deps, "c6", CALLER, 1, "queued", t0, work_due=t0)  # a retry
    async with deps.db.read() as conn:
        items = await workqueue.list_items(conn, [workqueue.AGENTS])
    assert [(i["kind"], i["ref"], i["claimed_by"]) for i in items] == [("call", "c6", "acd")]
    t1, t2, t3 = t0 + timedelta(seconds=3), t0 + timedelta(seconds=4), t0 + timedelta(seconds=64)
    await store.update_call(
        deps, "c6", t1, event="offered", data={"agents": ["li"]}, state="ringing"
    )
    row = await store.get_call(deps, "c6")
    assert row is not None and row["state"] == "ringing"  # the console reads it at the offer
    await store.update_call(
        deps,
        "c6",
        t2,
        event="answered",
        actor="li",
        data={"wait_s": 4.0},
        leave_queue=True,
        state="talking",
        agent="li",
        answered_at=t2,
        wait_s=4.0,
        recording_path="/rec/c6.wav",
    )
    async with deps.db.read() as conn:
        assert await workqueue.list_items(conn, [workqueue.AGENTS]) == []
    await store.update_call(
        deps,
        "c6",
        t3,
        event="ended",
        actor="li",
        data={"by": "agent", "cause": "NORMAL_CLEARING"},
        state="ended",
        ended_at=t3,
        talk_s=60.0,
        hangup_cause="NORMAL_CLEARING",
    )
    assert await store.call_ticket(deps, "c6") is None
    await store.update_call(deps, "c6", t3, ticket_number="2026000009")
    assert await store.call_ticket(deps, "c6") == "2026000009"
    assert await store.record_survey(deps, "c6", t3, {"score": 1}) is True
    assert await store.record_survey(deps, "c6", t3, {"score": 3}) is False  # once per call

    row = await store.get_call(deps, "c6")
    assert row is not None
    iso = store._iso
    assert {k: row[k] for k in ("state", "agent", "priority", "caller", "ticket")} == {
        "state": "ended",
        "agent": "li",
        "priority": 1,
        "caller": "138****8000",
        "ticket": "2026000009",
    }
    assert (row["entered_at"], row["answered_at"], row["ended_at"]) == (iso(t0), iso(t2), iso(t3))
    assert (row["wait_s"], row["talk_s"], row["hangup_cause"]) == (4.0, 60.0, "NORMAL_CLEARING")
    assert row["recording"] == "/rec/c6.wav"
    assert [(e["kind"], e["at"]) for e in row["events"]] == [
        ("queued", iso(t0)),
        ("queued", iso(t0)),
        ("offered", iso(t1)),
        ("answered", iso(t2)),
        ("ended", iso(t3)),
        ("survey", iso(t3)),
    ]
    assert row["events"][-1]["data"] == {"score": 1}
    async with deps.db.read() as conn:
        n = (await conn.execute(sa.select(sa.func.count()).select_from(store.call_t))).scalar_one()
    assert n == 1  # the retried arrival kept one row


# ---------------------------------------------------------------- group commit


def _count_transactions(deps: Any) -> list[int]:
    """Wrap the store's write transactions with a counter (what a batch saves)."""
    count = [0]
    write = deps.db.write

    def counted():  # type: ignore[no-untyped-def]
        count[0] += 1
        return write()

    deps.db.write = counted
    return count


async def test_steps_of_many_calls_waiting_together_are_one_transaction(deps) -> None:  # type: ignore[no-untyped-def]
    now = deps.clock()
    count = _count_transactions(deps)
    await asyncio.gather(
        *(store.insert_call(deps, f"g{i}", CALLER, 2, "queued", now) for i in range(20))
    )
    assert count[0] <= 2  # the first may go alone; the rest waited for it and go together
    started = count[0]
    steps = []
    for i in range(20):  # each call's next step: different columns for different calls
        if i % 2:
            steps.append(store.update_call(deps, f"g{i}", now, event="offered", state="ringing"))
        else:
            steps.append(
                store.update_call(
                    deps, f"g{i}", now, event="abandoned", leave_queue=True, state="abandoned",
                    ended_at=now, wait_s=float(i),
                )
            )  # fmt: skip
    await asyncio.gather(*steps)
    assert count[0] - started <= 2
    for i in range(20):
        row = await store.get_call(deps, f"g{i}")
        assert row is not None
        if i % 2:
            assert (row["state"], row["wait_s"]) == ("ringing", None)
            assert [e["kind"] for e in row["events"]] == ["queued", "offered"]
        else:
            assert (row["state"], row["wait_s"]) == ("abandoned", float(i))
            assert [e["kind"] for e in row["events"]] == ["queued", "abandoned"]
    async with deps.db.read() as conn:
        items = await workqueue.list_items(conn, [workqueue.AGENTS])
    assert sorted(i["ref"] for i in items) == sorted(f"g{i}" for i in range(1, 20, 2))


async def test_a_calls_own_steps_in_one_batch_keep_their_order(deps) -> None:  # type: ignore[no-untyped-def]
    now = deps.clock()
    await store.insert_call(deps, "o1", CALLER, 2, "queued", now)
    await asyncio.gather(
        store.update_call(deps, "o1", now, event="offered", state="ringing"),
        store.update_call(deps, "o1", now, event="ring_failed", state="queued", wait_s=1.0),
        store.update_call(deps, "o1", now, event="offered", state="ringing"),
        store.record_survey(deps, "o1", now, {"score": 1}),
        store.record_survey(deps, "o1", now, {"score": 2}),
    )
    row = await store.get_call(deps, "o1")
    assert row is not None and (row["state"], row["wait_s"]) == ("ringing", 1.0)
    kinds = [e["kind"] for e in row["events"]]
    assert kinds == ["queued", "offered", "ring_failed", "offered", "survey"]
    assert row["events"][-1]["data"] == {"score": 1}  # the first answer, once


async def test_a_step_that_fails_fails_alone_and_the_others_are_written(deps) -> None:  # type: ignore[no-untyped-def]
    now = deps.clock()
    for u in ("f1", "f2", "f3"):
        await store.insert_call(deps, u, CALLER, 2, "queued", now)
    results = await asyncio.gather(
        store.update_call(deps, "f1", now, event="offered", state="ringing"),
        store.update_call(deps, "f2", now, event="offered", no_such_column="x"),
        store.update_call(deps, "f3", now, event="offered", state="ringing"),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], Exception)
    for u in ("f1", "f3"):
        row = await store.get_call(deps, u)
        assert row is not None and row["state"] == "ringing"
    row = await store.get_call(deps, "f2")
    assert row is not None and row["state"] == "queued"
    assert [e["kind"] for e in row["events"]] == ["queued"]  # its whole step, not half


async def test_a_caller_cancelled_while_its_step_waits_still_has_it_written(deps) -> None:  # type: ignore[no-untyped-def]
    now = deps.clock()
    await store.insert_call(deps, "x1", CALLER, 2, "queued", now)
    step = asyncio.ensure_future(store.update_call(deps, "x1", now, event="ended", state="ended"))
    await asyncio.sleep(0)  # handed in
    step.cancel()
    with pytest.raises(asyncio.CancelledError):
        await step
    await store.flush_call_writes(deps)
    row = await store.get_call(deps, "x1")
    assert row is not None and row["state"] == "ended"
