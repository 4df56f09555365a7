"""The shipped flows, run end to end against a scripted caller and fake services."""

from __future__ import annotations

from datetime import datetime

import pytest
from ivr_fakes import CARD, ID6, PIN, Fakes

import ivr
from ivr import CardOutcome, OutcomeStatus, QueueStatus, TicketPhase
from ivr.testing import ScriptedCall

FLOWS = ivr.load_shipped()
ZH_DIGITS = {str(d): f"zh/digit_{d}" for d in range(10)}


def results(outcome: ivr.Outcome) -> list[tuple[str, str]]:
    return [(s.node, s.result) for s in outcome.steps]


def test_the_shipped_flows_are_the_four_the_issue_names() -> None:
    assert sorted(FLOWS) == [
        "12345-after-hours",
        "12345-default",
        "card-service",
        "post-call-survey",
    ]


# --- 12345-default: no menu --------------------------------------------------------


async def test_default_flow_plays_the_greeting_and_queues_without_asking_anything(
    fakes: Fakes,
) -> None:
    call = ScriptedCall(caller_id="13812345678")
    outcome = await ivr.run_flow(FLOWS["12345-default"], call, fakes.ivr)

    assert outcome.status is OutcomeStatus.QUEUED
    assert outcome.queue == "12345"
    assert results(outcome) == [("greeting", "played"), ("agents", "handed_off")]
    # no menu: the caller is never asked for a key
    assert [op[0] for op in call.ops] == ["answer", "play"]
    assert call.heard() == ["zh/greeting"]
    (request,) = fakes.queue.requests
    assert (request.queue, request.priority, request.language, request.flow_id) == (
        "12345",
        0,
        "zh",
        "12345-default",
    )
    assert request.call_uuid == call.uuid


async def test_default_flow_in_english(fakes: Fakes) -> None:
    call = ScriptedCall()
    outcome = await ivr.run_flow(FLOWS["12345-default"], call, fakes.ivr, language="en")
    assert call.heard() == ["en/greeting"]
    assert fakes.queue.requests[0].language == "en"
    assert outcome.language == "en"


async def test_default_flow_offers_a_callback_when_the_acd_declines(fakes: Fakes) -> None:
    fakes.queue.status = QueueStatus.OVERFLOW
    call = ScriptedCall(caller_id="+8613812345678", keys={"callback_offer": ["1"]})
    outcome = await ivr.run_flow(FLOWS["12345-default"], call, fakes.ivr)

    assert outcome.status is OutcomeStatus.HUNG_UP
    (cb,) = fakes.callbacks.requests
    assert (cb.number, cb.queue, cb.call_uuid) == ("+8613812345678", "12345", call.uuid)
    assert call.heard()[-2:] == ["zh/callback_confirmed", "zh/goodbye"]


# --- 12345-after-hours -------------------------------------------------------------


async def test_after_hours_callback_on_the_calling_number(fakes: Fakes) -> None:
    call = ScriptedCall(
        caller_id="13812345678", keys={"after_hours": ["1"], "callback_offer": ["1"]}
    )
    outcome = await ivr.run_flow(FLOWS["12345-after-hours"], call, fakes.ivr)

    assert outcome.status is OutcomeStatus.HUNG_UP
    assert results(outcome) == [
        ("closed", "key 1"),
        ("callback", "booked, this number"),
        ("goodbye", "hangup NORMAL_CLEARING"),
    ]
    assert [r.number for r in fakes.callbacks.requests] == ["+8613812345678"]


async def test_after_hours_callback_on_another_number_reads_it_from_the_keypad(
    fakes: Fakes,
) -> None:
    call = ScriptedCall(
        caller_id="13812345678",
        keys={
            "after_hours": ["1"],
            "callback_offer": ["2"],
            "enter_phone_number": ["12345#", "02161234567#"],  # a wrong number, then a good one
        },
    )
    await ivr.run_flow(FLOWS["12345-after-hours"], call, fakes.ivr)

    assert [r.number for r in fakes.callbacks.requests] == ["+862161234567"]
    assert call.heard().count("zh/invalid_input") == 1


