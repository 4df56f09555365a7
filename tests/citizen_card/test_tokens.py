"""Citizen card dynamic QR tokens: issuer, lists, offline verifier, cwt cross-check."""

from __future__ import annotations

import ast
import json
import os
import stat
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path

import base45
import cbor2
import cwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citizen_card import cose
from citizen_card import verify as V
from citizen_card.keys import (
    Keyring,
    SigningKey,
    build_status_list,
    build_trust_list,
    issue_token,
)
from citizen_card.verify import (
    ListError,
    ReplayCache,
    Verdict,
    Verifier,
    b45decode,
    verify_token,
)

T0 = 1_800_000_000  # a fixed clock for everything that does not involve cwt
ROOT = Path(__file__).resolve().parents[2]

TRANSIT = {"concession": "senior"}
MEDICAL = {"health_card": "HC-330100-0042"}


# ------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def ring() -> Keyring:
    return Keyring.generate(algs=("ES256", "EdDSA"), now=T0 - 3600)


@pytest.fixture(scope="module")
def lists(ring: Keyring) -> tuple[bytes, bytes]:
    trust = build_trust_list(ring, T0)
    status = build_status_list(ring, [7, 8, 1000], 4096, 3, T0, 600)
    return trust, status


@pytest.fixture
def verifier(ring: Keyring, lists: tuple[bytes, bytes]) -> Verifier:
    return Verifier(*lists, ring.root_public_pem())


def token(ring: Keyring, purpose: str = "transit", now: float = T0, **kw: object) -> str:
    payload = {"transit": TRANSIT, "medical": MEDICAL}.get(purpose, {})
    args: dict = {"sub": "card-4f9a", "status_index": 42, "payload": payload, "now": now}
    args.update(kw)
    return issue_token(ring, purpose=purpose, **args)


def unwrap(tok: str) -> bytes:
    """The COSE_Sign1 bytes inside a CC1: token."""
    return zlib.decompress(base45.b45decode(tok[4:]))


def wrap(cose_bytes: bytes) -> str:
    return "CC1:" + base45.b45encode(zlib.compress(cose_bytes)).decode()


def resign(ring: Keyring, claims: dict, key: SigningKey | None = None) -> str:
    """A token with arbitrary claims, properly signed by a keyring key."""
    key = key or ring.current_signer("transit", T0, "ES256")
    body = cose.sign1(cbor2.dumps(claims), key.private_key, alg=key.alg, kid=key.kid)
    return wrap(body)


def claims_of(tok: str) -> dict:
    return cbor2.loads(cose.decode_sign1(unwrap(tok)).payload)


# ------------------------------------------------------------------ happy paths


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_sign_and_verify_both_algorithms(ring, verifier, alg):
    tok = token(ring, alg=alg)
    assert tok.startswith("CC1:")
    verdict = verifier.verify(tok, "transit", T0 + 5)
    assert verdict.valid and verdict.reason == V.OK and bool(verdict)
    assert verdict.alg == alg
    assert verdict.kid == ring.current_signer("transit", T0, alg).kid
    c = verdict.claims
    assert c["iss"] == "CITY" and c["sub"] == "card-4f9a" and c["purpose"] == "transit"
    assert c["iat"] == T0 and c["exp"] == T0 + 60 and len(c["cti"]) == 16
    assert c["status_index"] == 42 and c["payload"] == TRANSIT


def test_medical_and_id_payloads(ring, verifier):
    med = verifier.verify(token(ring, "medical"), "medical", T0)
    assert med.valid and med.claims["payload"] == MEDICAL
    ident = verifier.verify(token(ring, "id"), "id", T0)
    assert ident.valid and ident.claims["payload"] == {}


def test_verdict_is_a_frozen_dataclass():
    verdict = Verdict(True, V.OK, {"sub": "x"}, b"k" * 8, "ES256")
    with pytest.raises(AttributeError):
        verdict.valid = False  # type: ignore[misc]
    fast = V._verdict(True, V.OK, {"sub": "x"}, b"k" * 8, "ES256")
    assert fast == verdict and repr(fast) == repr(verdict)


def test_verify_token_takes_the_served_bytes_and_pem(ring, lists):
    trust, status = lists
    tok = token(ring)
    pem = ring.root_public_pem()
    for root in (pem, pem.decode()):
        verdict = verify_token(tok, trust, status, "transit", T0, root_key=root)
        assert verdict.valid, verdict
    before = V._verifier_cache_size()
    for _ in range(3):
        assert verify_token(tok, trust, status, "transit", T0, root_key=pem).valid
    assert V._verifier_cache_size() == before  # same lists: cached Verifier reused


