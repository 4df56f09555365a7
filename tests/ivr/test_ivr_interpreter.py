"""Node behaviour not covered by the shipped flows, and the interpreter's guarantees:
bounded runs, clean ends on hang-up at any point, services failing without a crash."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ivr_fakes import CARD, PIN, FakeCards, Fakes

import ivr
from ivr import OutcomeStatus, PromptSet, QueueStatus, TicketPhase
from ivr.testing import ScriptedCall

FLOWS = ivr.load_shipped()


def prompt_dir(root: Path, *names: str, langs: tuple[str, ...] = ("zh",)) -> PromptSet:
    for lang in langs:
        (root / lang).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / lang / f"{name}.wav").write_bytes(b"RIFF")
    return PromptSet(root)


DIGITS = tuple(f"digit_{d}" for d in range(10))

LOOKUP = """\
id: status
language: zh
start: ask
nodes:
  ask:
    type: collect
    prompt: enter_ticket
    validate: ticket_number
    store: ticket_number
    tries: 2
    next: look
    on_invalid: bye
  look:
    type: lookup
    intro_prompt: ticket
    statuses:
      received: t_received
      in_progress: t_progress
      replied: t_replied
      closed: t_closed
    next: bye
    on_not_found: unknown
  unknown:
    type: play
    prompt: t_unknown
    next: bye
  bye:
    type: hangup
"""


@pytest.fixture
def lookup_flow(tmp_path: Path) -> ivr.Flow:
    prompts = prompt_dir(
        tmp_path, "enter_ticket", "ticket", "t_received", "t_progress", "t_replied",
        "t_closed", "t_unknown", "invalid_input", *DIGITS,
    )  # fmt: skip
    return ivr.load_flow(LOOKUP, prompts=prompts)


async def test_lookup_reads_the_number_and_its_phase(lookup_flow: ivr.Flow, fakes: Fakes) -> None:
    fakes.tickets.phases["2026112200123"] = TicketPhase.IN_PROGRESS
    call = ScriptedCall(keys={"enter_ticket": ["2026112200123#"]})
    outcome = await ivr.run_flow(lookup_flow, call, fakes.ivr)

    assert fakes.tickets.asked == ["2026112200123"]
    assert outcome.variables == {"ticket_number": "2026112200123"}
    heard = call.heard()
    assert heard[1:] == ["zh/ticket", *(f"zh/digit_{d}" for d in "2026112200123"), "zh/t_progress"]


async def test_lookup_of_an_unknown_ticket(lookup_flow: ivr.Flow, fakes: Fakes) -> None:
    call = ScriptedCall(keys={"enter_ticket": ["1234567#", "20261122009#"]})
    outcome = await ivr.run_flow(lookup_flow, call, fakes.ivr)

    # 7 digits fail the ticket-number check; the second entry is looked up and not found
    assert fakes.tickets.asked == ["20261122009"]
    assert [s.result for s in outcome.steps] == [
        "ok",
        "not found",
        "played",
        "hangup NORMAL_CLEARING",
    ]
    assert "zh/t_unknown" in call.heard()


async def test_collect_timeouts_then_on_invalid(lookup_flow: ivr.Flow, fakes: Fakes) -> None:
    call = ScriptedCall()
    outcome = await ivr.run_flow(lookup_flow, call, fakes.ivr)

    assert [(s.node, s.result) for s in outcome.steps] == [
        ("ask", "timeout"),
        ("bye", "hangup NORMAL_CLEARING"),
    ]
    gets = [op for op in call.ops if op[0] == "get"]
    assert len(gets) == 2  # tries: 2


async def test_collect_passes_the_switch_what_it_needs(lookup_flow: ivr.Flow, fakes: Fakes) -> None:
    seen: list[dict[str, object]] = []

    class Spy(ScriptedCall):
        async def play_and_get_digits(self, paths, **kw):  # type: ignore[no-untyped-def]
            seen.append(kw)
            return await super().play_and_get_digits(paths, **kw)

    await ivr.run_flow(lookup_flow, Spy(keys={"enter_ticket": ["20261122001#"]}), fakes.ivr)
    assert seen[0] == {
        "min_digits": 1,
        "max_digits": 20,
        "tries": 1,
        "timeout_ms": 8000,
        "terminators": "#",
        "digit_timeout_ms": 4000,
    }


async def test_a_sensitive_collect_never_reaches_the_outcome_or_the_queue(
    tmp_path: Path, fakes: Fakes
) -> None:
    text = """\
