"""The shipped prompts exist for every language a shipped flow offers, in the format
FreeSWITCH plays on a narrowband call as installed: 8 kHz mono WAV, GSM 06.10 encoded
(mod_sndfile hands .wav files to libsndfile, which decodes GSM 06.10), small enough to
ship in the package."""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import shutil
import subprocess
from pathlib import Path

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
from ivr.wavinfo import GSM610, read_wav_info, wav_seconds

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


SHIPPED_FILES = sorted(SHIPPED_PROMPTS.root.glob("*/*.wav"))
SET_LIMIT_BYTES = 400_000  # the issue: "a few hundred KB" for the whole shipped set


def test_every_prompt_a_shipped_flow_plays_exists_in_both_languages() -> None:
    """A city that drops a language from one flow's ``languages:`` today can put it
    back without recording anything: the flows' own prompts ship in zh and en alike.
    (Number words differ per language, ``wan`` / ``n13``, and are covered by
    ``referenced()`` through each flow's languages.)"""
    played = {
        n
        for flow in FLOWS.values()
        for node in flow.nodes.values()
        for names in node.prompt_fields().values()
        for n in names
    }
    assert {"greeting", "card_menu", "beep"} <= played
    missing = [
        f"{lang}/{name}.wav"
        for name in sorted(played)
        for lang in ("zh", "en")
        if not SHIPPED_PROMPTS.exists(lang, name)
    ]
    assert not missing


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_prompt_is_8khz_mono_gsm610_wav(path: Path) -> None:
    info = read_wav_info(path)
    assert (info.sample_rate, info.channels, info.format_tag) == (8000, 1, GSM610)
    # libsndfile refuses a GSM WAV whose blocks are not 65 bytes of 320 samples
    assert (info.block_align, info.samples_per_block) == (65, 320)
    # whole blocks only: libsndfile decodes a partial last block as a burst of noise
    assert info.data_bytes % 65 == 0
    # the fact count is the real length: at most one block short of the whole blocks
    assert info.data_bytes // 65 * 320 - 320 < info.frames <= info.data_bytes // 65 * 320
    assert 0.05 < info.seconds < 8.0


def seconds(lang: str, name: str) -> float:
    return wav_seconds(SHIPPED_PROMPTS.file(lang, name))


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
    names = {(f.parent.name, f.stem) for f in SHIPPED_FILES}
    assert names == referenced()
    assert sum(f.stat().st_size for f in SHIPPED_FILES) < SET_LIMIT_BYTES


def _libsndfile() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("sndfile")
    return ctypes.CDLL(name) if name else None


class _SfInfo(ctypes.Structure):
    _fields_ = [
        ("frames", ctypes.c_int64),
        ("samplerate", ctypes.c_int),
        ("channels", ctypes.c_int),
        ("format", ctypes.c_int),
        ("sections", ctypes.c_int),
        ("seekable", ctypes.c_int),
    ]


_SFM_READ = 0x10
_SF_FORMAT_WAV_GSM610 = 0x010000 | 0x0020


@pytest.mark.skipif(
    _libsndfile() is None,
    reason="libsndfile is not installed (tools/test-deps.sh installs libsndfile1)",
)
def test_libsndfile_plays_every_prompt_as_mod_sndfile_would() -> None:
    """FreeSWITCH's mod_sndfile opens a .wav with sf_open(SFM_READ) and reads 16-bit
    samples with sf_readf_short; do exactly that, through the same library."""
    lib = _libsndfile()
    assert lib is not None
    lib.sf_open.restype = ctypes.c_void_p
    lib.sf_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(_SfInfo)]
    lib.sf_readf_short.restype = ctypes.c_int64
    lib.sf_readf_short.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.sf_close.argtypes = [ctypes.c_void_p]
    lib.sf_strerror.restype = ctypes.c_char_p
    lib.sf_strerror.argtypes = [ctypes.c_void_p]
    for path in SHIPPED_FILES:
        sfinfo = _SfInfo()
        handle = lib.sf_open(str(path).encode(), _SFM_READ, ctypes.byref(sfinfo))
        assert handle, f"{path}: {lib.sf_strerror(None).decode()}"
        try:
            assert (sfinfo.samplerate, sfinfo.channels) == (8000, 1), path
            assert sfinfo.format == _SF_FORMAT_WAV_GSM610, path
            buf = (ctypes.c_short * 160)()  # one 20 ms frame at a time, as a call reads
            frames, peak = 0, 0
            while (n := lib.sf_readf_short(handle, buf, 160)) > 0:
                frames += n
                peak = max(peak, max(abs(x) for x in buf[:n]))
        finally:
            lib.sf_close(handle)
        assert frames == sfinfo.frames, path
        # the whole file decodes (GSM rounds up to whole 320-sample blocks) ...
        assert 0 <= frames - read_wav_info(path).frames < 320, path
        assert peak > 1000, f"{path}: decodes to near silence (peak {peak})"


@pytest.mark.skipif(
    shutil.which("sox") is None,
    reason="sox is not installed (tools/test-deps.sh installs it)",
)
def test_sox_decodes_every_prompt_to_audible_8khz_audio() -> None:
    for path in SHIPPED_FILES:
        raw = subprocess.run(
            ["sox", "-V1", str(path), "-t", "raw", "-e", "signed-integer", "-b", "16", "-"],
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        samples = array.array("h", raw)  # sox writes raw in the machine's byte order
        info = read_wav_info(path)
        assert abs(len(samples) - info.frames) < 320, path
        assert max(map(abs, samples)) > 1000, f"{path}: decodes to near silence"


def test_the_generator_script_ships_alongside() -> None:
    script = SHIPPED_PROMPTS.root / "make_prompts.sh"
    text = script.read_text(encoding="utf-8")
    assert "espeak-ng" in text
    assert "-e gsm-full-rate" in text  # regenerating keeps the shipped encoding


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