def test_now_accepts_datetime_and_epoch(ring, verifier):
    tok = token(ring)
    assert verifier.verify(tok, "transit", datetime.fromtimestamp(T0, UTC)).valid
    assert verifier.verify(tok, "transit", T0).valid
    with pytest.raises(ValueError):
        verifier.verify(tok, "transit", datetime(2027, 1, 15, 8, 0))  # naive
    with pytest.raises(ValueError):
        verifier.verify(tok, "boarding", T0)  # unknown purpose is a caller error


def test_transit_tokens_are_not_one_time(ring, verifier):
    tok = token(ring)
    assert verifier.verify(tok, "transit", T0).valid
    assert verifier.verify(tok, "transit", T0 + 1).valid


# ------------------------------------------------------------ rejection reasons


def test_tampered_byte_is_bad_signature(ring, verifier):
    raw = bytearray(unwrap(token(ring)))
    raw[-1] ^= 0x01  # last signature byte
    assert verifier.verify(wrap(bytes(raw)), "transit", T0).reason == V.BAD_SIGNATURE
    raw = bytearray(unwrap(token(ring)))
    at = raw.find(b"card-4f9a")
    raw[at] = ord("C")  # one claim byte, same length
    assert verifier.verify(wrap(bytes(raw)), "transit", T0).reason == V.BAD_SIGNATURE


def test_every_single_byte_change_is_refused(ring, verifier):
    raw = unwrap(token(ring))
    for i in range(len(raw)):
        for flip in (0x01, 0x80):
            changed = bytearray(raw)
            changed[i] ^= flip
            verdict = verifier.verify(wrap(bytes(changed)), "transit", T0)
            assert not verdict.valid, (i, flip)
            assert verdict.reason in V.REASONS and verdict.reason != V.INTERNAL_ERROR


def test_signature_is_checked_before_any_claim(ring, verifier):
    raw = bytearray(unwrap(token(ring)))
    at = raw.find(b"card-4f9a")
    raw[at] = ord("C")
    late = T0 + 3600  # the token is long expired too
    assert verifier.verify(wrap(bytes(raw)), "transit", late).reason == V.BAD_SIGNATURE
    assert verifier.verify(wrap(bytes(raw)), "medical", T0).reason == V.BAD_SIGNATURE
    # A claim set that would be malformed is never even read without a signature.
    stranger = Keyring.generate(now=T0 - 10)
    forged = resign(stranger, {1: 5})
    assert verifier.verify(forged, "transit", T0).reason == V.UNKNOWN_KID


def test_expired_and_skew(ring, verifier):
    tok = token(ring)
    assert verifier.verify(tok, "transit", T0 + 60 + 30).valid  # exp + skew
    assert verifier.verify(tok, "transit", T0 + 60 + 31).reason == V.EXPIRED


def test_not_yet_valid(ring, verifier):
    tok = token(ring, now=T0 + 100)
    assert verifier.verify(tok, "transit", T0 + 70).valid  # within 30 s skew
    assert verifier.verify(tok, "transit", T0 + 69).reason == V.NOT_YET_VALID


def test_not_before_claim_is_honoured(ring, verifier):
    claims = claims_of(token(ring))
    claims[V.CLAIM_NBF] = T0 + 45
    tok = resign(ring, claims)
    assert verifier.verify(tok, "transit", T0).reason == V.NOT_YET_VALID
    verdict = verifier.verify(tok, "transit", T0 + 20)
    assert verdict.valid and verdict.claims["nbf"] == T0 + 45


def test_wrong_purpose(ring, verifier):
    assert verifier.verify(token(ring), "medical", T0).reason == V.WRONG_PURPOSE
    assert verifier.verify(token(ring, "pay"), "transit", T0).reason == V.WRONG_PURPOSE


def test_unknown_kid(verifier):
    other = Keyring.generate(now=T0 - 10)
    assert verifier.verify(token(other), "transit", T0).reason == V.UNKNOWN_KID


def test_revoked(ring, verifier):
    verdict = verifier.verify(token(ring, status_index=8), "transit", T0)
    assert verdict.reason == V.REVOKED and verdict.claims == {}
    assert verifier.verify(token(ring, status_index=9), "transit", T0).valid


def test_status_index_beyond_list_is_unknown(ring, verifier):
    tok = token(ring, status_index=4096)
    assert verifier.verify(tok, "transit", T0).reason == V.STATUS_UNKNOWN


def test_stale_status_list(ring, verifier):
    tok = token(ring, now=T0 + 600)
    assert verifier.verify(tok, "transit", T0 + 600 + 30).valid  # list exp + skew
    tok = token(ring, now=T0 + 640)
    assert verifier.verify(tok, "transit", T0 + 640).reason == V.STALE_STATUS_LIST


