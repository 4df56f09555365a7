"""A scripted caller: a CallControl fake for tests of flows (ours and a city's own).

The script says what the caller keys when a prompt plays, by prompt name::

    call = ScriptedCall(keys={"card_menu": ["2"], "enter_pin": ["000000", "123456"]})

Each time a ``play_and_get_digits`` starts with that prompt, the next answer is used;
``None`` (or a used-up list) is silence. Answers are what the caller presses,
terminator included (``"3100000000000011#"``); the fake applies ``max_digits``,
terminators and ``regexp`` as FreeSWITCH does. ``hang_up_at=N``: the caller is gone
when the Nth operation starts (a recording in progress ends normally, as on the
switch). ``ops`` records every operation for assertions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

from ivr.protocols import CallerHungUp


def prompt_name(path: str) -> str:
    """``.../zh/greeting.wav`` -> ``zh/greeting``."""
    p = PurePath(path)
    return f"{p.parent.name}/{p.stem}"


@dataclass
class ScriptedCall:
    keys: Mapping[str, Sequence[str | None]] = field(default_factory=dict)
    caller_id: str = "+8613800138000"
    uuid: str = "5a1f0c2e-7d3b-4e21-9c4a-18f2b6d3e9a7"
    hang_up_at: int | None = None
    record_seconds: float = 7.0
    variables: dict[str, str] = field(default_factory=dict)
    ops: list[tuple[object, ...]] = field(default_factory=list)
    gone: bool = False
    _used: dict[str, int] = field(default_factory=dict)

    def _enter(self, op: str) -> None:
        if self.gone:
            raise CallerHungUp(op)
        if self.hang_up_at is not None and len(self.ops) + 1 >= self.hang_up_at:
            self.gone = True
            if op != "record":
                raise CallerHungUp(op)

    def _next_answer(self, paths: Sequence[str]) -> str | None:
        name = PurePath(paths[0]).stem if paths else ""
        answers = self.keys.get(name, ())
        i = self._used.get(name, 0)
        self._used[name] = i + 1
        return answers[i] if i < len(answers) else None

    async def answer(self) -> None:
        self._enter("answer")
        self.ops.append(("answer",))

    async def play(self, paths: Sequence[str], *, interruptible: bool = False) -> str:
        self._enter("play")
        pressed = (self._next_answer(paths) or "")[:1] if interruptible else ""
        self.ops.append(("play", tuple(prompt_name(p) for p in paths), pressed))
        return pressed

    async def play_and_get_digits(
        self,
        paths: Sequence[str],
        *,
        min_digits: int,
        max_digits: int,
        tries: int,
        timeout_ms: int,
        terminators: str,
        regexp: str | None = None,
        digit_timeout_ms: int | None = None,
    ) -> str:
        self._enter("get")
        pressed = self._next_answer(paths) or ""
        keys = ""
        for ch in pressed:
            if terminators and ch in terminators:
                break
            keys += ch
            if len(keys) >= max_digits:
                break
        if len(keys) < min_digits or (regexp and not re.fullmatch(regexp, keys)):
            keys = ""
        self.ops.append(("get", tuple(prompt_name(p) for p in paths), keys))
        return keys

    async def record(self, path: str, *, max_seconds: int) -> float:
        self._enter("record")
        seconds = min(self.record_seconds, float(max_seconds))
        self.ops.append(("record", path, max_seconds))
        return seconds

    async def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        self._enter("hangup")
        self.ops.append(("hangup", cause))
        self.gone = True

    async def set_variable(self, name: str, value: str) -> None:
        self._enter("set")
        self.variables[name] = value
        self.ops.append(("set", name, value))

    async def get_variable(self, name: str) -> str | None:
        self._enter("get_variable")
        self.ops.append(("get_variable", name))
        return self.variables.get(name)

    def heard(self) -> list[str]:
        """Every prompt played, in order, as ``lang/name``."""
        out: list[str] = []
        for op in self.ops:
            if op[0] in ("play", "get"):
                out.extend(op[1])  # type: ignore[arg-type]
        return out
