"""Minimal COSE_Sign1 (RFC 9052) for ES256 and EdDSA (Ed25519), over cbor2 + cryptography.

Partners vendor this file together with ``verify.py``; it depends on ``cbor2`` and
``cryptography`` only, and touches no database, file or network.

What it does:

* ``sign1(payload, private_key, alg=..., kid=...)`` writes a COSE_Sign1, tagged with
  CBOR tag 18 by default, protected header ``{1: alg, 4: kid}``, empty unprotected
  header, attached payload.
* ``decode_sign1(data)`` parses a COSE_Sign1, tagged (tag 18, optionally inside the
  CWT tag 61 of RFC 8392 section 6) or untagged, strictly: see below.
  ``verify_sign1(msg, public_key, alg)`` checks its signature over
  ``Sig_structure = ["Signature1", protected (bstr), external_aad (b""), payload]``.
* ES256 signatures are the raw 64-byte ``r || s`` form COSE uses (RFC 9053 §2.1);
  ``raw_to_der`` / ``der_to_raw`` convert to and from the DER form of ``cryptography``.
  EdDSA signatures are the 64 bytes of Ed25519.
* ``kid_for_public_key(pub)`` is the project's key id: the first 8 bytes of SHA-256
  over the SubjectPublicKeyInfo DER of the public key.

Strict parsing. The envelope and the header maps are attacker-controlled and are read
*before* any signature is checked, so they are not handed to a general CBOR decoder
(``cbor2`` would, for instance, compile a regular expression for tag 35 or build a
cyclic structure for tags 28/29). A small reader accepts only: an optional tag 18 at
the top (itself optionally inside tag 61, the CWT tag that standard CWT tooling may
put in front), then an array of exactly 4 items (bstr, map, bstr, bstr) and nothing after it;
header maps hold integer or text labels (no duplicates, no label in both headers) and
values made of integers, byte/text strings, booleans, null and arrays/maps of those,
nested at most 4 deep; definite lengths only; no tags, no floats. Anything else raises
``CoseFormatError`` with a message saying what was wrong. The payload itself is only
returned as bytes; decoding it is the caller's business, after ``verify_sign1``.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

__all__ = [
    "ALG_EDDSA",
    "ALG_ES256",
    "ALG_IDS",
    "ALG_NAMES",
    "COSE_SIGN1_TAG",
    "CWT_TAG",
    "HDR_ALG",
    "HDR_CONTENT_TYPE",
    "HDR_CRIT",
    "HDR_KID",
    "CoseError",
    "CoseFormatError",
    "CoseSignatureError",
    "Sign1",
    "decode_sign1",
    "der_to_raw",
    "kid_for_public_key",
    "raw_to_der",
    "sig_structure",
    "sign1",
    "verify_raw",
    "verify_sign1",
]

COSE_SIGN1_TAG = 18
CWT_TAG = 61  # RFC 8392 section 6: may prefix a tagged COSE message
HDR_ALG = 1
HDR_CRIT = 2
HDR_CONTENT_TYPE = 3
HDR_KID = 4

ALG_ES256 = -7  # ECDSA w/ SHA-256 on P-256
ALG_EDDSA = -8  # EdDSA; here always Ed25519
ALG_NAMES: dict[int, str] = {ALG_ES256: "ES256", ALG_EDDSA: "EdDSA"}
ALG_IDS: dict[str, int] = {name: ident for ident, name in ALG_NAMES.items()}

_MAX_DEPTH = 4
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_SIG_CONTEXT = "Signature1"


class CoseError(ValueError):
    """Base class of every error raised by this module."""


class CoseFormatError(CoseError):
    """The bytes are not a COSE_Sign1 of the accepted profile."""


class CoseSignatureError(CoseError):
    """The signature does not verify (or does not fit the algorithm or key)."""


class Sign1(NamedTuple):
    """A parsed COSE_Sign1. ``protected_bytes`` is the bstr exactly as received.

    (A named tuple rather than a frozen dataclass: several times cheaper to create.)
    """

    protected_bytes: bytes
    protected: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes
    signature: bytes
    tagged: bool

    @property
    def alg(self) -> Any:
        """The algorithm; only the protected header counts (RFC 9052 §3.1)."""
        return self.protected.get(HDR_ALG)

    @property
    def kid(self) -> Any:
        """The key id: protected header, else unprotected (a hint, not authenticated)."""
        kid = self.protected.get(HDR_KID)
        if kid is None:
            kid = self.unprotected.get(HDR_KID)
        return kid


# --------------------------------------------------------------------------- keys


def kid_for_public_key(public_key: Any) -> bytes:
    """First 8 bytes of SHA-256 over the SubjectPublicKeyInfo DER of ``public_key``."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()[:8]


