"""Reader for the real FreeSWITCH transcripts in esl_transcripts/ (copied from the shared
fixtures so the tests run anywhere): every chunk, its direction, byte for byte."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DIR = Path(__file__).resolve().parent / "esl_transcripts"
_CHUNK = re.compile(rb"^\[\+([0-9.]+)s\] (\S+)  (\d+) bytes ---8<---\n", re.M)
FROM_SWITCH = {b"S->C", b"FS->APP"}


@dataclass(frozen=True)
class Chunk:
    at: float
    from_switch: bool
    data: bytes


def chunks(name: str) -> list[Chunk]:
    raw = (DIR / name).read_bytes()
    out = []
    for m in _CHUNK.finditer(raw):
        size = int(m.group(3))
        data = raw[m.end() : m.end() + size]
        tail = raw[m.end() + size : m.end() + size + 40]
        assert tail.startswith((b"---8<--- end of chunk", b"\n[no trailing LF]\n---8<---")), tail
        out.append(Chunk(float(m.group(1)), m.group(2) in FROM_SWITCH, data))
    return out


def switch_bytes(name: str) -> bytes:
    return b"".join(c.data for c in chunks(name) if c.from_switch)


TRANSCRIPTS = sorted(p.name for p in DIR.glob("*.txt") if not p.name.startswith("03b"))
