"""NUL in JSON bodies and ids in paths: refused cleanly, whatever the input (webkit)."""

from __future__ import annotations

import json

from citizen_card.routes import nul_errors
from citizen_card.routes import row_id as card_row_id
from ticketing.webkit import nul_fields, row_id

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


def test_row_ids_are_ascii_digits_within_the_integer_range() -> None:
    assert row_id("1") == 1
    assert row_id("2147483647") == 2**31 - 1
    for bad in ("0", "2147483648", "99999999999", "-1", "+1", " 1", "1.0", "²", "٣", "", "1e3"):
        assert row_id(bad) is None, bad
    assert card_row_id("2147483647") == 2**31 - 1 and card_row_id("٣") is None
