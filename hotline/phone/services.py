"""The services an IVR flow calls, each over the part of the hotline that does the work.

`ivr.IvrServices` names protocols; these classes implement them: the queue is the
ACD, an emergency is the emergency desk, card services are the citizen card's
phone self-service, callbacks and voicemails become work items in the one work
queue, the survey lands on the ticket's trail, ticket lookup reads the ticket store.
Each is idempotent on the call's UUID (FreeSWITCH retries a socket connect), and
none logs the digits a caller keyed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import phonenumbers
import sqlalchemy as sa

import ivr
from citizen_card.self_service import balance_by_phone, report_lost_by_phone
from citizen_card.service import CardDeps
from hotline.acd.domain import Priority
from hotline.acd.service import AcdService
from hotline.calls import store
from hotline.emergency import EmergencyDesk
from ticketing.handlers import Deps

log = logging.getLogger(__name__)

_PHASES: dict[str, ivr.TicketPhase] = {
    "new": ivr.TicketPhase.RECEIVED,
    "dispatched": ivr.TicketPhase.IN_PROGRESS,
    "accepted": ivr.TicketPhase.IN_PROGRESS,
    "returned": ivr.TicketPhase.IN_PROGRESS,
    "extension_requested": ivr.TicketPhase.IN_PROGRESS,
    "reopened": ivr.TicketPhase.IN_PROGRESS,
    "replied": ivr.TicketPhase.REPLIED,
    "closed": ivr.TicketPhase.CLOSED,
    "answered": ivr.TicketPhase.CLOSED,
    "merged": ivr.TicketPhase.CLOSED,
}


def e164(raw: str) -> str:
    """The caller id as E.164 when it is a phone number; as given otherwise
    ("anonymous", an internal extension), so nothing is lost."""
    raw = (raw or "").strip()
    try:
        num = phonenumbers.parse(raw, "CN")
    except phonenumbers.NumberParseException:
        return raw
    if not phonenumbers.is_possible_number(num):
        return raw
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


class AcdQueue:
    """`ivr.Queue`: the ACD takes the call and gives it back when the agent is done.

    The queue is the ACD's own business (position, music, callback offer, queue-full
    callback); the flow only learns whether the caller is still on the line after
    the agent left, for the post-call survey.
    """

    def __init__(
        self, acd: AcdService, still_up: Callable[[str], bool], *, keep_after_agent: bool
    ) -> None:
        self.acd = acd
        self.still_up = still_up
        self.keep_after_agent = keep_after_agent
        self.outcomes: dict[str, str] = {}  # call uuid -> the ACD's last word on it

    async def enqueue(self, request: ivr.QueueRequest) -> ivr.QueueResult:
        priority = Priority.EMERGENCY if request.priority >= 9 else None
        outcome = await self.acd.handle_call(
            request.call_uuid,
            e164(request.caller_id),
            priority=priority,
            skills=request.skills,
            hangup_after=not self.keep_after_agent,
        )
        self.outcomes[request.call_uuid] = outcome
        if outcome == "completed" and self.still_up(request.call_uuid):
            return ivr.QueueResult(ivr.QueueStatus.AGENT_DONE, outcome)
        # abandoned, callback (offered and taken, or queue full: already promised and
        # confirmed to the caller), emergency: the ACD has finished with this caller
        return ivr.QueueResult(ivr.QueueStatus.HANDED_OFF, outcome)


class DeskEmergency:
    """`ivr.Emergency`: the card-service flow's emergency keys go to the same desk as
    the agents' button (attended, alternate route, supervisor alert, data push)."""

    def __init__(self, desk: EmergencyDesk) -> None:
        self.desk = desk

    async def hand_off(self, request: ivr.EmergencyRequest) -> ivr.EmergencyResult:
        record = await self.desk.hand_off(
            request.call_uuid,
            request.line,
            caller=e164(request.caller_id),
            summary=f"IVR {request.flow_id}: caller chose line {request.line}",
        )
        connected = record["outcome"] == "connected"
        return ivr.EmergencyResult(connected, request.line if connected else "", record["outcome"])


