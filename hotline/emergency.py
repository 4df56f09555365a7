"""Emergency hand-off: a 12345 call passed to 110 / 119 / 120 / 122 with its data.

An attended transfer, because a caller in danger must never be dropped into a
ringing void: the caller hears a short notice, the emergency line is called, and
only when it answers are caller, agent and centre joined in a three-way
conference (the agent may then leave). A busy or silent line is retried on its
alternate route and a supervisor is alerted; if every route fails the caller goes
back to the agent (or to the head of the queue), never to the end of it.

The data push follows the spirit of ECRIT "additional data" (RFC 7852): a small
JSON notice (caller number, location, ticket, summary, agent) signed with the
city's Ed25519 service key, the same key whose public half partners already pin
for citizen-card receipts, so a centre verifies one key for everything the city
signs. Signing over canonical JSON (sorted keys, no spaces, UTF-8) makes the
signature reproducible; it travels in headers so the body stays the plain notice:

    X-Hotline-Key-Id: <city>-service
    X-Hotline-Signature: base64url(Ed25519(body bytes))

Notices go through a durable outbox (table `emergency_notice`, the number
encrypted at rest) and are retried with exponential backoff until the centre
answers 2xx; each carries an `id` so a centre drops duplicates.

The caller is put through whatever our database does: the switch part of a hand-off
(notice to the caller, primary then alternate route, conference or back to the agent)
never fails for want of it, and the ringing does not wait for the records. Those are
call steps (`store.records_with_call`) and so ride the call writer that already
keeps a call's steps through an outage (`hotline.calls.store._CallWriter`: kept in
order, bounded by `MAX_DEFERRED`, counted by `hotline_call_steps_deferred`, written
when the database is back). Two steps:

- opening, handed in as the ringing starts (not awaited before it): the
  `emergency_handoff` row, the notice's outbox row and the call's `emergency` step;
- closing, after the switch part: the row's outcome and the ticket's trail entry.

The notice's id (`<city>-emergency-<random hex>`) is fixed when the hand-off starts.
Normally its outbox row is written as the line rings and the outbox sends it. While
the database is away the notice is sent straight from memory (retried with the same
backoff) so the centre has the caller's number and location at once, and its row,
written when the database is back, records that delivery; a send in flight as the
row lands may reach the centre twice, under the one id it drops duplicates by.

The hand-off's answer says `recorded` (written now) or `deferred` (kept here, written
later; `id` null until the row is in); a WARNING says a hand-off ran with the store
away, an INFO when its records are in.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import aiohttp
import sqlalchemy as sa

from hotline.acd import events as ev
from hotline.acd.domain import AcdError, Priority
from hotline.acd.metrics import AcdMetrics
from hotline.acd.service import AcdService, LiveCall
from hotline.acd.switch import Ring, RingResult, Switch, SwitchError
from hotline.calls import store
from hotline.calls.models import EmergencyHandoff, EmergencyNotice
from ticketing.events import DomainEvent
from ticketing.handlers import Deps, announce
from ticketing.store import StoreUnavailable, log_pass_failure

log = logging.getLogger(__name__)

handoff_t = EmergencyHandoff.__table__  # type: ignore[attr-defined]
notice_t = EmergencyNotice.__table__  # type: ignore[attr-defined]

LINES = ("110", "119", "120", "122")
LINE_NAMES = {"110": "police", "119": "fire", "120": "ambulance", "122": "traffic"}


class UnknownLine(AcdError):
    code = "unknown-line"


class Signer(Protocol):
    key_id: str

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class Line:
    code: str
    dial: str
    alternate: str | None = None
    endpoint: str | None = None


def parse_routes(spec: str) -> dict[str, str]:
    """'110=sofia/gateway/pstn/110,119=...' -> {'110': 'sofia/gateway/pstn/110', ...}."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        code, sep, target = part.partition("=")
        code, target = code.strip(), target.strip()
        if not sep or code not in LINES or not target:
            raise ValueError(f"{part!r}: use line=target with line one of {', '.join(LINES)}")
        out[code] = target
    return out


