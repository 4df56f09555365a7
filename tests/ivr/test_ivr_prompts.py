"""The shipped prompts exist for every language a shipped flow offers, in the format
FreeSWITCH plays on a narrowband call as installed: 8 kHz, mono, 16-bit PCM WAV."""

from __future__ import annotations

import wave

import pytest

import ivr
from ivr.audio import (
    DIGIT_PROMPTS,
    POSITION_WORDS,
    SHIPPED_PROMPTS,
    number_prompts,
    say_amount,
    say_digits,
    say_number,
)

FLOWS = ivr.load_shipped()


def referenced() -> set[tuple[str, str]]:
    """(language, prompt) for everything a shipped flow can play, plus the words the
    ACD announces a queue position with."""
    found: set[tuple[str, str]] = set()
    for flow in FLOWS.values():
        for node in flow.nodes.values():
            for lang in flow.languages:
                for names in node.prompt_fields().values():
                    found |= {(lang, n) for n in names}
                found |= {(lang, n) for n in node.number_prompts(lang)}
    for lang in ("zh", "en"):
        found |= {(lang, n) for n in (*POSITION_WORDS, *number_prompts(lang), "please_wait")}
    return found


def test_the_issue_names_prompts_exist_in_both_languages() -> None:
    named = {
        "greeting", "please_wait", "position_is", "callback_offer", "emergency_notice",
        "after_hours", "card_menu", "enter_card_number", "enter_id_last6", "enter_pin",
        "card_frozen", "wrong_pin", "goodbye", "survey_question", "thank_you",
        "invalid_input", *DIGIT_PROMPTS,
    }  # fmt: skip
    assert named <= {name for _, name in referenced()}


@pytest.mark.parametrize(("lang", "name"), sorted(referenced()))
def test_prompt_is_8khz_mono_16bit_pcm(lang: str, name: str) -> None:
    path = SHIPPED_PROMPTS.file(lang, name)
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getcomptype()) == (
            8000,
            1,
            2,
            "NONE",
        )
        seconds = w.getnframes() / w.getframerate()
    assert 0.05 < seconds < 8.0


def seconds(lang: str, name: str) -> float:
    with wave.open(str(SHIPPED_PROMPTS.file(lang, name)), "rb") as w:
        return w.getnframes() / w.getframerate()


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_the_default_flow_reaches_the_queue_well_within_the_15_second_target(lang: str) -> None:
    flow = FLOWS["12345-default"]
    node_id, before_queue = flow.start, 0.0
    while flow.nodes[node_id].type != "queue":  # type: ignore[attr-defined]
        node = flow.nodes[node_id]
        before_queue += sum(seconds(lang, n) for n in node.prompt_fields().get("prompt", []))
        node_id = node.next  # type: ignore[attr-defined]
    assert 1.0 < before_queue < 6.0


def test_every_shipped_wav_is_used_and_the_set_stays_small() -> None:
    files = sorted(SHIPPED_PROMPTS.root.glob("*/*.wav"))
    names = {(f.parent.name, f.stem) for f in files}
    assert names == referenced()
    assert sum(f.stat().st_size for f in files) < 2_500_000


def test_the_generator_script_ships_alongside() -> None:
    script = SHIPPED_PROMPTS.root / "make_prompts.sh"
    assert "espeak-ng" in script.read_text(encoding="utf-8")


def test_play_root_changes_what_the_switch_is_told_not_where_we_look() -> None:
    remote = ivr.PromptSet(SHIPPED_PROMPTS.root, play_root="/usr/share/hotline/prompts/")
    assert remote.path("zh", "greeting") == "/usr/share/hotline/prompts/zh/greeting.wav"
    assert remote.exists("zh", "greeting")


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "零"),
        (7, "七"),
        (10, "十"),
        (15, "十五"),
        (20, "二十"),
        (105, "一百零五"),
        (110, "一百一十"),
        (1005, "一千零五"),
        (1050, "一千零五十"),
        (10000, "一万"),
        (10010, "一万零一十"),
        (100000, "十万"),
        (120305, "十二万零三百零五"),
        (99999999, "九千九百九十九万九千九百九十九"),
    ],
)
def test_mandarin_numbers(n: int, words: str) -> None:
    zh = dict(
        zip(
            "零一二三四五六七八九十百千万",
            [*DIGIT_PROMPTS, "ten", "hundred", "thousand", "wan"],
            strict=True,
        )
    )
    assert say_number(n, "zh") == [zh[ch] for ch in words]


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, ["digit_0"]),
        (13, ["n13"]),
        (40, ["n40"]),
        (305, ["digit_3", "hundred", "digit_5"]),
        (2019, ["digit_2", "thousand", "n19"]),
        (1_000_001, ["digit_1", "million", "digit_1"]),
    ],
)
def test_english_numbers(n: int, words: list[str]) -> None:
    assert say_number(n, "en") == words


def test_numbers_beyond_the_words_and_other_languages_are_spoken_as_digits() -> None:
    assert say_number(123_456_789, "zh") == say_digits("123456789")
    assert say_number(42, "fr") == ["digit_4", "digit_2"]


def test_amounts() -> None:
    assert say_amount(350, "en") == ["digit_3", "point", "digit_5", "yuan"]
    assert say_amount(5, "zh") == ["digit_0", "point", "digit_0", "digit_5", "yuan"]
    assert say_amount(100, "zh") == ["digit_1", "yuan"]


def test_position_announcement() -> None:
    paths = ivr.position_announcement(SHIPPED_PROMPTS, "zh", 3)
    assert [p.rsplit("/", 2)[-2:] for p in paths] == [
        ["zh", "position_is.wav"],
        ["zh", "digit_3.wav"],
        ["zh", "position_suffix.wav"],
    ]