async def test_after_hours_anonymous_caller_is_asked_for_a_number_straight_away(
    fakes: Fakes,
) -> None:
    call = ScriptedCall(
        caller_id="anonymous",
        keys={"after_hours": ["1"], "enter_phone_number": ["13912345678#"]},
    )
    await ivr.run_flow(FLOWS["12345-after-hours"], call, fakes.ivr)

    assert "zh/callback_offer" not in call.heard()
    assert [r.number for r in fakes.callbacks.requests] == ["+8613912345678"]


async def test_after_hours_voicemail(fakes: Fakes) -> None:
    call = ScriptedCall(keys={"after_hours": ["2"]}, record_seconds=42.0)
    outcome = await ivr.run_flow(FLOWS["12345-after-hours"], call, fakes.ivr)

    assert outcome.status is OutcomeStatus.HUNG_UP
    (message,) = fakes.voicemail.messages
    assert message.path == f"/var/spool/hotline/voicemail/{call.uuid}.wav"
    assert message.seconds == 42.0
    assert ("record", message.path, 120) in call.ops
    assert call.heard() == ["zh/after_hours", "zh/voicemail_intro", "zh/beep", "zh/goodbye"]


async def test_after_hours_silence_leads_to_the_voicemail_not_a_dead_end(fakes: Fakes) -> None:
    call = ScriptedCall()  # presses nothing
    outcome = await ivr.run_flow(FLOWS["12345-after-hours"], call, fakes.ivr)

    assert results(outcome)[0] == ("closed", "timeout")
    assert call.heard()[:2] == ["zh/after_hours", "zh/after_hours"]  # asked twice
    assert len(fakes.voicemail.messages) == 1


async def test_after_hours_invalid_key_plays_the_invalid_prompt_then_asks_again(
    fakes: Fakes,
) -> None:
    call = ScriptedCall(keys={"after_hours": ["5", "1"], "callback_offer": ["1"]})
    await ivr.run_flow(FLOWS["12345-after-hours"], call, fakes.ivr)

    assert call.heard()[:3] == ["zh/after_hours", "zh/invalid_input", "zh/after_hours"]
    assert len(fakes.callbacks.requests) == 1


async def test_caller_who_hangs_up_during_the_voicemail_still_leaves_the_message(
    fakes: Fakes,
) -> None:
    # ops: answer, get(after_hours), play(intro+beep), record <- hangs up while recording
    call = ScriptedCall(keys={"after_hours": ["2"]}, hang_up_at=4, record_seconds=9.0)
    outcome = await ivr.run_flow(FLOWS["12345-after-hours"], call, fakes.ivr)

    assert outcome.status is OutcomeStatus.CALLER_HUNG_UP
    assert [m.seconds for m in fakes.voicemail.messages] == [9.0]


# --- card-service ------------------------------------------------------------------


async def test_card_balance_is_spoken_in_yuan(fakes: Fakes) -> None:
    call = ScriptedCall(
        keys={"card_menu": ["1"], "enter_card_number": [CARD + "#"], "enter_pin": [PIN]}
    )
    outcome = await ivr.run_flow(FLOWS["card-service"], call, fakes.ivr)

    assert outcome.status is OutcomeStatus.HUNG_UP
    assert [(q.card_number, q.pin) for q in fakes.cards.balances] == [(CARD, PIN)]
    # 12345 fen = 一百二十三点四五元
    balance = call.heard()[call.heard().index("zh/balance_is") :]
    assert balance == [
        "zh/balance_is",
        "zh/digit_1",
        "zh/hundred",
        "zh/digit_2",
        "zh/ten",
        "zh/digit_3",
        "zh/point",
        "zh/digit_4",
        "zh/digit_5",
        "zh/yuan",
        "zh/goodbye",
    ]


