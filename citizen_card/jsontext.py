"""Compact UTF-8 JSON for partner answers and audit rows.

orjson spells it as `json.dumps(ensure_ascii=False, separators=(",", ":"))` does, at a
tenth of the cost, and every partner call writes an answer and an audit row; what it
refuses (integers past 64 bits, lone surrogates) goes through the standard library, so
nothing that encoded before fails now. Floats may be spelt differently (1e-05 vs
0.00001), with the same value.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(data: Any) -> bytes:
    try:
        return orjson.dumps(data)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def dumps_text(data: Any) -> str:
    return dumps(data).decode()