def test_replayed_payment_token(ring, verifier):
    tok = token(ring, "pay")
    assert verifier.verify(tok, "pay", T0).valid
    assert verifier.verify(tok, "pay", T0 + 1).reason == V.REPLAYED
    assert verifier.verify(token(ring, "pay"), "pay", T0 + 2).valid  # a fresh one is fine


def test_refused_payment_token_is_not_burnt(ring, lists):
    """A pay token refused for a stale status list verifies after the list is refreshed."""
    trust, _ = lists
    cache = ReplayCache()
    stale = build_status_list(ring, [], 4096, 1, T0 - 1000, 60)
    fresh = build_status_list(ring, [], 4096, 2, T0, 600)
    tok = token(ring, "pay")
    pem = ring.root_public_pem()
    first = Verifier(trust, stale, pem, replay_cache=cache).verify(tok, "pay", T0)
    assert first.reason == V.STALE_STATUS_LIST
    refreshed = Verifier(trust, fresh, pem, replay_cache=cache)
    assert refreshed.verify(tok, "pay", T0).valid
    assert refreshed.verify(tok, "pay", T0).reason == V.REPLAYED


def test_replay_is_shared_across_verify_token_calls(ring, lists):
    trust, status = lists
    pem = ring.root_public_pem()
    tok = token(ring, "pay")
    assert verify_token(tok, trust, status, "pay", T0, root_key=pem).valid
    newer = build_status_list(ring, [], 4096, 4, T0, 600)  # a refreshed list: new Verifier
    assert verify_token(tok, trust, newer, "pay", T0, root_key=pem).reason == V.REPLAYED


def test_replay_cache_is_bounded_and_time_windowed(ring, lists):
    cache = ReplayCache(max_entries=1)
    v = Verifier(*lists, ring.root_public_pem(), replay_cache=cache)
    assert v.verify(token(ring, "pay"), "pay", T0).valid
    second = token(ring, "pay", now=T0 + 1)
    assert v.verify(second, "pay", T0 + 1).reason == V.REPLAY_CACHE_FULL  # fails closed
    # Once the first nonce's window (exp + skew) is over, there is room again.
    later = token(ring, "pay", now=T0 + 95)
    assert v.verify(later, "pay", T0 + 95).valid
    assert len(cache) == 1


def test_zip_bomb_is_too_large(verifier):
    bomb = "CC1:" + base45.b45encode(zlib.compress(b"\0" * 1_000_000, 9)).decode()
    assert len(bomb) < V.MAX_TOKEN_CHARS
    assert verifier.verify(bomb, "transit", T0).reason == V.TOO_LARGE
    just_over = zlib.compress(b"\xd2" + b"\0" * V.MAX_INFLATED)
    assert verifier.verify(wrap_raw(just_over), "transit", T0).reason == V.TOO_LARGE


def wrap_raw(compressed: bytes) -> str:
    return "CC1:" + base45.b45encode(compressed).decode()


def test_oversized_input_is_refused_before_decoding(verifier):
    assert verifier.verify("CC1:" + "0" * 3000, "transit", T0).reason == V.TOO_LARGE


def test_truncated_base45(ring, verifier):
    tok = token(ring)
    body = tok[4:]
    cut = 1 if len(body) % 3 != 1 else 2
    cut = next(k for k in range(1, 4) if (len(body) - k) % 3 == 1)
    assert verifier.verify(tok[:-cut], "transit", T0).reason == V.BAD_BASE45
    clean = next(k for k in range(3, 9) if (len(body) - k) % 3 == 0)
    assert verifier.verify(tok[:-clean], "transit", T0).reason == V.BAD_COMPRESSION
    assert verifier.verify(tok[:-1] + "a", "transit", T0).reason == V.BAD_BASE45  # lower case
    assert verifier.verify("CC1:GGW", "transit", T0).reason == V.BAD_BASE45  # > 0xFFFF


def test_wrong_prefix(ring, verifier):
    tok = token(ring)
    for bad in ("HC1:" + tok[4:], "cc1:" + tok[4:], tok[4:], "", "CC1"):
        assert verifier.verify(bad, "transit", T0).reason == V.BAD_PREFIX
    assert verifier.verify(None, "transit", T0).reason == V.BAD_PREFIX  # type: ignore[arg-type]
    assert verifier.verify(b"\xff\xfe", "transit", T0).reason == V.BAD_PREFIX
    assert verifier.verify(tok.encode(), "transit", T0).valid  # bytes from a scanner
    assert verifier.verify(tok + "\r\n", "transit", T0).valid