def _alg_id(alg: int | str) -> int:
    if isinstance(alg, str):
        if alg not in ALG_IDS:
            raise CoseError(f"unsupported algorithm {alg!r}")
        return ALG_IDS[alg]
    if type(alg) is not int or alg not in ALG_NAMES:
        raise CoseError(f"unsupported algorithm {alg!r}")
    return alg


def raw_to_der(raw: bytes) -> bytes:
    """COSE ES256 signature (``r || s``, 32 bytes each) to DER, for ``cryptography``."""
    if len(raw) != 64:
        raise CoseSignatureError(f"ES256 signature must be 64 bytes, got {len(raw)}")
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def der_to_raw(der: bytes) -> bytes:
    """DER ECDSA P-256 signature to the COSE ``r || s`` form."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# ---------------------------------------------------------------------- signing


def _bstr_head(length: int) -> bytes:
    """The shortest CBOR head of a byte string of ``length`` bytes (major type 2)."""
    if length < 24:
        return bytes((0x40 | length,))
    if length < 0x100:
        return bytes((0x58, length))
    if length < 0x10000:
        return b"\x59" + length.to_bytes(2, "big")
    if length < 0x100000000:
        return b"\x5a" + length.to_bytes(4, "big")
    return b"\x5b" + length.to_bytes(8, "big")


_SIG1_PREFIX = b"\x84\x6aSignature1"  # array(4), tstr(10) "Signature1"


def sig_structure(protected_bytes: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """``["Signature1", protected, external_aad, payload]`` as CBOR: what is signed.

    Written directly (same bytes as ``cbor2.dumps`` of that list; the tests check it):
    it is on every verification, and building it through the encoder cost more than
    all the other CBOR work of a verification together.
    """
    return b"".join(
        (
            _SIG1_PREFIX,
            _bstr_head(len(protected_bytes)),
            protected_bytes,
            _bstr_head(len(external_aad)),
            external_aad,
            _bstr_head(len(payload)),
            payload,
        )
    )


def sign1(
    payload: bytes,
    private_key: Any,
    *,
    alg: int | str,
    kid: bytes | None,
    protected_extra: dict[int, Any] | None = None,
    unprotected: dict[int, Any] | None = None,
    external_aad: bytes = b"",
    tagged: bool = True,
) -> bytes:
    """Sign ``payload`` and return the encoded COSE_Sign1.

    ``private_key`` is an ``ec.EllipticCurvePrivateKey`` on P-256 for ES256 or an
    ``ed25519.Ed25519PrivateKey`` for EdDSA. The protected header carries ``alg`` and,
    if given, ``kid``; ``protected_extra`` adds other protected labels.
    """
    alg_id = _alg_id(alg)
    if not isinstance(payload, bytes):
        raise TypeError("payload must be bytes")
    header: dict[int, Any] = {HDR_ALG: alg_id}
    if kid is not None:
        header[HDR_KID] = bytes(kid)
    if protected_extra:
        header.update(protected_extra)
    protected_bytes = cbor2.dumps(header, canonical=True)
    tbs = sig_structure(protected_bytes, payload, external_aad)
    if alg_id == ALG_ES256:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            private_key.curve, ec.SECP256R1
        ):
            raise CoseError("ES256 needs a P-256 private key")
        signature = der_to_raw(private_key.sign(tbs, _ECDSA_SHA256))
    else:
        if not isinstance(private_key, ed25519.Ed25519PrivateKey):
            raise CoseError("EdDSA needs an Ed25519 private key")
        signature = private_key.sign(tbs)
    body = [protected_bytes, dict(unprotected or {}), payload, signature]
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, body) if tagged else body)


def verify_sign1(
    msg: Sign1, public_key: Any, alg: int | str | None = None, external_aad: bytes = b""
) -> None:
    """Check ``msg``'s signature with ``public_key``; raise ``CoseSignatureError`` if not.

    If ``alg`` is given, the protected ``alg`` must be that algorithm; the key type
    must fit the algorithm either way (an Ed25519 key never checks an ES256 claim).
    """
    header_alg = msg.alg
    if header_alg not in ALG_NAMES:
        raise CoseSignatureError(f"unsupported or missing alg {header_alg!r}")
    if alg is not None and _alg_id(alg) != header_alg:
        raise CoseSignatureError("alg in the protected header differs from the expected alg")
    tbs = sig_structure(msg.protected_bytes, msg.payload, external_aad)
    verify_raw(header_alg, public_key, msg.signature, tbs)


def verify_raw(alg_id: int, public_key: Any, signature: bytes, tbs: bytes) -> None:
    """Low-level check of ``signature`` over the bytes ``tbs``; raises ``CoseSignatureError``."""
    try:
        if alg_id == ALG_ES256:
            if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
                public_key.curve, ec.SECP256R1
            ):
                raise CoseSignatureError("ES256 needs a P-256 public key")
            public_key.verify(raw_to_der(signature), tbs, _ECDSA_SHA256)
        elif alg_id == ALG_EDDSA:
            if not isinstance(public_key, ed25519.Ed25519PublicKey):
                raise CoseSignatureError("EdDSA needs an Ed25519 public key")
            if len(signature) != 64:
                raise CoseSignatureError("Ed25519 signature must be 64 bytes")
            public_key.verify(signature, tbs)
        else:
            raise CoseSignatureError(f"unsupported alg {alg_id!r}")
    except InvalidSignature:
        raise CoseSignatureError("signature does not verify") from None


# ----------------------------------------------------------------- strict reader


def _head(data: bytes, pos: int) -> tuple[int, int, int]:
    """Read one CBOR initial byte and its argument: (major type, argument, new pos)."""
    if pos >= len(data):
        raise CoseFormatError("truncated CBOR")
    ib = data[pos]
    major = ib >> 5
    info = ib & 0x1F
    pos += 1
    if info < 24:
        return major, info, pos
    if info > 27:
        raise CoseFormatError("indefinite-length or reserved CBOR item")
    n = 1 << (info - 24)
    if pos + n > len(data):
        raise CoseFormatError("truncated CBOR")
    return major, int.from_bytes(data[pos : pos + n], "big"), pos + n


def _string(data: bytes, pos: int, length: int) -> tuple[bytes, int]:
    end = pos + length
    if end > len(data):
        raise CoseFormatError("truncated CBOR string")
    return data[pos:end], end


def _item(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    major, arg, pos = _head(data, pos)
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major == 2:
        return _string(data, pos, arg)
    if major == 3:
        raw, pos = _string(data, pos, arg)
        try:
            return raw.decode("utf-8"), pos
        except UnicodeDecodeError:
            raise CoseFormatError("text string is not UTF-8") from None
    if major in (4, 5):
        if depth >= _MAX_DEPTH:
            raise CoseFormatError("header nested too deep")
        if arg > len(data) - pos:  # every item takes at least one byte
            raise CoseFormatError("truncated CBOR container")
        if major == 4:
            items = []
            for _ in range(arg):
                value, pos = _item(data, pos, depth + 1)
                items.append(value)
            return items, pos
        return _map(data, pos, arg, depth + 1)
    if major == 6:
        raise CoseFormatError("CBOR tags are not accepted inside a COSE header")
    # major 7: simple values and floats
    if arg == 20:
        return False, pos
    if arg == 21:
        return True, pos
    if arg == 22:
        return None, pos
    raise CoseFormatError("floats and other simple values are not accepted in a COSE header")


def _map(data: bytes, pos: int, count: int, depth: int) -> tuple[dict[Any, Any], int]:
    result: dict[Any, Any] = {}
    for _ in range(count):
        key, pos = _item(data, pos, depth)
        if not isinstance(key, int | str) or isinstance(key, bool):
            raise CoseFormatError("header labels must be integers or text")
        if key in result:
            raise CoseFormatError(f"duplicate header label {key!r}")
        result[key], pos = _item(data, pos, depth)
    return result, pos


def _header_map(data: bytes, pos: int) -> tuple[dict[Any, Any], int]:
    major, arg, pos = _head(data, pos)
    if major != 5:
        raise CoseFormatError("header must be a CBOR map")
    if arg > len(data) - pos:
        raise CoseFormatError("truncated header map")
    return _map(data, pos, arg, 1)


def _bstr(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    major, arg, pos = _head(data, pos)
    if major != 2:
        raise CoseFormatError(f"{what} must be a byte string")
    return _string(data, pos, arg)


def _protected_header(protected_bytes: bytes) -> dict[Any, Any]:
    if not protected_bytes:
        return {}
    protected, end = _header_map(protected_bytes, 0)
    if end != len(protected_bytes):
        raise CoseFormatError("trailing bytes in protected header")
    if HDR_CRIT in protected:
        raise CoseFormatError("critical header parameters are not supported")
    return protected


def decode_sign1(data: bytes) -> Sign1:
    """Parse a COSE_Sign1 strictly; raise ``CoseFormatError``.

    Accepted envelopes: untagged, ``18(...)``, and ``61(18(...))``: RFC 8392 lets a
    CWT carry the CWT tag in front of the COSE tag, and a conforming token must not be
    refused for it. The CWT tag alone, around an untagged array, is not a COSE message.
    """
    if type(data) is not bytes:
        if not isinstance(data, bytearray | memoryview):
            raise CoseFormatError("COSE_Sign1 must be bytes")
        data = bytes(data)
    major, arg, pos = _head(data, 0)
    tagged = False
    if major == 6 and arg == CWT_TAG:
        major, arg, pos = _head(data, pos)
        if major != 6 or arg != COSE_SIGN1_TAG:
            raise CoseFormatError("the CWT tag 61 must wrap a tagged COSE_Sign1 (tag 18)")
    if major == 6:
        if arg != COSE_SIGN1_TAG:
            raise CoseFormatError(f"CBOR tag {arg} is not COSE_Sign1 (18)")
        tagged = True
        major, arg, pos = _head(data, pos)
    if major != 4 or arg != 4:
        raise CoseFormatError("COSE_Sign1 must be an array of 4 items")
    protected_bytes, pos = _bstr(data, pos, "protected header")
    if pos < len(data) and data[pos] == 0xA0:  # the usual empty unprotected header
        unprotected: dict[Any, Any] = {}
        pos += 1
    else:
        unprotected, pos = _header_map(data, pos)
    payload, pos = _bstr(data, pos, "payload (detached payloads are not accepted)")
    signature, pos = _bstr(data, pos, "signature")
    if pos != len(data):
        raise CoseFormatError("trailing bytes after COSE_Sign1")
    protected = _protected_header(protected_bytes)
    if unprotected:
        if protected.keys() & unprotected.keys():
            raise CoseFormatError("a label appears in both protected and unprotected headers")
        if HDR_ALG in unprotected or HDR_CRIT in unprotected:
            raise CoseFormatError("alg and crit must be in the protected header")
    return Sign1(protected_bytes, protected, unprotected, payload, signature, tagged)