async def test_card_balance_in_english_after_pressing_8(fakes: Fakes) -> None:
    fakes.cards.cards[CARD].balance_fen = 2050
    call = ScriptedCall(
        keys={
            "card_menu": ["8", "1"],
            "enter_card_number": [CARD + "#"],
            "enter_pin": [PIN],
        }
    )
    outcome = await ivr.run_flow(FLOWS["card-service"], call, fakes.ivr)

    assert outcome.language == "en"
    assert call.variables["ivr_language"] == "en"
    heard = call.heard()
    assert heard[:2] == ["zh/card_menu", "en/card_menu"]
    assert heard[heard.index("en/balance_is") :] == [
        "en/balance_is",
        "en/n20",
        "en/point",
        "en/digit_5",
        "en/yuan",
        "en/goodbye",
    ]


async def test_report_lost_freezes_the_card_and_reads_the_receipt_back_digit_by_digit(
    fakes: Fakes,
) -> None:
    call = ScriptedCall(
        caller_id="13812345678",
        keys={
            "card_menu": ["2"],
            "enter_card_number": [CARD + "#"],
            "enter_id_last6": ["12345*"],
            "enter_pin": [PIN],
        },
    )
    outcome = await ivr.run_flow(FLOWS["card-service"], call, fakes.ivr)

    assert outcome.status is OutcomeStatus.HUNG_UP
    (report,) = fakes.cards.reports
    assert (report.card_number, report.id_last6, report.pin, report.call_uuid) == (
        CARD,
        ID6,
        PIN,
        call.uuid,
    )
    assert fakes.cards.cards[CARD].lost
    receipt = [ZH_DIGITS[d] for d in "20261122000042"]
    play = next(op for op in call.ops if op[0] == "play" and "zh/card_frozen" in op[1])
    assert list(play[1]) == ["zh/card_frozen", *receipt, *receipt]  # read twice
    assert results(outcome)[1] == ("report_lost", "report_lost ok")


async def test_wrong_pin_is_asked_again_then_the_caller_goes_to_an_agent(fakes: Fakes) -> None:
    call = ScriptedCall(
        keys={
            "card_menu": ["2"],
            "enter_card_number": [CARD + "#"],
            "enter_id_last6": ["12345*"] * 3,
            "enter_pin": ["000000", "111111", "222222"],
        }
    )
    outcome = await ivr.run_flow(FLOWS["card-service"], call, fakes.ivr)

    assert outcome.status is OutcomeStatus.QUEUED
    assert outcome.queue == "card"
    assert len(fakes.cards.reports) == 3
    assert not fakes.cards.cards[CARD].lost
    assert call.heard().count("zh/wrong_pin") == 3
    # the card number is asked once; ID digits and PIN again after each refusal
    assert call.heard().count("zh/enter_card_number") == 1
    assert call.heard().count("zh/enter_id_last6") == 3
    assert ("report_lost", "gave up") in results(outcome)
    assert fakes.queue.requests[0].skills == ("citizen_card",)


async def test_wrong_pin_then_the_right_one_freezes_the_card(fakes: Fakes) -> None:
    call = ScriptedCall(
        keys={
            "card_menu": ["2"],
            "enter_card_number": [CARD + "#"],
            "enter_id_last6": ["12345*", "12345*"],
            "enter_pin": ["000000", PIN],
        }
    )
    outcome = await ivr.run_flow(FLOWS["card-service"], call, fakes.ivr)

    assert outcome.status is OutcomeStatus.HUNG_UP
    assert fakes.cards.cards[CARD].lost
    assert [r.outcome for r in [await fakes.cards.balance(ivr.BalanceQuery("x", CARD, PIN))]] == [
        CardOutcome.OK
    ]


async def test_a_locked_pin_goes_straight_to_an_agent(fakes: Fakes) -> None:
    fakes.cards.cards[CARD].failures = 5
    call = ScriptedCall(
        keys={"card_menu": ["1"], "enter_card_number": [CARD + "#"], "enter_pin": [PIN]}
    )
    outcome = await ivr.run_flow(FLOWS["card-service"], call, fakes.ivr)

    assert outcome.status is OutcomeStatus.QUEUED
    assert "zh/card_locked" in call.heard()
    assert len(fakes.cards.balances) == 1


