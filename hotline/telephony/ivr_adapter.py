"""The IVR's CallControl on a FreeSWITCH call leg (our outbound socket session).

The interpreter (ivr/) knows nothing of ESL; this module is the one place where its
operations become dialplan applications, so the telephony package stays free of ivr
imports everywhere else:

- ``play``: `playback`, several files as one `file_string://a!b`. Whether a key stops
  it is the channel variable ``playback_terminators`` (FreeSWITCH's default is ``*``,
  so a non-interruptible play sets ``none``); the key comes back in
  ``playback_terminator_used``, which `playback` clears when it starts. The variable is
  only set when it has to change, so a run of plays costs one round trip each.
- ``play_and_get_digits``: FreeSWITCH's application of that name with one try as the
  interpreter asks, a short silence as its invalid-input file (the interpreter plays
  its own), one digit more than asked when there is a terminator (so a trailing `#`
  is read with its entry), the digits unset from the channel afterwards (a PIN).
- ``record``: `record <path> <max_seconds> <silence threshold>`, ``#`` ends it; the
  length comes from ``record_ms``. A hang-up is the normal end of a voicemail, so it
  returns what was recorded.

Every operation raises ivr's ``CallerHungUp`` once the leg reports ``CallHungUp`` (or
the switch refuses a command because the channel is already gone).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from hotline.telephony.errors import CallHungUp, ESLCommandError
from hotline.telephony.esl_outbound import CallLeg
from ivr.audio import PromptSet
from ivr.protocols import CallerHungUp

ANY_KEY = "0123456789*#"
NO_KEYS = "none"
RECORD_STOP_KEYS = "#"
# the invalid-input file of play_and_get_digits: the interpreter plays its own prompt
INVALID_FILE = "silence_stream://250"
DIGITS_VARIABLE = "ivr_digits"
ANY_DIGITS = "^[0-9*#]+$"
# energy below which `record` counts a frame as silence; FreeSWITCH then stops after
# its default of three seconds of it
SILENCE_THRESHOLD = 200
_KEYS = frozenset("0123456789*#ABCD")
T = TypeVar("T")


class EslCallControl:
    """``ivr.CallControl`` for one ``CallLeg``.

    ``prompts``: when given, a path under its ``root`` (where the service keeps the
    files) is rewritten to its ``play_root`` (where the switch sees them), so callers
    may hand over either form.
    """

    def __init__(self, leg: CallLeg, prompts: PromptSet | None = None) -> None:
        self.leg = leg
        self.prompts = prompts
        self._terminators: str | None = None  # playback_terminators as last set by us

    @property
    def uuid(self) -> str:
        return self.leg.uuid

    @property
    def caller_id(self) -> str:
        return self.leg.caller_number

    # ------------------------------------------------------------------ helpers

    async def _op(self, what: str, work: Callable[[], Awaitable[T]]) -> T:
        """Run one step, mapping the leg's errors: a gone call (or a refusal because it
        is gone) is the caller hanging up; any other refusal stays an error."""
        if self.leg.hung_up:
            raise CallerHungUp(what)
        try:
            return await work()
        except CallHungUp as exc:
            raise CallerHungUp(what) from exc
        except ESLCommandError:
            if self.leg.hung_up:
                raise CallerHungUp(what) from None
            raise

    def _switch_path(self, path: str) -> str:
        if not path or any(c in path for c in " \n\r!"):
            raise ValueError(f"a prompt path must be non-empty, without spaces or '!': {path!r}")
        prompts = self.prompts
        if prompts is not None and prompts.play_root is not None:
            root = str(prompts.root).rstrip("/") + "/"
            if path.startswith(root):
                return prompts.play_root.rstrip("/") + "/" + path[len(root) :]
        return path

    def _file_arg(self, paths: Sequence[str]) -> str:
        files = [self._switch_path(p) for p in paths]
        if len(files) == 1:
            return files[0]
        return "file_string://" + "!".join(files)

    async def _set_terminators(self, keys: str) -> None:
        if self._terminators != keys:
            await self.leg.set_variable("playback_terminators", keys)
            self._terminators = keys

    # ------------------------------------------------------------------ CallControl

    async def answer(self) -> None:
        if not self.leg.answered or self.leg.hung_up:
            await self._op("answer", self.leg.answer)

    async def play(self, paths: Sequence[str], *, interruptible: bool = False) -> str:
        arg = self._file_arg(paths) if paths else ""

        async def work() -> str:
            if not arg:
                return ""
            await self._set_terminators(ANY_KEY if interruptible else NO_KEYS)
            done = await self.leg.execute("playback", arg)
            if not interruptible:
                return ""
            return (done.variable("playback_terminator_used") or "")[:1]

        return await self._op("play", work)

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
        if not set(terminators) <= _KEYS:
            raise ValueError(f"terminators must be DTMF keys: {terminators!r}")
        if regexp is not None and (not regexp or any(c in regexp for c in " \n\r")):
            raise ValueError(f"a digits regexp cannot contain spaces: {regexp!r}")
        pattern = ANY_DIGITS if regexp is None else f"^(?:{regexp.strip('^$')})$"
        # Room for the terminator: FreeSWITCH stops reading at max_digits, so the `#`
        # a caller presses after a full-length entry would stay buffered and end the
        # next prompt at once. A key beyond max_digits is dropped, as the fake does.
        room = 1 if terminators else 0
        keys = await self._op(
            "play_and_get_digits",
            lambda: self.leg.play_and_get_digits(
                self._file_arg(paths) if paths else "silence",
                min_digits=min_digits,
                max_digits=max_digits + room,
                tries=tries,
                timeout_ms=timeout_ms,
                terminators=terminators,
                invalid_prompt=INVALID_FILE,
                variable=DIGITS_VARIABLE,
                regex=pattern,
                digit_timeout_ms=digit_timeout_ms or timeout_ms,
                forget=True,
            ),
        )
        return keys[:max_digits]

    async def record(self, path: str, *, max_seconds: int) -> float:
        if max_seconds < 1:
            raise ValueError("max_seconds must be at least 1")
        target = self._switch_path(path)
        await self._op("record", lambda: self._set_terminators(RECORD_STOP_KEYS))
        started = time.monotonic()
        try:
            done = await self.leg.execute("record", f"{target} {max_seconds} {SILENCE_THRESHOLD}")
        except CallHungUp:
            # the socket closed before the completion: the channel's last word, else
            # our own clock (FreeSWITCH stops at max_seconds)
            last = self.leg.hangup_event
            ms = last.variable("record_ms") if last is not None else None
            if ms is not None and ms.isdigit():
                return int(ms) / 1000
            return min(time.monotonic() - started, float(max_seconds))
        except ESLCommandError:
            if self.leg.hung_up:  # gone between the two commands: nothing recorded
                return 0.0
            raise
        ms = done.variable("record_ms")
        if ms is not None and ms.isdigit():
            return int(ms) / 1000
        secs = done.variable("record_seconds")
        return float(secs) if secs is not None and secs.isdigit() else 0.0

    async def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        if not cause or not cause.replace("_", "").isalnum():
            raise ValueError(f"a hangup cause is a Q.850 name like NORMAL_CLEARING: {cause!r}")
        await self._op("hangup", lambda: self.leg.hangup(cause))

    async def set_variable(self, name: str, value: str) -> None:
        await self._op("set_variable", lambda: self.leg.set_variable(name, value))
        if name == "playback_terminators":
            self._terminators = value

    async def get_variable(self, name: str) -> str | None:
        if not name or any(c in name for c in " \n\r"):
            raise ValueError(f"invalid channel variable name {name!r}")
        return await self._op("get_variable", lambda: self.leg.get_variable(name))
