"""Where a call comes in: one outbound-socket session per call, from answer to hang-up.

FreeSWITCH runs `socket <listen> async full` for the 12345 extension; the session
answers, picks the IVR flow for the number dialled and the hour (the national
standard's no-menu flow in working time, the after-hours flow outside it, the
card-service flow on its own number), runs it with the hotline's services, and,
when the agent hung up first and the caller is still there, asks the post-call
satisfaction question. The session returns only when the hotline is done with
the caller: an emergency caller bridged to 110 keeps it open until they hang up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, time
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, Counter

import ivr
from hotline.calls import store
from hotline.phone.services import AcdQueue
from hotline.telephony.esl_outbound import CallLeg
from hotline.telephony.ivr_adapter import EslCallControl
from ticketing.handlers import Deps
from ticketing.workdays import WorkCalendar

log = logging.getLogger(__name__)

CARD_FLOW = "card-service"
SURVEY_FLOW = "post-call-survey"


@dataclass(frozen=True)
class Hours:
    """When agents answer: always (7x24), or a daily window on working days of the
    official calendar (holidays off, make-up working days on)."""

    start: time | None = None
    end: time | None = None

    @classmethod
    def parse(cls, spec: str) -> Hours:
        if spec.strip() == "always":
            return cls()
        a, _, b = spec.strip().partition("-")
        start = time.fromisoformat(a)
        end = time.max if b == "24:00" else time.fromisoformat(b)
        return cls(start, end)

    def test(self, calendar: WorkCalendar, tz: ZoneInfo) -> Callable[[datetime], bool]:
        def is_working_time(now: datetime) -> bool:
            if self.start is None or self.end is None:
                return True
            local = now.astimezone(tz)
            if not calendar.is_working_day(local.date()):
                return False
            return self.start <= local.time() < self.end

        return is_working_time


class CallEntry:
    """The outbound server's handler: `await entry(leg)` per call."""

    def __init__(
        self,
        deps: Deps,
        flows: Mapping[str, ivr.Flow],
        services: ivr.IvrServices,
        queue: AcdQueue,
        *,
        hours: Hours,
        card_numbers: frozenset[str],
        survey: bool,
        language: str = "zh",
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.deps = deps
        self.flows = flows
        self.services = services
        self.queue = queue
        self.is_working_time = hours.test(deps.calendar, deps.tz)
        self.card_numbers = card_numbers
        self.survey = survey and SURVEY_FLOW in flows
        self.language = language
        self.active = 0
        self.outcomes = Counter(
            "hotline_ivr_outcomes",
            "How IVR runs ended, by flow",
            ["flow", "status"],
            registry=registry if registry is not None else CollectorRegistry(),
        )

    def choose(self, destination: str, now: datetime) -> ivr.Flow:
        if destination in self.card_numbers and CARD_FLOW in self.flows:
            return self.flows[CARD_FLOW]
        return ivr.select_flow(self.flows, self.is_working_time, now)

    async def __call__(self, leg: CallLeg) -> None:
        self.active += 1
        try:
            await self._serve(leg)
        finally:
            self.active -= 1
            self.queue.outcomes.pop(leg.uuid, None)

    async def _serve(self, leg: CallLeg) -> None:
        call = EslCallControl(leg)
        try:
            await call.answer()
        except ivr.CallerHungUp:
            return
        flow = self.choose(leg.destination_number, self.deps.clock())
        outcome = await ivr.run_flow(flow, call, self.services, language=self.language)
        self.outcomes.labels(flow.id, outcome.status.value).inc()
        log.info("call %s: flow %s ended %s", leg.uuid, flow.id, outcome.status.value)
        if outcome.status is ivr.OutcomeStatus.EMERGENCY:
            await leg.wait_hangup()  # the caller is with the emergency centre now
            return
        if (
            self.survey
            and outcome.status is ivr.OutcomeStatus.QUEUED
            and self.queue.outcomes.get(leg.uuid) == "completed"
            and not leg.hung_up
        ):
            await self._survey(leg, call)

    async def _survey(self, leg: CallLeg, call: EslCallControl) -> None:
        ticket = await store.call_ticket(self.deps, leg.uuid)
        variables = {"ticket_number": ticket} if ticket else {}
        outcome = await ivr.run_flow(
            self.flows[SURVEY_FLOW],
            call,
            self.services,
            language=self.language,
            variables=variables,
        )
        self.outcomes.labels(SURVEY_FLOW, outcome.status.value).inc()
