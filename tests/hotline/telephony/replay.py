"""Replaying the recorded FreeSWITCH side of a transcript to our client or server.

Each command our code sends is matched to the next recorded command with the same
first line; the switch's recorded answer to it is then written back, chunk by chunk,
with the recorded Job-UUID / Event-UUID swapped for the ones our code chose. Commands
the recording lacks (our own subscriptions) get a plain +OK; recorded steps named in
`skip` are passed over. Every command is kept so a test can compare bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from hotline.telephony.esl_inbound import InboundESL
from tests.hotline.telephony.transcripts import chunks

_UUID = rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@dataclass
class Step:
    command: bytes
    answer: list[bytes]


@dataclass
class Replay:
    name: str
    skip: set[int] = field(default_factory=set)
    received: list[bytes] = field(default_factory=list)
    mismatches: list[tuple[bytes, bytes]] = field(default_factory=list)
    closed_by_peer: asyncio.Event = field(default_factory=asyncio.Event)
    delay_s: float = 0.0  # between answer chunks: time for the peer to act on each

    def __post_init__(self) -> None:
        self.greeting: list[bytes] = []
        self.steps: list[Step] = []
        for c in chunks(self.name):
            if not c.from_switch:
                self.steps.append(Step(c.data, []))
            elif self.steps:
                self.steps[-1].answer.append(c.data)
            else:
                self.greeting.append(c.data)
        self.next = 0
        self.swaps: dict[bytes, bytes] = {}  # recorded uuid -> ours, kept for later events

    def _match(self, command: bytes) -> Step | None:
        line = command.split(b"\n", 1)[0]
        for i in range(self.next, len(self.steps)):
            if i in self.skip:
                continue
            if self.steps[i].command.split(b"\n", 1)[0] == line:
                self.next = i + 1
                return self.steps[i]
            break
        return None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for data in self.greeting:
            writer.write(data)
        try:
            while True:
                command = await read_command(reader)
                if command is None:
                    self.closed_by_peer.set()
                    return
                self.received.append(command)
                while self.next in self.skip:
                    self.next += 1
                step = self._match(command)
                if step is None:
                    writer.write(b"Content-Type: command/reply\nReply-Text: +OK\n\n")
                    continue
                self.swaps.update(_swaps(step.command, command))
                swaps = self.swaps
                job = re.search(rb"Job-UUID: (" + _UUID + rb")", command)
                if job and job.group(1) not in swaps.values():
                    recorded = recorded_job_uuid_in_answer(step)
                    if recorded:
                        swaps[recorded] = job.group(1)
                expected = _apply(step.command, swaps)
                if command.startswith((b"sendmsg", b"api ")) and expected != command:
                    self.mismatches.append((expected, command))
                for data in step.answer:
                    writer.write(_apply(data, swaps))
                    await writer.drain()
                    await asyncio.sleep(self.delay_s)
        except ConnectionError:
            self.closed_by_peer.set()


def _swaps(recorded: bytes, ours: bytes) -> dict[bytes, bytes]:
    swaps = {}
    for header in (b"Job-UUID: ", b"Event-UUID: "):
        a = re.search(re.escape(header) + b"(" + _UUID + b")", recorded)
        b = re.search(re.escape(header) + b"(" + _UUID + b")", ours)
        if a and b:
            swaps[a.group(1)] = b.group(1)
    return swaps


def _apply(data: bytes, swaps: dict[bytes, bytes]) -> bytes:
    for old, new in swaps.items():
        data = data.replace(old, new)
    return data


async def read_command(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\n\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    m = re.search(rb"(?im)^content-length: (\d+)$", head)
    if m:
        return head + await reader.readexactly(int(m.group(1)))
    return head


@contextlib.asynccontextmanager
async def connected_to(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    make_client: Callable[[int], InboundESL],
) -> AsyncIterator[InboundESL]:
    """A switch on a free port speaking `serve`, and our client connected to it (both
    stopped afterwards)."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    esl = make_client(server.sockets[0].getsockname()[1])
    await esl.start()
    try:
        async with asyncio.timeout(5):
            await esl.wait_connected()
        yield esl
    finally:
        await esl.stop()
        server.close()


def recorded_job_uuid_in_answer(step: Step) -> bytes | None:
    m = re.search(rb"Job-UUID: (" + _UUID + rb")", b"".join(step.answer))
    return m.group(1) if m else None