def test_bad_compression(verifier):
    assert verifier.verify(wrap_raw(b"not zlib at all"), "transit", T0).reason == (
        V.BAD_COMPRESSION
    )
    trailing = zlib.compress(b"x") + b"junk"
    assert verifier.verify(wrap_raw(trailing), "transit", T0).reason == V.BAD_COMPRESSION


def test_bad_cose(ring, verifier):
    good = unwrap(token(ring))
    sign1 = cose.decode_sign1(good)
    body = [sign1.protected_bytes, {}, sign1.payload, sign1.signature]
    cases = [
        cbor2.dumps({"not": "cose"}),
        cbor2.dumps(cbor2.CBORTag(17, body)),  # COSE_Mac0 tag
        cbor2.dumps(cbor2.CBORTag(61, body)),  # the CWT tag must wrap a tagged COSE_Sign1
        cbor2.dumps(cbor2.CBORTag(61, cbor2.CBORTag(17, body))),
        good + b"\x00",  # trailing byte
        cbor2.dumps(cbor2.CBORTag(18, body[:3])),
        cbor2.dumps(cbor2.CBORTag(18, [sign1.protected_bytes, {1: -7}, *body[2:]])),
        cbor2.dumps(cbor2.CBORTag(18, [sign1.protected_bytes, {35: 1.5}, *body[2:]])),  # float
        cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -7}), {}, *body[2:]])),  # no kid
        cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -7, 2: [1], 4: b"k"}), {}, *body[2:]])),
        cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -35, 4: sign1.kid}), {}, *body[2:]])),
        cbor2.dumps(
            cbor2.CBORTag(18, [sign1.protected_bytes, {4: cbor2.CBORTag(35, "a")}, *body[2:]])
        ),
    ]
    for case in cases:
        assert verifier.verify(wrap(case), "transit", T0).reason == V.BAD_COSE, case


def test_untagged_and_kid_in_unprotected_are_accepted(ring, verifier):
    key = ring.current_signer("transit", T0, "ES256")
    payload = cose.decode_sign1(unwrap(token(ring))).payload
    untagged = cose.sign1(payload, key.private_key, alg="ES256", kid=key.kid, tagged=False)
    assert verifier.verify(wrap(untagged), "transit", T0).valid
    hinted = cose.sign1(payload, key.private_key, alg="ES256", kid=None, unprotected={4: key.kid})
    assert verifier.verify(wrap(hinted), "transit", T0).valid


def test_large_signed_headers_and_payloads_take_the_general_path(ring, verifier):
    key = ring.current_signer("transit", T0, "ES256")
    claims = claims_of(token(ring))
    claims[V.CLAIM_PAYLOAD] = {"concession": "senior", "note": "x" * 400}
    body = cose.sign1(
        cbor2.dumps(claims),
        key.private_key,
        alg="ES256",
        kid=key.kid,
        protected_extra={-65537: os.urandom(300)},  # a signed, non-critical extra label
        unprotected={"hint": "ignored"},
    )
    verdict = verifier.verify(wrap(body), "transit", T0)
    assert verdict.valid and verdict.claims["payload"]["note"] == "x" * 400


def test_bad_claims(ring, verifier):
    base = claims_of(token(ring))

    def changed(**edits: object) -> dict:
        c = dict(base)
        for name, value in edits.items():
            label = getattr(V, f"CLAIM_{name.upper()}")
            if value is None:
                c.pop(label, None)
            else:
                c[label] = value
        return c

    bad = [
        changed(sub=None),
        changed(sub=""),
        changed(cti=b"short"),
        changed(iss="OTHER-CITY"),
        changed(exp=T0 + 3600),  # longer than the trust list's max_ttl
        changed(exp=T0 - 1),  # before iat
        changed(purpose="boarding"),
        changed(status_index=-1),
        changed(status_index="42"),
        changed(payload={}),  # transit without its concession class
        changed(payload={"concession": ""}),
        changed(payload={"concession": "senior", 7: "x"}),
        changed(iat=True),
        changed(nbf="soon"),
    ]
    for claims in bad:
        assert verifier.verify(resign(ring, claims), "transit", T0).reason == V.BAD_CLAIMS, claims
    key = ring.current_signer("transit", T0, "ES256")
    for payload in (b"\xa1\x01", cbor2.dumps([1, 2]), cbor2.dumps(base) + b"\x00"):
        body = cose.sign1(payload, key.private_key, alg="ES256", kid=key.kid)
        assert verifier.verify(wrap(body), "transit", T0).reason == V.BAD_CLAIMS
    extra = changed(payload={"concession": "senior", "zone": "A"})  # extras are tolerated
    assert verifier.verify(resign(ring, extra), "transit", T0).valid