async def test_an_unknown_card_asks_for_the_number_again(fakes: Fakes) -> None:
    other = "3100000000000029"  # valid Luhn, but no such card
    call = ScriptedCall(
        keys={
            "card_menu": ["1"],
            "enter_card_number": [other + "#", CARD + "#"],
            "enter_pin": [PIN, PIN],
        }
    )
    await ivr.run_flow(FLOWS["card-service"], call, fakes.ivr)

    assert [q.card_number for q in fakes.cards.balances] == [other, CARD]
    assert "zh/card_unknown" in call.heard()


async def test_a_mistyped_card_number_fails_its_check_digit_before_any_lookup(
    fakes: Fakes,
) -> None:
    call = ScriptedCall(
        keys={
            "card_menu": ["1"],
            "enter_card_number": ["3100000000000012#", CARD + "#"],
            "enter_pin": [PIN],
        }
    )
    await ivr.run_flow(FLOWS["card-service"], call, fakes.ivr)

    assert [q.card_number for q in fakes.cards.balances] == [CARD]
    assert call.heard()[1:4] == [
        "zh/enter_card_number",
        "zh/invalid_input",
        "zh/enter_card_number",
    ]


async def test_card_menu_invalid_keys_three_times_reach_an_agent(fakes: Fakes) -> None:
    call = ScriptedCall(keys={"card_menu": ["5", "6", "*"]})
    outcome = await ivr.run_flow(FLOWS["card-service"], call, fakes.ivr)

    assert outcome.status is OutcomeStatus.QUEUED
    assert results(outcome)[:2] == [("main", "invalid"), ("to_agent", "played")]
    assert call.heard().count("zh/invalid_input") == 3


async def test_card_menu_silence_reaches_an_agent(fakes: Fakes) -> None:
    call = ScriptedCall()
    outcome = await ivr.run_flow(FLOWS["card-service"], call, fakes.ivr)

    assert results(outcome)[0] == ("main", "timeout")
    assert call.heard().count("zh/card_menu") == 3
    assert "zh/invalid_input" not in call.heard()
    assert outcome.queue == "card"


async def test_card_service_emergency_calls_the_emergency_line(fakes: Fakes) -> None:
    call = ScriptedCall(caller_id="13812345678", keys={"card_menu": ["9"], "emergency_menu": ["3"]})
    outcome = await ivr.run_flow(FLOWS["card-service"], call, fakes.ivr)

    assert outcome.status is OutcomeStatus.EMERGENCY
    (req,) = fakes.emergency.requests
    assert (req.line, req.caller_id, req.call_uuid) == ("120", "13812345678", call.uuid)
    assert [ivr.testing.prompt_name(p) for p in req.hold_prompts] == ["zh/emergency_notice"]
    assert fakes.queue.requests == []  # an emergency never waits in the normal queue


async def test_emergency_line_that_fails_puts_the_caller_first_in_the_12345_queue(
    fakes: Fakes,
) -> None:
    fakes.emergency.connected = False
    call = ScriptedCall(keys={"card_menu": ["9"], "emergency_menu": ["1"]})
    outcome = await ivr.run_flow(FLOWS["card-service"], call, fakes.ivr)

    assert [r.line for r in fakes.emergency.requests] == ["110"]
    assert outcome.status is OutcomeStatus.QUEUED
    assert (fakes.queue.requests[0].queue, fakes.queue.requests[0].priority) == ("12345", 9)


async def test_caller_hangs_up_in_the_middle_of_the_card_menu(fakes: Fakes) -> None:
    # ops: answer, get(card_menu) -> 2, get(enter_card_number) <- gone
    call = ScriptedCall(keys={"card_menu": ["2"]}, hang_up_at=3)
    outcome = await ivr.run_flow(FLOWS["card-service"], call, fakes.ivr)

    assert outcome.status is OutcomeStatus.CALLER_HUNG_UP
    assert outcome.node == "report_lost"
    assert fakes.cards.reports == []
    assert ("hangup", "NORMAL_CLEARING") not in call.ops


