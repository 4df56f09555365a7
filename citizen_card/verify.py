"""Offline verifier for citizen-card dynamic QR tokens.

Partners (transit gates, clinics, merchants) vendor this file with ``cose.py`` (side by
side in one package: it imports ``.cose``). It needs ``cbor2`` and ``cryptography``,
keeps everything in memory and touches no database, file or network: its inputs are
the token, the trust list and status list bytes as served by
``GET /.well-known/citizen-card/trust-list`` and ``.../status-list``, the city's pinned
ROOT public key (Ed25519, PEM) and the time.

Token
-----
``"CC1:" + Base45(zlib(COSE_Sign1(CWT claims)))``, modelled on the EU Digital COVID
Certificate. COSE_Sign1 (tag 18; untagged, or inside the CWT tag 61, accepted) with
protected header ``{1: alg, 4: kid}``: alg ES256 (-7, primary) or EdDSA (-8, Ed25519,
secondary), kid = first 8 bytes of SHA-256 of the signing key's SubjectPublicKeyInfo
DER. The payload is a CBOR map of claims:

==========  =======  ======================================================
key         name     value
==========  =======  ======================================================
1           iss      text, the city code (must equal the trust list's ``iss``)
2           sub      text, a pseudonymous card handle (never the ID number)
4           exp      int, epoch seconds (iat + 60 for a dynamic code)
5           nbf      int, optional
6           iat      int, epoch seconds
7           cti      bstr, 16 random bytes (the one-time nonce)
-70001      purpose  text: ``id`` | ``transit`` | ``pay`` | ``medical``
-70002      status   uint, the card's index in the status list
-70003      payload  map with text keys, the minimal per-purpose data:
                     ``id``: ``{}``; ``transit``: ``{"concession": text}``;
                     ``pay``: ``{}``; ``medical``: ``{"health_card": text}``
==========  =======  ======================================================

(-70001..-70003 are in the CWT private-use range, below -65536.)

Trust list and status list
--------------------------
Both are COSE_Sign1 signed with EdDSA by the ROOT key (kid = kid of the root key), with
CBOR map payloads (text keys):

* trust list: ``{"typ": "citizen-card-trust-list", "v": 1, "iss": text, "iat": int,
  "max_ttl": int, "keys": [{"kid": bstr, "alg": "ES256"|"EdDSA", "pub": bstr
  (SubjectPublicKeyInfo DER), "purposes": [text...], "nbf": int, "exp": int}, ...]}``.
  ``nbf``..``exp`` is when tokens signed by the key are accepted: ``exp`` is the end
  of the key's signing window plus ``max_ttl``, so a rotated-out key keeps verifying its
  last tokens until they expire. ``max_ttl`` bounds ``exp - iat`` of every token.
* status list: ``{"typ": "citizen-card-status-list", "v": 1, "version": int (grows with
  every publication), "iat": int, "exp": int, "ttl": int, "size": int, "bits": 1,
  "lst": bstr}``, ``lst`` = zlib(bitstring), as in the IETF Token Status List: index
  ``i`` is bit ``i % 8`` (least significant first) of byte ``i // 8``; 1 = revoked (card
  lost or cancelled). A list past ``exp`` (plus skew) is stale.

Verification order and reason codes
-----------------------------------
prefix (``bad_prefix``), input size cap (``too_large``), Base45 (``bad_base45``),
bounded inflate to 4 KiB (``too_large`` / ``bad_compression``), COSE parse
(``bad_cose``), kid lookup (``unknown_kid``; ``key_not_valid`` if no key with that kid
is inside its validity window now), signature with every key of that kid
(``bad_signature``) — no claim is read before this point — claims shape
(``bad_claims``), key window and purposes vs the claims (``key_not_valid`` /
``key_purpose_mismatch``), time with skew (``expired`` / ``not_yet_valid``), purpose
(``wrong_purpose``), replay cache for one-time purposes, ``pay`` by default
(``replayed``; ``replay_cache_full`` fails closed), status (``stale_status_list`` /
``status_unknown`` / ``revoked``), then ``ok``. Lists that fail their checks give
``bad_trust_list`` / ``bad_status_list``. Reason strings are stable.

A payment token's nonce is recorded only once the token has passed every check, so a
token refused for, say, a stale status list can be shown again after the list is
refreshed; the check-and-record is atomic.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import math
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from .cose import (
    ALG_EDDSA,
    ALG_ES256,
    ALG_IDS,
    ALG_NAMES,
    HDR_ALG,
    HDR_KID,
    CoseError,
    decode_sign1,
    kid_for_public_key,
    verify_sign1,
)

# ------------------------------------------------------------------ format constants

PREFIX = "CC1:"
PURPOSES: tuple[str, ...] = ("id", "transit", "pay", "medical")
PAYLOAD_FIELDS: dict[str, tuple[str, ...]] = {
    "id": (),
    "transit": ("concession",),
    "pay": (),
    "medical": ("health_card",),
}
ONE_TIME_PURPOSES: frozenset[str] = frozenset({"pay"})

CLAIM_ISS = 1
CLAIM_SUB = 2
CLAIM_EXP = 4
CLAIM_NBF = 5
CLAIM_IAT = 6
CLAIM_CTI = 7
CLAIM_PURPOSE = -70001
CLAIM_STATUS_INDEX = -70002
CLAIM_PAYLOAD = -70003
CTI_LENGTH = 16

TRUST_LIST_TYPE = "citizen-card-trust-list"
STATUS_LIST_TYPE = "citizen-card-status-list"
LIST_FORMAT_VERSION = 1

MAX_TOKEN_CHARS = 2048  # Base45 text after the prefix: about 1.3 KiB of zlib data
MAX_INFLATED = 4096  # bytes of COSE_Sign1 after inflating
MAX_LIST_BYTES = 4 * 1024 * 1024  # a served trust list or status list
MAX_STATUS_LIST_SIZE = 1 << 25  # indices (4 MiB of bits)
DEFAULT_SKEW_S = 30.0

# ---------------------------------------------------------------------- reason codes

OK = "ok"
BAD_PREFIX = "bad_prefix"
TOO_LARGE = "too_large"
BAD_BASE45 = "bad_base45"
BAD_COMPRESSION = "bad_compression"
BAD_COSE = "bad_cose"
UNKNOWN_KID = "unknown_kid"
KEY_NOT_VALID = "key_not_valid"
BAD_SIGNATURE = "bad_signature"
BAD_CLAIMS = "bad_claims"
KEY_PURPOSE_MISMATCH = "key_purpose_mismatch"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
WRONG_PURPOSE = "wrong_purpose"
REPLAYED = "replayed"
REPLAY_CACHE_FULL = "replay_cache_full"
REVOKED = "revoked"
STATUS_UNKNOWN = "status_unknown"
STALE_STATUS_LIST = "stale_status_list"
BAD_TRUST_LIST = "bad_trust_list"
BAD_STATUS_LIST = "bad_status_list"
INTERNAL_ERROR = "internal_error"  # a bug: never expected, but never an exception either

REASONS: frozenset[str] = frozenset(
    {
        OK, BAD_PREFIX, TOO_LARGE, BAD_BASE45, BAD_COMPRESSION, BAD_COSE, UNKNOWN_KID,
        KEY_NOT_VALID, BAD_SIGNATURE, BAD_CLAIMS, KEY_PURPOSE_MISMATCH, EXPIRED,
        NOT_YET_VALID, WRONG_PURPOSE, REPLAYED, REPLAY_CACHE_FULL, REVOKED, STATUS_UNKNOWN,
        STALE_STATUS_LIST, BAD_TRUST_LIST, BAD_STATUS_LIST, INTERNAL_ERROR,
    }
)  # fmt: skip

__all__ = [
    "PREFIX",
    "PURPOSES",
    "REASONS",
    "ListError",
    "ReplayCache",
    "StatusList",
    "TrustList",
    "TrustedKey",
    "Verdict",
    "Verifier",
    "b45decode",
    "epoch_seconds",
    "inflate_bounded",
    "load_root_key",
    "parse_status_list",
    "parse_trust_list",
    "verify_token",
]


@dataclass(frozen=True)
class Verdict:
    """The answer for one token. ``claims`` is empty unless ``valid``.

    ``claims`` (when valid): ``iss``, ``sub``, ``iat``, ``exp``, ``cti`` (bytes),
    ``purpose``, ``status_index``, ``payload`` (dict), and ``nbf`` if the token had one.
    ``kid``/``alg`` are filled in as soon as the COSE headers were read (for logs).
    """

    valid: bool
    reason: str
    claims: dict[str, Any] = field(default_factory=dict, hash=False)
    kid: bytes | None = None
    alg: str | None = None

    def __bool__(self) -> bool:
        return self.valid


_new_object = object.__new__
_set_attribute = object.__setattr__


def _verdict(
    valid: bool, reason: str, claims: dict[str, Any], kid: bytes | None, alg: str | None
) -> Verdict:
    """``Verdict(...)`` in one attribute store instead of five (the hot path's last step)."""
    verdict = _new_object(Verdict)
    _set_attribute(
        verdict,
        "__dict__",
        {"valid": valid, "reason": reason, "claims": claims, "kid": kid, "alg": alg},
    )
    return verdict


class ListError(ValueError):
    """A trust list or status list failed its checks; ``reason`` is the reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


# --------------------------------------------------------------------------- Base45

_B45_CHARSET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_B45_TABLE = bytearray(b"\xff" * 256)
for _i, _c in enumerate(_B45_CHARSET):
    _B45_TABLE[ord(_c)] = _i
_B45_TABLE = bytes(_B45_TABLE)
_B45_MASKS: dict[int, tuple[int, int]] = {}


def _b45_masks(triples: int) -> tuple[int, int]:
    """Masks with 0x0000FF and 0xFF0000 in each of ``triples`` 24-bit lanes (cached)."""
    low = ((1 << (24 * triples)) - 1) // 0xFFFFFF * 0xFF
    masks = (low, low << 16)
    if len(_B45_MASKS) < 256:
        _B45_MASKS[triples] = masks
    return masks


def b45decode(text: str) -> bytes:
    """RFC 9285 Base45 decode; raises ``ValueError`` on any invalid input.

    Same results as the ``base45`` package (the tests check it), about 6x faster on a
    token: the per-triple arithmetic ``c + 45*d + 2025*e`` runs on one big integer
    whose 24-bit lanes hold the triples, instead of a Python loop. On a 300-character
    token the loop alone would cost half an ES256 verification.
    """
    try:
        values = text.encode("ascii").translate(_B45_TABLE)
    except UnicodeEncodeError:
        raise ValueError("Base45 text must be ASCII") from None
    if 0xFF in values:
        raise ValueError("character outside the Base45 alphabet")
    n = len(values)
    rest = n % 3
    if rest == 1:
        raise ValueError("Base45 length must not be 1 modulo 3")
    triples = n // 3
    out = bytearray(2 * triples + (rest >> 1))
    if triples:
        full = 3 * triples
        low, high = _B45_MASKS.get(triples) or _b45_masks(triples)
        lanes = int.from_bytes(values[:full] if rest else values, "big")  # c<<16 | d<<8 | e
        x = ((lanes >> 16) & low) + 45 * ((lanes >> 8) & low) + 2025 * (lanes & low)
        if x & high:  # a lane above 0xFFFF (lanes stay below 2**17: no carry between them)
            raise ValueError("Base45 triple above 65535")
        xb = x.to_bytes(full, "big")  # lane i = 0, hi, lo
        out[0 : 2 * triples : 2] = xb[1::3]
        out[1 : 2 * triples : 2] = xb[2::3]
    if rest:
        last = values[n - 2] + 45 * values[n - 1]
        if last > 0xFF:
            raise ValueError("Base45 pair above 255")
        out[-1] = last
    return bytes(out)


def inflate_bounded(data: bytes, limit: int) -> bytes:
    """zlib-inflate ``data`` to at most ``limit`` bytes.

    Raises ``ValueError`` whose ``args[0]`` is ``too_large`` (more output than ``limit``:
    a zip bomb stops after ``limit`` bytes of work) or ``bad_compression`` (not zlib,
    truncated, or trailing bytes).
    """
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit)
    except zlib.error:
        raise ValueError(BAD_COMPRESSION) from None
    if d.unconsumed_tail:
        raise ValueError(TOO_LARGE)
    if not d.eof:
        try:
            more = d.flush()
        except zlib.error:
            raise ValueError(BAD_COMPRESSION) from None
        if more:  # pragma: no cover - decompress(limit) leaves nothing pending
            raise ValueError(TOO_LARGE)
        raise ValueError(BAD_COMPRESSION)
    if d.unused_data:
        raise ValueError(BAD_COMPRESSION)
    return out


# ------------------------------------------------------------------------------ time


def epoch_seconds(now: datetime | float | int | None) -> float:
    """``now`` as epoch seconds: None is the clock; datetimes must be timezone-aware."""
    if now is None:
        return time.time()
    if isinstance(now, datetime):
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return now.timestamp()
    if isinstance(now, bool) or not isinstance(now, int | float):
        raise TypeError("now must be a datetime, epoch seconds or None")
    if not math.isfinite(now):
        raise ValueError("now must be finite")
    return float(now)


# ---------------------------------------------------------------------- replay cache


class ReplayCache:
    """Bounded, time-windowed set of token nonces (cti) for one-time tokens.

    A nonce is kept until its token's ``exp`` plus the skew has passed; after that the
    token is refused as expired anyway, so forgetting it is safe. When ``max_entries``
    unexpired nonces are held, new one-time tokens are refused (``replay_cache_full``)
    rather than forgetting a live nonce. Thread-safe.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self._until: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._until)

    def _prune(self, now: float) -> None:
        heap = self._heap
        until = self._until
        while heap and heap[0][0] < now:
            expiry, cti = heapq.heappop(heap)
            if until.get(cti) == expiry:
                del until[cti]

    def seen(self, cti: bytes, now: float) -> bool:
        """Whether ``cti`` was recorded and is still inside its window."""
        with self._lock:
            expiry = self._until.get(cti)
            return expiry is not None and expiry >= now

    def add(self, cti: bytes, keep_until: float, now: float) -> str:
        """Record ``cti`` until ``keep_until``: ``ok``, ``replayed`` or ``replay_cache_full``."""
        with self._lock:
            self._prune(now)
            if cti in self._until:
                return REPLAYED
            if len(self._until) >= self.max_entries:
                return REPLAY_CACHE_FULL
            self._until[cti] = keep_until
            heapq.heappush(self._heap, (keep_until, cti))
            return OK