def test_key_purpose_and_window(ring):
    narrow = Keyring(ring.root_key, issuer="CITY")
    transit_only = narrow.add_key("ES256", ["transit"], not_before=T0 - 100, not_after=T0 + 100)
    trust = build_trust_list(narrow, T0)
    status = build_status_list(narrow, [], 100, 1, T0, 600)
    v = Verifier(trust, status, narrow.root_public_pem())
    med = claims_of(token(ring, "medical"))
    med[V.CLAIM_STATUS_INDEX] = 1
    forged = resign(narrow, med, transit_only)
    assert v.verify(forged, "medical", T0).reason == V.KEY_PURPOSE_MISMATCH
    # Signed after the key's signing window: its exp passes the key's trust-list exp.
    late = claims_of(token(ring, now=T0 + 150))
    late[V.CLAIM_STATUS_INDEX] = 1
    assert v.verify(resign(narrow, late, transit_only), "transit", T0 + 150).reason == (
        V.KEY_NOT_VALID
    )
    ok = claims_of(token(ring))
    ok[V.CLAIM_STATUS_INDEX] = 1
    tok = resign(narrow, ok, transit_only)
    assert v.verify(tok, "transit", T0).valid
    # After the key's exp (+ skew) no token of it is accepted, whatever it claims.
    assert v.verify(tok, "transit", T0 + 100 + 60 + 31).reason == V.KEY_NOT_VALID


# ----------------------------------------------------------------- signed lists


def test_trust_list_signed_by_another_root_is_refused(ring, lists):
    _, status = lists
    impostor = Keyring(ed25519.Ed25519PrivateKey.generate(), ring.signing_keys)
    forged = build_trust_list(impostor, T0)
    pem = ring.root_public_pem()
    assert verify_token(token(ring), forged, status, "transit", T0, root_key=pem).reason == (
        V.BAD_TRUST_LIST
    )
    with pytest.raises(ListError) as err:
        Verifier(forged, status, pem)
    assert err.value.reason == V.BAD_TRUST_LIST


def test_status_list_signed_by_a_signing_key_is_refused(ring, lists):
    trust, status = lists
    payload = cose.decode_sign1(status).payload
    key = ring.current_signer("transit", T0, "EdDSA")
    forged = cose.sign1(payload, key.private_key, alg="EdDSA", kid=key.kid)
    pem = ring.root_public_pem()
    assert verify_token(token(ring), trust, forged, "transit", T0, root_key=pem).reason == (
        V.BAD_STATUS_LIST
    )


def test_lists_cannot_stand_in_for_each_other(ring, lists):
    trust, status = lists
    pem = ring.root_public_pem()
    tok = token(ring)
    assert verify_token(tok, status, status, "transit", T0, root_key=pem).reason == (
        V.BAD_TRUST_LIST
    )
    assert verify_token(tok, trust, trust, "transit", T0, root_key=pem).reason == (
        V.BAD_STATUS_LIST
    )
    assert verify_token(tok, b"garbage", status, "transit", T0, root_key=pem).reason == (
        V.BAD_TRUST_LIST
    )


def test_root_key_must_be_ed25519_pem(ring, lists):
    key = ring.current_signer("transit", T0, "ES256")
    es_pem = key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError):
        verify_token(token(ring), *lists, "transit", T0, root_key=es_pem)


def test_trust_list_layout(ring, lists):
    trust, _ = lists
    msg = cose.decode_sign1(trust)
    assert msg.alg == cose.ALG_EDDSA and msg.kid == ring.root_kid
    doc = cbor2.loads(msg.payload)
    assert doc["typ"] == "citizen-card-trust-list" and doc["v"] == 1 and doc["iss"] == "CITY"
    assert doc["max_ttl"] == 60
    for entry in doc["keys"]:
        pub = serialization.load_der_public_key(entry["pub"])
        assert entry["kid"] == cose.kid_for_public_key(pub)
        assert entry["alg"] in ("ES256", "EdDSA") and set(entry["purposes"]) <= set(V.PURPOSES)
        key = next(k for k in ring.signing_keys if k.kid == entry["kid"])
        assert entry["nbf"] == key.not_before and entry["exp"] == key.not_after + 60


