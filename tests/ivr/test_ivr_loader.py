"""Flows are refused at load with every problem named by node and line."""

from __future__ import annotations

from pathlib import Path

import pytest

import ivr
from ivr import FlowError, PromptSet


def problems(text: str, **kw: object) -> list[tuple[int | None, str | None, str]]:
    with pytest.raises(FlowError) as info:
        ivr.load_flow(text, **kw)  # type: ignore[arg-type]
    return [(p.line, p.node, p.message) for p in info.value.problems]


GOOD = """\
id: tiny
language: zh
languages: [zh, en]
start: hello
nodes:
  hello:
    type: play
    prompt: greeting
    next: bye
  bye:
    type: hangup
    prompt: goodbye
"""


def test_a_good_flow_loads() -> None:
    flow = ivr.load_flow(GOOD)
    assert (flow.id, flow.start, flow.languages) == ("tiny", "hello", ("zh", "en"))
    assert flow.lines == {"hello": 6, "bye": 10}
    assert set(flow.nodes) == {"hello", "bye"}


def test_every_shipped_flow_validates() -> None:
    files = ivr.shipped_flow_files()
    assert len(files) == 4
    for path in files:
        flow = ivr.load_flow(path)
        assert path.name == f"{flow.id}.yaml"
        assert flow.languages == ("zh", "en")


def test_unknown_node_type() -> None:
    text = GOOD.replace("type: hangup", "type: hang_up")
    assert problems(text) == [
        (
            11,
            "bye",
            "unknown node type 'hang_up'; known: play, menu, collect, language, lookup, card, "
            "queue, emergency, voicemail, callback, survey, hangup",
        )
    ]


def test_unknown_target() -> None:
    text = GOOD.replace("next: bye", "next: by")
    assert problems(text) == [
        (9, "hello", "next: unknown target 'by'"),
        (10, "bye", "unreachable from the start node 'hello'"),
    ]


def test_missing_start() -> None:
    text = GOOD.replace("start: hello\n", "")
    assert problems(text) == [(1, None, "start: required field missing")]


def test_start_naming_no_node() -> None:
    text = GOOD.replace("start: hello", "start: welcome")
    (first, *_rest) = problems(text)
    assert first == (4, None, "start: unknown node 'welcome'")


def test_unreachable_node() -> None:
    text = GOOD + "  orphan:\n    type: play\n    prompt: greeting\n    next: bye\n"
    assert problems(text) == [(13, "orphan", "unreachable from the start node 'hello'")]


def test_loop_without_caller_input() -> None:
    text = """\
id: spin
language: zh
start: a
nodes:
  a:
    type: play
    prompt: greeting
    next: b
  b:
    type: language
    set: zh
    next: a
"""
    assert problems(text) == [(5, "a", "loop without caller input: a -> b -> a")]


def test_a_loop_through_a_menu_is_fine() -> None:
    text = """\
id: again
language: zh
start: menu
nodes:
  menu:
    type: menu
    prompt: card_menu
    digits: {1: again}
    on_invalid: bye
  again:
    type: play
    prompt: please_wait
    next: menu
  bye:
    type: hangup
"""
    assert ivr.load_flow(text).start == "menu"


def test_queue_overflow_back_into_the_queue_is_a_loop_without_input() -> None:
    text = """\
id: overflow-spin
language: zh
start: q
nodes:
  q:
    type: queue
    queue: "12345"
    on_overflow: wait
  wait:
    type: play
    prompt: please_wait
    next: q
"""
    assert problems(text) == [(5, "q", "loop without caller input: q -> wait -> q")]


MENU = """\
id: m
language: zh
start: menu
nodes:
  menu:
    type: menu
    prompt: card_menu
    digits:
      1: bye
      {key}: bye
    on_invalid: bye
  bye:
    type: hangup
"""


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("10", "menu key 10 is not one of the phone keys 0123456789*#"),
        ("x", "menu key 'x' is not one of the phone keys 0123456789*#"),
        ('"1"', "menu key '1' is given twice"),
    ],
)
def test_bad_digits_map(key: str, message: str) -> None:
    assert problems(MENU.replace("{key}", key)) == [(8, "menu", f"digits: {message}")]