# ------------------------------------------------------------------- list parsing


@dataclass(frozen=True, slots=True)
class TrustedKey:
    kid: bytes
    alg_id: int
    alg: str
    public_key: Any
    purposes: frozenset[str]
    nbf: int
    exp: int


@dataclass(frozen=True, slots=True)
class TrustList:
    iss: str
    iat: int
    max_ttl: int
    keys: tuple[TrustedKey, ...]


@dataclass(frozen=True, slots=True)
class StatusList:
    version: int
    iat: int
    exp: int
    ttl: int
    size: int
    bits: bytes

    def revoked(self, index: int) -> bool:
        return bool((self.bits[index >> 3] >> (index & 7)) & 1)


def load_root_key(root_key: bytes | str | ed25519.Ed25519PublicKey) -> ed25519.Ed25519PublicKey:
    """The pinned root public key: PEM (bytes or str) or a key object; Ed25519 only."""
    if isinstance(root_key, ed25519.Ed25519PublicKey):
        return root_key
    if isinstance(root_key, str):
        root_key = root_key.encode("ascii")
    if not isinstance(root_key, bytes | bytearray):
        raise TypeError("root_key must be PEM bytes or str")
    key = serialization.load_pem_public_key(bytes(root_key))
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError("root_key must be an Ed25519 public key")
    return key


