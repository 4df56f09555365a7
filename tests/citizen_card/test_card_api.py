"""The staff card API end to end: register, issue, token, offline verify, loss report."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from citizen_card.identity import check_char
from citizen_card.service import verify_detached
from citizen_card.verify import verify_token


def an_id_number(serial: int = 1) -> str:
    first17 = f"11010519900307{serial:03d}"
    return first17 + check_char(first17)


async def register(api, **fields):  # type: ignore[no-untyped-def]
    body = {"name": "张三丰", "id_number": an_id_number(), "phone": "13812345678", **fields}
    r = await api.post("/api/v1/residents", body, as_="agent")
    assert r.status == 201, await r.text()
    return await r.json()


async def test_register_issue_verify_then_report_lost_revokes_offline(api):
    resident = await register(api)
    assert resident["name"] == "张*丰"  # an agent sees the name masked
    assert resident["id_number"] == "110105********" + an_id_number()[-4:]
    assert resident["phone"] == "138****5678"

    r = await api.post(
        f"/api/v1/residents/{resident['id']}/cards", {"pin": "246813", "concession": "senior"}
    )
    assert r.status == 201, await r.text()
    card = await r.json()
    assert card["status"] == "active"
    card_no = card["card_no"]

    tok = (await (await api.get(f"/api/v1/cards/{card_no}/token?purpose=transit")).json())["token"]
    assert tok.startswith("CC1:")
    trust = await (await api.client.get("/.well-known/citizen-card/trust-list")).read()
    status = await (await api.client.get("/.well-known/citizen-card/status-list")).read()
    root = await (await api.client.get("/.well-known/citizen-card/root-key.pem")).read()
    verdict = verify_token(tok, trust, status, "transit", root_key=root)
    assert (verdict.valid, verdict.reason) == (True, "ok")
    assert verdict.claims["purpose"] == "transit"
    assert verdict.claims["payload"] == {"concession": "senior"}  # and nothing else
    assert verdict.claims["sub"].startswith("h") and an_id_number() not in str(verdict.claims)

    r = await api.post(f"/api/v1/cards/{card_no}/report-lost", {"channel": "phone"})
    assert r.status == 200, await r.text()
    receipt = await r.json()
    assert receipt["receipt"].isdigit()
    key = serialization.load_pem_public_key(
        await (await api.client.get("/.well-known/citizen-card/receipt-key.pem")).read()
    )
    assert verify_detached(key, receipt["signed"])["ledger_position"] == receipt["ledger_position"]

    status = await (await api.client.get("/.well-known/citizen-card/status-list")).read()
    assert verify_token(tok, trust, status, "transit", root_key=root).reason == "revoked"
    r = await api.get(f"/api/v1/cards/{card_no}/token?purpose=transit")
    assert r.status == 409
    assert (await r.json())["type"] == "/problems/card-card-not-active"

    r = await api.post(f"/api/v1/cards/{card_no}/report-lost", {})
    assert r.status == 409  # already lost


async def test_bad_id_number_and_duplicates_are_refused(sqlite_api):
    api = sqlite_api
    bad = an_id_number()[:-1] + ("0" if an_id_number()[-1] != "0" else "1")
    r = await api.post("/api/v1/residents", {"name": "李四", "id_number": bad})
    assert r.status == 422
    assert (await r.json())["errors"][0]["field"] == "id_number"
    await register(api)
    r = await api.post("/api/v1/residents", {"name": "李四", "id_number": an_id_number()})
    assert r.status == 409


async def test_department_users_cannot_touch_cards(sqlite_api):
    r = await sqlite_api.post(
        "/api/v1/residents", {"name": "王五", "id_number": an_id_number()}, as_="urban"
    )
    assert r.status == 403


async def test_replace_moves_to_a_new_number_and_the_old_token_is_revoked(sqlite_api):
    api = sqlite_api
    resident = await register(api)
    card = await (
        await api.post(f"/api/v1/residents/{resident['id']}/cards", {"pin": "246813"})
    ).json()
    r = await api.post(f"/api/v1/cards/{card['card_no']}/replace", {})
    assert r.status == 201
    new = await r.json()
    assert new["card_no"] != card["card_no"] and new["status"] == "active"
    old = await (await api.get(f"/api/v1/cards/{card['card_no']}")).json()
    assert (old["status"], old["replaced_by"]) == ("replaced", new["card_no"])


async def test_qr_png_is_an_image(sqlite_api):
    api = sqlite_api
    resident = await register(api)
    card = await (
        await api.post(f"/api/v1/residents/{resident['id']}/cards", {"pin": "246813"})
    ).json()
    r = await api.get(f"/api/v1/cards/{card['card_no']}/qr.png?purpose=id")
    assert r.status == 200 and r.headers["Content-Type"] == "image/png"
    assert (await r.read()).startswith(b"\x89PNG")


async def test_top_up_then_statement_and_benefit_batch_runs_once(api):
    resident = await register(api)
    rid = resident["id"]
    r = await api.post(f"/api/v1/residents/{rid}/wallet/top-up", {"amount": 5000}, as_="supervisor")
    assert r.status == 400  # money moves need an Idempotency-Key
    r = await api.post(
        f"/api/v1/residents/{rid}/wallet/top-up",
        {"amount": 5000},
        as_="supervisor",
        headers={"Idempotency-Key": "till-7-0001"},
    )
    assert r.status == 201, await r.text()
    batch = {"payments": [{"resident_id": rid, "amount": 2000}]}
    for _ in range(2):  # a re-run pays nobody twice
        r = await api.post("/api/v1/benefits/2026-heating-subsidy", batch, as_="admin")
        assert r.status == 201, await r.text()
    wallet = await (await api.get(f"/api/v1/residents/{rid}/wallet")).json()
    assert wallet["balance_fen"] == 7000
    assert [ln["kind"] for ln in wallet["lines"]] == ["disbursement", "topup"]
    assert [ln["balance_after_fen"] for ln in wallet["lines"]] == [7000, 5000]


async def test_pin_locks_after_five_wrong_tries_and_resets_with_identity(sqlite_api):
    from citizen_card import service as svc
    from citizen_card.service import CardError
    from hotline.appkeys import CARD_DEPS

    api = sqlite_api
    deps = api.app[CARD_DEPS]
    resident = await register(api)
    card = await (
        await api.post(f"/api/v1/residents/{resident['id']}/cards", {"pin": "246813"})
    ).json()
    no = card["card_no"]
    assert await svc.verify_pin(deps, no, "246813", actor="ivr", channel="ivr") is True
    for _ in range(5):
        assert await svc.verify_pin(deps, no, "111222", actor="ivr", channel="ivr") is False
    with pytest.raises(CardError) as locked:
        await svc.verify_pin(deps, no, "246813", actor="ivr", channel="ivr")
    assert locked.value.code == "pin-locked"
    with pytest.raises(CardError) as wrong:
        await svc.reset_pin(
            deps,
            no,
            name="张三",
            id_last6=an_id_number()[-6:],
            new_pin="135792",
            actor="agent",
            channel="counter",
        )
    assert wrong.value.code == "identity-mismatch"
    await svc.reset_pin(
        deps,
        no,
        name="张三丰",
        id_last6=an_id_number()[-6:],
        new_pin="135792",
        actor="agent",
        channel="counter",
    )
    assert await svc.verify_pin(deps, no, "135792", actor="ivr", channel="ivr") is True


async def test_no_personal_data_reaches_the_logs(api, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    resident = await register(api)
    card = await (
        await api.post(f"/api/v1/residents/{resident['id']}/cards", {"pin": "246813"})
    ).json()
    await api.post(f"/api/v1/cards/{card['card_no']}/report-lost", {"channel": "phone"})
    r = await api.post(
        f"/api/v1/cards/{card['card_no']}/pin/reset",
        {"name": "张三丰", "id_last6": an_id_number()[-6:], "new_pin": "135792"},
    )
    assert r.status == 204
    text = "\n".join(rec.getMessage() for rec in caplog.records)
    for secret in (an_id_number(), an_id_number()[-6:] + "\n", "13812345678", "张三丰", "246813"):
        assert secret not in text