id: s
language: zh
start: ask
nodes:
  ask:
    type: collect
    prompt: enter
    validate: {regex: "[0-9]{4}"}
    store: code
    sensitive: true
    next: q
    on_invalid: q
  q:
    type: queue
    queue: "12345"
"""
    flow = ivr.load_flow(text, prompts=prompt_dir(tmp_path, "enter", "invalid_input"))
    outcome = await ivr.run_flow(flow, ScriptedCall(keys={"enter": ["4321"]}), fakes.ivr)

    assert outcome.variables == {}
    assert fakes.queue.requests[0].variables == {}


async def test_runaway_is_stopped_by_the_step_guard(tmp_path: Path, fakes: Fakes) -> None:
    text = """\
id: round
language: zh
start: menu
nodes:
  menu:
    type: menu
    prompt: m
    digits: {1: again}
    on_invalid: bye
  again:
    type: play
    prompt: m
    next: menu
  bye:
    type: hangup
"""
    flow = ivr.load_flow(text, prompts=prompt_dir(tmp_path, "m", "invalid_input"))
    call = ScriptedCall(keys={"m": ["1"] * 1000})
    outcome = await ivr.run_flow(flow, call, fakes.ivr, max_steps=25)

    assert outcome.status is OutcomeStatus.STEP_LIMIT
    assert len(outcome.steps) == 25


async def test_a_missing_service_is_refused_before_the_call_is_answered(fakes: Fakes) -> None:
    call = ScriptedCall()
    with pytest.raises(ivr.MissingService, match="cards"):
        await ivr.run_flow(FLOWS["card-service"], call, ivr.IvrServices(queue=fakes.queue))
    assert call.ops == []


async def test_a_failing_service_takes_the_flows_way_out(fakes: Fakes) -> None:
    fakes.callbacks.fail = True
    call = ScriptedCall(keys={"after_hours": ["1"], "callback_offer": ["1"]})
    outcome = await ivr.run_flow(FLOWS["12345-after-hours"], call, fakes.ivr)

    # the callback could not be booked: the caller may leave a message instead
    assert [s.node for s in outcome.steps] == ["closed", "callback", "message", "goodbye"]
    assert len(fakes.voicemail.messages) == 1


async def test_a_queue_that_raises_ends_failed_not_crashed(fakes: Fakes) -> None:
    class Broken:
        async def enqueue(self, request: ivr.QueueRequest) -> ivr.QueueResult:
            raise RuntimeError("acd down for card 3100000000000011")

    flow = FLOWS["card-service"]
    services = ivr.IvrServices(
        cards=fakes.cards, queue=Broken(), emergency=fakes.emergency, callbacks=fakes.callbacks
    )
    call = ScriptedCall(keys={"card_menu": ["0"], "callback_offer": ["1"]})
    outcome = await ivr.run_flow(flow, call, services)

    # the queue failed, so the flow's on_failure offered a callback
    assert [s.result for s in outcome.steps][:3] == ["key 0", "played", "service failed"]
    assert len(fakes.callbacks.requests) == 1


async def test_a_loss_report_in_flight_completes_even_if_the_run_is_cancelled(
    fakes: Fakes,
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    frozen: list[str] = []

    class SlowCards(FakeCards):
        async def report_lost(self, report: ivr.LossReport) -> ivr.CardReply:
            started.set()
            await release.wait()
            frozen.append(report.card_number)
            return await super().report_lost(report)

    fakes.cards = SlowCards()
    call = ScriptedCall(
        keys={
            "card_menu": ["2"],
            "enter_card_number": [CARD + "#"],
            "enter_id_last6": ["12345*"],
            "enter_pin": [PIN],
        }
    )
    run = asyncio.create_task(ivr.run_flow(FLOWS["card-service"], call, fakes.ivr))
    await started.wait()
    run.cancel()  # the telephony side drops the call while the freeze is being written
    with pytest.raises(asyncio.CancelledError):
        await run
    release.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert frozen == [CARD]
    assert fakes.cards.cards[CARD].lost


async def test_a_broken_call_leg_ends_failed(fakes: Fakes) -> None:
    class Broken(ScriptedCall):
        async def play(self, paths, *, interruptible=False):  # type: ignore[no-untyped-def]
            raise ConnectionResetError("esl socket closed")

    outcome = await ivr.run_flow(FLOWS["12345-default"], Broken(), fakes.ivr)
    assert (outcome.status, outcome.detail) == (OutcomeStatus.FAILED, "call: ConnectionResetError")


async def test_agent_done_continues_at_next(tmp_path: Path, fakes: Fakes) -> None:
    text = """\