def _is_int(value: Any) -> bool:
    return type(value) is int


def _signed_list_payload(data: Any, root: ed25519.Ed25519PublicKey, reason: str, typ: str) -> dict:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ListError(reason, "must be the bytes served by the endpoint")
    data = bytes(data)
    if len(data) > MAX_LIST_BYTES:
        raise ListError(reason, "too large")
    try:
        msg = decode_sign1(data)
        verify_sign1(msg, root, ALG_EDDSA)
    except CoseError as exc:
        raise ListError(reason, f"not signed by the root key ({exc})") from None
    try:
        payload = cbor2.loads(msg.payload)
    except Exception as exc:
        raise ListError(reason, f"payload is not CBOR ({exc})") from None
    if not isinstance(payload, dict) or payload.get("typ") != typ:
        raise ListError(reason, f"payload is not a {typ}")
    if payload.get("v") != LIST_FORMAT_VERSION:
        raise ListError(reason, f"unsupported format version {payload.get('v')!r}")
    return payload


def parse_trust_list(data: bytes, root_key: Any) -> TrustList:
    """Check the root signature and shape of a served trust list; raise ``ListError``."""
    p = _signed_list_payload(data, load_root_key(root_key), BAD_TRUST_LIST, TRUST_LIST_TYPE)
    iss, iat, max_ttl, entries = p.get("iss"), p.get("iat"), p.get("max_ttl"), p.get("keys")
    if not isinstance(iss, str) or not _is_int(iat) or not _is_int(max_ttl) or max_ttl <= 0:
        raise ListError(BAD_TRUST_LIST, "iss, iat or max_ttl missing or malformed")
    if not isinstance(entries, list):
        raise ListError(BAD_TRUST_LIST, "keys must be an array")
    keys = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ListError(BAD_TRUST_LIST, "key entry must be a map")
        kid, alg, pub = entry.get("kid"), entry.get("alg"), entry.get("pub")
        purposes, nbf, exp = entry.get("purposes"), entry.get("nbf"), entry.get("exp")
        if alg not in ALG_IDS or not isinstance(kid, bytes) or not isinstance(pub, bytes):
            raise ListError(BAD_TRUST_LIST, "key entry needs kid, alg and pub")
        if not _is_int(nbf) or not _is_int(exp) or exp < nbf:
            raise ListError(BAD_TRUST_LIST, "key entry needs nbf <= exp")
        if not isinstance(purposes, list) or not set(purposes) <= set(PURPOSES):
            raise ListError(BAD_TRUST_LIST, "key entry purposes malformed")
        try:
            public_key = serialization.load_der_public_key(pub)
        except Exception:
            raise ListError(BAD_TRUST_LIST, "key entry pub is not a public key") from None
        if alg == "ES256":
            fits = isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
                public_key.curve, ec.SECP256R1
            )
        else:
            fits = isinstance(public_key, ed25519.Ed25519PublicKey)
        if not fits:
            raise ListError(BAD_TRUST_LIST, f"key entry pub does not fit alg {alg}")
        if kid_for_public_key(public_key) != kid:
            raise ListError(BAD_TRUST_LIST, "key entry kid is not the key's SHA-256 prefix")
        keys.append(TrustedKey(kid, ALG_IDS[alg], alg, public_key, frozenset(purposes), nbf, exp))
    return TrustList(iss, iat, max_ttl, tuple(keys))


