"""Resident sign-in for the app: a one-time code to the phone, then a bearer token.

Plain async functions over the store plus a small in-memory limiter; no HTTP here
(routes.py turns `SignInRefused` into problem+json). Limits that must hold across
instances (codes per phone and per address, the resend cooldown, attempts per
code) are counted in the database; only the wrong-code counter per address is
kept per instance, as a brake on guessing across many phones.

Tokens are random (32 bytes), stored as SHA-256, valid for `token_ttl_s` and
revoked by deleting the row: every request reads it (one primary-key lookup), so a
logout holds on every instance at once.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import phonenumbers
import sqlalchemy as sa

from channels import contacts as contacts_mod
from channels.app import const
from channels.app.models import account_t, code_t, token_t
from channels.app.otp import (
    CodeSender,
    CodeState,
    code_hash,
    code_matches,
    new_code,
    new_salt,
    usable,
)
from ticketing.handlers import Deps, mask_phone
from ticketing.lifecycle import Role
from ticketing.ports import Principal
from ticketing.ratelimit import SlidingWindow

log = logging.getLogger(__name__)
HOUR = timedelta(hours=1)
_MOBILE = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE)


class SignInRefused(Exception):
    """Why a sign-in step was refused: `slug` is the problem type; `retry_after` in
    seconds for rate limits; `reason` a stable code for the client (wrong, expired...)."""

    def __init__(
        self,
        slug: str,
        detail: str,
        *,
        retry_after: int | None = None,
        reason: str | None = None,
        field: str | None = None,
        attempts_left: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.slug = slug
        self.detail = detail
        self.retry_after = retry_after
        self.reason = reason
        self.field = field
        self.attempts_left = attempts_left


@dataclass(frozen=True)
class SignInConfig:
    code_ttl_s: int = const.CODE_TTL_S
    max_attempts: int = const.CODE_MAX_ATTEMPTS
    resend_s: int = const.CODE_RESEND_S
    per_phone_hour: int = const.CODES_PER_PHONE_HOUR
    per_ip_hour: int = const.CODES_PER_IP_HOUR
    failures_per_ip_hour: int = const.VERIFY_FAILURES_PER_IP_HOUR
    token_ttl_s: int = const.TOKEN_TTL_S


@dataclass(frozen=True)
class ResidentPrincipal:
    """The signed-in resident of a request.

    `phone_bidx` is the blind index of the verified phone: what other packages (the
    citizen card) use to find the same person without decrypting anything.
    """

    account_id: int
    phone_bidx: str
    contact_id: int | None
    token_hash: str

    @property
    def actor(self) -> Principal:
        """How the resident appears in ticket trails (a channel actor, like the bots)."""
        return Principal(f"app:{self.account_id}", Role.AGENT)

    @property
    def thread_prefix(self) -> str:
        return f"a{self.account_id}"


def normalise_mobile(raw: str) -> str:
    """E.164 of a number that can receive a text message (CN default region)."""
    try:
        num = phonenumbers.parse(raw, "CN")
    except phonenumbers.NumberParseException:
        raise SignInRefused("validation-error", "not a phone number", field="phone") from None
    if not phonenumbers.is_valid_number(num):
        raise SignInRefused("validation-error", "not a valid phone number", field="phone")
    if phonenumbers.number_type(num) not in _MOBILE:
        raise SignInRefused(
            "validation-error", "a mobile number is needed for the code", field="phone"
        )
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _seconds(delta: timedelta) -> int:
    return max(1, int(delta.total_seconds() + 0.999))


class SignIn:
    """Codes, tokens and the resident a token names."""

    def __init__(self, deps: Deps, sender: CodeSender, config: SignInConfig | None = None) -> None:
        self.deps = deps
        self.sender = sender
        self.config = config or SignInConfig()
        self.failures = SlidingWindow(self.config.failures_per_ip_hour, 3600.0)

    def _ip_key(self, ip: str | None) -> str:
        return self.deps.cipher.blind_index(f"app-ip:{ip or '-'}")

    async def request_code(self, raw_phone: str, ip: str | None) -> dict[str, Any]:
        """Store a fresh code (the phone's older codes stop working) and send it."""
        cfg = self.config
        e164 = normalise_mobile(raw_phone)
        bidx = self.deps.cipher.blind_index(e164)
        ip_key = self._ip_key(ip)
        code = new_code(const.CODE_LENGTH)
        salt = new_salt()
        now = self.deps.clock()
        c = code_t.c
        async with self.deps.db.write() as conn:
            if not self.deps.db.is_sqlite:
                # one request per phone at a time across instances: the counts below hold
                await conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"app:{bidx}"}
                )
            last = (
                await conn.execute(
                    sa.select(c.created_at)
                    .where(c.phone_bidx == bidx)
                    .order_by(c.created_at.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            if last is not None and now - last < timedelta(seconds=cfg.resend_s):
                raise SignInRefused(
                    "too-many-requests",
                    "a code was just sent to this number; wait before asking again",
                    retry_after=_seconds(last + timedelta(seconds=cfg.resend_s) - now),
                    reason="resend_cooldown",
                )
            for column, key, limit, what in (
                (c.phone_bidx, bidx, cfg.per_phone_hour, "this number"),
                (c.ip_hash, ip_key, cfg.per_ip_hour, "your network address"),
            ):
                recent = (
                    await conn.execute(
                        sa.select(sa.func.count(), sa.func.min(c.created_at)).where(
                            column == key, c.created_at > now - HOUR
                        )
                    )
                ).one()
                if recent[0] >= limit:
                    raise SignInRefused(
                        "too-many-requests",
                        f"too many codes for {what} in the last hour",
                        retry_after=_seconds(recent[1] + HOUR - now),
                        reason="hourly_limit",
                    )
            # only the newest code works: the older ones are spent
            await conn.execute(
                sa.update(code_t)
                .where(c.phone_bidx == bidx, c.used_at.is_(None))
                .values(attempts=cfg.max_attempts)
            )
            await conn.execute(
                sa.insert(code_t).values(
                    phone_bidx=bidx,
                    ip_hash=ip_key,
                    salt=salt,
                    code_hash=code_hash(self.deps.cipher, salt, code),
                    attempts=0,
                    created_at=now,
                    expires_at=now + timedelta(seconds=cfg.code_ttl_s),
                    used_at=None,
                )
            )
            # codes are worthless after a day; the counts above look back one hour
            await conn.execute(sa.delete(code_t).where(c.created_at < now - timedelta(days=1)))
        try:
            await self.sender.send_code(e164, code, cfg.code_ttl_s)
        except Exception:
            log.exception("could not send the app sign-in code to %s", mask_phone(e164))
            raise SignInRefused(
                "service-unavailable", "the code could not be sent; try again shortly"
            ) from None
        return {
            "phone": mask_phone(e164),
            "expires_in": cfg.code_ttl_s,
            "resend_after": cfg.resend_s,
            "code_length": const.CODE_LENGTH,
        }

    async def verify(self, raw_phone: str, code: str, ip: str | None) -> dict[str, Any]:
        """Exchange a right code for a token (the account is created on first sign-in)."""
        cfg = self.config
        ip_key = self._ip_key(ip)
        wait = self.failures.retry_after(ip_key)
        if wait is not None:
            raise SignInRefused(
                "too-many-requests",
                "too many wrong codes from your network address",
                retry_after=wait,
                reason="too_many_failures",
            )
        e164 = normalise_mobile(raw_phone)
        bidx = self.deps.cipher.blind_index(e164)
        now = self.deps.clock()
        c = code_t.c
        refusal: SignInRefused | None = None
        token = secrets.token_urlsafe(32)
        account_id = 0
        async with self.deps.db.write() as conn:
            q = sa.select(code_t).where(c.phone_bidx == bidx).order_by(c.id.desc()).limit(1)
            if not self.deps.db.is_sqlite:
                q = q.with_for_update()
            row = (await conn.execute(q)).first()
            why = (
                "none"
                if row is None
                else usable(
                    CodeState(row.attempts, row.expires_at, row.used_at is not None),
                    now,
                    cfg.max_attempts,
                )
            )
            if row is None or why is not None:
                refusal = SignInRefused(
                    "unauthorized",
                    {
                        "none": "ask for a code first",
                        "expired": "the code has expired; ask for a new one",
                        "spent": "too many wrong tries; ask for a new code",
                        "used": "the code was used already; ask for a new one",
                    }[why or "none"],
                    reason=why,
                )
            elif not code_matches(self.deps.cipher, row.salt, row.code_hash, code):
                attempts = row.attempts + 1
                await conn.execute(
                    sa.update(code_t).where(c.id == row.id).values(attempts=attempts)
                )
                left = max(0, cfg.max_attempts - attempts)
                refusal = SignInRefused(
                    "unauthorized",
                    "wrong code" + ("" if left else "; ask for a new one"),
                    reason="wrong" if left else "spent",
                    attempts_left=left,
                )
            else:
                await conn.execute(sa.update(code_t).where(c.id == row.id).values(used_at=now))
                account_id = await self._account(conn, e164, bidx, now)
                await conn.execute(
                    sa.insert(token_t).values(
                        token_hash=token_hash(token),
                        account_id=account_id,
                        created_at=now,
                        expires_at=now + timedelta(seconds=cfg.token_ttl_s),
                    )
                )
        if refusal is not None:
            if refusal.reason in ("wrong", "spent") and refusal.attempts_left is not None:
                self.failures.add(ip_key)
            raise refusal
        return {
            "token": token,
            "token_type": "Bearer",
            "expires_in": cfg.token_ttl_s,
            "account": {"id": account_id, "phone": mask_phone(e164)},
        }

    async def _account(self, conn: Any, e164: str, bidx: str, now: datetime) -> int:
        """The phone's account (created on first sign-in) linked to the phone's contact,
        so agents see the app's conversations beside the phone calls."""
        a = account_t.c
        await conn.execute(
            self.deps.db.insert_ignore(
                account_t,
                [
                    {
                        "phone_enc": self.deps.cipher.encrypt(e164),
                        "phone_bidx": bidx,
                        "contact_id": None,
                        "feed_seq": 0,
                        "created_at": now,
                        "last_login_at": None,
                    }
                ],
            )
        )
        row = (await conn.execute(sa.select(a.id, a.contact_id).where(a.phone_bidx == bidx))).one()
        values: dict[str, Any] = {"last_login_at": now}
        if row.contact_id is None:
            values["contact_id"] = await contacts_mod.phone_contact(self.deps, conn, e164)
        await conn.execute(sa.update(account_t).where(a.id == row.id).values(**values))
        return int(row.id)

    async def resolve(self, token: str) -> ResidentPrincipal | None:
        th = token_hash(token)
        now = self.deps.clock()
        async with self.deps.db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(
                        account_t.c.id,
                        account_t.c.phone_bidx,
                        account_t.c.contact_id,
                        token_t.c.expires_at,
                    )
                    .join(token_t, token_t.c.account_id == account_t.c.id)
                    .where(token_t.c.token_hash == th)
                )
            ).first()
        if row is None or row.expires_at <= now:
            return None
        return ResidentPrincipal(row.id, row.phone_bidx, row.contact_id, th)

    async def logout(self, who: ResidentPrincipal) -> None:
        now = self.deps.clock()
        async with self.deps.db.write() as conn:
            await conn.execute(sa.delete(token_t).where(token_t.c.token_hash == who.token_hash))
            # expired tokens of this account go with it
            await conn.execute(
                sa.delete(token_t).where(
                    token_t.c.account_id == who.account_id, token_t.c.expires_at <= now
                )
            )

    async def phone_of(self, account_id: int) -> str:
        """The account's number in E.164 (for the ticket's contact: agents call back)."""
        async with self.deps.db.read() as conn:
            enc = (
                await conn.execute(
                    sa.select(account_t.c.phone_enc).where(account_t.c.id == account_id)
                )
            ).scalar_one()
        return self.deps.cipher.decrypt(enc)
