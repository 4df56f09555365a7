"""NUL in JSON bodies: refused by field, at any depth JSON allows (ticketing.webkit)."""

from __future__ import annotations

import json

from citizen_card.routes import nul_errors
from ticketing.webkit import nul_fields

DEPTH = 5_000  # deeper than the recursion limit: a recursive walk would fail


def test_every_string_and_key_with_a_nul_is_named_by_its_path() -> None:
    data = json.loads('{"a": ["ok", "x\\u0000"], "b\\u0000": 1, "c": {"d": "\\u0000"}, "e": 2}')
    assert nul_fields(data) == ["a.1", "b\x00", "c.d"]
    assert nul_fields("\x00") == ["(body)"]
    assert nul_fields({"a": ["clean", {"b": 1.5, "c": None}]}) == []


def test_a_body_nested_past_the_recursion_limit_is_walked_without_recursion() -> None:
    data: object = "x\x00"
    for _ in range(DEPTH):
        data = [data]
    (path,) = nul_fields({"a": data})
    assert path == "a" + ".0" * DEPTH
    raw = '{"a": ' + "[" * 200 + '"x\\u0000"' + "]" * 200 + "}"
    (err,) = nul_errors(raw.encode())  # the citizen-card copy (it imports no ticketing)
    assert err["field"] == "a" + ".0" * 200
