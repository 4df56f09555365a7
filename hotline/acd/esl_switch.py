"""The ACD's `Switch` over FreeSWITCH's event socket.

Two ways in, chosen per leg:

- the caller's leg is held by our outbound socket session (`CallLeg`): media
  (prompts, hold music, digits) runs as dialplan applications on it, and its `api`
  commands (uuid_bridge, uuid_break, uuid_record) travel over that same socket, so
  a caller in line keeps being served while the inbound connection reconnects;
- agents' phones and emergency lines are rung with `bgapi originate` on the
  inbound connection, each leg named up front with `origination_uuid` so it can be
  killed while it rings (the caller hung up) and followed by its events.

The facts the ACD needs from FreeSWITCH's events (a leg answered, a leg hung up
with a cause) are read in one table, `_FACTS`, at the bottom of the class; nothing
else in the ACD sees an event name or a header. After the inbound connection comes
back, every leg we follow is checked with `uuid_exists` (a hang-up may have
happened while we were away) and legs whose `originate` was lost with the link are
killed, so no agent's phone stays off the hook in a parked call nobody owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import uuid as uuidlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from hotline.acd.switch import Ring, RingResult, SwitchError, ring_result
from hotline.telephony.errors import (
    CallHungUp,
    CallLost,
    ESLCommandError,
    ESLDisconnected,
    ESLError,
    ESLJobTimeout,
)
from hotline.telephony.esl_frames import Event
from hotline.telephony.esl_inbound import InboundESL
from hotline.telephony.esl_outbound import CallLeg

log = logging.getLogger(__name__)

MUSIC_ON_HOLD = "local_stream://moh"
CONFERENCE_PROFILE = "default"
# the cause we give a leg whose end we did not see (the inbound link was down)
MISSED_HANGUP = "NORMAL_UNSPECIFIED"
LOST_ORIGINATE = "SWITCH_DISCONNECTED"
# An originate's job result comes when the leg answers or fails, which FreeSWITCH
# bounds by originate_timeout (our ring timeout); on top of that: call set-up (DNS,
# SIP retransmits before the phone rings) and a busy switch. Past it, the result is
# taken as lost: the leg is killed and the ring reported failed.
ORIGINATE_MARGIN_S = 30.0

# Anything that reaches an ESL command line must not be able to end it (a newline
# starts a header), split it (spaces separate arguments) or open a variable block.
_DIAL_RE = re.compile(r"^[A-Za-z0-9_./@:+#*=-]{1,200}$")
_UUID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_VAR_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_VAR_VALUE_RE = re.compile(r"^[A-Za-z0-9_.:@+#*/-]{0,200}$")
_ROOM_RE = re.compile(r"^[A-Za-z0-9_.-]{1,120}$")
_PATH_RE = re.compile(r"^[^\s'\"{}\[\],!]{1,500}$")
_CID_RE = re.compile(r"[^0-9+*#]")


def _answered_leg(task: asyncio.Future[Ring]) -> str | None:
    if not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result().leg


def _check(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.match(value):
        raise SwitchError(f"refusing to send {what} {value!r} to the switch")
    return value


@dataclass
class _Followed:
    """A leg we originated and follow by its events on the inbound connection."""

    uuid: str
    gone: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    answered: bool = False


class EslSwitch:
    """`hotline.acd.switch.Switch` on FreeSWITCH: `await start()` once, then use."""

    def __init__(
        self,
        esl: InboundESL,
        legs: Mapping[str, CallLeg],
        *,
        music_on_hold: str = MUSIC_ON_HOLD,
        conference_profile: str = CONFERENCE_PROFILE,
        remember_ended: int = 10_000,
    ) -> None:
        self.esl = esl
        self.legs = legs  # the outbound server's live sessions, by channel uuid
        self.music = music_on_hold
        self.profile = conference_profile
        self._followed: dict[str, _Followed] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()
        self._remember = remember_ended
        self._orphans: set[str] = set()  # originated legs whose result we never got
        self._moh: dict[str, asyncio.Task[None]] = {}
        self._partner: dict[str, str] = {}
        self._parked_after_bridge: set[str] = set()
        self._tasks: set[asyncio.Task[object]] = set()
        self.missed_hangups = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for name, handler in self._facts().items():
            self.esl.on(name, handler)
        await self.esl.subscribe(*self._facts())
        self.esl.on_connect(self._resync)

    async def close(self) -> None:
        for task in [*self._moh.values(), *self._tasks]:
            task.cancel()
        for name, handler in self._facts().items():
            self.esl.off(name, handler)

    def _spawn(self, coro: object, name: str) -> asyncio.Task[object]:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, ESLError | SwitchError):
                log.error("switch task %s failed", task.get_name(), exc_info=exc)

    # ------------------------------------------------------------ plumbing

    def _leg(self, uuid: str) -> CallLeg | None:
        leg = self.legs.get(uuid)
        return leg if leg is not None and not leg.hung_up else None

    async def _api(self, command: str, *, via: str | None = None) -> str:
        """An `api` command, over the caller's own socket when we hold it.

        A leg that hung up meanwhile sends it over the inbound link instead; a leg lost
        to a reply timeout does not: the command may have run (or be stuck, and would
        then stall the inbound link too).
        """
        leg = self.legs.get(via) if via else None
        try:
            if leg is not None and not leg.hung_up:
                try:
                    text = await leg.api(command)
                except CallLost:
                    raise
                except CallHungUp:
                    text = await self.esl.api(command)
            else:
                text = await self.esl.api(command)
        except ESLCommandError as exc:
            raise SwitchError(exc.reply) from None
        except ESLError as exc:
            raise SwitchError(str(exc)) from None
        if text.startswith("-"):
            raise SwitchError(text.strip())
        return text

    def _ended_with(self, uuid: str, cause: str) -> None:
        followed = self._followed.pop(uuid, None)
        if followed is not None and not followed.gone.done():
            followed.gone.set_result(cause)
        self._ended[uuid] = cause
        while len(self._ended) > self._remember:
            self._ended.popitem(last=False)
        partner = self._partner.pop(uuid, None)
        if partner is not None and self._partner.get(partner) == uuid:
            self._partner.pop(partner, None)
        self._parked_after_bridge.discard(uuid)

    # ------------------------------------------------------------ ringing

    async def ring(
        self,
        dial_strings: Sequence[str],
        timeout_s: float,
        *,
        caller_id: str = "",
        variables: dict[str, str] | None = None,
    ) -> Ring:
        """One `originate` per phone, all at once; the first to answer wins, the rest are
        cancelled. Cancelling this coroutine kills every leg it rang."""
        if not dial_strings:
            return Ring(RingResult.FAILED, cause="NO_DIAL_STRING")
        for d in dial_strings:
            _check(d, _DIAL_RE, "dial string")
        block = self._variables(timeout_s, caller_id, variables or {})
        uuids = [str(uuidlib.uuid4()) for _ in dial_strings]
        for u in uuids:
            self._followed[u] = _Followed(u)
        tasks = [
            asyncio.ensure_future(self._originate(u, d, block, timeout_s + ORIGINATE_MARGIN_S))
            for u, d in zip(uuids, dial_strings, strict=True)
        ]
        winner: int | None = None
        results: dict[int, Ring] = {}
        try:
            pending = set(tasks)
            while pending and winner is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    i = tasks.index(t)
                    results[i] = t.result()
                    if results[i].result is RingResult.ANSWERED and winner is None:
                        winner = i
            if winner is not None:
                await self._cancel_rest(uuids, tasks, winner, "LOSE_RACE")
                return Ring(RingResult.ANSWERED, leg=uuids[winner], index=winner)
        except asyncio.CancelledError:
            await asyncio.shield(self._cancel_rest(uuids, tasks, None, "ORIGINATOR_CANCEL"))
            raise
        return self._worst(list(results.values()))

    def _variables(self, timeout_s: float, caller_id: str, extra: dict[str, str]) -> str:
        values = {
            "originate_timeout": str(max(1, math.ceil(timeout_s))),
            "ignore_early_media": "true",
            "hangup_after_bridge": "false",
        }
        cid = _CID_RE.sub("", caller_id)[:32]
        if cid:
            values["origination_caller_id_number"] = cid
        for name, value in extra.items():
            _check(name, _VAR_NAME_RE, "variable name")
            _check(value, _VAR_VALUE_RE, f"value of {name}")
            values[name] = value
        return ",".join(f"{k}={v}" for k, v in values.items())

    async def _originate(self, uuid: str, dial: str, block: str, job_timeout: float) -> Ring:
        command = f"originate {{origination_uuid={uuid},{block}}}{dial} &park()"
        if not self.esl.connected:  # refused at once: nothing reached the switch
            self._ended_with(uuid, LOST_ORIGINATE)
            return Ring(RingResult.FAILED, cause=LOST_ORIGINATE)
        try:
            text = (
                await self.esl.bgapi(
                    command,
                    check=False,
                    job_timeout=job_timeout,
                    on_late=lambda event: self._late_originate(uuid, event),
                )
            ).strip()
        except ESLDisconnected as exc:
            # the job may still be running on the switch: kill the leg once we are back
            self._orphans.add(uuid)
            self._ended_with(uuid, LOST_ORIGINATE)
            log.warning("originate of %s lost with the link: %s", uuid, exc)
            return Ring(RingResult.FAILED, cause=LOST_ORIGINATE)
        except ESLJobTimeout as exc:
            # the link is up but the result never came (a lost BACKGROUND_JOB, a hung
            # job): the leg may exist and even be answered, by a phone nobody will
            # bridge. Kill it now; if that fails too, the next resync retries.
            self._ended_with(uuid, LOST_ORIGINATE)
            log.warning("originate of %s gave no result: %s; killing the leg", uuid, exc)
            try:
                await self._kill(uuid, "ORIGINATOR_CANCEL")
            except SwitchError as kill_exc:
                log.warning("could not kill leg %s yet: %s", uuid, kill_exc)
                self._orphans.add(uuid)
            return Ring(RingResult.FAILED, cause=LOST_ORIGINATE)
        except ESLError as exc:
            self._ended_with(uuid, "SWITCH_ERROR")
            return Ring(RingResult.FAILED, cause=str(exc)[:64])
        if text.startswith("+OK"):
            followed = self._followed.get(uuid)
            if followed is None:  # hung up before the job result reached us
                return Ring(RingResult.NO_ANSWER, cause=self._ended.get(uuid, "NORMAL_CLEARING"))
            followed.answered = True
            return Ring(RingResult.ANSWERED, leg=uuid)
        words = text.removeprefix("-ERR").split()
        cause = words[0] if words else "UNKNOWN"
        self._ended_with(uuid, cause)
        return Ring(ring_result(cause), cause=cause)

    def _late_originate(self, uuid: str, event: Event) -> None:
        """The result of an originate we gave up on (timed out, link lost, ring
        cancelled) came after all. A +OK is a phone that answered into a parked leg
        nobody will bridge: kill it, even if the give-up already tried (that kill may
        have come before the leg existed). Anything else: the leg is gone already."""
        if not (event.body or "").startswith("+OK"):
            return
        log.warning("late +OK for the originate of %s we gave up on; killing the leg", uuid)
        self._spawn(self._kill_late(uuid), f"kill-late-{uuid}")

    async def _kill_late(self, uuid: str) -> None:
        try:
            await self._kill(uuid, "ORIGINATOR_CANCEL")
        except SwitchError as exc:
            log.warning("could not kill leg %s yet: %s", uuid, exc)
            self._orphans.add(uuid)  # the next resync retries
        else:
            self._orphans.discard(uuid)

    async def _cancel_rest(
        self, uuids: list[str], tasks: list[asyncio.Future[Ring]], keep: int | None, cause: str
    ) -> None:
        """Kill every leg but the winner; one that answered in the same instant too."""
        for i, u in enumerate(uuids):
            if i != keep and (not tasks[i].done() or _answered_leg(tasks[i])):
                with contextlib.suppress(SwitchError):
                    await self._kill(u, cause)
        rest = [t for i, t in enumerate(tasks) if i != keep and not t.done()]
        if not rest:
            return
        done, pending = await asyncio.wait(rest, timeout=5.0)  # never hang a cancel
        for t in pending:
            t.cancel()
        for t in done:
            if leg := _answered_leg(t):
                with contextlib.suppress(SwitchError):
                    await self._kill(leg, cause)

    @staticmethod
    def _worst(results: list[Ring]) -> Ring:
        """What to tell the ACD when nobody answered: a missed ring counts against the
        agent, a busy or broken phone does not."""
        for want in (RingResult.NO_ANSWER, RingResult.REJECTED, RingResult.BUSY):
            for r in results:
                if r.result is want:
                    return r
        return results[0] if results else Ring(RingResult.FAILED, cause="UNKNOWN")

    async def _kill(self, uuid: str, cause: str = "NORMAL_CLEARING") -> None:
        try:
            await self._api(f"uuid_kill {uuid} {cause}")
        except SwitchError as exc:
            if "no such channel" not in str(exc).lower():
                raise

    # ------------------------------------------------------------ media on the caller

    async def play(self, uuid: str, prompt: str) -> None:
        _check(uuid, _UUID_RE, "uuid")
        _check(prompt, _PATH_RE, "prompt")
        leg = self._leg(uuid)
        if leg is None:
            await self._api(f"uuid_broadcast {uuid} {prompt} aleg")
            return
        await self._quiet(uuid)
        try:
            await leg.execute("playback", prompt)
        except ESLError as exc:
            raise SwitchError(str(exc)) from None

    async def music_on_hold(self, uuid: str) -> None:
        _check(uuid, _UUID_RE, "uuid")
        running = self._moh.get(uuid)
        if running is not None and not running.done():
            return
        leg = self._leg(uuid)
        if leg is None:
            await self._api(f"uuid_broadcast {uuid} {self.music} aleg")
            return
        task = asyncio.create_task(self._hold_music(leg), name=f"moh-{uuid}")
        self._moh[uuid] = task
        task.add_done_callback(lambda t: self._moh.pop(uuid) if self._moh.get(uuid) is t else None)

    async def _hold_music(self, leg: CallLeg) -> None:
        """Endless on a real switch (a local stream); replayed if it ever ends."""
        with contextlib.suppress(ESLError):
            while not leg.hung_up:
                await leg.execute("playback", self.music)

    async def _quiet(self, uuid: str) -> bool:
        """Stop our hold music on this leg; True if it was playing."""
        task = self._moh.pop(uuid, None)
        if task is None or task.done():
            return False
        task.cancel()  # no further loop; the running playback is broken off below
        with contextlib.suppress(SwitchError):
            await self._api(f"uuid_break {uuid} all", via=uuid)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return True

    async def stop_media(self, uuid: str) -> None:
        _check(uuid, _UUID_RE, "uuid")
        if not await self._quiet(uuid):
            await self._api(f"uuid_break {uuid} all", via=uuid)

    async def read_digit(self, uuid: str, prompt: str, timeout_s: float) -> str | None:
        _check(prompt, _PATH_RE, "prompt")
        leg = self._leg(uuid)
        if leg is None:
            raise SwitchError(f"no socket session for {uuid}")
        await self._quiet(uuid)
        try:
            digits = await leg.play_and_get_digits(
                prompt,
                min_digits=1,
                max_digits=1,
                tries=1,
                timeout_ms=int(timeout_s * 1000),
                terminators="",
                variable="hotline_digit",
                regex="^[0-9*#]$",
                forget=True,
            )
        except ESLError as exc:
            raise SwitchError(str(exc)) from None
        return digits or None

    # ------------------------------------------------------------ joining legs

    async def bridge(self, a: str, b: str) -> None:
        _check(a, _UUID_RE, "uuid")
        _check(b, _UUID_RE, "uuid")
        for x in (a, b):
            task = self._moh.pop(x, None)
            if task is not None:
                task.cancel()  # uuid_bridge breaks the playback itself
            if x in self.legs and x not in self._parked_after_bridge:
                # the caller outlives the agent's hang-up: our session decides what next
                await self._api(f"uuid_setvar {x} park_after_bridge true", via=x)
                self._parked_after_bridge.add(x)
        await self._api(f"uuid_bridge {a} {b}", via=a if a in self.legs else b)
        self._partner[a], self._partner[b] = b, a

    async def hold(self, uuid: str) -> None:
        """Holding the far side makes FreeSWITCH play hold music to this one."""
        target = self._partner.get(uuid, uuid)
        await self._api(f"uuid_hold {target}", via=uuid)

    async def unhold(self, uuid: str) -> None:
        target = self._partner.get(uuid, uuid)
        await self._api(f"uuid_hold off {target}", via=uuid)

    async def transfer(self, uuid: str, dial_string: str) -> None:
        """Blind transfer kept under our control: ring the target, bridge on answer."""
        ring = await self.ring([dial_string], 30)
        if ring.leg is None:
            raise SwitchError(f"{dial_string} did not answer ({ring.cause or ring.result.value})")
        await self.bridge(uuid, ring.leg)

    async def conference(self, room: str, uuids: Sequence[str]) -> None:
        _check(room, _ROOM_RE, "room")
        arg = f"{room}@{self.profile}"
        for u in uuids:
            _check(u, _UUID_RE, "uuid")
            await self._quiet(u)
            leg = self._leg(u)
            try:
                if leg is not None:  # runs until the caller leaves the room
                    self._spawn(leg.execute("conference", arg), f"conference-{u}")
                else:
                    await self.esl.sendmsg_execute(u, "conference", arg)
            except ESLError as exc:
                raise SwitchError(str(exc)) from None
            self._partner.pop(u, None)

    async def end_conference(self, room: str) -> None:
        _check(room, _ROOM_RE, "room")
        try:
            await self._api(f"conference {room} hup all")
        except SwitchError as exc:
            if "not found" not in str(exc).lower():
                raise

    async def record(self, uuid: str, path: str) -> None:
        _check(uuid, _UUID_RE, "uuid")
        _check(path, _PATH_RE, "recording path")
        await self._api(f"uuid_record {uuid} start {path}", via=uuid)

    # ------------------------------------------------------------ ending

    async def hangup(self, uuid: str, cause: str = "NORMAL_CLEARING") -> None:
        _check(cause, re.compile(r"^[A-Z_]{1,40}$"), "hangup cause")
        _check(uuid, _UUID_RE, "uuid")
        leg = self.legs.get(uuid)
        if leg is not None:
            if not leg.hung_up:
                with contextlib.suppress(ESLError):
                    await leg.hangup(cause)
            return
        if uuid in self._ended:
            return
        await self._kill(uuid, cause)

    async def wait_hangup(self, uuid: str) -> str:
        leg = self.legs.get(uuid)
        if leg is not None:
            return await leg.wait_hangup()
        if uuid in self._ended:
            return self._ended[uuid]
        followed = self._followed.get(uuid)
        if followed is None:
            followed = self._followed[uuid] = _Followed(uuid)
            self._spawn(self._still_there(uuid), f"exists-{uuid}")
        return await asyncio.shield(followed.gone)

    async def _still_there(self, uuid: str) -> None:
        with contextlib.suppress(SwitchError):
            if (await self._api(f"uuid_exists {uuid}")).strip() == "false":
                self._ended_with(uuid, "NO_SUCH_CHANNEL")

    # ------------------------------------------------------------ what the events say

    def _on_answer(self, event: Event) -> None:
        followed = self._followed.get(event.unique_id or "")
        if followed is not None:
            followed.answered = True

    def _on_hangup(self, event: Event) -> None:
        uuid = event.unique_id or ""
        if uuid in self._followed or uuid in self._partner:
            self._ended_with(uuid, event.get("Hangup-Cause") or "NORMAL_CLEARING")
        else:
            # a caller whose agent left first is no longer anybody's partner, but was
            # marked park-after-bridge: forget it too, or the set grows by every call
            self._parked_after_bridge.discard(uuid)

    def _facts(self) -> dict[str, Callable[[Event], None]]:
        """The one subscription table: FreeSWITCH event -> ACD fact."""
        return {
            "CHANNEL_ANSWER": self._on_answer,
            "CHANNEL_HANGUP": self._on_hangup,
            "CHANNEL_HANGUP_COMPLETE": self._on_hangup,
        }

    async def _resync(self) -> None:
        """Back on the inbound link: learn which legs ended while we were away and kill
        legs whose originate result was lost with the old connection."""
        for uuid in list(self._orphans):
            try:
                await self._kill(uuid, "ORIGINATOR_CANCEL")
            except SwitchError as exc:
                log.warning("could not clean up orphaned leg %s: %s", uuid, exc)
                continue
            self._orphans.discard(uuid)
        for uuid in list(self._followed):
            try:
                exists = (await self._api(f"uuid_exists {uuid}")).strip()
            except SwitchError:
                continue
            if exists == "false":
                self.missed_hangups += 1
                log.info("leg %s ended while the event socket was down", uuid)
                self._ended_with(uuid, MISSED_HANGUP)