def parse_status_list(data: bytes, root_key: Any) -> StatusList:
    """Check the root signature and shape of a served status list; raise ``ListError``."""
    p = _signed_list_payload(data, load_root_key(root_key), BAD_STATUS_LIST, STATUS_LIST_TYPE)
    version, iat, exp, ttl = p.get("version"), p.get("iat"), p.get("exp"), p.get("ttl")
    size, bits, lst = p.get("size"), p.get("bits"), p.get("lst")
    if not all(_is_int(v) for v in (version, iat, exp, ttl, size)) or version < 0:
        raise ListError(BAD_STATUS_LIST, "version, iat, exp, ttl and size must be integers")
    if bits != 1 or not isinstance(lst, bytes):
        raise ListError(BAD_STATUS_LIST, "bits must be 1 and lst a byte string")
    if not 0 <= size <= MAX_STATUS_LIST_SIZE:
        raise ListError(BAD_STATUS_LIST, "size out of range")
    need = (size + 7) // 8
    try:
        raw = inflate_bounded(lst, need)
    except ValueError as exc:
        raise ListError(BAD_STATUS_LIST, f"lst does not inflate ({exc})") from None
    if len(raw) != need:
        raise ListError(BAD_STATUS_LIST, f"lst inflates to {len(raw)} bytes, expected {need}")
    return StatusList(version, iat, exp, ttl, size, raw)


