"""City-side keys: signing keys, the keyring, the trust/status list builders, the issuer.

* ``SigningKey``: one token-signing key (ES256 primary, EdDSA/Ed25519 secondary) with
  its kid (first 8 bytes of SHA-256 of the SubjectPublicKeyInfo DER), the purposes it
  may sign for and its *signing* window ``[not_before, not_after)`` in epoch seconds.
* ``Keyring``: the ROOT key (Ed25519; signs only the trust list and status list; its
  public PEM is what partners pin) plus several signing keys. Tokens signed by a key
  are accepted until ``not_after + max_token_ttl_s``: that is the key's ``exp`` in the
  trust list, so after ``rotate`` the old key stops signing (after ``overlap``) but its
  last tokens keep verifying until they expire.
* ``build_trust_list`` / ``build_status_list``: the bytes the endpoints
  ``GET /.well-known/citizen-card/trust-list`` and ``.../status-list`` serve (as
  ``application/cose; cose-type="cose-sign1"``); the layouts are described in
  ``citizen_card.verify`` and in the builders' docstrings.
* ``issue_token``: a dynamic QR token, ``CC1:`` + Base45(zlib(COSE_Sign1(claims))).

Claim keys (see ``citizen_card.verify`` for the full table): standard CWT iss 1, sub 2,
exp 4, nbf 5, iat 6, cti 7; private ``-70001`` purpose, ``-70002`` status-list index,
``-70003`` per-purpose payload map (``transit``: ``{"concession": ...}``, ``medical``:
``{"health_card": ...}``, ``id`` and ``pay``: ``{}``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import base45
import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .cose import ALG_IDS, kid_for_public_key, sign1
from .verify import (
    CLAIM_CTI,
    CLAIM_EXP,
    CLAIM_IAT,
    CLAIM_ISS,
    CLAIM_PAYLOAD,
    CLAIM_PURPOSE,
    CLAIM_STATUS_INDEX,
    CLAIM_SUB,
    CTI_LENGTH,
    LIST_FORMAT_VERSION,
    MAX_STATUS_LIST_SIZE,
    PAYLOAD_FIELDS,
    PREFIX,
    PURPOSES,
    STATUS_LIST_TYPE,
    TRUST_LIST_TYPE,
    epoch_seconds,
)

__all__ = [
    "Keyring",
    "SigningKey",
    "build_status_list",
    "build_trust_list",
    "issue_token",
]

KEYRING_FORMAT = "citizen-card-keyring"
DEFAULT_KEY_LIFETIME_S = 90 * 86400
DEFAULT_OVERLAP_S = 86400
DEFAULT_STATUS_TTL_S = 300
ALG_PREFERENCE = ("ES256", "EdDSA")  # current_signer prefers ES256 (primary)
# 18-digit resident ID (last may be X) or the old 15-digit form: never a token subject.
_ID_NUMBER = re.compile(r"\d{17}[\dXx]|\d{15}")


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _now(now: datetime | float | None) -> int:
    return int(epoch_seconds(now))


def _private_pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _new_private_key(alg: str) -> Any:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported algorithm {alg!r} (ES256 or EdDSA)")


@dataclass(frozen=True)
class SigningKey:
    """A token-signing key and its signing window ``[not_before, not_after)``."""

    alg: str
    private_key: Any
    kid: bytes
    purposes: tuple[str, ...]
    not_before: int
    not_after: int

    @classmethod
    def generate(
        cls, alg: str, purposes: Iterable[str], not_before: int, not_after: int
    ) -> SigningKey:
        key = _new_private_key(alg)
        return cls.from_private_key(alg, key, purposes, not_before, not_after)

    @classmethod
    def from_private_key(
        cls, alg: str, private_key: Any, purposes: Iterable[str], not_before: int, not_after: int
    ) -> SigningKey:
        purposes = tuple(purposes)
        if not purposes or not set(purposes) <= set(PURPOSES):
            raise ValueError(f"purposes must be a non-empty subset of {PURPOSES}")
        if alg not in ALG_IDS:
            raise ValueError(f"unsupported algorithm {alg!r}")
        if alg == "ES256" and not (
            isinstance(private_key, ec.EllipticCurvePrivateKey)
            and isinstance(private_key.curve, ec.SECP256R1)
        ):
            raise ValueError("ES256 needs a P-256 key")
        if alg == "EdDSA" and not isinstance(private_key, ed25519.Ed25519PrivateKey):
            raise ValueError("EdDSA needs an Ed25519 key")
        if int(not_after) <= int(not_before):
            raise ValueError("not_after must be after not_before")
        kid = kid_for_public_key(private_key.public_key())
        return cls(alg, private_key, kid, purposes, int(not_before), int(not_after))

    @property
    def public_key(self) -> Any:
        return self.private_key.public_key()

    def public_der(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def can_sign(self, purpose: str, now: float) -> bool:
        return purpose in self.purposes and self.not_before <= now < self.not_after

    def to_json(self) -> dict[str, Any]:
        return {
            "alg": self.alg,
            "kid": self.kid.hex(),
            "purposes": list(self.purposes),
            "not_before": self.not_before,
            "not_after": self.not_after,
            "private_pem": _private_pem(self.private_key),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SigningKey:
        private_key = serialization.load_pem_private_key(
            data["private_pem"].encode("ascii"), password=None
        )
        key = cls.from_private_key(
            data["alg"], private_key, data["purposes"], data["not_before"], data["not_after"]
        )
        if key.kid.hex() != data["kid"]:
            raise ValueError(f"keyring: kid {data['kid']} does not match its key")
        return key


class Keyring:
    """The root key plus the signing keys. Times are epoch seconds or aware datetimes."""

    def __init__(
        self,
        root_key: ed25519.Ed25519PrivateKey,
        signing_keys: Iterable[SigningKey] = (),
        *,
        issuer: str = "CITY",
        max_token_ttl_s: int = 60,
    ) -> None:
        if not isinstance(root_key, ed25519.Ed25519PrivateKey):
            raise ValueError("the root key must be Ed25519")
        if int(max_token_ttl_s) <= 0:
            raise ValueError("max_token_ttl_s must be positive")
        self.root_key = root_key
        self.root_kid = kid_for_public_key(root_key.public_key())
        self.signing_keys: list[SigningKey] = list(signing_keys)
        self.issuer = issuer
        self.max_token_ttl_s = int(max_token_ttl_s)

    # ------------------------------------------------------------------ creation

    @classmethod
    def generate(
        cls,
        *,
        algs: Iterable[str] = ("ES256",),
        purposes: Iterable[str] = PURPOSES,
        now: datetime | float | None = None,
        lifetime: float | timedelta = DEFAULT_KEY_LIFETIME_S,
        issuer: str = "CITY",
        max_token_ttl_s: int = 60,
    ) -> Keyring:
        """A new root key and one signing key per ``alg`` for ``purposes``, valid from now."""
        start = _now(now)
        ring = cls(
            ed25519.Ed25519PrivateKey.generate(), issuer=issuer, max_token_ttl_s=max_token_ttl_s
        )
        for alg in algs:
            ring.add_key(alg, purposes, not_before=start, not_after=start + _seconds(lifetime))
        return ring

    def add_key(
        self,
        alg: str,
        purposes: Iterable[str] = PURPOSES,
        *,
        not_before: datetime | float,
        not_after: datetime | float,
    ) -> SigningKey:
        key = SigningKey.generate(alg, purposes, _now(not_before), _now(not_after))
        self.signing_keys.append(key)
        return key

    def rotate(
        self,
        alg: str = "ES256",
        overlap: float | timedelta = DEFAULT_OVERLAP_S,
        *,
        now: datetime | float | None = None,
        purposes: Iterable[str] | None = None,
        lifetime: float | timedelta = DEFAULT_KEY_LIFETIME_S,
        activate_in: float | timedelta = 0,
    ) -> SigningKey:
        """Add a new ``alg`` key and end the old ones' signing ``overlap`` after it starts.

        The new key signs from ``now + activate_in`` (publish the trust list first if
        gates refresh it slowly; ``current_signer`` keeps choosing the old key until
        then). Old keys of the same ``alg`` sharing a purpose may sign until the new
        key's start plus ``overlap``, and stay in the trust list until that end plus
        ``max_token_ttl_s``, so every token they signed verifies until it expires.
        ``purposes`` defaults to those of the ``alg`` keys that can sign now.
        """
        t = _now(now)
        overlap_s = _seconds(overlap)
        if overlap_s < 0:
            raise ValueError("overlap must not be negative")
        start = t + int(_seconds(activate_in))
        if purposes is None:
            active = [
                k for k in self.signing_keys if k.alg == alg and k.not_before <= t < k.not_after
            ]
            wanted = {p for k in active for p in k.purposes} or set(PURPOSES)
            purposes = [p for p in PURPOSES if p in wanted]
        new = SigningKey.generate(alg, purposes, start, start + int(_seconds(lifetime)))
        cut = start + int(overlap_s)
        self.signing_keys = [
            replace(k, not_after=max(k.not_before + 1, min(k.not_after, cut)))
            if k.alg == alg and set(k.purposes) & set(new.purposes) and k.not_after > cut
            else k
            for k in self.signing_keys
        ]
        self.signing_keys.append(new)
        return new

    # ------------------------------------------------------------------- queries

    def current_signer(
        self, purpose: str, now: datetime | float | None = None, alg: str | None = None
    ) -> SigningKey:
        """The key to sign ``purpose`` tokens with now: ES256 first, then the newest."""
        t = epoch_seconds(now)
        candidates = [
            k for k in self.signing_keys if k.can_sign(purpose, t) and (alg is None or k.alg == alg)
        ]
        if not candidates:
            raise LookupError(f"no signing key for purpose {purpose!r} at {t}")
        return min(
            candidates,
            key=lambda k: (ALG_PREFERENCE.index(k.alg), -k.not_before, -k.not_after),
        )

    def trusted_keys(self, now: datetime | float | None = None) -> list[SigningKey]:
        """Keys the trust list carries now: any whose tokens may still be valid."""
        t = epoch_seconds(now)
        return [k for k in self.signing_keys if k.not_after + self.max_token_ttl_s > t]

    def root_public_pem(self) -> bytes:
        """The root public key as PEM (SubjectPublicKeyInfo): what partners pin."""
        return self.root_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    # ------------------------------------------------------------------- storage

    def to_json(self) -> dict[str, Any]:
        return {
            "format": KEYRING_FORMAT,
            "v": 1,
            "issuer": self.issuer,
            "max_token_ttl_s": self.max_token_ttl_s,
            "root": {"alg": "EdDSA", "private_pem": _private_pem(self.root_key)},
            "signing_keys": [k.to_json() for k in self.signing_keys],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Keyring:
        if data.get("format") != KEYRING_FORMAT or data.get("v") != 1:
            raise ValueError("not a citizen-card keyring (format/v)")
        root = serialization.load_pem_private_key(
            data["root"]["private_pem"].encode("ascii"), password=None
        )
        if not isinstance(root, ed25519.Ed25519PrivateKey):
            raise ValueError("keyring: the root key must be Ed25519")
        return cls(
            root,
            [SigningKey.from_json(k) for k in data["signing_keys"]],
            issuer=data["issuer"],
            max_token_ttl_s=data["max_token_ttl_s"],
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the keyring (private keys as PKCS8 PEM) atomically, mode 0600."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                os.fchmod(fh.fileno(), 0o600)
                json.dump(self.to_json(), fh, indent=2)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keyring:
        """Read a keyring written by ``save``; refuse one readable by group or others."""
        path = Path(path)
        mode = path.stat().st_mode
        if os.name == "posix" and mode & 0o077:
            raise PermissionError(f"{path} is accessible by group/others (mode {mode & 0o777:o})")
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


# ------------------------------------------------------------------- list builders


def _sign_root(keyring: Keyring, payload: dict[str, Any]) -> bytes:
    body = cbor2.dumps(payload, canonical=True)
    return sign1(body, keyring.root_key, alg="EdDSA", kid=keyring.root_kid)


def build_trust_list(keyring: Keyring, now: datetime | float | None = None) -> bytes:
    """The trust list: a COSE_Sign1 (EdDSA, root key) over this CBOR map::

        {"typ": "citizen-card-trust-list", "v": 1, "iss": <city code>, "iat": <int>,
         "max_ttl": <max token lifetime, s>,
         "keys": [{"kid": <8 bytes>, "alg": "ES256" | "EdDSA",
                   "pub": <SubjectPublicKeyInfo DER>, "purposes": [<purpose>...],
                   "nbf": <not before>, "exp": <not after>}, ...]}

    ``nbf`` is the key's signing start; ``exp`` is its signing end plus ``max_ttl``,
    the last moment a token it signed can be valid. Keys past ``exp`` are left out;
    keys that start signing later are already in (published ahead).
    """
    t = _now(now)
    keys = [
        {
            "kid": k.kid,
            "alg": k.alg,
            "pub": k.public_der(),
            "purposes": list(k.purposes),
            "nbf": k.not_before,
            "exp": k.not_after + keyring.max_token_ttl_s,
        }
        for k in keyring.trusted_keys(t)
    ]
    payload = {
        "typ": TRUST_LIST_TYPE,
        "v": LIST_FORMAT_VERSION,
        "iss": keyring.issuer,
        "iat": t,
        "max_ttl": keyring.max_token_ttl_s,
        "keys": keys,
    }
    return _sign_root(keyring, payload)


def build_status_list(
    keyring: Keyring,
    revoked_indices: Iterable[int],
    size: int,
    version: int,
    now: datetime | float | None = None,
    ttl_s: int = DEFAULT_STATUS_TTL_S,
) -> bytes:
    """The status list: a COSE_Sign1 (EdDSA, root key) over this CBOR map::

        {"typ": "citizen-card-status-list", "v": 1, "version": <int, grows>,
         "iat": <int>, "exp": <iat + ttl>, "ttl": <seconds>, "size": <indices>,
         "bits": 1, "lst": zlib(<bitstring>)}

    As in the IETF Token Status List: one bit per status-list index, index ``i`` is bit
    ``i % 8`` (least significant first) of byte ``i // 8``; 1 means revoked (card
    reported lost or cancelled). The bitstring is ``ceil(size / 8)`` bytes before
    compression; 1,000,000 cards with a few thousand revoked compress to a few KiB.
    """
    if not 0 <= size <= MAX_STATUS_LIST_SIZE:
        raise ValueError(f"size must be within 0..{MAX_STATUS_LIST_SIZE}")
    if version < 0 or ttl_s <= 0:
        raise ValueError("version must be >= 0 and ttl_s > 0")
    bits = bytearray((size + 7) // 8)
    for index in revoked_indices:
        if not 0 <= index < size:
            raise ValueError(f"status index {index} outside 0..{size - 1}")
        bits[index >> 3] |= 1 << (index & 7)
    t = _now(now)
    payload = {
        "typ": STATUS_LIST_TYPE,
        "v": LIST_FORMAT_VERSION,
        "version": int(version),
        "iat": t,
        "exp": t + int(ttl_s),
        "ttl": int(ttl_s),
        "size": int(size),
        "bits": 1,
        "lst": zlib.compress(bytes(bits), 9),
    }
    return _sign_root(keyring, payload)


# -------------------------------------------------------------------------- issuer


def issue_token(
    keyring: Keyring,
    *,
    sub: str,
    purpose: str,
    status_index: int,
    payload: dict[str, str],
    now: datetime | float | None,
    ttl_s: int = 60,
    iss: str = "CITY",
    alg: str | None = None,
    signer: SigningKey | None = None,
) -> str:
    """A dynamic QR token ``CC1:...`` signed by ``keyring.current_signer(purpose, now)``.

    ``payload`` must hold exactly the purpose's fields (minimal disclosure):
    ``transit`` ``{"concession": <class>}``, ``medical`` ``{"health_card": <id>}``,
    ``id``/``pay`` ``{}``. ``sub`` is the card's pseudonymous handle; something shaped
    like a resident ID number is refused. ``alg`` picks ES256 or EdDSA (default: the
    preferred signer). ``signer`` forces one key of the keyring; it must be inside its
    signing window for ``purpose``.
    """
    if purpose not in PAYLOAD_FIELDS:
        raise ValueError(f"unknown purpose {purpose!r}")
    if not isinstance(sub, str) or not sub or _ID_NUMBER.fullmatch(sub):
        raise ValueError("sub must be a pseudonymous card handle, never an ID number")
    if type(status_index) is not int or status_index < 0:
        raise ValueError("status_index must be a non-negative integer")
    fields = PAYLOAD_FIELDS[purpose]
    if set(payload) != set(fields) or not all(
        isinstance(payload[name], str) and payload[name] for name in fields
    ):
        raise ValueError(f"payload for {purpose!r} must be exactly {list(fields)} (text)")
    if not 0 < ttl_s <= keyring.max_token_ttl_s:
        raise ValueError(f"ttl_s must be within 1..{keyring.max_token_ttl_s}")
    if iss != keyring.issuer:
        raise ValueError(f"iss {iss!r} is not this keyring's issuer {keyring.issuer!r}")
    t = epoch_seconds(now)
    if signer is None:
        key = keyring.current_signer(purpose, t, alg)
    elif signer not in keyring.signing_keys or not signer.can_sign(purpose, t):
        raise ValueError("signer is not a key of this keyring able to sign this purpose now")
    else:
        key = signer
    iat = int(t)
    claims = {
        CLAIM_ISS: iss,
        CLAIM_SUB: sub,
        CLAIM_EXP: iat + int(ttl_s),
        CLAIM_IAT: iat,
        CLAIM_CTI: secrets.token_bytes(CTI_LENGTH),
        CLAIM_PURPOSE: purpose,
        CLAIM_STATUS_INDEX: status_index,
        CLAIM_PAYLOAD: dict(payload),
    }
    cose = sign1(cbor2.dumps(claims), key.private_key, alg=key.alg, kid=key.kid)
    return PREFIX + base45.b45encode(zlib.compress(cose, 9)).decode("ascii")
