"""The city app reaches a citizen card only after the session proves the card:
a recycled phone number must not hand a stranger someone's wallet."""

from __future__ import annotations

from typing import Any

from tests.channels.test_app_signin import APP, shift_clock, sign_in
from tests.citizen_card.test_partner_api import PIN, an_id_number, wallet_with

PHONE = "138 1234 5678"


async def holder(api: Any, phone: str | None = PHONE) -> tuple[dict, dict]:
    body: dict[str, Any] = {
        "name": "张三丰",
        "id_number": an_id_number(1),
        "verified_source": "counter-id-check",
    }
    if phone:
        body["phone"] = phone
    r = await api.post("/api/v1/residents", body)
    assert r.status == 201, await r.text()
    resident = await r.json()
    r = await api.post(f"/api/v1/residents/{resident['id']}/cards", {"pin": PIN})
    assert r.status == 201, await r.text()
    return resident, await r.json()


async def bind(api: Any, me: dict, card_no: str, last6: str, pin: str) -> Any:
    return await api.client.post(
        f"{APP}/cards/bind", json={"card_no": card_no, "id_last6": last6, "pin": pin}, headers=me
    )


async def test_wallet_needs_a_proven_card_on_this_session(api, monkeypatch):  # type: ignore[no-untyped-def]
    resident, card = await holder(api)
    await wallet_with(api, resident, 700)
    me = await sign_in(api, PHONE)

    r = await api.client.get(f"{APP}/wallet", headers=me)
    assert r.status == 403  # the phone alone proves nothing about the card
    assert "bind" in (await r.json())["detail"]

    r = await bind(api, me, card["card_no"], an_id_number(1)[-6:], "000000")
    assert r.status == 403
    assert (await r.json())["reason"] == "wrong_pin"

    r = await bind(api, me, card["card_no"], an_id_number(1)[-6:], PIN)
    assert r.status == 201, await r.text()
    r = await api.client.get(f"{APP}/wallet", headers=me)
    assert r.status == 200, await r.text()
    assert (await r.json())["balance_fen"] == 700

    # a new sign-in with the same number (a new device, or the number's next owner)
    # starts unbound
    shift_clock(api, monkeypatch, 120)  # past the resend cooldown
    other = await sign_in(api, PHONE)
    assert (await api.client.get(f"{APP}/wallet", headers=other)).status == 403


async def test_a_card_of_another_phone_cannot_be_bound(api):  # type: ignore[no-untyped-def]
    _, card = await holder(api, phone="139 0000 1111")
    me = await sign_in(api, PHONE)
    r = await bind(api, me, card["card_no"], an_id_number(1)[-6:], PIN)
    assert r.status == 403
    assert (await r.json())["reason"] == "refused"


async def test_bind_validates_its_body(sqlite_api):  # type: ignore[no-untyped-def]
    me = await sign_in(sqlite_api, PHONE)
    r = await bind(sqlite_api, me, "x", "12", "12")
    assert r.status == 422
    assert (await bind(sqlite_api, {}, "3100000000000", "123456", "123456")).status == 401
