"""The city app's sign-in: a one-time code to the phone, then the resident's token."""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from channels.app import APP_CHANNEL, LogCodeSender
from channels.app.models import account_t, code_t, token_t
from hotline.appkeys import DEPS

PHONE = "138 1234 5678"
E164 = "+8613812345678"
APP = "/api/v1/app"


class CodeBox:
    """A CodeSender that keeps the last code per number (the resident's phone)."""

    def __init__(self) -> None:
        self.codes: dict[str, str] = {}
        self.sent = 0

    async def send_code(self, phone_e164: str, code: str, ttl_s: int) -> None:
        self.codes[phone_e164] = code
        self.sent += 1


def box_of(api: Any) -> CodeBox:
    signin = api.app[APP_CHANNEL].signin
    if not isinstance(signin.sender, CodeBox):
        signin.sender = CodeBox()
    return signin.sender


def shift_clock(api: Any, monkeypatch: Any, seconds: float) -> None:
    """Move the service's clock forward (on top of any earlier shift)."""
    deps = api.app[DEPS]
    before = deps.clock
    monkeypatch.setattr(deps, "clock", lambda: before() + timedelta(seconds=seconds))


async def sign_in(api: Any, phone: str = PHONE) -> dict[str, str]:
    """Headers of a signed-in resident."""
    box = box_of(api)
    r = await api.client.post(f"{APP}/auth/code", json={"phone": phone})
    assert r.status == 202, await r.text()
    e164 = next(k for k in box.codes if k.endswith(phone.replace(" ", "")[-8:]))
    r = await api.client.post(f"{APP}/auth/token", json={"phone": phone, "code": box.codes[e164]})
    assert r.status == 200, await r.text()
    return {"Authorization": f"Bearer {(await r.json())['token']}"}


async def test_code_then_token_signs_the_resident_in(api):  # type: ignore[no-untyped-def]
    box = box_of(api)
    r = await api.client.post(f"{APP}/auth/code", json={"phone": PHONE})
    assert r.status == 202
    assert await r.json() == {
        "phone": "138****5678",
        "expires_in": 300,
        "resend_after": 60,
        "code_length": 6,
    }
    code = box.codes[E164]
    assert len(code) == 6 and code.isdigit()

    r = await api.client.post(
        f"{APP}/auth/token", json={"phone": "+86 138-1234-5678", "code": code}
    )
    assert r.status == 200
    assert r.headers["Cache-Control"] == "no-store"
    body = await r.json()
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 30 * 24 * 3600)
    assert body["account"]["phone"] == "138****5678"
    me = {"Authorization": f"Bearer {body['token']}"}
    r = await api.client.get(f"{APP}/tickets", headers=me)
    assert (r.status, await r.json()) == (200, {"items": [], "next_cursor": None})

    # at rest: no number, no code, no token in the clear
    async with api.app[DEPS].db.read() as conn:
        acct = (await conn.execute(sa.select(account_t))).one()
        code_row = (await conn.execute(sa.select(code_t))).one()
        tok = (await conn.execute(sa.select(token_t))).one()
    assert (
        "13812345678" not in acct.phone_enc and api.app[DEPS].cipher.decrypt(acct.phone_enc) == E164
    )
    assert code not in code_row.code_hash and code_row.used_at is not None
    assert tok.token_hash != body["token"] and len(tok.token_hash) == 64
    # the account is the phone's contact in the channels' registry (one history)
    assert acct.contact_id is not None


async def test_a_code_works_once_and_sign_out_revokes_the_token(api):  # type: ignore[no-untyped-def]
    box = box_of(api)
    await api.client.post(f"{APP}/auth/code", json={"phone": PHONE})
    code = box.codes[E164]
    r = await api.client.post(f"{APP}/auth/token", json={"phone": PHONE, "code": code})
    me = {"Authorization": f"Bearer {(await r.json())['token']}"}
    r = await api.client.post(f"{APP}/auth/token", json={"phone": PHONE, "code": code})
    assert (r.status, (await r.json())["reason"]) == (401, "used")

    assert (await api.client.post(f"{APP}/auth/logout", headers=me)).status == 204
    r = await api.client.get(f"{APP}/tickets", headers=me)
    assert r.status == 401
    assert r.content_type == "application/problem+json"
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="app"'


async def test_wrong_code_counts_and_five_spend_the_code(api):  # type: ignore[no-untyped-def]
    box = box_of(api)
    await api.client.post(f"{APP}/auth/code", json={"phone": PHONE})
    right = box.codes[E164]
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    lefts = []
    for _ in range(5):
        r = await api.client.post(f"{APP}/auth/token", json={"phone": PHONE, "code": wrong})
        body = await r.json()
        assert (r.status, body["type"]) == (401, "/problems/unauthorized")
        lefts.append((body["reason"], body["attempts_left"]))
    assert lefts == [("wrong", 4), ("wrong", 3), ("wrong", 2), ("wrong", 1), ("spent", 0)]
    # the right code no longer helps: a new one must be asked for
    r = await api.client.post(f"{APP}/auth/token", json={"phone": PHONE, "code": right})
    assert (r.status, (await r.json())["reason"]) == (401, "spent")


async def test_an_expired_code_is_refused(api, monkeypatch):  # type: ignore[no-untyped-def]
    box = box_of(api)
    await api.client.post(f"{APP}/auth/code", json={"phone": PHONE})
    shift_clock(api, monkeypatch, 301)
    r = await api.client.post(f"{APP}/auth/token", json={"phone": PHONE, "code": box.codes[E164]})
    assert (r.status, (await r.json())["reason"]) == (401, "expired")


