"""An in-memory switch: channels, phones that answer or ring out, conference rooms.

For unit tests of the ACD and emergency hand-off (fast, deterministic) and for the
demo when no FreeSWITCH simulator is running. It keeps FreeSWITCH's semantics where
the ACD depends on them: a leg whose bridge partner hangs up stays up (our socket
session decides), an originate that nobody answers ends with NO_ANSWER after the
timeout, USER_BUSY at once, a cancelled originate hangs up what it was ringing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from hotline.acd.switch import Ring, RingResult, SwitchError


@dataclass
class Phone:
    """How a simulated phone behaves when rung."""

    mode: str = "answer"  # answer | no_answer | busy | reject | manual | unregistered
    answer_after_s: float = 0.0
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # for "manual"
    rung: int = 0


@dataclass
class Channel:
    uuid: str
    name: str  # caller number or dial string
    peer: str | None = None
    room: str | None = None
    held: bool = False
    media: str | None = None  # "moh" while hold music plays
    heard: list[str] = field(default_factory=list)
    recording: str | None = None
    digits: list[str | None] = field(default_factory=list)
    cause: str | None = None
    gone: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class MemorySwitch:
    def __init__(self, *, play_s: float = 0.0) -> None:
        self.channels: dict[str, Channel] = {}
        self.phones: dict[str, Phone] = {}
        self.commands: list[tuple[str, ...]] = []
        self.play_s = play_s
        self._ids = itertools.count(1)

    # ------------------------------------------------------------ the test's side

    def new_call(self, caller: str, digits: Sequence[str | None] = ()) -> str:
        uuid = f"call-{next(self._ids):05d}"
        self.channels[uuid] = Channel(uuid, caller, digits=list(digits))
        return uuid

    def phone(self, dial_string: str, mode: str = "answer", answer_after_s: float = 0.0) -> Phone:
        p = self.phones[dial_string] = Phone(mode, answer_after_s)
        return p

    def up(self, uuid: str) -> bool:
        ch = self.channels.get(uuid)
        return ch is not None and ch.cause is None

    def leg_of(self, dial_string: str) -> str | None:
        """The live leg ringing/talking on this phone, if any."""
        for ch in self.channels.values():
            if ch.name == dial_string and ch.cause is None:
                return ch.uuid
        return None

    def room_members(self, room: str) -> set[str]:
        return {c.uuid for c in self.channels.values() if c.room == room and c.cause is None}

    # ------------------------------------------------------------ Switch protocol

    def _ch(self, uuid: str) -> Channel:
        ch = self.channels.get(uuid)
        if ch is None or ch.cause is not None:
            raise SwitchError(f"-ERR No such channel! {uuid}")
        return ch

    async def ring(
        self,
        dial_strings: Sequence[str],
        timeout_s: float,
        *,
        caller_id: str = "",
        variables: dict[str, str] | None = None,
    ) -> Ring:
        self.commands.append(("originate", ",".join(dial_strings)))
        phones = [self.phones.get(d) for d in dial_strings]
        for p in phones:
            if p is not None:
                p.rung += 1
        answering = [
            (p.answer_after_s, i)
            for i, p in enumerate(phones)
            if p is not None and p.mode == "answer" and p.answer_after_s < timeout_s
        ]
        manual = [i for i, p in enumerate(phones) if p is not None and p.mode == "manual"]
        if not answering and not manual:
            live = [p for p in phones if p is not None and p.mode in ("no_answer", "answer")]
            if not live:
                if any(p is not None and p.mode == "busy" for p in phones):
                    return Ring(RingResult.BUSY, cause="USER_BUSY")
                if any(p is not None and p.mode == "reject" for p in phones):
                    return Ring(RingResult.REJECTED, cause="CALL_REJECTED")
                return Ring(RingResult.FAILED, cause="USER_NOT_REGISTERED")
            await asyncio.sleep(timeout_s)
            return Ring(RingResult.NO_ANSWER, cause="NO_ANSWER")
        waiters: dict[asyncio.Task[None], int] = {}
        if answering:
            delay, idx = min(answering)
            waiters[asyncio.ensure_future(asyncio.sleep(delay))] = idx
        for i in manual:
            p = phones[i]
            assert p is not None
            p.answered.clear()
            waiters[asyncio.ensure_future(p.answered.wait())] = i  # type: ignore[arg-type]
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for t in waiters:
                t.cancel()
        if not done:
            return Ring(RingResult.NO_ANSWER, cause="NO_ANSWER")
        idx = waiters[next(iter(done))]
        leg = f"leg-{next(self._ids):05d}"
        self.channels[leg] = Channel(leg, dial_strings[idx])
        return Ring(RingResult.ANSWERED, leg=leg, index=idx, cause="")

    async def bridge(self, a: str, b: str) -> None:
        self.commands.append(("uuid_bridge", a, b))
        ca, cb = self._ch(a), self._ch(b)
        for c in (ca, cb):
            if c.peer and c.peer in self.channels:
                self.channels[c.peer].peer = None
            c.room = None
            c.media = None
        ca.peer, cb.peer = b, a

    async def play(self, uuid: str, prompt: str) -> None:
        self.commands.append(("playback", uuid, prompt))
        self._ch(uuid).heard.append(prompt)
        await asyncio.sleep(self.play_s)

    async def music_on_hold(self, uuid: str) -> None:
        self.commands.append(("moh", uuid))
        self._ch(uuid).media = "moh"

    async def stop_media(self, uuid: str) -> None:
        self.commands.append(("uuid_break", uuid))
        self._ch(uuid).media = None

    async def hold(self, uuid: str) -> None:
        self.commands.append(("uuid_hold", uuid))
        self._ch(uuid).held = True

    async def unhold(self, uuid: str) -> None:
        self.commands.append(("uuid_hold off", uuid))
        self._ch(uuid).held = False

    async def transfer(self, uuid: str, dial_string: str) -> None:
        self.commands.append(("uuid_transfer", uuid, dial_string))
        self._ch(uuid)
        ring = await self.ring([dial_string], 30)
        if ring.leg:
            await self.bridge(uuid, ring.leg)

    async def conference(self, room: str, uuids: Sequence[str]) -> None:
        self.commands.append(("conference", room, *uuids))
        for u in uuids:
            ch = self._ch(u)
            if ch.peer and ch.peer in self.channels:
                self.channels[ch.peer].peer = None
            ch.peer, ch.room, ch.media = None, room, None

    async def end_conference(self, room: str) -> None:
        self.commands.append(("conference", room, "hup", "all"))
        for leg in self.room_members(room):
            await self.hangup(leg)

    async def record(self, uuid: str, path: str) -> None:
        self.commands.append(("uuid_record", uuid, path))
        self._ch(uuid).recording = path

    async def read_digit(self, uuid: str, prompt: str, timeout_s: float) -> str | None:
        ch = self._ch(uuid)
        self.commands.append(("play_and_get_digits", uuid, prompt))
        ch.heard.append(prompt)
        await asyncio.sleep(self.play_s)
        return ch.digits.pop(0) if ch.digits else None

    async def hangup(self, uuid: str, cause: str = "NORMAL_CLEARING") -> None:
        ch = self.channels.get(uuid)
        if ch is None or ch.cause is not None:
            return
        self.commands.append(("uuid_kill", uuid, cause))
        ch.cause = cause
        if ch.peer and ch.peer in self.channels:
            self.channels[ch.peer].peer = None  # the other side stays up: our session decides
        ch.peer = None
        ch.room = None
        if not ch.gone.done():
            ch.gone.set_result(cause)

    async def wait_hangup(self, uuid: str) -> str:
        ch = self.channels.get(uuid)
        if ch is None:
            return "NO_SUCH_CHANNEL"
        if ch.cause is not None:
            return ch.cause
        return await asyncio.shield(ch.gone)

    async def close(self) -> None:
        for uuid in list(self.channels):
            with contextlib.suppress(Exception):
                await self.hangup(uuid, "SYSTEM_SHUTDOWN")