# -------------------------------------------------------------------------- verifier


# ES256 is checked over a SHA-256 computed here (hashlib) with a Prehashed ECDSA: the
# same check as ec.ECDSA(SHA256()) over the bytes, about a microsecond less per token.
_ECDSA_PREHASHED = ec.ECDSA(Prehashed(hashes.SHA256()))


_BYTES_TYPES = (bytes, bytearray, memoryview)
_sha256 = hashlib.sha256
_isfinite = math.isfinite
_DECODERS = threading.local()


def _claims_decoder() -> Any:
    """This thread's ``cbor2.CBORDecoder`` for claims, created on first use.

    ``Verifier.verify`` points it at each payload and calls ``decode()``: the same
    result as ``cbor2.loads``, whose cost on a payload this small is mostly creating
    the decoder. cbor2 resets its shared-value and string-reference state at every
    top-level ``decode()``, so nothing carries over from one token to the next.
    """
    decoder = _DECODERS.decoder = cbor2.CBORDecoder(io.BytesIO(b""))
    return decoder


def _raw_to_der(signature: bytes) -> bytes:
    """COSE ES256 ``r || s`` to DER; the same bytes as ``cose.raw_to_der``."""
    r = signature[:32].lstrip(b"\0")
    s = signature[32:].lstrip(b"\0")
    if not r or r[0] & 0x80:
        r = b"\0" + r
    if not s or s[0] & 0x80:
        s = b"\0" + s
    return bytes((0x30, len(r) + len(s) + 4, 2, len(r))) + r + bytes((2, len(s))) + s


def _der_parts(r_high: int, s_high: int) -> tuple[bytes, bytes]:
    lr, ls = 32 + r_high, 32 + s_high
    return bytes((0x30, lr + ls + 4, 2, lr)) + b"\0" * r_high, bytes((2, ls)) + b"\0" * s_high


# DER around r and s when both start with a non-zero byte, indexed by their top bits.
_DER_PARTS = [_der_parts(r_high, s_high) for r_high in (0, 1) for s_high in (0, 1)]
_HEADER_CACHE_MAX = 64
_SIG1_HEAD = b"\x84\x6aSignature1"  # array(4), tstr(10) "Signature1"
_BSTR_HEADS = [bytes((0x40 | n,)) if n < 24 else bytes((0x58, n)) for n in range(256)]


def _bstr_head(length: int) -> bytes:
    if length < 256:
        return _BSTR_HEADS[length]
    if length < 0x10000:
        return b"\x59" + length.to_bytes(2, "big")
    return b"\x5a" + length.to_bytes(4, "big")


def _fail(reason: str, kid: bytes | None = None, alg: str | None = None) -> Verdict:
    return _verdict(False, reason, {}, kid, alg)


