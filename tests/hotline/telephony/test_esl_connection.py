"""The connection's reads: every ESL socket on a loop reads into one shared buffer.

`ESLConnection` is a `BufferedProtocol` (a fresh 256 KiB block per read fragmented the
C heap by ~80 KB per call); each read must be taken out of the buffer before the next
one, or a frame split across reads on one socket would be overwritten by another
socket's read in between.
"""

from __future__ import annotations

import asyncio
import socket

from hotline.telephony.esl_connection import ESLConnection
from hotline.telephony.esl_frames import Event


def _event(name: str, uuid: str) -> bytes:
    body = f"Event-Name: {name}\nUnique-ID: {uuid}\nCaller-Caller-ID-Number: 1380000%2B\n\n"
    data = body.encode()
    return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(data) + data


async def _wait(cond, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(200):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out: {what}")


async def test_frames_split_across_reads_survive_other_sockets_reading_in_between() -> None:
    loop = asyncio.get_running_loop()
    got: dict[str, list[tuple[str, str | None, str | None]]] = {"a": [], "b": []}
    conns: list[ESLConnection] = []
    peers: list[socket.socket] = []
    for label in ("a", "b"):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)

        def on_event(ev: Event, label: str = label) -> None:
            got[label].append((ev.name, ev.unique_id, ev.get("Caller-Caller-ID-Number")))

        _, conn = await loop.connect_accepted_socket(
            lambda on_event=on_event, label=label: ESLConnection(label=label, on_event=on_event),
            ours,
        )
        assert isinstance(conn, asyncio.BufferedProtocol)
        conns.append(conn)
        peers.append(theirs)
    a, b = peers
    try:
        first = _event("CHANNEL_ANSWER", "uuid-a")
        a.sendall(first[:30])  # half a header block on socket a
        await _wait(lambda: conns[0].last_rx > 0 and conns[0].parser is not None, "a read")
        await asyncio.sleep(0.05)
        b.sendall(_event("CHANNEL_HANGUP", "uuid-b") * 3)  # b's reads reuse the buffer
        await _wait(lambda: len(got["b"]) == 3, "b's events")
        a.sendall(first[30:] + _event("CHANNEL_BRIDGE", "uuid-a"))
        await _wait(lambda: len(got["a"]) == 2, "a's events")
        assert got["a"] == [
            ("CHANNEL_ANSWER", "uuid-a", "1380000+"),
            ("CHANNEL_BRIDGE", "uuid-a", "1380000+"),
        ]
        assert got["b"] == [("CHANNEL_HANGUP", "uuid-b", "1380000+")] * 3
        assert [c.events_received for c in conns] == [2, 3]
    finally:
        for c in conns:
            if c.transport is not None:
                c.transport.close()
        for p in peers:
            p.close()
