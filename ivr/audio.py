"""Prompts by name, resolved to WAV paths per language (the files are in prompts/), and
numbers spoken from them.

A flow names prompts (``greeting``); ``PromptSet`` turns a name into
``<root>/<language>/<name>.wav``. The shipped set lives next to this module and
FreeSWITCH plays it as installed; a city with recorded voices points the set at its
own directory with the same names. When the switch sees the files under another path
(a container, a shared mount), ``play_root`` is what it is told while ``root`` is
where the service checks that they exist.

Numbers are spoken from single-word prompts (``digit_7``, ``hundred`` ...), so the
ACD can announce a queue position and the card node a balance in the caller's
language without a text-to-speech engine on the switch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SHIPPED_ROOT = Path(__file__).resolve().parent / "prompts"

DIGIT_PROMPTS = tuple(f"digit_{d}" for d in range(10))
# the extra words each language needs to speak a number as a number; a language not
# listed here hears numbers digit by digit
NUMBER_WORDS: dict[str, tuple[str, ...]] = {
    "zh": ("ten", "hundred", "thousand", "wan"),
    "en": (
        *(f"n1{i}" for i in range(10)),
        *(f"n{i}0" for i in range(2, 10)),
        "hundred",
        "thousand",
        "million",
    ),
}
AMOUNT_WORDS = ("point", "yuan")
POSITION_WORDS = ("position_is", "position_suffix")


@dataclass(frozen=True)
class PromptSet:
    root: Path
    play_root: str | None = None

    def file(self, language: str, name: str) -> Path:
        """Where the service finds the file (to check it exists)."""
        return self.root / language / f"{name}.wav"

    def exists(self, language: str, name: str) -> bool:
        return self.file(language, name).is_file()

    def path(self, language: str, name: str) -> str:
        """What the switch is told to play."""
        if self.play_root is None:
            return str(self.file(language, name))
        return f"{self.play_root.rstrip('/')}/{language}/{name}.wav"

    def paths(self, language: str, names: Iterable[str]) -> list[str]:
        return [self.path(language, n) for n in names]


SHIPPED_PROMPTS = PromptSet(SHIPPED_ROOT)


def say_digits(text: str) -> list[str]:
    """Digit by digit (ticket and receipt numbers, phone numbers); other characters
    are skipped, so a receipt like ``2026-1122`` is still read out as its digits."""
    return [f"digit_{ch}" for ch in text if "0" <= ch <= "9"]


def say_number(n: int, language: str) -> list[str]:
    """A whole number as words: 一万零五 / ten thousand five. Falls back to digits for
    languages without number words and for numbers beyond what the words cover."""
    if n < 0:
        raise ValueError("only non-negative numbers are spoken")
    if language == "zh" and n < 100_000_000:
        return _zh(n)
    if language == "en" and n < 1_000_000_000:
        return _en(n)
    return say_digits(str(n))


def say_amount(fen: int, language: str) -> list[str]:
    """Money in integer fen as yuan: 一百二十三点四五元 / one hundred twenty three point
    four five yuan (a trailing zero fen is not spoken: 3.50 -> three point five)."""
    yuan, rest = divmod(fen, 100)
    words = say_number(yuan, language)
    if rest:
        words += ["point", *say_digits(f"{rest:02d}".rstrip("0"))]
    return [*words, "yuan"]


def position_announcement(prompts: PromptSet, language: str, position: int) -> list[str]:
    """What the ACD plays for a waiting caller: 您排在第三位 / You are number 3 in the queue."""
    names = ["position_is", *say_number(position, language), "position_suffix"]
    return prompts.paths(language, names)


def number_prompts(language: str) -> tuple[str, ...]:
    """Every prompt ``say_number`` / ``say_amount`` may use in ``language``."""
    return DIGIT_PROMPTS + NUMBER_WORDS.get(language, ()) + AMOUNT_WORDS


def _zh_group(n: int, leading: bool) -> list[str]:
    """1..9999; ``leading``: the first group of the number (十五, not 一十五)."""
    out: list[str] = []
    started = False
    zero_pending = False
    for d, unit in zip(
        (n // 1000, n // 100 % 10, n // 10 % 10, n % 10),
        ("thousand", "hundred", "ten", None),
        strict=True,
    ):
        if d == 0:
            zero_pending = started
            continue
        if zero_pending:
            out.append("digit_0")
            zero_pending = False
        if not (unit == "ten" and d == 1 and leading and not started):
            out.append(f"digit_{d}")
        if unit:
            out.append(unit)
        started = True
    return out


def _zh(n: int) -> list[str]:
    if n == 0:
        return ["digit_0"]
    high, low = divmod(n, 10_000)
    out: list[str] = []
    if high:
        out += [*_zh_group(high, leading=True), "wan"]
    if low:
        if high and low < 1000:
            out.append("digit_0")
        out += _zh_group(low, leading=not high)
    return out


def _en_below_1000(n: int) -> list[str]:
    out: list[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        out += [f"digit_{hundreds}", "hundred"]
    if 10 <= rest < 20:
        out.append(f"n{rest}")
    else:
        tens, ones = divmod(rest, 10)
        if tens:
            out.append(f"n{tens}0")
        if ones:
            out.append(f"digit_{ones}")
    return out


def _en(n: int) -> list[str]:
    if n == 0:
        return ["digit_0"]
    out: list[str] = []
    for scale, word in ((1_000_000, "million"), (1000, "thousand")):
        if n >= scale:
            out += [*_en_below_1000(n // scale), word]
            n %= scale
    return out + _en_below_1000(n)