def test_a_key_written_twice_in_yaml_is_not_silently_dropped() -> None:
    text = MENU.replace("{key}", "1")
    assert problems(text) == [(10, "menu", "key 'nodes.menu.digits.1' is given twice")]


def test_missing_prompt_for_one_language(tmp_path: Path) -> None:
    for lang, names in {"zh": ["greeting", "goodbye"], "en": ["greeting"]}.items():
        (tmp_path / lang).mkdir()
        for name in names:
            (tmp_path / lang / f"{name}.wav").write_bytes(b"RIFF")
    assert problems(GOOD, prompts=PromptSet(tmp_path)) == [
        (12, "bye", f"prompt: prompt 'goodbye' is missing for en (looked in {tmp_path})")
    ]


def test_prompts_a_node_speaks_numbers_with_are_required_too(tmp_path: Path) -> None:
    (tmp_path / "zh").mkdir()
    for name in (
        "card_menu",
        "enter_card_number",
        "enter_pin",
        "wrong_pin",
        "card_unknown",
        "card_locked",
        "invalid_input",
        "balance_is",
        *(f"digit_{d}" for d in range(10)),
        "ten",
        "hundred",
        "thousand",
        "point",
        "yuan",
    ):  # "wan" is missing
        (tmp_path / "zh" / f"{name}.wav").write_bytes(b"RIFF")
    text = """\
id: c
language: zh
start: card
nodes:
  card:
    type: card
    operation: balance
    next: bye
    on_failure: bye
  bye:
    type: hangup
"""
    assert problems(text, prompts=PromptSet(tmp_path)) == [
        (5, "card", f"numbers (zh): prompt 'wan' is missing for zh (looked in {tmp_path})")
    ]


def test_unknown_field_and_bad_values_are_named() -> None:
    text = """\
id: f
language: zh
start: ask
nodes:
  ask:
    type: collect
    prompt: enter_card_number
    max: 3
    validate: {regex: "(["}
    store: card
    nxet: bye
    next: bye
    on_invalid: bye
  bye:
    type: hangup
    cause: BUSY
"""
    assert problems(text) == [
        (
            9,
            "ask",
            "validate.regex: regex does not compile: unterminated character set at position 1",
        ),
        (11, "ask", "unknown field 'nxet'"),
        (
            16,
            "bye",
            "cause: Input should be 'NORMAL_CLEARING', 'USER_BUSY', 'CALL_REJECTED', "
            "'NORMAL_TEMPORARY_FAILURE' or 'SERVICE_UNAVAILABLE'",
        ),
    ]


def test_collect_min_above_max() -> None:
    text = """\
id: f
language: zh
start: ask
nodes:
  ask:
    type: collect
    prompt: enter_card_number
    min: 9
    max: 3
    store: card
    next: bye
    on_invalid: bye
  bye:
    type: hangup
"""
    assert problems(text) == [(5, "ask", "min (9) is more than max (3)")]


def test_language_node_must_set_one_of_the_flow_languages() -> None:
    text = GOOD.replace(
        "    next: bye\n  bye:",
        "    next: en\n  en:\n    type: language\n    set: fr\n    next: bye\n  bye:",
    )
    assert problems(text) == [
        (12, "en", "set: language 'fr' is not one of the flow's languages (zh, en)")
    ]


def test_invalid_yaml_names_the_line() -> None:
    text = GOOD.replace("    next: bye", "    next: [bye", 1)
    ((line, node, message),) = problems(text)
    assert (line, node) == (10, None)
    assert message.startswith("not valid YAML")


def test_an_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    bomb = "\n".join(lines) + "\n" + GOOD
    assert problems(bomb) == [(None, None, "the flow expands to too many values")]


def test_the_error_text_names_source_line_and_node(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(GOOD.replace("next: bye", "next: nowhere"), encoding="utf-8")
    with pytest.raises(FlowError) as info:
        ivr.load_flow(path)
    assert (
        str(info.value).splitlines()[0]
        == "mine.yaml:9: node 'hello': next: unknown target 'nowhere'"
    )


def test_not_a_mapping() -> None:
    assert problems("- just\n- a list\n") == [
        (None, None, "a flow is a mapping (id, start, language, nodes)")
    ]


def test_a_file_name_passed_as_text_gets_a_hint() -> None:
    ((_, _, message),) = problems("flows/mine.yaml")
    assert message.endswith("to load a file, pass a pathlib.Path")