def test_status_list_layout_is_a_zlib_bitstring(ring):
    revoked = [0, 9, 15, 16, 4095]
    doc = cbor2.loads(cose.decode_sign1(build_status_list(ring, revoked, 4096, 7, T0, 300)).payload)
    assert doc["typ"] == "citizen-card-status-list" and doc["version"] == 7 and doc["bits"] == 1
    assert doc["iat"] == T0 and doc["exp"] == T0 + 300 and doc["ttl"] == 300
    bits = zlib.decompress(doc["lst"])
    assert len(bits) == 512
    assert [i for i in range(4096) if bits[i // 8] >> (i % 8) & 1] == revoked
    parsed = V.parse_status_list(
        build_status_list(ring, revoked, 4096, 7, T0, 300), ring.root_public_pem()
    )
    assert [i for i in range(4096) if parsed.revoked(i)] == revoked
    with pytest.raises(ValueError):
        build_status_list(ring, [4096], 4096, 1, T0, 300)


# ------------------------------------------------------------------- rotation


def test_rotation_keeps_old_tokens_valid_until_their_key_expires():
    ring = Keyring.generate(algs=("ES256",), now=T0)
    old = ring.signing_keys[0]
    before = token(ring, now=T0 + 100)
    new = ring.rotate("ES256", overlap=300, now=T0 + 200)
    assert new.kid != old.kid and new.alg == "ES256"
    old = next(k for k in ring.signing_keys if k.kid == old.kid)
    assert old.not_after == T0 + 500  # signing window cut to the overlap
    assert ring.current_signer("transit", T0 + 250).kid == new.kid
    trust = build_trust_list(ring, T0 + 200)
    status = build_status_list(ring, [], 100, 1, T0 + 200, 3600)
    v = Verifier(trust, status, ring.root_public_pem())
    assert {k.kid for k in v.trust_list.keys} == {old.kid, new.kid}
    assert v.verify(before, "transit", T0 + 150).valid
    assert v.verify(token(ring, now=T0 + 250), "transit", T0 + 250).kid == new.kid
    # The old key may still sign until the end of the overlap...
    last = token(ring, now=T0 + 499, signer=old)
    with pytest.raises(ValueError):
        token(ring, now=T0 + 500, signer=old)
    # ...and its last token verifies until that token expires (exp + skew).
    assert v.verify(last, "transit", T0 + 499 + 60 + 30).valid
    assert v.verify(last, "transit", T0 + 499 + 60 + 31).reason == V.EXPIRED
    # Past the key's own exp (+ skew) nothing it signed is accepted.
    assert v.verify(last, "transit", T0 + 560 + 31).reason == V.KEY_NOT_VALID
    # A trust list published after that no longer carries the old key at all.
    later = build_trust_list(ring, T0 + 561)
    assert [e.kid for e in V.parse_trust_list(later, ring.root_public_pem()).keys] == [new.kid]


def test_rotation_can_publish_the_new_key_ahead():
    ring = Keyring.generate(algs=("ES256",), now=T0)
    old = ring.signing_keys[0]
    new = ring.rotate("ES256", overlap=60, now=T0 + 10, activate_in=3600)
    assert ring.current_signer("transit", T0 + 20).kid == old.kid  # not active yet
    published = V.parse_trust_list(build_trust_list(ring, T0 + 20), ring.root_public_pem())
    assert new.kid in {k.kid for k in published.keys}  # but already trusted
    assert ring.current_signer("transit", T0 + 3610).kid == new.kid
    with pytest.raises(LookupError):
        ring.current_signer("transit", T0 + 10 + 3600 + 90 * 86400)


# ------------------------------------------------------------- cwt cross-check


def _pem(key: SigningKey, private: bool) -> bytes:
    if private:
        return key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_cwt_reads_our_tokens(alg):
    now = time.time()  # cwt checks exp against the real clock
    ring = Keyring.generate(algs=(alg,), now=now - 10)
    tok = token(ring, now=now, alg=alg)
    key = ring.signing_keys[0]
    decoded = cwt.decode(unwrap(tok), cwt.COSEKey.from_pem(_pem(key, False), alg=alg, kid=key.kid))
    assert decoded == claims_of(tok)
    assert decoded[V.CLAIM_PURPOSE] == "transit" and decoded[V.CLAIM_PAYLOAD] == TRANSIT
    wrong = Keyring.generate(algs=(alg,), now=now - 10).signing_keys[0]
    with pytest.raises(cwt.VerifyError):
        cwt.decode(unwrap(tok), cwt.COSEKey.from_pem(_pem(wrong, False), alg=alg, kid=key.kid))


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_our_verifier_reads_cwt_tokens(alg):
    now = int(time.time())
    ring = Keyring.generate(algs=(alg,), now=now - 10)
    key = ring.signing_keys[0]
    v = Verifier(
        build_trust_list(ring, now),
        build_status_list(ring, [], 100, 1, now, 600),
        ring.root_public_pem(),
    )
    claims = {
        1: "CITY",
        2: "card-cwt",
        4: now + 60,
        6: now,
        7: os.urandom(16),
        V.CLAIM_PURPOSE: "transit",
        V.CLAIM_STATUS_INDEX: 3,
        V.CLAIM_PAYLOAD: {"concession": "student"},
    }
    private = cwt.COSEKey.from_pem(_pem(key, True), alg=alg, kid=key.kid)
    # High-level CWT API: cwt adds nbf and puts the kid in the unprotected header.
    verdict = v.verify(wrap(cwt.encode(dict(claims), private)), "transit", now)
    assert verdict.valid, verdict
    assert verdict.claims["sub"] == "card-cwt" and verdict.claims["nbf"] == now
    # `tagged=True` puts the CWT tag 61 in front of tag 18 (RFC 8392 section 6): was bad_cose.
    tagged = cwt.encode(dict(claims), private, tagged=True)
    assert tagged[:2] == b"\xd8\x3d"
    assert v.verify(wrap(tagged), "transit", now).valid
    # COSE-level API with exactly our profile: alg and kid protected.
    sign1 = cwt.COSE.new(alg_auto_inclusion=False, kid_auto_inclusion=False).encode_and_sign(
        cbor2.dumps(claims),
        private,
        protected={1: cose.ALG_IDS[alg], 4: key.kid},
        unprotected={},
    )
    verdict = v.verify(wrap(sign1), "transit", now)
    assert verdict.valid and verdict.claims["payload"] == {"concession": "student"}
    assert cose.decode_sign1(sign1).tagged


# -------------------------------------------------------------- CBOR / COSE bits


@given(st.binary(max_size=300))
def test_b45decode_matches_the_base45_package(data):
    assert b45decode(base45.b45encode(data).decode()) == data


@given(st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:a~é", max_size=60))
def test_b45decode_refuses_what_the_base45_package_refuses(text):
    try:
        expected = base45.b45decode(text)
    except ValueError:
        expected = None
    try:
        ours = b45decode(text)
    except ValueError:
        ours = None
    assert ours == expected


@pytest.mark.parametrize("size", [0, 23, 24, 255, 256, 65535, 65536])
def test_sig_structure_is_cbor2s_encoding(size):
    payload = os.urandom(size)
    protected = cbor2.dumps({1: -7, 4: b"12345678"})
    assert cose.sig_structure(protected, payload) == cbor2.dumps(
        ["Signature1", protected, b"", payload]
    )
    assert cose.sig_structure(b"", payload, b"aad") == cbor2.dumps(
        ["Signature1", b"", b"aad", payload]
    )


def test_cose_sign1_roundtrip_and_strictness():
    key = ed25519.Ed25519PrivateKey.generate()
    kid = cose.kid_for_public_key(key.public_key())
    for tagged in (True, False):
        msg = cose.decode_sign1(cose.sign1(b"hello", key, alg="EdDSA", kid=kid, tagged=tagged))
        assert msg.tagged is tagged and msg.kid == kid and msg.payload == b"hello"
        cose.verify_sign1(msg, key.public_key(), "EdDSA")
        with pytest.raises(cose.CoseSignatureError):
            cose.verify_sign1(msg, key.public_key(), "ES256")
        with pytest.raises(cose.CoseSignatureError):
            cose.verify_sign1(msg, ed25519.Ed25519PrivateKey.generate().public_key())
    for bad in (
        b"",
        b"\xd2",
        b"\xd2\x84\x40\xa0\x40",
        b"\xd2\x9f\xff",
        b"\xd3\x84\x40\xa0\x40\x40",
    ):
        with pytest.raises(cose.CoseFormatError):
            cose.decode_sign1(bad)
    nested = cbor2.dumps(cbor2.CBORTag(18, [b"", {5: [[[[[1]]]]]}, b"", b""]))
    with pytest.raises(cose.CoseFormatError, match="deep"):
        cose.decode_sign1(nested)
    dup = b"\xd2\x84\x40\xa2\x04\x41\x01\x04\x41\x02\x40\x40"
    with pytest.raises(cose.CoseFormatError, match="duplicate"):
        cose.decode_sign1(dup)


def test_es256_signature_conversion_roundtrip():
    for _ in range(200):
        raw = os.urandom(64)
        assert cose.der_to_raw(cose.raw_to_der(raw)) == raw
        assert V._raw_to_der(raw) == cose.raw_to_der(raw)
        zeroed = b"\0\0" + raw[2:32] + b"\0" + raw[33:]
        assert V._raw_to_der(zeroed) == cose.raw_to_der(zeroed)


# ------------------------------------------------------------------- never raise

_B45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=400), st.text(alphabet=_B45, max_size=400).map("CC1:".__add__)))
def test_garbage_strings_always_get_a_verdict(verifier, text):
    verdict = verifier.verify(text, "transit", T0)
    assert isinstance(verdict, Verdict) and not verdict.valid
    assert verdict.reason in V.REASONS and verdict.reason != V.INTERNAL_ERROR


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600))
def test_garbage_inside_valid_wrapping_always_gets_a_verdict(verifier, blob):
    for data in (blob, b"\xd2\x84" + blob, b"\x84" + blob):
        verdict = verifier.verify(wrap(data), "pay", T0)
        assert not verdict.valid
        assert verdict.reason in V.REASONS and verdict.reason != V.INTERNAL_ERROR