async def test_a_loss_report_is_kept_when_the_caller_hangs_up_right_after_the_pin(
    fakes: Fakes,
) -> None:
    # ops: answer, menu, card number, id, pin, play(frozen + receipt) <- gone
    call = ScriptedCall(
        keys={
            "card_menu": ["2"],
            "enter_card_number": [CARD + "#"],
            "enter_id_last6": ["12345*"],
            "enter_pin": [PIN],
        },
        hang_up_at=6,
    )
    outcome = await ivr.run_flow(FLOWS["card-service"], call, fakes.ivr)

    assert outcome.status is OutcomeStatus.CALLER_HUNG_UP
    assert fakes.cards.cards[CARD].lost


async def test_no_personal_data_in_the_log_or_the_outcome(
    fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="ivr")
    call = ScriptedCall(
        caller_id="13812345678",
        keys={
            "card_menu": ["2"],
            "enter_card_number": [CARD + "#"],
            "enter_id_last6": ["12345*", "12345*"],
            "enter_pin": ["246801", PIN],
        },
    )
    outcome = await ivr.run_flow(FLOWS["card-service"], call, fakes.ivr)

    assert outcome.status is OutcomeStatus.HUNG_UP
    text = caplog.text + repr(outcome) + repr(fakes.cards.reports)
    for secret in (CARD, PIN, "246801", "12345", "13812345678"):
        assert secret not in text
    assert "report_lost wrong_pin" in caplog.text  # steps are logged


# --- post-call-survey --------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "satisfaction"),
    [("1", "satisfied"), ("2", "basically_satisfied"), ("3", "unsatisfied")],
)
async def test_survey_stores_the_score_with_the_ticket(
    fakes: Fakes, key: str, satisfaction: str
) -> None:
    call = ScriptedCall(keys={"survey_question": [key]})
    outcome = await ivr.run_flow(
        FLOWS["post-call-survey"], call, fakes.ivr, variables={"ticket_number": "2026112200123"}
    )

    assert outcome.status is OutcomeStatus.HUNG_UP
    (answer,) = fakes.surveys.answers
    assert (answer.call_uuid, answer.ticket_number, answer.score, answer.satisfaction) == (
        call.uuid,
        "2026112200123",
        int(key),
        satisfaction,
    )
    assert call.heard() == ["zh/survey_question", "zh/thank_you", "zh/goodbye"]


async def test_survey_rejects_other_keys_and_stores_nothing_without_an_answer(
    fakes: Fakes,
) -> None:
    call = ScriptedCall(keys={"survey_question": ["4", "0"]})
    outcome = await ivr.run_flow(FLOWS["post-call-survey"], call, fakes.ivr)

    assert fakes.surveys.answers == []
    assert results(outcome)[0] == ("survey", "no answer (invalid)")
    assert call.heard() == [
        "zh/survey_question",
        "zh/invalid_input",
        "zh/survey_question",
        "zh/invalid_input",
        "zh/goodbye",
    ]


async def test_survey_takes_the_ticket_from_the_channel_when_not_passed_in(
    fakes: Fakes,
) -> None:
    call = ScriptedCall(keys={"survey_question": ["9", "2"]})
    call.variables["ticket_number"] = "2026112200999"
    await ivr.run_flow(FLOWS["post-call-survey"], call, fakes.ivr)

    assert [(a.ticket_number, a.score) for a in fakes.surveys.answers] == [("2026112200999", 2)]


# --- selection ---------------------------------------------------------------------


def test_select_flow_by_working_time() -> None:
    now = datetime(2026, 10, 1, 10, 0)  # National Day: a holiday
    assert ivr.select_flow(FLOWS, lambda t: False, now).id == "12345-after-hours"
    assert ivr.select_flow(FLOWS, lambda t: True, now).id == "12345-default"


def test_select_flow_fails_towards_the_agents() -> None:
    def broken(now: datetime) -> bool:
        raise RuntimeError("calendar unavailable")

    now = datetime(2026, 10, 1, 22, 0)
    assert ivr.select_flow(FLOWS, broken, now).id == "12345-default"
    only_default = {"12345-default": FLOWS["12345-default"]}
    assert ivr.select_flow(only_default, lambda t: False, now).id == "12345-default"


def test_the_lookup_phase_names_match_the_protocol() -> None:
    assert {p.value for p in TicketPhase} == {"received", "in_progress", "replied", "closed"}