class Verifier:
    """Verifies tokens against one trust list + status list, parsed and checked once.

    Construction checks both lists' root signatures and loads every public key (raises
    ``ListError`` with ``reason`` ``bad_trust_list`` / ``bad_status_list``); ``verify``
    then only does per-token work. Build a new Verifier when either list is refreshed,
    passing the same ``replay_cache`` so payment nonces survive the refresh. A gate
    should also refuse a status list whose ``version`` is lower than one it has seen
    (``Verifier.status_list.version``).
    """

    def __init__(
        self,
        trust_list: bytes,
        status_list: bytes,
        root_key: bytes | str | ed25519.Ed25519PublicKey,
        *,
        skew_s: float = DEFAULT_SKEW_S,
        replay_cache: ReplayCache | None = None,
        one_time_purposes: Iterable[str] = ONE_TIME_PURPOSES,
    ) -> None:
        root = load_root_key(root_key)
        self.trust_list = parse_trust_list(trust_list, root)
        self.status_list = parse_status_list(status_list, root)
        self.skew_s = float(skew_s)
        self.replay_cache = replay_cache if replay_cache is not None else ReplayCache()
        self.one_time_purposes = frozenset(one_time_purposes)
        by_kid: dict[bytes, list[TrustedKey]] = {}
        for key in self.trust_list.keys:
            by_kid.setdefault(key.kid, []).append(key)
        self._by_kid = {kid: tuple(keys) for kid, keys in by_kid.items()}
        self._iss = self.trust_list.iss
        self._status_exp = self.status_list.exp
        self._status_size = self.status_list.size
        self._status_bits = self.status_list.bits
        # Protected header bytes -> (alg id, alg name, kid) for the fast path; filled
        # by the strict parser with plain {alg, kid} headers of trusted kids only.
        self._headers: dict[bytes, tuple[int, str, bytes]] = {}
        self._max_ttl = self.trust_list.max_ttl

    def verify(
        self, token: str | bytes, purpose: str, now: datetime | float | None = None
    ) -> Verdict:
        """Verify ``token`` for ``purpose`` at ``now`` (default: the clock). Never raises
        for any token; raises ``ValueError`` only for an unknown ``purpose`` or bad ``now``.
        """
        if purpose not in PAYLOAD_FIELDS:
            raise ValueError(f"unknown purpose {purpose!r}")
        if type(now) is not float or not _isfinite(now):
            now = epoch_seconds(now)
        # The steps are written out inline rather than as helper calls: this is the hot
        # path the benchmark measures, and on CPython every call, attribute lookup and
        # temporary object costs measurably next to one ES256 verification.
        try:
            # 1. prefix and size cap
            if type(token) is not str:
                if not isinstance(token, _BYTES_TYPES):
                    return _fail(BAD_PREFIX)
                try:
                    token = bytes(token).decode("ascii")
                except UnicodeDecodeError:
                    return _fail(BAD_PREFIX)
            if not token.startswith(PREFIX):
                return _fail(BAD_PREFIX)
            body = token[4:]
            if body[-1:] in ("\n", "\r"):
                body = body.rstrip("\r\n")
            if len(body) > MAX_TOKEN_CHARS:
                return _fail(TOO_LARGE)
            # 2. Base45 (the algorithm of ``b45decode``, inline)
            values = body.encode("ascii", "replace").translate(_B45_TABLE)
            if 0xFF in values:
                return _fail(BAD_BASE45)
            n = len(values)
            rest = n % 3
            if rest == 1:
                return _fail(BAD_BASE45)
            triples = n // 3
            compressed = bytearray(2 * triples + (rest >> 1))
            if triples:
                masks = _B45_MASKS.get(triples) or _b45_masks(triples)
                lanes = int.from_bytes(values[: 3 * triples] if rest else values, "big")
                low = masks[0]
                x = ((lanes >> 16) & low) + 45 * ((lanes >> 8) & low) + 2025 * (lanes & low)
                if x & masks[1]:
                    return _fail(BAD_BASE45)
                xb = x.to_bytes(3 * triples, "big")
                compressed[0 : 2 * triples : 2] = xb[1::3]
                compressed[1 : 2 * triples : 2] = xb[2::3]
            if rest:
                last = values[n - 2] + 45 * values[n - 1]
                if last > 0xFF:
                    return _fail(BAD_BASE45)
                compressed[-1] = last
            # 3. bounded inflate (no more than MAX_INFLATED bytes of output, ever)
            inflater = zlib.decompressobj()
            try:
                raw = inflater.decompress(compressed, MAX_INFLATED)
            except zlib.error:
                return _fail(BAD_COMPRESSION)
            if inflater.unconsumed_tail:
                return _fail(TOO_LARGE)
            if not inflater.eof or inflater.unused_data:
                return _fail(BAD_COMPRESSION)
            # 4. COSE parse. Fast path: the exact layout our issuer writes (D2 84,
            # bstr(<24) protected header already seen and parsed strictly, empty
            # unprotected map, bstr payload ending right where "58 40" + a 64-byte
            # signature ends the message). Anything else goes through decode_sign1.
            header = None
            n = len(raw)
            if n > 72 and raw[0] == 0xD2 and raw[1] == 0x84 and raw[n - 66] == 0x58:
                hb = raw[2]
                pend = hb - 0x3D  # 3 + length of the protected bstr
                if raw[n - 65] == 0x40 and 0x40 <= hb < 0x58 and raw[pend] == 0xA0:
                    pb = raw[pend + 1]
                    if pb == 0x58:
                        start = pend + 3
                        length = raw[pend + 2]
                    elif pb == 0x59:
                        start = pend + 4
                        length = (raw[pend + 2] << 8) | raw[pend + 3]
                    else:
                        start = length = -1
                    if start >= 0 and start + length == n - 66:
                        protected_bytes = raw[3:pend]
                        header = self._headers.get(protected_bytes)
                        if header is not None:
                            payload = raw[start : n - 66]
                            signature = raw[n - 64 :]
            if header is None:
                try:
                    msg = decode_sign1(raw)
                except CoseError:
                    return _fail(BAD_COSE)
                kid = msg.protected.get(HDR_KID)
                if kid is None:
                    kid = msg.unprotected.get(HDR_KID)
                if type(kid) is not bytes:
                    return _fail(BAD_COSE)
                alg_id = msg.protected.get(HDR_ALG)
                if alg_id not in ALG_NAMES:
                    return _fail(BAD_COSE, kid)
                protected_bytes = msg.protected_bytes
                payload = msg.payload
                signature = msg.signature
                header = (alg_id, ALG_NAMES[alg_id], kid)
                if (
                    len(msg.protected) == 2
                    and HDR_KID in msg.protected
                    and kid in self._by_kid
                    and len(self._headers) < _HEADER_CACHE_MAX
                ):
                    self._headers[protected_bytes] = header
            alg_id, alg, kid = header
            # 5. key lookup: every key with this kid, inside its window now
            keys = self._by_kid.get(kid)
            if keys is None:
                return _fail(UNKNOWN_KID, kid, alg)
            skew = self.skew_s
            # 6. signature, before any claim is read. Sig_structure written directly
            # (same bytes as cose.sig_structure / cbor2.dumps; the tests check it).
            length = len(payload)
            plength = len(protected_bytes)
            tbs = b"".join(
                (
                    _SIG1_HEAD,
                    _BSTR_HEADS[plength] if plength < 256 else _bstr_head(plength),
                    protected_bytes,
                    b"\x40",
                    _BSTR_HEADS[length] if length < 256 else _bstr_head(length),
                    payload,
                )
            )
            if alg_id == ALG_ES256 and len(signature) == 64:
                # COSE r || s to DER (what cose.raw_to_der returns): one join when
                # neither half starts with a zero byte, the general form otherwise.
                r0 = signature[0]
                s0 = signature[32]
                if r0 and s0:
                    head, middle = _DER_PARTS[(r0 >> 7) << 1 | (s0 >> 7)]
                    der = b"".join((head, signature[:32], middle, signature[32:]))
                else:
                    der = _raw_to_der(signature)
                digest = _sha256(tbs).digest()
            key = None
            in_window = False
            for candidate in keys:
                if not candidate.nbf - skew <= now <= candidate.exp + skew:
                    continue
                in_window = True
                if candidate.alg_id != alg_id or len(signature) != 64:
                    continue
                try:
                    if alg_id == ALG_ES256:
                        candidate.public_key.verify(der, digest, _ECDSA_PREHASHED)
                    else:
                        candidate.public_key.verify(signature, tbs)
                except InvalidSignature:
                    continue
                key = candidate
                break
            if key is None:
                return _fail(BAD_SIGNATURE if in_window else KEY_NOT_VALID, kid, alg)
            # 7. claims (only now: the payload is authentic), with cbor2 through a
            # per-thread decoder kept between calls (see _claims_decoder).
            try:
                decoder = _DECODERS.decoder
            except AttributeError:
                decoder = _claims_decoder()
            try:
                fp = decoder.fp = io.BytesIO(payload)
                c = decoder.decode()
            except Exception:
                return _fail(BAD_CLAIMS, kid, alg)
            if type(c) is not dict or fp.tell() != length:
                return _fail(BAD_CLAIMS, kid, alg)
            sub, iat, exp, cti = (
                c.get(CLAIM_SUB),
                c.get(CLAIM_IAT),
                c.get(CLAIM_EXP),
                c.get(CLAIM_CTI),
            )
            claimed, index, data = (
                c.get(CLAIM_PURPOSE),
                c.get(CLAIM_STATUS_INDEX),
                c.get(CLAIM_PAYLOAD),
            )
            fields = PAYLOAD_FIELDS.get(claimed) if type(claimed) is str else None
            if (
                fields is None
                or c.get(CLAIM_ISS) != self._iss
                or type(sub) is not str
                or not sub
                or type(iat) is not int
                or type(exp) is not int
                or not iat <= exp <= iat + self._max_ttl
                or type(cti) is not bytes
                or len(cti) != CTI_LENGTH
                or type(index) is not int
                or index < 0
                or type(data) is not dict
            ):
                return _fail(BAD_CLAIMS, kid, alg)
            for name in fields:
                value = data.get(name)
                if type(value) is not str or not value:
                    return _fail(BAD_CLAIMS, kid, alg)
            for name in data:
                if type(name) is not str:
                    return _fail(BAD_CLAIMS, kid, alg)
            nbf = c.get(CLAIM_NBF, iat)
            if type(nbf) is not int:
                return _fail(BAD_CLAIMS, kid, alg)
            if claimed not in key.purposes:
                return _fail(KEY_PURPOSE_MISMATCH, kid, alg)
            if iat < key.nbf - skew or exp > key.exp:
                return _fail(KEY_NOT_VALID, kid, alg)
            # 8. time
            if now > exp + skew:
                return _fail(EXPIRED, kid, alg)
            if iat > now + skew or nbf > now + skew:
                return _fail(NOT_YET_VALID, kid, alg)
            # 9. purpose
            if claimed != purpose:
                return _fail(WRONG_PURPOSE, kid, alg)
            # 10. replay (checked here, recorded once everything has passed)
            one_time = purpose in self.one_time_purposes
            if one_time and self.replay_cache.seen(cti, now):
                return _fail(REPLAYED, kid, alg)
            # 11. status
            if now > self._status_exp + skew:
                return _fail(STALE_STATUS_LIST, kid, alg)
            if index >= self._status_size:
                return _fail(STATUS_UNKNOWN, kid, alg)
            if (self._status_bits[index >> 3] >> (index & 7)) & 1:
                return _fail(REVOKED, kid, alg)
            if one_time:
                recorded = self.replay_cache.add(cti, exp + skew, now)
                if recorded != OK:
                    return _fail(recorded, kid, alg)
            claims = {
                "iss": self._iss,
                "sub": sub,
                "iat": iat,
                "exp": exp,
                "cti": cti,
                "purpose": claimed,
                "status_index": index,
                "payload": data,
            }
            if CLAIM_NBF in c:
                claims["nbf"] = nbf
            return _verdict(True, OK, claims, kid, alg)
        except Exception:  # pragma: no cover - defensive: a gate must get an answer
            return _fail(INTERNAL_ERROR)