_CBOR_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.binary(max_size=20),
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_CLAIM_LABELS = st.sampled_from(
    [1, 2, 4, 5, 6, 7, V.CLAIM_PURPOSE, V.CLAIM_STATUS_INDEX, V.CLAIM_PAYLOAD, 99]
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(_CLAIM_LABELS, _CBOR_VALUES, max_size=9), st.sampled_from(V.PURPOSES))
def test_signed_but_odd_claims_always_get_a_verdict(ring, verifier, claims, purpose):
    """Even a properly signed token with arbitrary claims never raises nor crashes."""
    base = claims_of(token(ring, purpose))
    base.update(claims)
    verdict = verifier.verify(resign(ring, base), purpose, T0)
    assert verdict.reason in V.REASONS and verdict.reason != V.INTERNAL_ERROR
    assert verdict.valid == (verdict.reason == V.OK)


# --------------------------------------------------------------------- issuing


def test_issue_token_refuses_non_minimal_or_identifying_input(ring):
    with pytest.raises(ValueError):
        token(ring, sub="330106199001011234")  # a resident ID number is never a subject
    with pytest.raises(ValueError):
        token(ring, sub="33010619900101123X")
    with pytest.raises(ValueError):
        issue_token(ring, sub="c", purpose="transit", status_index=1, now=T0,
                    payload={"concession": "adult", "name": "Wang"})  # fmt: skip
    with pytest.raises(ValueError):
        token(ring, ttl_s=61)
    with pytest.raises(ValueError):
        token(ring, iss="OTHER")
    with pytest.raises(ValueError):
        token(ring, status_index=-1)


