"""Staff authentication: argon2id passwords, opaque session tokens, role checks.

The token is random; only its SHA-256 is stored, so a leaked database does not
leak live sessions. Resolving a token costs a database read, so each instance
caches resolved sessions briefly and drops them at once when any instance
announces a logout (bus event `auth.session_revoked`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from pydantic import Field

from ticketing.events import DomainEvent, SessionRevoked
from ticketing.handlers import Deps, announce
from ticketing.lifecycle import Role
from ticketing.models import StaffSession, StaffUser, utcnow
from ticketing.ports import Principal
from ticketing.ratelimit import SlidingWindow
from ticketing.schemas import Strict
from ticketing.webkit import (
    PRINCIPAL,
    RouteSpec,
    json_response,
    principal_of,
    problem,
    problem_response,
    read_body,
)

log = logging.getLogger(__name__)
COOKIE = "hotline_session"
RESIDENT_PATHS = "/api/v1/app/"
CACHE_TTL_S = 30.0
user_t = StaffUser.__table__  # type: ignore[attr-defined]
session_t = StaffSession.__table__  # type: ignore[attr-defined]
_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile
# verified against when the user does not exist, so timing does not reveal usernames
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(stored: str, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UserExists(Exception):
    pass


class LoginLocked(Exception):
    """Sign-in refused before the password is even checked: wait `retry_after` seconds."""

    def __init__(self, retry_after: int, detail: str) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.detail = detail

    def response(self) -> web.Response:
        """429 with Retry-After, as every route that checks a password answers it."""
        resp = problem_response("too-many-requests", self.detail)
        resp.headers["Retry-After"] = str(self.retry_after)
        return resp


@dataclass(frozen=True)
class LoginPolicy:
    """How many wrong passwords a staff account and an address may send.

    The account's count lives in the database, so every instance sees it and a
    guesser cannot spread attempts across instances; each attempt is counted before
    its password is checked, so a burst of parallel guesses is held to the same
    number. A locked account opens again by itself after `lockout_s` (no help desk
    at 3 a.m.); the per-address count, kept by each instance, stops a guesser who
    tries many usernames, and is high because a call centre's agents share one
    address.
    """

    max_failures: int = 5
    lockout_s: int = 900
    max_failures_per_ip: int = 100


def _retry_after(until: datetime, now: datetime) -> int:
    return max(1, int((until - now).total_seconds() + 0.999))


MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # argon2 reads every byte: a megabyte "password" is a DoS


def password_problem(password: str, username: str) -> str | None:
    """Why `password` may not be a staff password, or None. Length over composition
    rules (NIST SP 800-63B): long enough, not the username, not one repeated key."""
    if len(password) < MIN_PASSWORD:
        return f"passwords need at least {MIN_PASSWORD} characters"
    if len(password) > MAX_PASSWORD:
        return f"passwords have at most {MAX_PASSWORD} characters"
    if username and username.casefold() in password.casefold():
        return "the password may not contain the username"
    if len(set(password)) == 1:
        return "the password may not be one character repeated"
    return None


def department_problem(deps: Deps, role: Role, department: str | None) -> str | None:
    """Why `department` cannot go with `role`, or None: department users belong to one
    active department, nobody else belongs to any."""
    if role is Role.DEPARTMENT and not department:
        return "a department user needs a department"
    if role is not Role.DEPARTMENT and department:
        return "only department users belong to a department"
    if department and deps.catalog.department(department) is None:
        return f"unknown department {department!r}"
    return None


async def create_user(
    deps: Deps,
    username: str,
    password: str,
    role: Role,
    department: str | None = None,
    display_name: str = "",
    *,
    password_hash: str | None = None,
) -> dict[str, Any]:
    """Create a staff account; `password_hash` lets an import keep existing argon2 hashes."""
    if wrong := department_problem(deps, role, department):
        raise ValueError(wrong)
    if password_hash is None and (weak := password_problem(password, username)):
        raise ValueError(weak)
    pw = password_hash or await hash_password(password)
    async with deps.db.write() as conn:
        if (
            await conn.execute(sa.select(user_t.c.id).where(user_t.c.username == username))
        ).first():
            raise UserExists(username)
        await conn.execute(
            sa.insert(user_t).values(
                username=username,
                display_name=display_name or username,
                password_hash=pw,
                role=role.value,
                department_code=department,
                active=True,
                created_at=utcnow(),
            )
        )
    return {"username": username, "role": role.value, "department": department}


@dataclass
class _Cached:
    principal: Principal
    expires_at: float  # session expiry (epoch)
    cached_until: float


class SessionStore:
    def __init__(self, deps: Deps, ttl_s: int, policy: LoginPolicy | None = None) -> None:
        self.deps = deps
        self.ttl_s = ttl_s
        self.policy = policy or LoginPolicy()
        self._ip_failures = SlidingWindow(self.policy.max_failures_per_ip, self.policy.lockout_s)
        self._cache: dict[str, _Cached] = {}
        # token hash -> the lookup in flight: concurrent misses on one token share it
        self._lookups: dict[str, asyncio.Future[Principal | None]] = {}
        self._generation = 0  # bumped by every revocation seen

    async def login(
        self, username: str, password: str, ip: str | None = None
    ) -> tuple[str, Principal] | None:
        """A session for the right password; None for a wrong one; `LoginLocked` when
        the account or the address has failed too often to be let try now."""
        ip_key = ip or "-"
        wait = self._ip_failures.retry_after(ip_key)
        if wait is not None:
            raise LoginLocked(wait, "too many failed sign-ins from your address; wait and retry")
        user, attempts = await self._take_attempt(username)
        ok = await verify_password(user.password_hash if user else _DUMMY_HASH, password)
        if not (user and ok and user.active):
            self._ip_failures.add(ip_key)
            if user is not None and attempts == self.policy.max_failures:
                log.warning("staff account %r: %d wrong passwords in a row", username, attempts)
            return None
        token = secrets.token_urlsafe(32)
        now = utcnow()
        async with self.deps.db.write() as conn:
            await conn.execute(
                sa.update(user_t)
                .where(user_t.c.id == user.id)
                .values(failed_logins=0, locked_until=None)
            )
            await conn.execute(
                sa.insert(session_t).values(
                    token_hash=token_hash(token),
                    user_id=user.id,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.ttl_s),
                )
            )
        return token, _principal(user)

    async def _take_attempt(self, username: str) -> tuple[Any, int]:
        """Count one attempt against the account before its password is checked.

        Returns the user row (None when there is no such user) and the attempts since
        the last good sign-in, this one included. Raises `LoginLocked` when the
        account is locked, or when this attempt is one past the allowed wrong ones
        (which locks it).
        """
        policy = self.policy
        now = self.deps.clock()
        locked_for = 0  # raised after the block: an exception inside would undo the lock
        async with self.deps.db.write() as conn:
            query = sa.select(user_t).where(user_t.c.username == username)
            if not self.deps.db.is_sqlite:  # SQLite's writes are serialised already
                query = query.with_for_update()
            user = (await conn.execute(query)).first()
            if user is None:
                return None, 0
            attempts = (0 if user.locked_until is not None else user.failed_logins) + 1
            if user.locked_until is not None and user.locked_until > now:
                locked_for = _retry_after(user.locked_until, now)
            elif attempts > policy.max_failures:
                locked_for = policy.lockout_s
                await conn.execute(
                    sa.update(user_t)
                    .where(user_t.c.id == user.id)
                    .values(failed_logins=0, locked_until=now + timedelta(seconds=locked_for))
                )
            else:
                await conn.execute(
                    sa.update(user_t)
                    .where(user_t.c.id == user.id)
                    .values(failed_logins=attempts, locked_until=None)
                )
        if locked_for:
            raise LoginLocked(
                locked_for,
                "this account is locked after too many wrong passwords; wait and retry",
            )
        return user, attempts

    async def resolve(self, token: str) -> Principal | None:
        th = token_hash(token)
        now = time.time()
        hit = self._cache.get(th)
        if hit and hit.cached_until > now and hit.expires_at > now:
            return hit.principal
        # Single flight: when many requests with one token miss the cache at once (a
        # console's burst, the cache entry just expired), one queries, the rest wait.
        pending = self._lookups.get(th)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise  # we were cancelled ourselves
                # the request that was looking it up went away: one of us takes over
                return await self.resolve(token)
        fut: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._lookups[th] = fut
        try:
            principal = await self._lookup(th, now)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                fut.cancel()  # the waiters then look it up themselves (above)
            else:
                fut.set_exception(exc)
                fut.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        else:
            fut.set_result(principal)
        finally:
            if self._lookups.get(th) is fut:
                del self._lookups[th]
        return principal

    async def _lookup(self, th: str, now: float) -> Principal | None:
        generation = self._generation
        async with self.deps.db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(user_t, session_t.c.expires_at)
                    .join(session_t, session_t.c.user_id == user_t.c.id)
                    .where(session_t.c.token_hash == th)
                )
            ).first()
        if row is None or not row.active or row.expires_at.timestamp() <= now:
            self._cache.pop(th, None)
            return None
        principal = _principal(row)
        if generation == self._generation:  # no logout raced with this read
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[th] = _Cached(principal, row.expires_at.timestamp(), now + CACHE_TTL_S)
        return principal

    async def change_password(
        self, who: Principal, current: str, new: str, keep_token: str | None
    ) -> bool:
        """Set a new password when `current` is right; False when it is wrong. The
        attempt counts against the account like a sign-in (a stolen session must not
        become a way round the lockout), and every other session of the account ends:
        whoever else holds one has to sign in with the new password."""
        user, _ = await self._take_attempt(who.username)
        ok = await verify_password(user.password_hash if user else _DUMMY_HASH, current)
        if user is None or not ok or not user.active:
            return False
        await self.set_password(user.id, new, keep_token=keep_token)
        return True

    async def set_password(self, user_id: int, new: str, *, keep_token: str | None) -> None:
        """New hash, lock cleared, and every session but `keep_token`'s ended."""
        pw = await hash_password(new)
        async with self.deps.db.write() as conn:
            await conn.execute(
                sa.update(user_t)
                .where(user_t.c.id == user_id)
                .values(password_hash=pw, failed_logins=0, locked_until=None)
            )
        await self.revoke_user(user_id, keep=token_hash(keep_token) if keep_token else None)

    async def revoke_user(self, user_id: int, keep: str | None = None) -> int:
        """End the account's sessions (all, or all but the one hashed `keep`), here and,
        through the bus, on every instance. Returns how many ended."""
        cond = [session_t.c.user_id == user_id]
        if keep is not None:
            cond.append(session_t.c.token_hash != keep)
        async with self.deps.db.write() as conn:
            gone = list(
                (
                    await conn.execute(
                        sa.delete(session_t).where(*cond).returning(session_t.c.token_hash)
                    )
                ).scalars()
            )
        for th in gone:
            self._revoked(th)
        if gone:
            await announce(self.deps, [SessionRevoked(th) for th in gone])
        return len(gone)

    async def logout(self, token: str) -> None:
        th = token_hash(token)
        async with self.deps.db.write() as conn:
            await conn.execute(sa.delete(session_t).where(session_t.c.token_hash == th))
        self._revoked(th)
        await announce(self.deps, [SessionRevoked(th)])

    async def on_event(self, event: DomainEvent) -> None:
        if isinstance(event, SessionRevoked):
            self._revoked(event.token_hash)

    def _revoked(self, th: str) -> None:
        self._generation += 1  # a lookup that read before the revocation must not cache
        self._lookups.pop(th, None)  # nor may later requests join it
        self._cache.pop(th, None)


