"""The floor server of `bench/card.py`: bench/RESULTS.md argues from its figure that the
issue's online target is beyond one event loop of the benchmark machine, which only
holds while the floor does the protocol's work for real. So: it refuses what the
protocol refuses (a changed body, another partner's key, a reused pay token, an
emptied wallet), signs its answers, and its payments are durable transactions."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from bench.card import PAY_PATH, VERIFY_PATH, floor_app
from citizen_card.keys import Keyring, build_status_list, build_trust_list, issue_token
from citizen_card.partner_auth import (
    RESPONSE_SIGNATURE_HEADER,
    load_public_key,
    public_key_pem,
    verify_response,
)
from citizen_card.partner_client import sign_headers

REVOKED = 7


def _setup(
    tmp_path: Path, pg_dsn: str | None, batch: bool = False
) -> tuple[Keyring, dict[str, Any]]:
    """Keys, lists and floor.json; each wallet starts with 1,000 fen."""
    now = time.time()
    ring = Keyring.generate(now=now - 3600)
    keys = {pid: ed25519.Ed25519PrivateKey.generate() for pid in ("metro", "shop")}
    conf = {
        "partners": [
            {"partner_id": "metro", "type": "transit", "scopes": ["transit"], "key_id": "k1",
             "key": public_key_pem(keys["metro"])},
            {"partner_id": "shop", "type": "merchant", "scopes": ["pay"], "key_id": "k1",
             "key": public_key_pem(keys["shop"])},
        ],
        "trust_list": build_trust_list(ring, now).hex(),
        "status_list": build_status_list(ring, [REVOKED], 64, 1, now).hex(),
        "root_key": ring.root_public_pem().decode(),
        "pg_dsn": pg_dsn,
        "wallet_fen": 1000,
        "batch": batch,
    }  # fmt: skip
    (tmp_path / "floor.json").write_text(json.dumps(conf))
    return ring, keys


def _token(ring: Keyring, purpose: str, index: int) -> str:
    payload = {"concession": "adult"} if purpose == "transit" else {}
    return issue_token(
        ring,
        sub=f"card-{index}",
        purpose=purpose,
        status_index=index,
        payload=payload,
        now=time.time(),
    )


async def _post(
    client: Any, key: Any, partner: str, path: str, data: dict[str, Any], *, tamper: bool = False
) -> tuple[int, bytes, str | None, str]:
    body = json.dumps(data).encode()
    headers = sign_headers("POST", path, body, partner_id=partner, key_id="k1", private_key=key)
    nonce = headers["Authorization"].split("nonce=")[1].split(",")[0]
    if tamper:
        body = body.replace(b'"', b' "', 1)
    headers["Content-Type"] = "application/json"
    r = await client.post(path, data=body, headers=headers)
    return r.status, await r.read(), r.headers.get(RESPONSE_SIGNATURE_HEADER), nonce


async def test_the_floor_verifies_what_the_protocol_requires(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    ring, keys = _setup(tmp_path, None)
    client = await aiohttp_client(floor_app(tmp_path))
    answer_key = load_public_key((tmp_path / "floor-key.pem").read_bytes())
    good = {"token": _token(ring, "transit", 3), "purpose": "transit"}

    status, raw, sig, nonce = await _post(client, keys["metro"], "metro", VERIFY_PATH, good)
    assert status == 200
    assert json.loads(raw) == {
        "valid": True, "reason": "ok", "purpose": "transit", "exp": json.loads(raw)["exp"],
        "concession": "adult",
    }  # fmt: skip
    verify_response(sig, answer_key, 200, nonce, raw)  # raises if forged

    # the partner's signature is checked: a changed body, or another partner's key
    assert (await _post(client, keys["metro"], "metro", VERIFY_PATH, good, tamper=True))[0] == 401
    assert (await _post(client, keys["shop"], "metro", VERIFY_PATH, good))[0] == 401
    # the token's own checks: its signature, the purpose, the status list
    bad = dict(good, token=good["token"][:-6] + "ABCDEF")
    for data, reason in (
        (bad, None),
        (dict(good, purpose="medical"), "wrong_purpose"),
        ({"token": _token(ring, "transit", REVOKED), "purpose": "transit"}, "revoked"),
    ):
        status, raw, _, _ = await _post(client, keys["metro"], "metro", VERIFY_PATH, data)
        answer = json.loads(raw)
        assert status == 200 and answer["valid"] is False
        assert reason is None or answer["reason"] == reason


@pytest.mark.parametrize("batch", [False, True], ids=["one-tx", "batched"])
async def test_the_floor_pays_once_per_token_in_a_durable_transaction(
    tmp_path: Path, aiohttp_client: Any, pg_dsn: str, batch: bool
) -> None:
    ring, keys = _setup(tmp_path, pg_dsn, batch)
    client = await aiohttp_client(floor_app(tmp_path))
    token = _token(ring, "pay", 5)

    status, raw, sig, nonce = await _post(
        client, keys["shop"], "shop", PAY_PATH, {"token": token, "amount": 250}
    )
    assert status == 201
    answer = json.loads(raw)
    verify_response(
        sig, load_public_key((tmp_path / "floor-key.pem").read_bytes()), 201, nonce, raw
    )
    # a pay token is one-time; another partner cannot pay with the merchant's key
    again = await _post(client, keys["shop"], "shop", PAY_PATH, {"token": token, "amount": 250})
    assert again[0] == 409 and json.loads(again[1]) == {"reason": "replayed"}
    fresh = {"token": _token(ring, "pay", 5), "amount": 1}
    assert (await _post(client, keys["metro"], "shop", PAY_PATH, fresh))[0] == 401
    # three more payments of 250 fit in the 1,000 fen; the fourth is refused
    statuses = []
    for _ in range(4):
        data = {"token": _token(ring, "pay", 5), "amount": 250}
        statuses.append((await _post(client, keys["shop"], "shop", PAY_PATH, data))[0])
    assert statuses == [201, 201, 201, 409]

    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT seq, amount, receipt FROM floor_transfer ORDER BY seq")
        balance = await conn.fetchval("SELECT balance FROM floor_wallet WHERE id = 5")
    finally:
        await conn.close()
    assert rows[0]["amount"] == 250 and rows[0]["seq"] == answer["seq"]
    assert rows[0]["receipt"] == answer["receipt"]
    assert [r["amount"] for r in rows] == [250] * 4 and balance == 0


@pytest.mark.parametrize("amount", [0, -1, 1.5, "100"])
async def test_the_floor_refuses_amounts_that_are_not_positive_whole_fen(
    tmp_path: Path, aiohttp_client: Any, pg_dsn: str, amount: Any
) -> None:
    ring, keys = _setup(tmp_path, pg_dsn)
    client = await aiohttp_client(floor_app(tmp_path))
    data = {"token": _token(ring, "pay", 1), "amount": amount}
    assert (await _post(client, keys["shop"], "shop", PAY_PATH, data))[0] == 400


async def test_the_batched_floor_never_pays_a_wallet_beyond_its_balance(
    tmp_path: Path, aiohttp_client: Any, pg_dsn: str
) -> None:
    """Concurrent payments from two wallets share batches; each wallet pays exactly what
    its 1,000 fen allow (a wallet appears once per batch, so its UPDATE sees its last
    balance)."""
    ring, keys = _setup(tmp_path, pg_dsn, batch=True)
    client = await aiohttp_client(floor_app(tmp_path))

    async def pay(wallet: int) -> int:
        data = {"token": _token(ring, "pay", wallet), "amount": 300}
        return (await _post(client, keys["shop"], "shop", PAY_PATH, data))[0]

    statuses = await asyncio.gather(*(pay(w) for w in (1, 2) for _ in range(6)))
    assert sorted(statuses) == [201] * 6 + [409] * 6  # 3 of 300 fen fit per wallet
    conn = await asyncpg.connect(pg_dsn)
    try:
        balances = await conn.fetch("SELECT id, balance FROM floor_wallet ORDER BY id")
        seqs = await conn.fetch("SELECT seq FROM floor_transfer")
    finally:
        await conn.close()
    assert [(r["id"], r["balance"]) for r in balances] == [(1, 100), (2, 100)]
    assert len({r["seq"] for r in seqs}) == 6
