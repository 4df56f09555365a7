"""Fakes of the services a flow calls; each records what it was asked."""

from __future__ import annotations

from dataclasses import dataclass, field

from ivr import (
    BalanceQuery,
    CallbackRequest,
    CardOutcome,
    CardReply,
    EmergencyRequest,
    EmergencyResult,
    IvrServices,
    LossReport,
    QueueRequest,
    QueueResult,
    QueueStatus,
    SurveyAnswer,
    TicketPhase,
    VoicemailMessage,
)

CARD = "3100000000000011"  # prefix 3100, serial 1, Luhn digit 1
PIN = "135790"
ID6 = "12345X"  # keyed as 12345*


@dataclass
class Card:
    pin: str = PIN
    id_last6: str = ID6
    balance_fen: int = 12345
    failures: int = 0
    lost: bool = False


@dataclass
class FakeCards:
    cards: dict[str, Card] = field(default_factory=lambda: {CARD: Card()})
    balances: list[BalanceQuery] = field(default_factory=list)
    reports: list[LossReport] = field(default_factory=list)
    receipt: str = "20261122000042"

    def _check(self, card_no: str, pin: str, id6: str | None = None) -> CardReply | Card:
        card = self.cards.get(card_no)
        if card is None:
            return CardReply(CardOutcome.UNKNOWN_CARD)
        if card.failures >= 5:
            return CardReply(CardOutcome.LOCKED)
        if pin != card.pin or (id6 is not None and id6 != card.id_last6):
            card.failures += 1
            return CardReply(CardOutcome.WRONG_PIN)
        card.failures = 0
        return card

    async def balance(self, query: BalanceQuery) -> CardReply:
        self.balances.append(query)
        checked = self._check(query.card_number, query.pin)
        if isinstance(checked, CardReply):
            return checked
        return CardReply(CardOutcome.OK, balance_fen=checked.balance_fen)

    async def report_lost(self, report: LossReport) -> CardReply:
        self.reports.append(report)
        checked = self._check(report.card_number, report.pin, report.id_last6)
        if isinstance(checked, CardReply):
            return checked
        if checked.lost:
            return CardReply(CardOutcome.REFUSED)
        checked.lost = True
        return CardReply(CardOutcome.OK, receipt=self.receipt)


@dataclass
class FakeQueue:
    status: QueueStatus = QueueStatus.HANDED_OFF
    requests: list[QueueRequest] = field(default_factory=list)

    async def enqueue(self, request: QueueRequest) -> QueueResult:
        self.requests.append(request)
        return QueueResult(self.status)


@dataclass
class FakeEmergency:
    connected: bool = True
    requests: list[EmergencyRequest] = field(default_factory=list)

    async def hand_off(self, request: EmergencyRequest) -> EmergencyResult:
        self.requests.append(request)
        return EmergencyResult(self.connected, line=request.line)


@dataclass
class FakeCallbacks:
    requests: list[CallbackRequest] = field(default_factory=list)
    fail: bool = False

    async def request_callback(self, request: CallbackRequest) -> str:
        if self.fail:
            raise ConnectionError("database is down")
        self.requests.append(request)
        return f"cb-{len(self.requests)}"


@dataclass
class FakeSurveys:
    answers: list[SurveyAnswer] = field(default_factory=list)

    async def record_survey(self, answer: SurveyAnswer) -> None:
        self.answers.append(answer)


@dataclass
class FakeVoicemails:
    messages: list[VoicemailMessage] = field(default_factory=list)

    async def voicemail_path(self, call_uuid: str) -> str:
        return f"/var/spool/hotline/voicemail/{call_uuid}.wav"

    async def voicemail_recorded(self, message: VoicemailMessage) -> None:
        self.messages.append(message)


@dataclass
class FakeTickets:
    phases: dict[str, TicketPhase] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    async def ticket_phase(self, number: str) -> TicketPhase | None:
        self.asked.append(number)
        return self.phases.get(number)


@dataclass
class Fakes:
    cards: FakeCards = field(default_factory=FakeCards)
    queue: FakeQueue = field(default_factory=FakeQueue)
    emergency: FakeEmergency = field(default_factory=FakeEmergency)
    callbacks: FakeCallbacks = field(default_factory=FakeCallbacks)
    surveys: FakeSurveys = field(default_factory=FakeSurveys)
    voicemail: FakeVoicemails = field(default_factory=FakeVoicemails)
    tickets: FakeTickets = field(default_factory=FakeTickets)

    @property
    def ivr(self) -> IvrServices:
        return IvrServices(
            tickets=self.tickets,
            cards=self.cards,
            queue=self.queue,
            emergency=self.emergency,
            callbacks=self.callbacks,
            surveys=self.surveys,
            voicemail=self.voicemail,
        )
