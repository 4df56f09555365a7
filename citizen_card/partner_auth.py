"""Signed requests for the partner API (/partner/v1): the rules, exactly.

Every partner request carries one header (one line; wrapped here)::

    Authorization: CITYCARD-ED25519 partner_id=<id>,key_id=<id>,nonce=<n>,
                   timestamp=<t>,signature=<s>

(or `CITYCARD-HMAC-SHA256` with the same five parameters). The signature covers
the canonical request, five lines each ending in `\\n`, encoded as UTF-8::

    METHOD\\n            the HTTP method as sent, e.g. `POST`
    path?query\\n        the request target exactly as sent on the wire: raw
                        (still percent-encoded) path, the query string in the order
                        sent, no `?` when there is no query, never a fragment
    timestamp\\n         integer Unix seconds, decimal, no sign, no leading zeros
    nonce\\n             16-64 characters of [A-Za-z0-9_-], fresh for every request
    sha256(body)\\n      lowercase hex SHA-256 of the body bytes (of b"" without body)

Encodings: `signature` is base64url without padding (RFC 4648 section 5): 86
characters for Ed25519 (64 bytes), 43 for HMAC-SHA256 (32 bytes). `partner_id`
and `key_id` are 1-64 characters of [A-Za-z0-9._-]. Parameters are `name=value`
separated by `,` (spaces or tabs around a comma are allowed), each of the five
exactly once, no quotes, no others; the scheme is matched exactly
(case-sensitive). The header is at most 1024 characters.

- `CITYCARD-ED25519`: Ed25519 (RFC 8032) over the canonical request with the
  partner's private key; the city holds the public keys, several per partner
  (each with an optional `not_after`) so keys rotate without downtime.
- `CITYCARD-HMAC-SHA256`: HMAC-SHA256 over the canonical request with the
  partner's shared secret as the key: the ASCII string the city issued, used
  byte for byte (at least 32 bytes); its `key_id` is `hmac`.

A request is refused when its timestamp is more than 300 s away from the city's
clock (either way), and when its (partner_id, nonce) was already accepted within
that window. Body tampering shows up as `bad_signature`: the body hash is not sent
separately, so there is no separate "body hash mismatch".

Every response (errors included) is signed by the city::

    X-Citycard-Signature: key_id=<city key id>,timestamp=<t>,signature=<s>

with Ed25519 over `STATUS\\nrequest-nonce\\ntimestamp\\nsha256(response body)\\n`
(STATUS the 3-digit code, request-nonce the nonce of the request being answered,
empty when the request had no readable Authorization header, the body after any
content-coding is removed). Binding the nonce means a recorded response cannot be
passed off as the answer to another request.

Stable error codes (`PartnerAuthError.code`): missing_signature, bad_scheme,
malformed, unknown_partner, unknown_key, key_expired, partner_disabled, clock_skew,
replayed_nonce, bad_signature (401); insufficient_scope (403); length_required
(411); body_too_large (413); rate_limited (429); nonce_store_full (503).

This module is pure apart from two small adapters at the bottom: the nonce stores
and the SQL partner registry.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import heapq
import hmac
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy.ext.asyncio import AsyncEngine

from citizen_card.changes import PARTNER as PARTNER_TOPIC
from citizen_card.changes import ChangeFeed, TtlCache
from citizen_card.journal import PartnerJournal
from citizen_card.partner_models import PARTNER_NONCE_TABLE, PARTNER_TABLE

SCHEME_ED25519 = "CITYCARD-ED25519"
SCHEME_HMAC = "CITYCARD-HMAC-SHA256"
SCHEMES = (SCHEME_ED25519, SCHEME_HMAC)
HMAC_KEY_ID = "hmac"
RESPONSE_SIGNATURE_HEADER = "X-Citycard-Signature"
DEFAULT_SKEW_S = 300
MAX_HEADER_LEN = 1024
MIN_HMAC_SECRET_LEN = 32

_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_TIMESTAMP_RE = re.compile(r"0|[1-9][0-9]{0,11}")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_METHOD_RE = re.compile(r"[A-Z]{1,16}")
_PARAM_SEP_RE = re.compile(r"[ \t]*,[ \t]*")
_REQUEST_PARAMS = ("partner_id", "key_id", "nonce", "timestamp", "signature")
# The spelling `format_authorization` writes (our reference client's), checked in one
# match; any other spelling takes the general parser, which also names the flaw.
_CANONICAL_REQUEST_RE = re.compile(
    r"partner_id=([A-Za-z0-9._-]{1,64}),key_id=([A-Za-z0-9._-]{1,64}),"
    r"nonce=([A-Za-z0-9_-]{16,64}),timestamp=(0|[1-9][0-9]{0,11}),"
    r"signature=([A-Za-z0-9_-]{1,128})"
)
_RESPONSE_PARAMS = ("key_id", "timestamp", "signature")
_SIG_LEN = {SCHEME_ED25519: 64, SCHEME_HMAC: 32}
# Refusals of a header that could not be read: the city cannot know the nonce, so
# their answers are signed with an empty request-nonce (see docs/partner-api.md).
UNREAD_HEADER_CODES = frozenset({"missing_signature", "bad_scheme", "malformed"})

# code -> (HTTP status, title); the problem type is `/problems/partner-<code>`
ERROR_CODES: dict[str, tuple[int, str]] = {
    "missing_signature": (401, "The request is not signed"),
    "bad_scheme": (401, "Unknown authorization scheme"),
    "malformed": (401, "The Authorization header cannot be read"),
    "unknown_partner": (401, "Unknown partner"),
    "unknown_key": (401, "Unknown key id for this partner"),
    "key_expired": (401, "This key is past its not_after date"),
    "partner_disabled": (401, "This partner is disabled"),
    "clock_skew": (401, "The request timestamp is outside the accepted window"),
    "replayed_nonce": (401, "This nonce was already used"),
    "bad_signature": (401, "The signature does not match the request"),
    "insufficient_scope": (403, "The partner's scopes do not allow this"),
    "length_required": (411, "Send the body with a Content-Length"),
    "body_too_large": (413, "The request body is too large"),
    "rate_limited": (429, "Too many requests for this partner"),
    "nonce_store_full": (503, "Too many requests in flight; retry shortly"),
}


class PartnerAuthError(Exception):
    """A refused partner request: a stable `code`, its HTTP `status`, a human message."""

    def __init__(self, code: str, message: str, *, retry_after: int | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown partner error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status, self.title = ERROR_CODES[code]
        self.retry_after = retry_after


class ForgedResponse(Exception):
    """A response whose city signature is missing, unreadable or wrong."""


class NonceStoreFull(Exception):
    """The in-memory nonce store is at capacity even after dropping expired nonces."""


class PartnerType(StrEnum):
    HOSPITAL = "hospital"
    TRANSIT = "transit"
    MERCHANT = "merchant"
    DEPARTMENT = "department"
    CITY = "city"


# ---------------------------------------------------------------- encodings


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding: canonical, so one signature has one spelling."""
    if not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url without padding")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url without padding") from exc
    if b64url_encode(raw) != text:
        raise ValueError("non-canonical base64url (stray bits)")
    return raw


def sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def new_nonce() -> str:
    """32 characters of [A-Za-z0-9_-] from the OS's CSPRNG."""
    return secrets.token_urlsafe(24)


def load_public_key(pem: str | bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def load_private_key(pem: str | bytes, password: bytes | None = None) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(
        pem.encode() if isinstance(pem, str) else pem, password=password
    )
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def public_key_pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


# ---------------------------------------------------------------- the partner, as the city knows it


@dataclass(frozen=True)
class PartnerKey:
    """One of a partner's Ed25519 public keys; refused from `not_after` on."""

    public_key: Ed25519PublicKey
    not_after: datetime | None = None

    def __post_init__(self) -> None:
        if self.not_after is not None and self.not_after.tzinfo is None:
            raise ValueError("not_after must be an aware datetime")

    @classmethod
    def from_pem(cls, pem: str | bytes, not_after: datetime | None = None) -> PartnerKey:
        return cls(load_public_key(pem), not_after)


@dataclass(frozen=True, eq=False)
class PartnerCredentials:
    partner_id: str
    type: PartnerType
    scopes: frozenset[str] = frozenset()
    keys: Mapping[str, PartnerKey] = field(default_factory=dict)  # by key_id
    hmac_secret: bytes | None = None
    enabled: bool = True
    rate_per_minute: int = 600

    def __post_init__(self) -> None:
        if not _ID_RE.fullmatch(self.partner_id):
            raise ValueError("partner_id must be 1-64 characters of [A-Za-z0-9._-]")
        object.__setattr__(self, "type", PartnerType(self.type))
        object.__setattr__(self, "scopes", frozenset(self.scopes))
        for key_id in self.keys:
            if not _ID_RE.fullmatch(key_id) or key_id == HMAC_KEY_ID:
                raise ValueError(f"bad Ed25519 key id {key_id!r}")
        if self.hmac_secret is not None and len(self.hmac_secret) < MIN_HMAC_SECRET_LEN:
            raise ValueError(f"an HMAC secret has at least {MIN_HMAC_SECRET_LEN} bytes")
        if self.rate_per_minute < 1:
            raise ValueError("rate_per_minute must be at least 1")


@dataclass(frozen=True)
class SignedRequestParams:
    scheme: str
    partner_id: str
    key_id: str
    nonce: str
    timestamp: int
    signature: bytes


# ---------------------------------------------------------------- parsing


def _parse_params(text: str, names: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in _PARAM_SEP_RE.split(text.strip(" \t")):
        name, eq, value = item.partition("=")
        if not eq:
            raise PartnerAuthError("malformed", f"expected name=value, got {item[:40]!r}")
        if name not in names:
            raise PartnerAuthError("malformed", f"unknown parameter {name[:40]!r}")
        if name in out:
            raise PartnerAuthError("malformed", f"parameter {name} given twice")
        out[name] = value
    missing = [n for n in names if n not in out]
    if missing:
        raise PartnerAuthError("malformed", f"missing parameter(s): {', '.join(missing)}")
    return out


def parse_authorization(header: str | None) -> SignedRequestParams:
    """Read the Authorization header strictly; any flaw is a `PartnerAuthError`."""
    if header is None or not header.strip():
        raise PartnerAuthError("missing_signature", "send an Authorization header")
    if len(header) > MAX_HEADER_LEN:
        raise PartnerAuthError("malformed", f"the header exceeds {MAX_HEADER_LEN} characters")
    scheme, _, rest = header.partition(" ")
    if scheme not in SCHEMES:
        raise PartnerAuthError(
            "bad_scheme", f"use {SCHEME_ED25519} or {SCHEME_HMAC}, not {scheme[:40]!r}"
        )
    m = _CANONICAL_REQUEST_RE.fullmatch(rest)
    if m is not None:  # every value already passed the checks below
        p = dict(zip(_REQUEST_PARAMS, m.groups(), strict=True))
    else:
        p = _parse_params(rest, _REQUEST_PARAMS)
        for name in ("partner_id", "key_id"):
            if not _ID_RE.fullmatch(p[name]):
                raise PartnerAuthError("malformed", f"{name} must be 1-64 of [A-Za-z0-9._-]")
        if not _NONCE_RE.fullmatch(p["nonce"]):
            raise PartnerAuthError("malformed", "nonce must be 16-64 of [A-Za-z0-9_-]")
        if not _TIMESTAMP_RE.fullmatch(p["timestamp"]):
            raise PartnerAuthError("malformed", "timestamp must be integer Unix seconds")
    try:
        signature = b64url_decode(p["signature"])
    except ValueError as exc:
        raise PartnerAuthError("malformed", f"signature: {exc}") from None
    if len(signature) != _SIG_LEN[scheme]:
        raise PartnerAuthError(
            "malformed", f"a {scheme} signature is {_SIG_LEN[scheme]} bytes, got {len(signature)}"
        )
    return SignedRequestParams(
        scheme=scheme,
        partner_id=p["partner_id"],
        key_id=p["key_id"],
        nonce=p["nonce"],
        timestamp=int(p["timestamp"]),
        signature=signature,
    )


def format_authorization(params: SignedRequestParams) -> str:
    return (
        f"{params.scheme} partner_id={params.partner_id},key_id={params.key_id},"
        f"nonce={params.nonce},timestamp={params.timestamp},"
        f"signature={b64url_encode(params.signature)}"
    )


# ---------------------------------------------------------------- canonical strings and signing


def canonical_request(
    method: str, raw_path_qs: str, timestamp: int, nonce: str, body: bytes
) -> bytes:
    """`METHOD\\npath?query\\ntimestamp\\nnonce\\nsha256hex(body)\\n` as UTF-8 bytes."""
    if not _METHOD_RE.fullmatch(method):
        raise ValueError(f"method must be upper-case letters, got {method!r}")
    if not raw_path_qs.startswith("/") or any(c in raw_path_qs for c in "\r\n #"):
        raise ValueError("raw_path_qs is the origin-form request target, e.g. /a/b?x=1")
    return f"{method}\n{raw_path_qs}\n{timestamp}\n{nonce}\n{sha256_hex(body)}\n".encode()


def canonical_response(status: int, request_nonce: str, timestamp: int, body: bytes) -> bytes:
    """`STATUS\\nrequest-nonce\\ntimestamp\\nsha256hex(body)\\n` as UTF-8 bytes."""
    return f"{status:03d}\n{request_nonce}\n{timestamp}\n{sha256_hex(body)}\n".encode()


def sign_request(
    method: str,
    raw_path_qs: str,
    body: bytes,
    *,
    partner_id: str,
    key_id: str,
    private_key: Ed25519PrivateKey | None = None,
    hmac_secret: bytes | None = None,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> str:
    """The Authorization header value for one request (Ed25519 or, with a secret, HMAC)."""
    if (private_key is None) == (hmac_secret is None):
        raise ValueError("give exactly one of private_key and hmac_secret")
    ts = int(time.time()) if timestamp is None else timestamp
    n = new_nonce() if nonce is None else nonce
    if not _NONCE_RE.fullmatch(n):
        raise ValueError("nonce must be 16-64 of [A-Za-z0-9_-]")
    message = canonical_request(method, raw_path_qs, ts, n, body)
    if private_key is not None:
        scheme, sig = SCHEME_ED25519, private_key.sign(message)
    else:
        assert hmac_secret is not None
        scheme, sig = SCHEME_HMAC, hmac.new(hmac_secret, message, hashlib.sha256).digest()
    params = SignedRequestParams(scheme, partner_id, key_id, n, ts, sig)
    return format_authorization(params)


_BAD_SIGNATURE_HINT = (
    "the signature does not verify with key '{}' over METHOD, path?query as sent, "
    "timestamp, nonce and sha256 of the exact body"
)


def verify_signature(
    params: SignedRequestParams,
    method: str,
    raw_path_qs: str,
    body: bytes,
    partner: PartnerCredentials,
    now: float,
    *,
    skew_s: int = DEFAULT_SKEW_S,
) -> None:
    """Everything but the nonce: partner state, key, clock window, signature. Raises."""
    if partner.partner_id != params.partner_id:
        raise PartnerAuthError("unknown_partner", "the registry answered for another partner")
    if not partner.enabled:
        raise PartnerAuthError("partner_disabled", f"partner {partner.partner_id} is disabled")
    # Whole seconds on both sides: the partner's timestamp is integer Unix seconds, so
    # the city's clock is too; otherwise +301 s read as "+300 s" (int() of 300.6) in
    # the refusal, and a timestamp exactly 300 s behind was refused by a fraction.
    offset = params.timestamp - math.floor(now)
    if abs(offset) > skew_s:
        raise PartnerAuthError(
            "clock_skew",
            f"timestamp {params.timestamp} is {offset:+d} s from the "
            f"city's clock; at most ±{skew_s} s is accepted",
        )
    try:
        message = canonical_request(method, raw_path_qs, params.timestamp, params.nonce, body)
    except ValueError as exc:
        raise PartnerAuthError("malformed", str(exc)) from None
    if params.scheme == SCHEME_HMAC:
        if partner.hmac_secret is None or params.key_id != HMAC_KEY_ID:
            raise PartnerAuthError(
                "unknown_key", f"no HMAC key {params.key_id!r} for partner {partner.partner_id}"
            )
        expected = hmac.new(partner.hmac_secret, message, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, params.signature):
            raise PartnerAuthError("bad_signature", _BAD_SIGNATURE_HINT.format(HMAC_KEY_ID))
        return
    key = partner.keys.get(params.key_id)
    if key is None:
        raise PartnerAuthError(
            "unknown_key", f"no key {params.key_id!r} for partner {partner.partner_id}"
        )
    if key.not_after is not None and now >= key.not_after.timestamp():
        raise PartnerAuthError(
            "key_expired", f"key {params.key_id!r} expired at {key.not_after.isoformat()}"
        )
    try:
        key.public_key.verify(params.signature, message)
    except InvalidSignature:
        raise PartnerAuthError("bad_signature", _BAD_SIGNATURE_HINT.format(params.key_id)) from None


def nonce_expiry(params: SignedRequestParams, skew_s: int = DEFAULT_SKEW_S) -> int:
    """Until when a nonce must be remembered: after that its timestamp is refused anyway."""
    return params.timestamp + skew_s + 1


async def remember_nonce(
    params: SignedRequestParams, nonce_store: NonceStore, *, skew_s: int = DEFAULT_SKEW_S
) -> None:
    fresh = await nonce_store.remember(
        params.partner_id, params.nonce, nonce_expiry(params, skew_s)
    )
    if not fresh:
        raise PartnerAuthError("replayed_nonce", f"nonce {params.nonce} was already used")


async def verify_request(
    params: SignedRequestParams,
    method: str,
    raw_path_qs: str,
    body: bytes,
    partner: PartnerCredentials,
    now: float,
    nonce_store: NonceStore,
    *,
    skew_s: int = DEFAULT_SKEW_S,
) -> None:
    """The whole check; the nonce is recorded only once the signature is good. Raises."""
    verify_signature(params, method, raw_path_qs, body, partner, now, skew_s=skew_s)
    await remember_nonce(params, nonce_store, skew_s=skew_s)


def sign_response(
    private_key: Ed25519PrivateKey,
    key_id: str,
    status: int,
    request_nonce: str,
    body: bytes,
    timestamp: int,
) -> str:
    """The `X-Citycard-Signature` header value."""
    sig = private_key.sign(canonical_response(status, request_nonce, timestamp, body))
    return f"key_id={key_id},timestamp={timestamp},signature={b64url_encode(sig)}"


def verify_response(
    header: str | None,
    city_keys: Ed25519PublicKey | Mapping[str, Ed25519PublicKey],
    status: int,
    request_nonce: str,
    body: bytes,
    *,
    now: float | None = None,
    skew_s: int = DEFAULT_SKEW_S,
) -> str:
    """Check the city's signature on a response; returns the city key id. Raises ForgedResponse.

    `city_keys` is the city's published key set by key id, or one key accepted under
    any key id. With `now`, a response timestamp outside ±skew_s is refused too
    (off by default: the nonce binding already stops replays, and a partner with a
    wrong clock must still be able to read the `clock_skew` answer).
    """
    if not header:
        raise ForgedResponse(f"the response has no {RESPONSE_SIGNATURE_HEADER} header")
    if len(header) > MAX_HEADER_LEN:
        raise ForgedResponse("the response signature header is too long")
    try:
        p = _parse_params(header, _RESPONSE_PARAMS)
    except PartnerAuthError as exc:
        raise ForgedResponse(f"unreadable response signature: {exc.message}") from None
    if not _ID_RE.fullmatch(p["key_id"]) or not _TIMESTAMP_RE.fullmatch(p["timestamp"]):
        raise ForgedResponse("unreadable response signature: bad key_id or timestamp")
    try:
        sig = b64url_decode(p["signature"])
    except ValueError as exc:
        raise ForgedResponse(f"unreadable response signature: {exc}") from None
    if isinstance(city_keys, Ed25519PublicKey):
        key: Ed25519PublicKey | None = city_keys
    else:
        key = city_keys.get(p["key_id"])
    if key is None:
        raise ForgedResponse(f"unknown city key id {p['key_id']!r}")
    ts = int(p["timestamp"])
    if now is not None and abs(now - ts) > skew_s:
        raise ForgedResponse(f"response timestamp {ts} is outside ±{skew_s} s")
    try:
        key.verify(sig, canonical_response(status, request_nonce, ts, body))
    except InvalidSignature:
        raise ForgedResponse("the city's signature does not match this response") from None
    return p["key_id"]


@dataclass(frozen=True)
class CitySigner:
    """The city's current response-signing key."""

    key_id: str
    private_key: Ed25519PrivateKey

    def __post_init__(self) -> None:
        if not _ID_RE.fullmatch(self.key_id):
            raise ValueError("key_id must be 1-64 characters of [A-Za-z0-9._-]")

    def sign(self, status: int, request_nonce: str, body: bytes, timestamp: int) -> str:
        return sign_response(self.private_key, self.key_id, status, request_nonce, body, timestamp)

    def public_key_pem(self) -> str:
        return public_key_pem(self.private_key)


# ---------------------------------------------------------------- rate limits


class TokenBucket:
    """`rate_per_minute` tokens a minute, bursts up to `burst` (default: one minute's worth)."""

    def __init__(
        self,
        rate_per_minute: int,
        *,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_minute < 1:
            raise ValueError("rate_per_minute must be at least 1")
        self.rate_per_minute = rate_per_minute
        self.capacity = float(burst if burst is not None else rate_per_minute)
        self._per_s = rate_per_minute / 60.0
        self._clock = clock
        self._tokens = self.capacity
        self._updated = clock()

    def take(self) -> float:
        """0.0 if a token was taken; otherwise the seconds until one will be there."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self._per_s)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._per_s


class PartnerRateLimiter:
    """One `TokenBucket` per partner, rebuilt when the partner's rate changes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, partner_id: str, rate_per_minute: int) -> float:
        bucket = self._buckets.get(partner_id)
        if bucket is None or bucket.rate_per_minute != rate_per_minute:
            bucket = self._buckets[partner_id] = TokenBucket(rate_per_minute, clock=self._clock)
        return bucket.take()


# ---------------------------------------------------------------- nonce stores


class NonceStore(Protocol):
    async def remember(self, partner_id: str, nonce: str, expires_at: int) -> bool:
        """Record the nonce until `expires_at` (Unix s); False if it was already there."""
        ...


class MemoryNonceStore:
    """One process only (tests, a single instance). Bounded; expired nonces swept lazily.

    When full of unexpired nonces it raises `NonceStoreFull` rather than forgetting
    one early, which would reopen a replay window.
    """

    def __init__(
        self, *, max_entries: int = 100_000, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._seen: dict[tuple[str, str], int] = {}
        self._expiry: list[tuple[int, str, str]] = []  # heap of (expires_at, partner, nonce)

    def __len__(self) -> int:
        return len(self._seen)

    def _sweep(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, partner_id, nonce = heapq.heappop(self._expiry)
            if self._seen.get((partner_id, nonce)) == expires_at:
                del self._seen[(partner_id, nonce)]

    async def remember(self, partner_id: str, nonce: str, expires_at: int) -> bool:
        now = self._clock()
        self._sweep(now)
        key = (partner_id, nonce)
        if key in self._seen:
            return False
        if len(self._seen) >= self.max_entries:
            raise NonceStoreFull(f"{len(self._seen)} unexpired nonces")
        self._seen[key] = expires_at
        heapq.heappush(self._expiry, (expires_at, partner_id, nonce))
        return True


class SqlNonceStore:
    """Shared by every instance through the database (table `partner_nonce`).

    Nonces go through the instance's `PartnerJournal` (group commit): an upsert that
    takes over only an expired row decides "first time", so the database's unique key,
    not this process, refuses a replay -- on any instance. Expired rows are purged by
    the journal about once a minute.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Callable[[], float] = time.time,
        write_lock: asyncio.Lock | None = None,
        journal: PartnerJournal | None = None,
    ) -> None:
        self.engine = engine
        self._clock = clock
        self.journal = journal or PartnerJournal(engine, write_lock=write_lock, clock=clock)
        self._t = PARTNER_NONCE_TABLE

    async def remember(self, partner_id: str, nonce: str, expires_at: int) -> bool:
        return await self.journal.remember_nonce(partner_id, nonce, expires_at)

    async def purge(self) -> int:
        """Delete every expired nonce now; returns how many."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.delete(self._t).where(self._t.c.expires_at <= int(self._clock()))
            )
            return int(result.rowcount)


# ---------------------------------------------------------------- the registry in SQL


class SecretCipher(Protocol):
    """Encrypts secrets at rest (e.g. the hotline's AES-GCM PII cipher)."""

    def encrypt(self, plaintext: str) -> str: ...

    def decrypt(self, token: str) -> str: ...


def _keys_to_json(keys: Mapping[str, PartnerKey]) -> dict[str, Any]:
    return {
        key_id: {
            "public_key_pem": public_key_pem(k.public_key),
            "not_after": k.not_after.astimezone(UTC).isoformat() if k.not_after else None,
        }
        for key_id, k in keys.items()
    }


def _keys_from_json(data: Mapping[str, Any]) -> dict[str, PartnerKey]:
    out = {}
    for key_id, k in data.items():
        not_after = datetime.fromisoformat(k["not_after"]) if k.get("not_after") else None
        out[key_id] = PartnerKey.from_pem(k["public_key_pem"], not_after)
    return out


class SqlPartnerRegistry:
    """The `partner` table; `get` is the middleware's `lookup`.

    Every partner call looks its partner up, so answers (unknown partners too) are
    cached for `cache_ttl_s`. A change made here is forgotten at once; with a
    `ChangeFeed` the other instances forget it when the bus tells them, and the TTL
    bounds how long a lost message could keep a disabled partner or a removed key alive.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        cipher: SecretCipher,
        *,
        changes: ChangeFeed | None = None,
        cache_ttl_s: float = 5.0,
    ) -> None:
        self.engine = engine
        self.cipher = cipher
        self._t = PARTNER_TABLE
        self._cache: TtlCache[str, PartnerCredentials | None] = TtlCache(cache_ttl_s)
        self.changes = changes
        if changes is not None:
            changes.listen(self._on_change)

    def _on_change(self, topic: str, key: str) -> None:
        if topic == PARTNER_TOPIC:
            self._cache.drop(key or None)

    async def _changed(self, partner_id: str) -> None:
        if self.changes is not None:
            await self.changes.changed(PARTNER_TOPIC, partner_id)
        else:
            self._cache.drop(partner_id)

    async def get(self, partner_id: str) -> PartnerCredentials | None:
        return await self._cache.load(partner_id, lambda: self._read(partner_id))

    async def _read(self, partner_id: str) -> PartnerCredentials | None:
        async with self.engine.connect() as conn:
            row = (
                (await conn.execute(sa.select(self._t).where(self._t.c.partner_id == partner_id)))
                .mappings()
                .first()
            )
        if row is None:
            return None
        secret = None
        if row["hmac_secret_enc"] is not None:
            secret = base64.b64decode(self.cipher.decrypt(row["hmac_secret_enc"]))
        keys = row["keys"] if isinstance(row["keys"], dict) else json.loads(row["keys"])
        return PartnerCredentials(
            partner_id=row["partner_id"],
            type=PartnerType(row["type"]),
            scopes=frozenset(row["scopes"]),
            keys=_keys_from_json(keys),
            hmac_secret=secret,
            enabled=bool(row["enabled"]),
            rate_per_minute=int(row["rate_per_minute"]),
        )

    async def put(self, partner: PartnerCredentials) -> None:
        """Insert or replace a partner (created_at is kept on replace)."""
        values = {
            "type": partner.type.value,
            "scopes": sorted(partner.scopes),
            "keys": _keys_to_json(partner.keys),
            "hmac_secret_enc": (
                self.cipher.encrypt(base64.b64encode(partner.hmac_secret).decode("ascii"))
                if partner.hmac_secret is not None
                else None
            ),
            "enabled": partner.enabled,
            "rate_per_minute": partner.rate_per_minute,
        }
        t = self._t
        async with self.engine.begin() as conn:
            updated = await conn.execute(
                sa.update(t).where(t.c.partner_id == partner.partner_id).values(**values)
            )
            if updated.rowcount == 0:
                await conn.execute(
                    sa.insert(t).values(
                        partner_id=partner.partner_id, created_at=datetime.now(UTC), **values
                    )
                )
        await self._changed(partner.partner_id)

    async def set_enabled(self, partner_id: str, enabled: bool) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(self._t).where(self._t.c.partner_id == partner_id).values(enabled=enabled)
            )
        await self._changed(partner_id)
        return bool(result.rowcount == 1)