class PhoneCardServices:
    """`ivr.CardServices` over the citizen card's phone self-service (channel "ivr")."""

    def __init__(self, card_deps: CardDeps) -> None:
        self.card_deps = card_deps

    async def balance(self, query: ivr.BalanceQuery) -> ivr.CardReply:
        reply = await balance_by_phone(self.card_deps, query.card_number, query.pin)
        return ivr.CardReply(ivr.CardOutcome(reply.outcome), balance_fen=reply.balance_fen)

    async def report_lost(self, report: ivr.LossReport) -> ivr.CardReply:
        # the ID's check character X is keyed as * on a phone pad
        id6 = report.id_last6.replace("*", "X")
        reply = await report_lost_by_phone(
            self.card_deps, report.card_number, id6, report.pin, channel="ivr"
        )
        if reply.outcome == "ok":
            log.info("card frozen by phone, call %s, receipt issued", report.call_uuid)
        return ivr.CardReply(ivr.CardOutcome(reply.outcome), receipt=reply.receipt)


class CallbackStore:
    """`ivr.Callbacks`: a callback request, one per call, in the agents' work queue."""

    def __init__(self, deps: Deps, due_in_s: float) -> None:
        self.deps = deps
        self.due_in_s = due_in_s

    async def request_callback(self, request: ivr.CallbackRequest) -> str:
        existing = await _callback_of(self.deps, request.call_uuid)
        if existing is not None:
            return str(existing)
        cb_id = await store.create_callback(
            self.deps,
            e164(request.number),
            "ivr",
            self.deps.clock(),
            call_uuid=request.call_uuid,
            due_in_s=self.due_in_s,
        )
        return str(cb_id)


class TicketSurveys:
    """`ivr.Surveys`: the answer goes on the call and on the ticket's trail (where the
    follow-up agent reads it); the ticket's own satisfaction stays the follow-up's."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def record_survey(self, answer: ivr.SurveyAnswer) -> None:
        data = {"score": answer.score, "satisfaction": answer.satisfaction}
        if not await store.record_survey(self.deps, answer.call_uuid, self.deps.clock(), data):
            return  # answered already (a retried socket session)
        if answer.ticket_number:
            await store.ticket_trail(
                self.deps,
                answer.ticket_number,
                "call_survey",
                {"call": answer.call_uuid, **data},
            )


class VoicemailBox:
    """`ivr.Voicemails`: the recording under the voicemail directory, the call's row
    pointing at it and a callback work item so an agent listens and calls back.
    The row names the service instance that took the message (`instance_id`, the
    ACD's), like every call's row."""

    def __init__(
        self, deps: Deps, directory: Path, due_in_s: float, *, instance_id: str | None = None
    ) -> None:
        self.deps = deps
        self.directory = directory
        self.due_in_s = due_in_s
        self.instance_id = instance_id

    async def voicemail_path(self, call_uuid: str) -> str:
        day = self.deps.clock().strftime("%Y/%m/%d")
        path = self.directory / day / f"{call_uuid}.wav"
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        return str(path)

    async def voicemail_recorded(self, message: ivr.VoicemailMessage) -> None:
        if message.seconds < 1.0:
            return  # silence or an immediate hang-up: nothing to call back about
        now = self.deps.clock()
        caller = e164(message.caller_id)
        await store.insert_call(
            self.deps,
            message.call_uuid,
            caller,
            2,
            "voicemail",
            now,
            instance_id=self.instance_id,
        )
        await store.update_call(
            self.deps,
            message.call_uuid,
            now,
            event="voicemail",
            data={"seconds": round(message.seconds, 1)},
            state="voicemail",
            ended_at=now,
            recording_path=message.path,
        )
        if caller and await _callback_of(self.deps, message.call_uuid) is None:
            await store.create_callback(
                self.deps,
                caller,
                "voicemail",
                now,
                call_uuid=message.call_uuid,
                due_in_s=self.due_in_s,
            )


class TicketStatus:
    """`ivr.TicketLookup`: a coarse phase for a ticket number, never its content."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def ticket_phase(self, number: str) -> ivr.TicketPhase | None:
        if not number.isdigit():
            return None
        async with self.deps.db.read() as conn:
            status = (
                await conn.execute(
                    sa.select(store.ticket_t.c.status).where(store.ticket_t.c.number == number)
                )
            ).scalar_one_or_none()
        return None if status is None else _PHASES.get(str(status), ivr.TicketPhase.IN_PROGRESS)


async def _callback_of(deps: Deps, call_uuid: str) -> int | None:
    async with deps.db.read() as conn:
        return (
            await conn.execute(
                sa.select(store.callback_t.c.id)
                .where(store.callback_t.c.call_uuid == call_uuid)
                .limit(1)
            )
        ).scalar_one_or_none()