def _principal(row: Any) -> Principal:
    return Principal(
        username=row.username,
        role=Role(row.role),
        department_code=row.department_code,
        user_id=row.id,
    )


def _usable(token: str) -> str | None:
    """The token if it could be one we issued (printable ASCII), else None: header
    bytes that are not UTF-8 arrive as lone surrogates, which no hash can encode."""
    return token if token and token.isascii() and token.isprintable() else None


def request_token(request: web.Request) -> tuple[str | None, bool]:
    """(token, came_from_cookie); a token no session could have is no token (401)."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return _usable(auth[7:].strip()), False
    cookie = _usable(request.cookies.get(COOKIE) or "")
    return (cookie, True) if cookie else (None, False)


def auth_middleware(sessions: SessionStore) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        token, from_cookie = request_token(request)
        # the city app's routes take residents' tokens (channels.app), never staff sessions
        if token and not request.path.startswith(RESIDENT_PATHS):
            principal = await sessions.resolve(token)
            if principal is not None:
                if (
                    from_cookie
                    and request.method not in ("GET", "HEAD", "OPTIONS")
                    and request.headers.get("Sec-Fetch-Site") == "cross-site"
                ):
                    # the cookie is SameSite=Strict; this refuses old browsers' CSRF too
                    raise problem("forbidden", "cross-site request with the session cookie")
                request[PRINCIPAL] = principal
        return await handler(request)

    return middleware


class LoginIn(Strict):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


def auth_routes(sessions: SessionStore, cookie_secure: bool) -> list[RouteSpec]:
    async def login(request: web.Request) -> web.StreamResponse:
        body = await read_body(request, LoginIn)
        try:
            result = await sessions.login(body.username, body.password, request.remote)
        except LoginLocked as exc:
            return exc.response()
        if result is None:
            raise problem("unauthorized", "wrong username or password")
        token, who = result
        resp = json_response(
            {
                "token": token,
                "token_type": "Bearer",
                "expires_in": sessions.ttl_s,
                "user": {
                    "username": who.username,
                    "role": who.role.value,
                    "department": who.department_code,
                },
            }
        )
        resp.set_cookie(
            COOKIE,
            token,
            max_age=sessions.ttl_s,
            httponly=True,
            samesite="Strict",
            secure=cookie_secure,
            path="/",
        )
        return resp

    async def logout(request: web.Request) -> web.StreamResponse:
        principal_of(request)
        token, _ = request_token(request)
        if token:
            await sessions.logout(token)
        resp = web.Response(status=204)
        resp.del_cookie(COOKIE, path="/")
        return resp

    async def me(request: web.Request) -> web.StreamResponse:
        who = principal_of(request)
        return json_response(
            {"username": who.username, "role": who.role.value, "department": who.department_code}
        )

    return [
        RouteSpec(
            "POST",
            "/api/v1/auth/login",
            login,
            "Sign in: session cookie for the console, bearer token in the body",
            LoginIn,
            None,
            tag="auth",
            responses={200: "signed in", 401: "wrong username or password"},
        ),
        RouteSpec(
            "POST",
            "/api/v1/auth/logout",
            logout,
            "Sign out",
            roles=(),
            tag="auth",
            responses={204: "signed out"},
        ),
        RouteSpec("GET", "/api/v1/auth/me", me, "Who am I", roles=(), tag="auth"),
    ]