async def test_only_the_newest_code_works(api, monkeypatch):  # type: ignore[no-untyped-def]
    box = box_of(api)
    await api.client.post(f"{APP}/auth/code", json={"phone": PHONE})
    first = box.codes[E164]
    shift_clock(api, monkeypatch, 61)
    await api.client.post(f"{APP}/auth/code", json={"phone": PHONE})
    second = box.codes[E164]
    if first != second:
        r = await api.client.post(f"{APP}/auth/token", json={"phone": PHONE, "code": first})
        assert r.status == 401
    r = await api.client.post(f"{APP}/auth/token", json={"phone": PHONE, "code": second})
    assert r.status == 200


async def test_codes_are_rate_limited_per_phone_and_per_address(api, monkeypatch):  # type: ignore[no-untyped-def]
    box = box_of(api)
    assert (await api.client.post(f"{APP}/auth/code", json={"phone": PHONE})).status == 202
    r = await api.client.post(f"{APP}/auth/code", json={"phone": PHONE})
    body = await r.json()
    assert (r.status, body["type"], body["reason"]) == (
        429,
        "/problems/too-many-requests",
        "resend_cooldown",
    )
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    for _ in range(4):  # five in the hour, a minute apart
        shift_clock(api, monkeypatch, 61)
        assert (await api.client.post(f"{APP}/auth/code", json={"phone": PHONE})).status == 202
    shift_clock(api, monkeypatch, 61)
    r = await api.client.post(f"{APP}/auth/code", json={"phone": PHONE})
    assert (r.status, (await r.json())["reason"]) == (429, "hourly_limit")
    assert box.sent == 5

    # one address asking for many numbers (an SMS bomb) is stopped too
    channel = api.app[APP_CHANNEL]
    channel.signin.config = dataclasses.replace(channel.signin.config, per_ip_hour=7)
    for i in range(2):
        r = await api.client.post(f"{APP}/auth/code", json={"phone": f"1390000000{i}"})
        assert r.status == 202, await r.text()
    r = await api.client.post(f"{APP}/auth/code", json={"phone": "13900000009"})
    assert (r.status, (await r.json())["reason"]) == (429, "hourly_limit")
    assert "your network address" in (await r.json())["detail"]
    shift_clock(api, monkeypatch, 3600)
    assert (await api.client.post(f"{APP}/auth/code", json={"phone": "13900000009"})).status == 202


async def test_wrong_codes_from_one_address_are_braked_across_phones(sqlite_api):  # type: ignore[no-untyped-def]
    api = sqlite_api
    box_of(api)
    channel = api.app[APP_CHANNEL]
    channel.signin.failures.limit = 3
    for i in range(3):
        phone = f"1370000000{i}"
        await api.client.post(f"{APP}/auth/code", json={"phone": phone})
        wrong = "000000" if box_of(api).codes[f"+86{phone}"] != "000000" else "111111"
        r = await api.client.post(f"{APP}/auth/token", json={"phone": phone, "code": wrong})
        assert (r.status, (await r.json())["reason"]) == (401, "wrong")
    r = await api.client.post(f"{APP}/auth/token", json={"phone": "13700000000", "code": "123456"})
    assert (r.status, (await r.json())["reason"]) == (429, "too_many_failures")
    assert int(r.headers["Retry-After"]) > 0


async def test_bad_numbers_and_bodies_are_422(sqlite_api):  # type: ignore[no-untyped-def]
    api = sqlite_api
    for phone, why in (
        ("12345", "not a valid phone number"),
        ("hello", "not a phone number"),
        ("010 6552 9988", "a mobile number is needed for the code"),  # a Beijing landline
    ):
        r = await api.client.post(f"{APP}/auth/code", json={"phone": phone})
        body = await r.json()
        assert (r.status, body["errors"]) == (422, [{"field": "phone", "message": why}])
    r = await api.client.post(f"{APP}/auth/code", json={"phone": PHONE, "admin": True})
    assert (r.status, (await r.json())["errors"][0]["message"]) == (422, "unknown field")
    r = await api.client.post(f"{APP}/auth/token", json={"phone": PHONE, "code": "12ab56"})
    assert r.status == 422
    r = await api.client.post(f"{APP}/auth/token", json={"phone": PHONE, "code": "123456"})
    assert (r.status, (await r.json())["reason"]) == (401, "none")


async def test_staff_and_resident_tokens_do_not_mix(sqlite_api):  # type: ignore[no-untyped-def]
    api = sqlite_api
    me = await sign_in(api)
    # a staff session is not a resident
    r = await api.get(f"{APP}/tickets", as_="agent")
    assert r.status == 401
    # a resident token is not a staff session
    r = await api.client.get("/api/v1/tickets", headers=me)
    assert r.status == 401


async def test_codes_reach_the_log_only_masked_and_only_at_debug(caplog):  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG, logger="channels.app.otp")
    await LogCodeSender(reveal=False).send_code(E164, "493817", 300)
    await LogCodeSender(reveal=True).send_code(E164, "572046", 300)
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert info and all("138****5678" in m and "13812345678" not in m for m in info)
    assert not any("493817" in m or "572046" in m for m in info)
    assert debug == ["app sign-in code for 138****5678 is 572046"]