# --------------------------------------------------------------- convenience entry

_DEFAULT_REPLAY_CACHE = ReplayCache()
_VERIFIERS: OrderedDict[tuple, Verifier | ListError] = OrderedDict()
_VERIFIERS_MAX = 8
_VERIFIERS_LOCK = threading.Lock()


def _root_cache_key(root_key: Any) -> Any:
    if isinstance(root_key, str):
        return root_key.encode("ascii", "replace")
    if isinstance(root_key, bytearray | memoryview):
        return bytes(root_key)
    return root_key


def verify_token(
    token: str | bytes,
    trust_list: bytes,
    status_list: bytes,
    purpose: str,
    now: datetime | float | None = None,
    *,
    root_key: bytes | str | ed25519.Ed25519PublicKey,
    skew_s: float = DEFAULT_SKEW_S,
    replay_cache: ReplayCache | None = None,
) -> Verdict:
    """Verify one token given the lists exactly as served and the pinned root key.

    Verifiers are cached (a few, least recently used first out) keyed by the list
    bytes, root key, skew and replay cache, so repeated calls with the same lists cost
    one dictionary lookup more than ``Verifier.verify``. All calls share one module
    replay cache unless ``replay_cache`` is given, so a payment token is one-time across
    list refreshes. A list that fails its checks gives ``bad_trust_list`` /
    ``bad_status_list``; a root key that is not an Ed25519 PEM raises ``ValueError``.
    """
    cache = replay_cache if replay_cache is not None else _DEFAULT_REPLAY_CACHE
    if isinstance(trust_list, bytearray | memoryview):
        trust_list = bytes(trust_list)
    if isinstance(status_list, bytearray | memoryview):
        status_list = bytes(status_list)
    try:
        cache_key = (trust_list, status_list, _root_cache_key(root_key), float(skew_s), cache)
        hash(cache_key)
    except TypeError:
        cache_key = None
    verifier = None
    if cache_key is not None:
        with _VERIFIERS_LOCK:
            verifier = _VERIFIERS.get(cache_key)
            if verifier is not None:
                _VERIFIERS.move_to_end(cache_key)
    if verifier is None:
        load_root_key(root_key)  # configuration errors raise, they are not verdicts
        try:
            verifier = Verifier(
                trust_list, status_list, root_key, skew_s=skew_s, replay_cache=cache
            )
        except ListError as exc:
            verifier = exc
        if cache_key is not None:
            with _VERIFIERS_LOCK:
                _VERIFIERS[cache_key] = verifier
                while len(_VERIFIERS) > _VERIFIERS_MAX:
                    _VERIFIERS.popitem(last=False)
    if isinstance(verifier, ListError):
        if purpose not in PAYLOAD_FIELDS:
            raise ValueError(f"unknown purpose {purpose!r}")
        return _fail(verifier.reason)
    return verifier.verify(token, purpose, now)


def _verifier_cache_size() -> int:
    """For tests: how many Verifiers ``verify_token`` holds."""
    return len(_VERIFIERS)