def test_keyring_save_load_is_private_and_roundtrips(ring, lists, tmp_path):
    path = tmp_path / "keys" / "card-keyring.json"
    path.parent.mkdir()
    ring.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring.save(path)  # overwrite keeps it private
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    doc = json.loads(path.read_text())
    assert all("BEGIN PRIVATE KEY" in k["private_pem"] for k in doc["signing_keys"])
    loaded = Keyring.load(path)
    assert loaded.root_public_pem() == ring.root_public_pem()
    assert [k.kid for k in loaded.signing_keys] == [k.kid for k in ring.signing_keys]
    v = Verifier(*lists, ring.root_public_pem())
    assert v.verify(token(loaded), "transit", T0).valid
    path.chmod(0o644)
    with pytest.raises(PermissionError):
        Keyring.load(path)


# ----------------------------------------------------------------- boundaries


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def test_token_modules_stay_in_their_domain():
    for name in ("cose.py", "keys.py", "verify.py"):
        for imported in _imports(ROOT / "citizen_card" / name):
            top = imported.lstrip(".").split(".")[0]
            assert top not in {"ticketing", "hotline", "channels", "ivr"}, (name, imported)


def test_verify_is_vendorable():
    """verify.py needs only cose.py from this project, and no database or network."""
    allowed_third_party = {"cbor2", "cryptography"}
    forbidden = {"socket", "sqlite3", "sqlalchemy", "sqlmodel", "asyncpg", "aiohttp", "urllib",
                 "http", "requests", "ssl", "asyncio", "subprocess"}  # fmt: skip
    for imported in _imports(ROOT / "citizen_card" / "verify.py"):
        if imported.startswith("."):
            assert imported == ".cose", imported
            continue
        top = imported.split(".")[0]
        assert top not in forbidden, imported
        assert top == "__future__" or top in allowed_third_party or top in _stdlib(), imported
    for imported in _imports(ROOT / "citizen_card" / "cose.py"):
        top = imported.split(".")[0]
        assert top == "__future__" or top in {"cbor2", "cryptography"} or top in _stdlib()


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(sys.stdlib_module_names)