def build_lines(dial: str, alternate: str, endpoints: str) -> dict[str, Line]:
    d, a, e = parse_routes(dial), parse_routes(alternate), parse_routes(endpoints)
    return {code: Line(code, d[code], a.get(code), e.get(code)) for code in LINES if code in d}


def canonical(notice: dict[str, Any]) -> bytes:
    return json.dumps(notice, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def sign_notice(signer: Signer, body: bytes) -> dict[str, str]:
    sig = base64.urlsafe_b64encode(signer.sign(body)).rstrip(b"=").decode()
    return {
        "Content-Type": "application/json",
        "X-Hotline-Key-Id": signer.key_id,
        "X-Hotline-Signature": sig,
    }


def backoff_s(attempts: int, cap_s: float = 300.0) -> float:
    """1, 2, 4, ... seconds, capped: a centre that is down is not hammered."""
    return min(cap_s, 2.0 ** max(0, attempts - 1))


@dataclass
class _Records:
    """One hand-off's records on their way to the database, maybe after an outage:
    the closing step needs the row's id, which the opening step learns when written."""

    call_uuid: str
    line: str
    handoff_id: int | None = None
    outcomes: list[store.Outcome | str] = field(default_factory=list)
    opened: bool = False  # the row and the notice's outbox row are in the database
    # a notice sent straight to the centre while the database was away
    notice_delivered_at: datetime | None = None
    notice_attempts: int = 0

    @property
    def deferred(self) -> bool:
        return "deferred" in self.outcomes


class EmergencyDesk:
    def __init__(
        self,
        deps: Deps,
        switch: Switch,
        lines: dict[str, Line],
        signer: Signer,
        *,
        acd: AcdService | None = None,
        answer_timeout_s: float = 20.0,
        notice_prompt: str = "emergency_notice",
        metrics: AcdMetrics | None = None,
        city_code: str = "CITY",
    ) -> None:
        self.deps = deps
        self.switch = switch
        self.lines = lines
        self.signer = signer
        self.acd = acd
        self.answer_timeout_s = answer_timeout_s
        self.notice_prompt = notice_prompt
        self.metrics = metrics
        self.city_code = city_code
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()

    async def _publish(self, events: list[DomainEvent]) -> None:
        try:
            await announce(self.deps, events)
        except Exception:
            log.exception("publishing emergency events failed")

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        """A task held until it ends (the loop keeps only weak references)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def line(self, code: str) -> Line:
        line = self.lines.get(str(code))
        if line is None:
            raise UnknownLine(f"line {code!r} is not configured (known: {', '.join(self.lines)})")
        return line

    async def hand_off(
        self,
        call_uuid: str,
        line_code: str,
        *,
        agent: str | None = None,
        caller: str | None = None,
        summary: str = "",
        location: str | None = None,
        ticket: str | None = None,
    ) -> dict[str, Any]:
        """Run the hand-off to its end (connected or failed) and return its record."""
        line = self.line(line_code)
        live: LiveCall | None = self.acd.calls.get(call_uuid) if self.acd else None
        if live is not None:
            caller = caller or live.caller
            ticket = ticket or live.ticket
            agent = agent or live.agent
            if live.uuid in self.acd.acd.queue:  # type: ignore[union-attr]
                await self.acd.take_out_of_queue(call_uuid, "emergency")  # type: ignore[union-attr]
            live.emergency = True
        now = self.deps.clock()
        rec = _Records(call_uuid, line.code)
        notice: dict[str, Any] | None = None
        if line.endpoint:
            notice = {
                # fixed before anything is written: the same id whichever path sends it
                "id": f"{self.city_code.lower()}-emergency-{uuidlib.uuid4().hex}",
                "type": "hotline.emergency.notice",
                "version": 1,
                "line": line.code,
                "service": LINE_NAMES[line.code],
                "call": call_uuid,
                "caller": caller or None,
                "location": location,
                "ticket": ticket,
                "summary": summary[:2000],
                "agent": agent,
                "sent_by": self.city_code,
                "requested_at": now.isoformat().replace("+00:00", "Z"),
            }
        row = {
            "call_uuid": call_uuid,
            "line": line.code,
            "agent": agent,
            "ticket_number": ticket,
            "requested_at": now,
            "outcome": "pending",
            "attempts": [],
        }
        step_data: dict[str, Any] = {"line": line.code, "handoff": None}
        call_step: dict[str, Any] = {}
        if live is not None:
            call_step = {
                "event": "emergency",
                "actor": agent,
                "data": step_data,
                "state": "emergency" if live.agent_leg is None else live.state,
            }

        async def opening_records(conn: Any) -> None:
            await self._insert_records(conn, rec, row, notice, step_data, now, line)

        # handed in now, awaited after the switch part: a slow or absent database (a
        # write defers after at most the writer's STALL_S) never delays the ringing
        opening = asyncio.ensure_future(
            store.records_with_call(
                self.deps,
                call_uuid,
                now,
                opening_records,
                on_written=lambda deferred: self._opened(rec, deferred),
                **call_step,
            )
        )
        await asyncio.sleep(0)  # handed in before the steps the switch part hands in
        if notice is not None and line.endpoint:
            self._spawn(self._notice_while_away(opening, rec, canonical(notice), line.endpoint))
        notice_task = asyncio.ensure_future(self._notify_caller(call_uuid))
        attempts: list[dict[str, Any]] = []
        connected: Ring | None = None
        route_used: str | None = None
        routes = [("primary", line.dial)] + (
            [("alternate", line.alternate)] if line.alternate else []
        )
        for route, dial in routes:
            try:
                ring = await self.switch.ring(
                    [dial],
                    self.answer_timeout_s,
                    caller_id=caller or "",
                    variables={"hotline_emergency": line.code},
                )
            except SwitchError as exc:
                ring = Ring(RingResult.FAILED, cause=str(exc)[:64])
            attempts.append(
                {
                    "route": route,
                    "dial": dial,
                    "result": ring.result.value,
                    "cause": ring.cause,
                    "at": self.deps.clock().isoformat().replace("+00:00", "Z"),
                }
            )
            if ring.result is RingResult.ANSWERED and ring.leg:
                connected, route_used = ring, route
                break
            await self._publish(
                [ev.EmergencyAlert(call_uuid, line.code, f"{route} route {ring.result.value}")]
            )
        notice_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, SwitchError):
            await notice_task
        outcome = "connected" if connected else "failed"
        if connected and connected.leg:
            await self._join(call_uuid, live, connected.leg, line.code)
        else:
            await self._publish(
                [ev.EmergencyAlert(call_uuid, line.code, "every route failed; caller kept")]
            )
            await self._give_back(call_uuid, live)
        done = self.deps.clock()
        rec.outcomes.append(await self._settled(opening, rec, "opening"))
        trail = {
            "call": call_uuid,
            "line": line.code,
            "route": route_used,
            "outcome": outcome,
            "requested_at": now.isoformat().replace("+00:00", "Z"),
            "answered_at": done.isoformat().replace("+00:00", "Z") if connected else None,
            "attempts": [(a["route"], a["result"]) for a in attempts],
            "agent": agent,
        }
        final = {
            "route": route_used,
            "dial_string": attempts[-1]["dial"] if attempts else None,
            "answered_at": done if connected else None,
            "ended_at": None if connected else done,
            "outcome": outcome,
            "attempts": attempts,
        }

        async def closing_records(conn: Any) -> None:
            await self._close_records(conn, rec, final, ticket, trail)

        closing = store.records_with_call(
            self.deps,
            call_uuid,
            done,
            closing_records,
            on_written=lambda deferred: self._closed(rec, deferred),
        )
        rec.outcomes.append(await self._settled(closing, rec, "closing"))
        if rec.deferred:
            log.warning(
                "emergency hand-off of call %s to %s (%s) ran with the database out of "
                "reach: its records and data notice are kept here and written when it "
                "is back",
                call_uuid,
                line.code,
                outcome,
            )
        if self.metrics:
            self.metrics.emergencies.labels(line.code, outcome).inc()
        await self._publish(
            [ev.EmergencyHandedOff(call_uuid, line.code, route_used, outcome, ticket, agent)]
        )
        recorded = all(o in ("written", "already") for o in rec.outcomes)
        return {
            "id": rec.handoff_id,
            **trail,
            "ticket": ticket,
            "recorded": recorded,
            "deferred": not recorded and rec.deferred,
        }

    async def _settled(
        self, write: Awaitable[store.Outcome], rec: _Records, which: str
    ) -> store.Outcome | str:
        """What became of a records step; a write that failed outright (not the store
        away: that defers) is logged, not raised: the hand-off has happened already."""
        try:
            outcome: store.Outcome = await write
        except Exception:
            log.exception(
                "emergency hand-off of call %s to %s: its %s records could not be written",
                rec.call_uuid,
                rec.line,
                which,
            )
            return "failed"
        if outcome == "dropped":
            log.error(
                "emergency hand-off of call %s to %s: its %s records were dropped (too many "
                "steps waited for the database)",
                rec.call_uuid,
                rec.line,
                which,
            )
        return outcome

    async def _insert_records(
        self,
        conn: Any,
        rec: _Records,
        row: dict[str, Any],
        notice: dict[str, Any] | None,
        step_data: dict[str, Any],
        now: datetime,
        line: Line,
    ) -> None:
        """The hand-off's row and its notice in the outbox; the id fills in the call's
        `emergency` step (same transaction) and the notice's id. Run again from the
        start if the transaction is retried, so the id is always the committed one."""
        res = await conn.execute(sa.insert(handoff_t).returning(handoff_t.c.id), [row])
        rec.handoff_id = handoff_id = int(res.scalar_one())
        step_data["handoff"] = handoff_id
        if notice is None:
            return
        await conn.execute(
            sa.insert(notice_t),
            [
                {
                    "handoff_id": handoff_id,
                    "line": line.code,
                    "endpoint": line.endpoint,
                    "body": self.deps.cipher.encrypt(canonical(notice).decode()),
                    # sent already, straight from memory, while the database was away
                    "attempts": rec.notice_attempts,
                    "delivered_at": rec.notice_delivered_at,
                    "next_attempt_at": now,
                    "created_at": now,
                }
            ],
        )

    async def _close_records(
        self,
        conn: Any,
        rec: _Records,
        final: dict[str, Any],
        ticket: str | None,
        trail: dict[str, Any],
    ) -> None:
        if rec.handoff_id is None:  # the opening step failed or was dropped
            log.error(
                "emergency hand-off of call %s to %s: no row to record its outcome %s in",
                rec.call_uuid,
                rec.line,
                final["outcome"],
            )
        else:
            await conn.execute(
                sa.update(handoff_t).where(handoff_t.c.id == rec.handoff_id).values(**final)
            )
        if ticket:
            await store.trail_in(self.deps, conn, ticket, "emergency_handoff", trail)

    def _opened(self, rec: _Records, deferred: bool) -> None:
        """The row and the notice are in: the data reaches the centre while its phone
        rings (or, after an outage, as soon as the database is back)."""
        rec.opened = True
        self._wake.set()
        if deferred:
            log.info(
                "emergency hand-off %s of call %s to %s: its row and data notice are "
                "written (the database is back)",
                rec.handoff_id,
                rec.call_uuid,
                rec.line,
            )

    async def _notice_while_away(
        self,
        opening: asyncio.Future[store.Outcome],
        rec: _Records,
        body: bytes,
        endpoint: str,
        *,
        max_attempts: int = 50,
    ) -> None:
        """The data notice straight to the centre when the database cannot take its
        outbox row now: an ambulance must not wait for our database to learn the
        caller's number and location. Retried with the outbox's backoff until the
        centre takes it or the row is written (the outbox then carries on). Same id on
        both paths, so a centre that gets it twice (the row landed while a send was
        in flight) drops the second."""
        with contextlib.suppress(Exception):
            if await asyncio.shield(opening) != "deferred":
                return  # in the outbox already (or failed outright: logged there)
        log.warning(
            "emergency notice of call %s to %s: database out of reach, sending it "
            "straight to the centre",
            rec.call_uuid,
            rec.line,
        )
        async with aiohttp.ClientSession() as session:
            while not rec.opened and rec.notice_attempts < max_attempts:
                rec.notice_attempts += 1
                try:
                    async with session.post(
                        endpoint,
                        data=body,
                        headers=sign_notice(self.signer, body),
                        timeout=aiohttp.ClientTimeout(total=10),
                    ) as resp:
                        if 200 <= resp.status < 300:
                            rec.notice_delivered_at = self.deps.clock()
                            log.info(
                                "emergency notice of call %s delivered straight to %s",
                                rec.call_uuid,
                                endpoint,
                            )
                            return
                        error = f"HTTP {resp.status}"
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    error = f"{type(exc).__name__}: {exc}"[:200]
                log.warning(
                    "emergency notice of call %s to %s failed: %s", rec.call_uuid, endpoint, error
                )
                await asyncio.sleep(backoff_s(rec.notice_attempts, cap_s=30.0))

    def _closed(self, rec: _Records, deferred: bool) -> None:
        if deferred or rec.deferred:
            log.info(
                "emergency hand-off %s of call %s to %s: its deferred records are written",
                rec.handoff_id,
                rec.call_uuid,
                rec.line,
            )

    async def _notify_caller(self, uuid: str) -> None:
        """The caller hears that help is being called, then hold music, while it rings."""
        try:
            await self.switch.play(uuid, self._prompt())
            await self.switch.music_on_hold(uuid)
        except SwitchError:
            pass

    def _prompt(self) -> str:
        return self.acd.prompt(self.notice_prompt) if self.acd else self.notice_prompt

    async def _join(self, uuid: str, live: LiveCall | None, em_leg: str, line: str) -> None:
        with contextlib.suppress(SwitchError):
            await self.switch.stop_media(uuid)
        agent_leg = live.agent_leg if live else None
        if agent_leg:
            room = f"emergency-{line}-{uuid}"
            await self.switch.conference(room, [uuid, agent_leg, em_leg])
            assert live is not None
            live.room, live.state = room, "conference"
            live.other_legs.append(em_leg)
            await store.update_call(
                self.deps, uuid, self.deps.clock(), event="conference", state="conference"
            )
            return
        await self.switch.bridge(uuid, em_leg)
        if live is not None:
            live.other_legs.append(em_leg)
            live.state = "emergency"
        else:  # from the IVR: nobody else watches this pair
            self._spawn(self._hang_up_together(uuid, em_leg))

    async def _hang_up_together(self, a: str, b: str) -> None:
        gone_a = asyncio.ensure_future(self.switch.wait_hangup(a))
        gone_b = asyncio.ensure_future(self.switch.wait_hangup(b))
        await asyncio.wait({gone_a, gone_b}, return_when=asyncio.FIRST_COMPLETED)
        for t in (gone_a, gone_b):
            t.cancel()
        for leg in (a, b):
            with contextlib.suppress(SwitchError):
                await self.switch.hangup(leg)

    async def _give_back(self, uuid: str, live: LiveCall | None) -> None:
        """Every route failed: back to the agent, or first in line."""
        with contextlib.suppress(SwitchError):
            await self.switch.stop_media(uuid)
        if live is None or self.acd is None:
            return
        if live.agent_leg:
            with contextlib.suppress(SwitchError):
                await self.switch.bridge(uuid, live.agent_leg)
            return
        await self.acd.requeue(live, Priority.EMERGENCY)

    # ------------------------------------------------------------ the outbox

    async def send_due(
        self,
        session: aiohttp.ClientSession,
        *,
        limit: int = 20,
        lease_s: float = 30.0,
        max_attempts: int = 50,
    ) -> int:
        """Send notices that are due; returns how many were delivered.

        Each row is leased (its next attempt pushed out) by a conditional UPDATE
        before sending, so two instances never post the same notice at once.
        """
        now = self.deps.clock()
        async with self.deps.db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(notice_t)
                    .where(
                        notice_t.c.delivered_at.is_(None),
                        notice_t.c.next_attempt_at <= now,
                        notice_t.c.attempts < max_attempts,
                    )
                    .order_by(notice_t.c.next_attempt_at)
                    .limit(limit)
                )
            ).all()
        delivered = 0
        for row in rows:
            async with self.deps.db.write() as conn:
                leased = await conn.execute(
                    sa.update(notice_t)
                    .where(
                        notice_t.c.id == row.id, notice_t.c.next_attempt_at == row.next_attempt_at
                    )
                    .values(next_attempt_at=now + timedelta(seconds=lease_s))
                )
            if not leased.rowcount:
                continue  # another instance has it
            body = self.deps.cipher.decrypt(row.body).encode()
            error: str | None = None
            try:
                async with session.post(
                    row.endpoint,
                    data=body,
                    headers=sign_notice(self.signer, body),
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as resp:
                    if not 200 <= resp.status < 300:
                        error = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
            attempts = row.attempts + 1
            done = self.deps.clock()
            values: dict[str, Any]
            if error is None:
                values = {"attempts": attempts, "delivered_at": done, "last_error": None}
                delivered += 1
            else:
                values = {
                    "attempts": attempts,
                    "last_error": error,
                    "next_attempt_at": done + timedelta(seconds=backoff_s(attempts)),
                }
                log.warning("emergency notice %s to %s failed: %s", row.id, row.endpoint, error)
                if attempts >= max_attempts:
                    await self._publish(
                        [ev.EmergencyAlert("", row.line, f"notice {row.id} undeliverable: {error}")]
                    )
            async with self.deps.db.write() as conn:
                await conn.execute(
                    sa.update(notice_t).where(notice_t.c.id == row.id).values(**values)
                )
        return delivered

    async def run_outbox(self, poll_s: float = 2.0) -> None:
        async with aiohttp.ClientSession() as session:
            store_down = False
            while True:
                try:
                    await self.send_due(session)
                    if store_down:
                        log.info("emergency outbox: the database is back")
                    store_down = False
                except asyncio.CancelledError:
                    raise
                except StoreUnavailable as exc:
                    if not store_down:  # once per outage, not every poll
                        log.warning("emergency outbox waits for the database: %s", exc)
                    store_down = True
                except Exception as exc:
                    log_pass_failure(log, exc, "emergency outbox pass failed; retrying")
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), poll_s)

    async def handoffs_for(self, call_uuid: str) -> list[dict[str, Any]]:
        async with self.deps.db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(handoff_t)
                    .where(handoff_t.c.call_uuid == call_uuid)
                    .order_by(handoff_t.c.id)
                )
            ).all()
        return [
            {
                "id": r.id,
                "line": r.line,
                "route": r.route,
                "outcome": r.outcome,
                "agent": r.agent,
                "ticket": r.ticket_number,
                "attempts": r.attempts,
            }
            for r in rows
        ]


def notice_verifier(public_key: Any) -> Callable[[bytes, str], bool]:
    """What a centre runs: verify the signature header over the exact body bytes."""
    from cryptography.exceptions import InvalidSignature

    def verify(body: bytes, signature: str) -> bool:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        try:
            public_key.verify(raw, body)
        except InvalidSignature:
            return False
        return True

    return verify
