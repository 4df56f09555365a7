"""The hash chain over a ticket's event trail.

Each event's hash covers its content and the previous event's hash, so editing,
deleting or reordering any past event is detectable by recomputing the chain.
The canonical form is sorted-key compact JSON with timestamps in ISO 8601 UTC
(microseconds), the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

GENESIS = "0" * 64


def _canonical_time(at: datetime) -> str:
    """`at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")`, which stored hashes depend
    on. isoformat spells the same text for years from 1000 (strftime does not pad
    earlier ones) in a third less time, and every new ticket hashes one."""
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    if at.year < 1000:
        return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return at.isoformat(timespec="microseconds")[:-6] + "Z"


def event_hash(
    prev_hash: str,
    *,
    ticket_number: str,
    seq: int,
    at: datetime,
    actor: str,
    actor_role: str,
    action: str,
    from_status: str | None,
    to_status: str,
    data: dict[str, Any],
) -> str:
    content = {
        "prev": prev_hash,
        "ticket": ticket_number,
        "seq": seq,
        "at": _canonical_time(at),
        "actor": actor,
        "role": actor_role,
        "action": action,
        "from": from_status,
        "to": to_status,
        "data": data,
    }
    return hashlib.sha256(canonical_json(content)).hexdigest()


_PLAIN = frozenset({str, int, bool, type(None)})


def _plain(value: Any) -> bool:
    """Only strings, integers, booleans, None, lists and string-keyed dicts (exact types)."""
    t = type(value)
    if t in _PLAIN:
        return True
    if t is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if t is list or t is tuple:
        return all(_plain(v) for v in value)
    return False


def canonical_json(value: Any) -> bytes:
    """Sorted-key compact UTF-8 JSON: `json.dumps(sort_keys=True, ensure_ascii=False,
    separators=(",", ":")).encode()`, byte for byte, since stored hashes depend on it.

    orjson writes the same bytes for the plain values of an audit event (checked for
    every code point, and integers up to 64 bits; it refuses larger ones) and is several
    times faster; anything else (floats, which it spells differently, or other types)
    goes through the standard library.
    """
    if _plain(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # an integer past 64 bits, a lone surrogate
            pass
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


class ChainedEvent(Protocol):
    ticket_number: str
    seq: int
    at: datetime
    actor: str
    actor_role: str
    action: str
    from_status: str | None
    to_status: str
    data: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainBreak:
    ticket_number: str
    seq: int
    problem: str

    def to_dict(self) -> dict[str, Any]:
        return {"ticket": self.ticket_number, "seq": self.seq, "problem": self.problem}


def verify_chain(
    events: Iterable[ChainedEvent], *, expected_last: str | None = None
) -> list[ChainBreak]:
    """Every break in one ticket's chain (events in seq order); [] means intact.

    `expected_last` is the head hash stored on the ticket row: it catches a deleted
    tail, which a chain check alone cannot see.
    """
    breaks: list[ChainBreak] = []
    prev = GENESIS
    want_seq = 1
    number = ""
    for ev in events:
        number = ev.ticket_number
        if ev.seq != want_seq:
            breaks.append(ChainBreak(number, ev.seq, f"expected event {want_seq}, found {ev.seq}"))
        if ev.prev_hash != prev:
            breaks.append(ChainBreak(number, ev.seq, "link to the previous event is broken"))
        recomputed = event_hash(
            ev.prev_hash,
            ticket_number=ev.ticket_number,
            seq=ev.seq,
            at=ev.at,
            actor=ev.actor,
            actor_role=ev.actor_role,
            action=ev.action,
            from_status=ev.from_status,
            to_status=ev.to_status,
            data=ev.data,
        )
        if recomputed != ev.hash:
            breaks.append(ChainBreak(number, ev.seq, "content does not match its hash"))
        prev = ev.hash
        want_seq = ev.seq + 1
    if expected_last is not None and expected_last != prev:
        breaks.append(ChainBreak(number, want_seq, "trail is shorter than the ticket records"))
    return breaks
