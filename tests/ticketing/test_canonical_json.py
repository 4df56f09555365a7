"""The fast JSON encoders must write exactly what the standard library writes.

Stored audit hashes depend on `canonical_json` byte for byte, and a replayed
Idempotency-Key answer is the stored `dumps_json` text, so a difference is a broken
audit chain or a changed answer, not a style question.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ticketing.audit import canonical_json
from ticketing.webkit import dumps_json


def stdlib_canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def stdlib_compact(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


text = st.text(st.characters(blacklist_categories=("Cs",)))  # no lone surrogates
scalars = st.none() | st.booleans() | st.integers() | text
plain = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(plain)
def test_canonical_json_is_the_standard_librarys_for_plain_values(value: Any) -> None:
    assert canonical_json(value) == stdlib_canonical(value)


def test_canonical_json_every_code_point_and_escape() -> None:
    chars = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    value = {"z": chars, "a": ['"\\/\b\f\n\r\t\x00\x1f\x7f\u2028\u2029'], "é": None, "e": 1}
    assert canonical_json(value) == stdlib_canonical(value)


def test_canonical_json_falls_back_where_orjson_would_differ_or_refuse() -> None:
    for value in (
        {"lat": 39.9042, "tiny": 1e-05, "big": 1e16},  # float spelling differs in orjson
        {"n": 2**64 + 1, "m": -(2**70)},  # past 64 bits
        {"t": (1, "x")},
        {"nested": {"b": [1.5, {"y": 2, "x": 1}]}},
    ):
        assert canonical_json(value) == stdlib_canonical(value)


def test_canonical_json_refuses_what_the_standard_library_refuses() -> None:
    class Opaque:
        pass

    for bad in ({"x": Opaque()}, {"s": "\ud800"}):
        try:
            stdlib_canonical(bad)
        except (TypeError, UnicodeEncodeError) as exc:
            expected: type[Exception] = type(exc)
        else:  # pragma: no cover - the premise of the test
            raise AssertionError("the standard library accepted it")
        try:
            canonical_json(bad)
        except expected:
            pass
        else:
            raise AssertionError(f"canonical_json accepted {bad!r}")


@settings(max_examples=300, deadline=None)
@given(plain)
def test_dumps_json_is_compact_utf8_json(value: Any) -> None:
    assert dumps_json(value) == stdlib_compact(value)


def test_dumps_json_values_orjson_spells_differently_keep_their_value() -> None:
    value = {"lat": 39.9042, "lon": 116.4074, "tiny": 1e-05, 3: "int key", "big": 2**70}
    assert json.loads(dumps_json(value)) == json.loads(stdlib_compact(value))
