"""The shipped IVR flows, end to end over the event socket: the simulated switch, our
outbound server, EslCallControl, the interpreter, and stub services."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

import ivr
from hotline.telephony.esl_outbound import CallLeg, OutboundServer
from hotline.telephony.ivr_adapter import EslCallControl
from hotline.telephony.simulator import CallerScript, FreeSwitchSimulator, SimChannel

CARD = "3100000000000011"  # Luhn-valid
PIN = "135790"
ID6 = "12345X"  # keyed as 12345*
RECEIPT = "20261122000042"
SCALE = 0.02  # simulated seconds -> real seconds


@dataclass
class Stubs:
    queued: list[ivr.QueueRequest] = field(default_factory=list)
    reports: list[ivr.LossReport] = field(default_factory=list)
    callbacks: list[ivr.CallbackRequest] = field(default_factory=list)
    voicemails: list[ivr.VoicemailMessage] = field(default_factory=list)

    async def enqueue(self, request: ivr.QueueRequest) -> ivr.QueueResult:
        self.queued.append(request)
        return ivr.QueueResult(ivr.QueueStatus.HANDED_OFF)

    async def balance(self, query: ivr.BalanceQuery) -> ivr.CardReply:
        return ivr.CardReply(ivr.CardOutcome.OK, balance_fen=12345)

    async def report_lost(self, report: ivr.LossReport) -> ivr.CardReply:
        self.reports.append(report)
        ok = (report.card_number, report.id_last6, report.pin) == (CARD, ID6, PIN)
        if not ok:
            return ivr.CardReply(ivr.CardOutcome.WRONG_PIN)
        return ivr.CardReply(ivr.CardOutcome.OK, receipt=RECEIPT)

    async def hand_off(self, request: ivr.EmergencyRequest) -> ivr.EmergencyResult:
        return ivr.EmergencyResult(connected=True, line=request.line)

    async def request_callback(self, request: ivr.CallbackRequest) -> str:
        self.callbacks.append(request)
        return "cb-1"

    async def voicemail_path(self, call_uuid: str) -> str:
        return f"/var/spool/hotline/voicemail/{call_uuid}.wav"

    async def voicemail_recorded(self, message: ivr.VoicemailMessage) -> None:
        self.voicemails.append(message)

    @property
    def services(self) -> ivr.IvrServices:
        return ivr.IvrServices(
            queue=self,
            cards=self,
            emergency=self,
            callbacks=self,
            voicemail=self,  # type: ignore[arg-type]
        )


@dataclass
class Line:
    sim: FreeSwitchSimulator
    server: OutboundServer
    stubs: Stubs
    outcomes: list[ivr.Outcome]
    flow_id: list[str]

    async def call(self, flow_id: str, script: CallerScript) -> tuple[ivr.Outcome, SimChannel]:
        self.flow_id[0] = flow_id
        ch = await self.sim.place_call(script)
        async with asyncio.timeout(10):
            await ch.gone.wait()
            while self.server.legs or not self.outcomes:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        return self.outcomes[-1], ch


@pytest.fixture
async def line() -> AsyncIterator[Line]:
    flows = ivr.load_shipped()
    stubs = Stubs()
    outcomes: list[ivr.Outcome] = []
    flow_id = ["12345-default"]

    async def handler(leg: CallLeg) -> None:
        call = EslCallControl(leg, ivr.SHIPPED_PROMPTS)
        assert isinstance(call, ivr.CallControl)
        outcomes.append(await ivr.run_flow(flows[flow_id[0]], call, stubs.services))

    server = OutboundServer(handler, port=0, drain_timeout=2)
    await server.start()
    sim = FreeSwitchSimulator(
        socket_target=("127.0.0.1", server.port), time_scale=SCALE, linger_close_after=1
    )
    await sim.start()
    yield Line(sim, server, stubs, outcomes, flow_id)
    await sim.stop()
    await server.stop()


def app_args(ch: SimChannel, app: str) -> list[str]:
    return [arg for name, arg in ch.apps if name == app]


async def test_the_default_flow_reaches_the_queue_with_no_key_pressed(line: Line) -> None:
    outcome, ch = await line.call("12345-default", CallerScript(caller_number="13800138000"))
    assert outcome.status is ivr.OutcomeStatus.QUEUED
    assert [r.call_uuid for r in line.stubs.queued] == [ch.uuid]
    assert line.stubs.queued[0].caller_id == "13800138000"
    assert line.stubs.queued[0].queue == "12345"
    # answered, keys switched off (FreeSWITCH's default stops playback on *), greeting
    assert [name for name, _ in ch.apps][:3] == ["answer", "set", "playback"]
    assert app_args(ch, "set")[0] == "playback_terminators=none"
    assert app_args(ch, "playback") == [ivr.SHIPPED_PROMPTS.path("zh", "greeting")]
    assert "play_and_get_digits" not in [name for name, _ in ch.apps]  # no menu


async def test_a_lost_card_reported_by_keys_on_the_card_service_line(line: Line) -> None:
    presses = ["2", CARD + "#", "12345*#", PIN + "#"]
    outcome, ch = await line.call("card-service", CallerScript(presses=presses))
    assert outcome.status is ivr.OutcomeStatus.HUNG_UP
    assert [(r.card_number, r.id_last6, r.pin) for r in line.stubs.reports] == [(CARD, ID6, PIN)]
    assert line.stubs.reports[0].call_uuid == ch.uuid
    # FreeSWITCH's argument order; no terminator on a menu is spelled `none`
    menu = app_args(ch, "play_and_get_digits")[0].split(" ")
    assert menu[:5] == ["1", "1", "1", "6000", "none"]
    assert menu[5] == ivr.SHIPPED_PROMPTS.path("zh", "card_menu")
    assert menu[6:] == ["silence_stream://250", "ivr_digits", "^[0-9*#]+$", "6000"]
    card = app_args(ch, "play_and_get_digits")[1].split(" ")
    assert card[:5] == ["1", "20", "1", "10000", "#"] and card[9] == "4000"
    # the receipt read back twice after the freeze notice, as one file_string
    last_play = app_args(ch, "playback")[-2]
    assert last_play.startswith("file_string://")
    files = last_play.removeprefix("file_string://").split("!")
    assert files[0].endswith("zh/card_frozen.wav")
    assert [f.rsplit("/", 1)[1] for f in files[1:]] == [f"digit_{d}.wav" for d in RECEIPT * 2]
    assert app_args(ch, "hangup") or ch.hangup_cause == "NORMAL_CLEARING"
    # nothing keyed stays on the channel (CDRs would keep it)
    assert "ivr_digits" not in ch.variables
    assert PIN not in ch.variables.values() and CARD not in ch.variables.values()


async def test_a_caller_hanging_up_mid_flow_ends_the_run_cleanly(
    line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # presses the menu key, then hangs up while asked for the card number
    script = CallerScript(presses=["2"], hangup_after=2.0)
    outcome, ch = await line.call("card-service", script)
    assert outcome.status is ivr.OutcomeStatus.CALLER_HUNG_UP
    assert outcome.steps[-1].result == "caller hung up"
    assert line.stubs.reports == []
    assert ch.hangup_cause == "NORMAL_CLEARING"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert line.server.calls_started == 1 and not line.server.legs


async def test_voicemail_records_until_the_caller_presses_hash(line: Line) -> None:
    script = CallerScript(presses=["2"], speaks_for=7.0)
    outcome, ch = await line.call("12345-after-hours", script)
    assert outcome.status is ivr.OutcomeStatus.HUNG_UP
    (message,) = line.stubs.voicemails
    assert 6.0 <= message.seconds <= 12.0  # simulated seconds (the loop's clock, loaded machine)
    (record,) = app_args(ch, "record")
    assert record == f"/var/spool/hotline/voicemail/{ch.uuid}.wav 120 200"
    assert "playback_terminators=#" in app_args(ch, "set")


async def test_a_hang_up_while_recording_keeps_the_message(line: Line) -> None:
    script = CallerScript(presses=["2"], speaks_for=60.0, hangup_after=8.0)
    outcome, _ = await line.call("12345-after-hours", script)
    assert outcome.status is ivr.OutcomeStatus.CALLER_HUNG_UP
    (message,) = line.stubs.voicemails
    assert 0 < message.seconds < 8.0


Handler = Callable[[EslCallControl], Awaitable[object]]


async def run_on_call(handler: Handler, script: CallerScript | None = None) -> object:
    results: list[object] = []

    async def on_call(leg: CallLeg) -> None:
        results.append(await handler(EslCallControl(leg)))

    async with OutboundServer(on_call, port=0, drain_timeout=2) as server:
        async with FreeSwitchSimulator(
            socket_target=("127.0.0.1", server.port), time_scale=SCALE, linger_close_after=1
        ) as sim:
            ch = await sim.place_call(script)
            async with asyncio.timeout(10):
                await ch.gone.wait()
                while server.legs:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
    return results[0] if results else None


async def test_an_interruptible_play_returns_the_key_that_stopped_it() -> None:
    async def handler(call: EslCallControl) -> object:
        await call.answer()
        await call.answer()  # idempotent: one answer application only
        call.leg.on(
            "CHANNEL_EXECUTE",
            lambda ev: (
                asyncio.ensure_future(call.leg.api(f"uuid_recv_dtmf {call.uuid} 7"))
                if ev.get("Application") == "playback"
                else None
            ),
        )
        pressed = await call.play(["/p/a.wav", "/p/b.wav"], interruptible=True)
        await call.hangup()
        with pytest.raises(ivr.CallerHungUp):
            await call.play(["/p/a.wav"])
        return pressed, call.leg.commands_sent

    result = await run_on_call(handler)
    assert result is not None
    pressed, _ = result  # type: ignore[misc]
    assert pressed == "7"


async def test_get_and_set_variables_and_the_hung_up_error() -> None:
    async def handler(call: EslCallControl) -> object:
        await call.set_variable("ivr_language", "en")
        got = await call.get_variable("ivr_language")
        missing = await call.get_variable("no_such_variable")
        await call.hangup("USER_BUSY")
        errors = []
        for op in (
            call.answer(),
            call.get_variable("x"),
            call.set_variable("x", "1"),
            call.hangup(),
            call.record("/tmp/x.wav", max_seconds=5),
            call.play_and_get_digits(
                ["/p/a.wav"], min_digits=1, max_digits=1, tries=1, timeout_ms=1000, terminators=""
            ),
        ):
            try:
                await op
            except ivr.CallerHungUp:
                errors.append(True)
        return got, missing, errors

    got, missing, errors = await run_on_call(handler)  # type: ignore[misc]
    assert (got, missing) == ("en", None)
    assert errors == [True] * 6
