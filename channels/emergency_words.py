"""Emergency words in a resident's text -> which emergency line to name at once.

Pure and synchronous: the intake calls it on every text before storing, so the
answer can go out in the same reply.

The rule (documented in the README too):
1. Words are phrases, never single characters: 火 alone is not a word, so 火车站,
   火锅, 火腿, 火柴 never fire; 着火 / 起火 / 失火 / 火灾 / 救火 do.
2. Harmless compounds that contain a word are removed before matching
   (`HARMLESS`): 救火车 (a fire engine; 救火车模型 is a toy) and 灭火器 (an
   extinguisher, as in "灭火器过期了") are masked, so "买了个救火车模型" does not fire,
   while "快来救火" and "救火车模型着火了" do (the second still contains 着火).
3. Chinese is matched as substrings (no word boundaries exist); English words match
   whole words only, case-insensitively ("fire" but not "firework" or "fired").
4. Negation is not understood on purpose ("没有着火" fires): a needless answer naming
   119 costs a resident five seconds, a missed fire costs far more.
Lists are configurable: a city adds its own words per line and its own harmless
phrases (`EmergencyRules.from_mapping`, read from a YAML file by the hotline).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Line:
    """One emergency service: its key, the number to name, its names in replies."""

    key: str
    number: str
    name_zh: str
    name_en: str


LINES: dict[str, Line] = {
    "fire": Line("fire", "119", "火警", "fire"),
    "gas": Line("gas", "119", "燃气泄漏请报火警", "gas leak (fire service)"),
    "medical": Line("medical", "120", "急救", "ambulance"),
    "police": Line("police", "110", "报警", "police"),
    "traffic": Line("traffic", "122", "交通事故报警", "traffic police"),
}

DEFAULT_WORDS: dict[str, tuple[str, ...]] = {
    "fire": (
        "着火",
        "失火",
        "起火",
        "火灾",
        "救火",
        "冒烟",
        "烧起来",
        "fire",
        "on fire",
        "smoke",
        "burning",
    ),
    "gas": (
        "煤气泄漏",
        "燃气泄漏",
        "天然气泄漏",
        "煤气泄露",
        "燃气泄露",
        "煤气味",
        "燃气味",
        "gas leak",
        "smell gas",
        "smell of gas",
    ),
    "medical": (
        "受伤",
        "晕倒",
        "昏倒",
        "流血",
        "昏迷",
        "心脏病",
        "不省人事",
        "喘不过气",
        "injured",
        "bleeding",
        "unconscious",
        "fainted",
        "heart attack",
    ),
    "police": (
        "抢劫",
        "打劫",
        "持刀",
        "砍人",
        "绑架",
        "救命",
        "robbery",
        "robbed",
        "mugged",
        "kidnap",
    ),
    "traffic": (
        "车祸",
        "交通事故",
        "撞车",
        "追尾",
        "被车撞",
        "car accident",
        "traffic accident",
        "car crash",
        "hit by a car",
    ),
}

HARMLESS: tuple[str, ...] = (
    "救火车",
    "灭火器",
    "fire drill",
    "fire alarm test",
    "fire hydrant",
    "fire station",
)


@dataclass(frozen=True)
class Match:
    line: Line
    word: str


class EmergencyRules:
    """Compiled word lists; `find(text)` says which lines the text calls for."""

    def __init__(
        self,
        words: Mapping[str, Iterable[str]] | None = None,
        harmless: Iterable[str] = HARMLESS,
        lines: Mapping[str, Line] | None = None,
    ) -> None:
        self.lines = dict(lines or LINES)
        words = words if words is not None else DEFAULT_WORDS
        unknown = set(words) - set(self.lines)
        if unknown:
            raise ValueError(f"emergency words for unknown lines {sorted(unknown)}")
        self._zh: list[tuple[str, Line]] = []
        english: list[tuple[str, Line]] = []
        for key, ws in words.items():
            for w in ws:
                w = w.strip()
                if not w:
                    continue
                if len(w) < 2:
                    raise ValueError(f"emergency word {w!r} is one character: use phrases")
                (english if w.isascii() else self._zh).append((w.lower(), self.lines[key]))
        # longest first, so "smell of gas" is reported rather than a shorter overlap
        self._zh.sort(key=lambda p: -len(p[0]))
        self._en: list[tuple[re.Pattern[str], str, Line]] = [
            (re.compile(r"(?<![a-z])" + re.escape(w).replace(r"\ ", r"\s+") + r"(?![a-z])"), w, ln)
            for w, ln in sorted(english, key=lambda p: -len(p[0]))
        ]
        # one pass every match needs (a superset of the rules below): most texts name no
        # emergency at all, and one compiled alternation rules them out in a microsecond
        alts = [re.escape(w) for w, _ in self._zh] + [
            re.escape(w).replace(r"\ ", r"\s+") for w, _ in english
        ]
        self._any = re.compile("|".join(alts)) if alts else None
        masks = sorted((h.lower() for h in harmless if h.strip()), key=len, reverse=True)
        self._harmless = re.compile("|".join(re.escape(h) for h in masks)) if masks else None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> EmergencyRules:
        """`{"words": {line: [...]}, "harmless": [...], "replace": bool}`: a city's file
        adds to the defaults unless `replace` is true."""
        extra = data.get("words") or {}
        if not isinstance(extra, Mapping):
            raise ValueError("'words' must map a line (fire, gas, ...) to a list of words")
        words: dict[str, list[str]] = (
            {} if data.get("replace") else {k: list(v) for k, v in DEFAULT_WORDS.items()}
        )
        for key, ws in extra.items():
            if not isinstance(ws, list) or not all(isinstance(w, str) for w in ws):
                raise ValueError(f"words for {key!r} must be a list of strings")
            words.setdefault(str(key), []).extend(ws)
        harmless = list(data.get("harmless") or [])
        if not data.get("replace"):
            harmless = [*HARMLESS, *harmless]
        return cls(words, harmless)

    def find(self, text: str | None) -> list[Match]:
        """Every line the text calls for (one match each), in LINES order."""
        if not text:
            return []
        t = text.lower()
        if self._harmless is not None:
            t = self._harmless.sub("\x00", t)  # a separator, so no new word forms across it
        if self._any is None or self._any.search(t) is None:
            return []
        found: dict[str, Match] = {}
        for w, line in self._zh:
            if line.key not in found and w in t:
                found[line.key] = Match(line, w)
        for pattern, w, line in self._en:
            if line.key not in found and pattern.search(t):
                found[line.key] = Match(line, w)
        return [found[k] for k in self.lines if k in found]


def answer(matches: list[Match], lang: str = "zh") -> str:
    """The immediate reply: the number(s) to call, before anything else."""
    seen: dict[str, list[str]] = {}
    for m in matches:
        seen.setdefault(m.line.number, []).append(
            m.line.name_zh if lang == "zh" else m.line.name_en
        )
    if lang == "zh":
        parts = "；".join(f"{'、'.join(names)}请立即拨打 {num}" for num, names in seen.items())
        return f"【紧急】{parts}。12345 不能代替紧急救援；我们已通知值班主管跟进。"
    parts = "; ".join(f"{', '.join(names)}: call {num} now" for num, names in seen.items())
    return f"EMERGENCY: {parts}. 12345 cannot send help itself; a supervisor has been alerted."


def lines_of(matches: list[Match]) -> list[str]:
    """The distinct numbers named, in order (what the conversation records)."""
    return list(dict.fromkeys(m.line.number for m in matches))
