"""The self-service bot as a pure state machine: each flow step by step."""

from __future__ import annotations

from channels import bot
from tests.channels.helpers import event, image, location, text


def run(*msgs):  # type: ignore[no-untyped-def]
    state = None
    steps = []
    for m in msgs:
        st = bot.step(state, m)
        state = st.state
        steps.append(st)
    return steps


def test_free_text_goes_to_an_agent() -> None:
    st = bot.step(None, text("楼上漏水到我家"))
    assert st.to_agent and st.replies == () and st.effect is None


def test_status_by_number_in_several_spellings() -> None:
    for t in (
        "查询 2026112200123",
        "status 2026112200123",
        "/status 2026112200123",
        "2026112200123",
        "查询：2026112200123",
    ):
        assert bot.step(None, text(t)).effect == bot.LookupTicket("2026112200123")
    assert bot.step(None, text("查询 12")).to_agent  # not a ticket number


def test_my_tickets_by_word_and_menu() -> None:
    assert bot.step(None, text("我的工单")).effect == bot.MyTickets()
    assert bot.step(None, event("CLICK", bot.MENU_MY_TICKETS)).effect == bot.MyTickets()


def test_guided_report_to_confirmation() -> None:
    steps = run(
        event("CLICK", bot.MENU_REPORT),
        text("七"),  # not a kind: asked again
        text("4"),
        text("脏"),  # too short
        text("河边有人倾倒建筑垃圾"),
        location(31.2, 121.5, "滨江路"),
        image("MEDIA-9"),
        text("1"),
    )
    assert "1 咨询" in steps[0].replies[0]
    assert steps[1].state == steps[0].state
    assert steps[3].replies == (bot.say("too_short", "zh"),)
    assert "举报" in steps[6].replies[0] and "滨江路" in steps[6].replies[0]
    assert steps[-1].state is None
    assert steps[-1].effect == bot.CreateTicket(
        kind="report",
        description="河边有人倾倒建筑垃圾",
        address="滨江路",
        lat=31.2,
        lon=121.5,
        photo={
            "ref": "MEDIA-9",
            "kind": "image",
            "url": "http://example.invalid/p.jpg",
            "type": None,
        },
    )


def test_report_with_typed_address_and_skipped_photo_in_english() -> None:
    steps = run(
        text("report", lang="en"),
        text("complaint", lang="en"),
        text("The streetlight is broken", lang="en"),
        text("12 Park Road", lang="en"),
        text("skip", lang="en"),
        text("yes", lang="en"),
    )
    assert steps[0].replies[0].startswith("What kind")
    assert steps[-1].effect == bot.CreateTicket(
        kind="complaint", description="The streetlight is broken", address="12 Park Road"
    )


def test_cancel_at_any_step_and_decline_at_confirmation() -> None:
    steps = run(text("我要反映"), text("1"), text("取消"))
    assert steps[-1].state is None and steps[-1].replies == ("已取消。",)
    steps = run(
        text("我要反映"), text("1"), text("请问医保怎么转移"), text("跳过"), text("跳过"), text("2")
    )
    assert steps[-1].effect is None and steps[-1].state is None


def test_emergency_menu_and_subscribe_welcome() -> None:
    st = bot.step(None, event("CLICK", bot.MENU_EMERGENCY))
    assert st.emergency and "119" in st.replies[0]
    assert "12345" in bot.step(None, event("subscribe")).replies[0]
    assert bot.step(None, event("unsubscribe")).replies == ()


def test_a_state_from_an_older_version_restarts() -> None:
    st = bot.step({"flow": "report", "at": "teleport"}, text("hello"))
    assert st.state is None and st.replies