id: then-survey
language: zh
start: q
nodes:
  q:
    type: queue
    queue: "12345"
    next: survey
  survey:
    type: survey
    prompt: s
    thanks_prompt: null
    invalid_prompt: null
    next: bye
  bye:
    type: hangup
"""
    flow = ivr.load_flow(text, prompts=prompt_dir(tmp_path, "s"))
    fakes.queue.status = QueueStatus.AGENT_DONE
    outcome = await ivr.run_flow(
        flow,
        ScriptedCall(keys={"s": ["1"]}),
        fakes.ivr,
        variables={"ticket_number": "2026112200001"},
    )
    assert [s.result for s in outcome.steps] == ["agent_done", "score 1", "hangup NORMAL_CLEARING"]
    assert fakes.surveys.answers[0].ticket_number == "2026112200001"


async def test_overflow_without_a_way_out_ends_overflow(tmp_path: Path, fakes: Fakes) -> None:
    text = "id: q\nlanguage: zh\nstart: q\nnodes:\n  q:\n    type: queue\n    queue: x\n"
    flow = ivr.load_flow(text, prompts=prompt_dir(tmp_path))
    fakes.queue.status = QueueStatus.OVERFLOW
    outcome = await ivr.run_flow(flow, ScriptedCall(), fakes.ivr)
    assert (outcome.status, outcome.queue) == (OutcomeStatus.OVERFLOW, "x")


async def test_emergency_node_calls_the_emergency_protocol(tmp_path: Path, fakes: Fakes) -> None:
    text = """\
id: fire
language: zh
start: fire
nodes:
  fire:
    type: emergency
    line: 119
"""
    flow = ivr.load_flow(text)
    call = ScriptedCall(caller_id="13812345678")
    outcome = await ivr.run_flow(flow, call, fakes.ivr)

    assert (outcome.status, outcome.detail) == (OutcomeStatus.EMERGENCY, "119")
    (req,) = fakes.emergency.requests
    assert (req.line, req.flow_id, req.language) == ("119", "fire", "zh")
    # the notice is played by the hand-off while the line rings, not before dialling
    assert [op[0] for op in call.ops] == ["answer"]


async def test_interruptible_play(tmp_path: Path, fakes: Fakes) -> None:
    text = """\
id: notice
language: zh
start: notice
nodes:
  notice:
    type: play
    prompt: long_notice
    interruptible: true
    next: bye
  bye:
    type: hangup
"""
    flow = ivr.load_flow(text, prompts=prompt_dir(tmp_path, "long_notice"))
    outcome = await ivr.run_flow(flow, ScriptedCall(keys={"long_notice": ["5"]}), fakes.ivr)
    assert outcome.steps[0].result == "interrupted"


async def test_an_unoffered_language_falls_back_to_the_flow_default(fakes: Fakes) -> None:
    call = ScriptedCall()
    outcome = await ivr.run_flow(FLOWS["12345-default"], call, fakes.ivr, language="fr")
    assert outcome.language == "zh"
    assert call.heard() == ["zh/greeting"]


@pytest.mark.parametrize("flow_id", sorted(FLOWS))
@pytest.mark.parametrize("at", range(1, 16))
async def test_hanging_up_at_any_point_ends_cleanly(flow_id: str, at: int, fakes: Fakes) -> None:
    fakes.queue.status = QueueStatus.OVERFLOW  # the longest way through the default flow
    call = ScriptedCall(
        keys={
            "card_menu": ["2"],
            "enter_card_number": ["3100000000000011#"],
            "enter_id_last6": ["12345*"] * 3,
            "enter_pin": ["000001", "000002", "000003"],
            "after_hours": ["1"],
            "callback_offer": ["2"],
            "enter_phone_number": ["13812345678#"],
            "survey_question": ["1"],
        },
        hang_up_at=at,
    )
    outcome = await ivr.run_flow(FLOWS[flow_id], call, fakes.ivr)

    ops_done = len(call.ops)
    if outcome.status is OutcomeStatus.CALLER_HUNG_UP:
        assert ops_done == at - 1 or call.ops[-1][0] == "record"
    else:  # the flow finished before the caller would have hung up
        assert ops_done < at
