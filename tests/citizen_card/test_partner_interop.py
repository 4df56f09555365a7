"""An outside integrator's client and verifier, written from docs/partner-api.md alone.

Nothing here signs, verifies or decodes with citizen_card code: requests are signed
and sent byte for byte over a plain socket, the city's answers and lists are checked
with `cryptography`, `cbor2`, `base45`, `zlib` and the third-party `cwt` library, as a
hospital or a transit-gate vendor would. The service under test is the whole app
(`sqlite_api`); only setting it up (partners, residents, cards, one EdDSA token) goes
through the fixtures and the city's own key ring. Where these tests and the server
disagree, the documentation is wrong or the server is.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import base45
import cbor2
import cwt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cwt import COSE, COSEKey

from hotline.appkeys import CARD_DEPS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "partner-api.md"
WELL_KNOWN = "/.well-known/citizen-card"
COSE_SIGN1_TYPE = 'application/cose; cose-type="cose-sign1"'
UNREAD_HEADER_CODES = ("missing_signature", "bad_scheme", "malformed")
VERIFY = "/partner/v1/tokens/verify"

# ---------------------------------------------------------------- the wire


@dataclass(frozen=True)
class Answer:
    """One HTTP answer as received: status, headers in order, body bytes."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        found = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(found) <= 1, f"{name} repeated"
        return found[0] if found else None

    def json(self) -> Any:
        return json.loads(self.body)


async def send(
    port: int,
    method: str | bytes,
    target: str | bytes,
    body: bytes = b"",
    headers: list[tuple[str, str | bytes]] | None = None,
) -> Answer:
    """Send exactly these bytes (no client library normalises the target or headers)."""
    raw_method = method.encode() if isinstance(method, str) else method
    raw_target = target.encode("ascii") if isinstance(target, str) else target
    lines = [
        raw_method + b" " + raw_target + b" HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Connection: close",
    ]
    chunked = any(name.lower() == "transfer-encoding" for name, _ in headers or [])
    if (body or raw_method == b"POST") and not chunked:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    for name, value in headers or []:
        lines.append(
            name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
        )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return _parse_answer(data)


def _parse_answer(data: bytes) -> Answer:
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = tuple(
        (name.strip(), value.strip())
        for name, _, value in (line.partition(":") for line in header_lines)
    )
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), len(rest))
    return Answer(int(status_line.split(" ")[1]), headers, rest[:length])


# ---------------------------------------------------------------- signing (docs: Signing a request)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical_request(method: str, target: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    """Five lines, each ending in \\n: METHOD, path?query as sent, timestamp, nonce, sha256."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{method}\n{target}\n{timestamp}\n{nonce}\n{digest}\n".encode()


@dataclass(frozen=True)
class Partner:
    """Our credentials: an Ed25519 key under key_id, or the city's HMAC secret."""

    partner_id: str
    key_id: str
    key: ed25519.Ed25519PrivateKey | None = None
    secret: bytes | None = None

    def authorization(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        *,
        timestamp: int | None = None,
        nonce: str | None = None,
    ) -> tuple[str, str]:
        """(Authorization value, nonce) for one request."""
        ts = int(time.time()) if timestamp is None else timestamp
        nonce = nonce or b64url(secrets.token_bytes(24))
        message = canonical_request(method, target, ts, nonce, body)
        if self.key is not None:
            scheme, sig = "CITYCARD-ED25519", self.key.sign(message)
        else:
            assert self.secret is not None
            scheme, sig = "CITYCARD-HMAC-SHA256", hmac.digest(self.secret, message, "sha256")
        params = (
            f"partner_id={self.partner_id},key_id={self.key_id},nonce={nonce},"
            f"timestamp={ts},signature={b64url(sig)}"
        )
        return f"{scheme} {params}", nonce

    async def call(
        self, port: int, method: str, target: str, body: Any = None, **kw: Any
    ) -> tuple[Answer, str]:
        raw = b"" if body is None else json.dumps(body).encode()
        auth, nonce = self.authorization(method, target, raw, **kw)
        headers: list[tuple[str, str | bytes]] = [("Authorization", auth)]
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        return await send(port, method, target, raw, headers), nonce


# ---------------------------------------------------------------- the city's signature


def city_signed(answer: Answer, nonce: str, city_key: ed25519.Ed25519PublicKey) -> str:
    """The key id of a valid X-Citycard-Signature over the answer to `nonce`; raises."""
    header = answer.header("X-Citycard-Signature")
    assert header is not None, "answer not signed"
    params = dict(p.split("=", 1) for p in re.split(r"[ \t]*,[ \t]*", header))
    assert set(params) == {"key_id", "timestamp", "signature"}, header
    body_hash = hashlib.sha256(answer.body).hexdigest()
    message = f"{answer.status:03d}\n{nonce}\n{params['timestamp']}\n{body_hash}\n".encode()
    city_key.verify(unb64url(params["signature"]), message)
    return params["key_id"]


def city_signed_refusal(answer: Answer, nonce: str, city_key: ed25519.Ed25519PublicKey) -> str:
    """Per the docs: bound to our nonce, or -- only for the three unreadable-header
    401s -- to the empty nonce."""
    try:
        return city_signed(answer, nonce, city_key)
    except InvalidSignature:
        kind = answer.json()["type"]
        assert answer.status == 401, answer
        assert kind in {f"/problems/partner-{c}" for c in UNREAD_HEADER_CODES}, answer
        return city_signed(answer, "", city_key)


# ---------------------------------------------------------------- tokens and lists


def inflate(data: bytes, limit: int = 4096) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, limit)
    if d.unconsumed_tail or not d.eof or d.unused_data:
        raise ValueError("too large or not one zlib stream")
    return out


def token_cose(token: str) -> bytes:
    assert token.startswith("CC1:")
    return inflate(base45.b45decode(token[4:]))


def to_token(cose: bytes) -> str:
    return "CC1:" + base45.b45encode(zlib.compress(cose)).decode("ascii")


def sign1_parts(cose: bytes) -> list[Any]:
    """[protected bstr, unprotected map, payload, signature] of a COSE_Sign1: tag 18,
    tag 61 around tag 18, or untagged (the docs accept all three)."""
    item = cbor2.loads(cose)
    if isinstance(item, cbor2.CBORTag) and item.tag == 61:
        item = item.value
        assert isinstance(item, cbor2.CBORTag), "tag 61 must wrap tag 18"
    if isinstance(item, cbor2.CBORTag):
        assert item.tag == 18, item
        item = item.value
    assert isinstance(item, list) and len(item) == 4, item
    return item


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload])


def spki_kid(spki_der: bytes) -> bytes:
    return hashlib.sha256(spki_der).digest()[:8]


def verify_with(alg: str, public_key: Any, signature: bytes, tbs: bytes) -> bool:
    """ES256 signatures are raw r || s (64 bytes): DER only for the library call."""
    if len(signature) != 64:
        return False
    try:
        if alg == "ES256":
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            public_key.verify(der, tbs, ec.ECDSA(hashes.SHA256()))
        else:
            public_key.verify(signature, tbs)
    except InvalidSignature:
        return False
    return True


def root_signed_payload(data: bytes, root: ed25519.Ed25519PublicKey, typ: str) -> dict:
    """A list's payload, after checking it with our own code and with `cwt`'s COSE."""
    protected, _, payload, signature = sign1_parts(data)
    header = cbor2.loads(protected)
    root_der = root.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert header == {1: -8, 4: spki_kid(root_der)}
    assert verify_with("EdDSA", root, signature, sig_structure(protected, payload))
    pem = root.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert COSE.new().decode(data, COSEKey.from_pem(pem, alg="EdDSA", kid=header[4])) == payload
    body = cbor2.loads(payload)
    assert (body["typ"], body["v"]) == (typ, 1)
    return body


@dataclass(frozen=True)
class Lists:
    """What a gate holds: the trust list's keys and the status bits."""

    iss: str
    max_ttl: int
    keys: tuple[dict, ...]
    bits: bytes
    size: int
    exp: int

    def revoked(self, index: int) -> bool:
        return bool(self.bits[index // 8] >> (index % 8) & 1)


def read_lists(trust: bytes, status: bytes, root: ed25519.Ed25519PublicKey) -> Lists:
    t = root_signed_payload(trust, root, "citizen-card-trust-list")
    for key in t["keys"]:
        assert spki_kid(key["pub"]) == key["kid"] and len(key["kid"]) == 8
        key["public_key"] = serialization.load_der_public_key(key["pub"])
    s = root_signed_payload(status, root, "citizen-card-status-list")
    bits = inflate(s["lst"], (s["size"] + 7) // 8)
    assert s["bits"] == 1 and len(bits) == (s["size"] + 7) // 8
    return Lists(t["iss"], t["max_ttl"], tuple(t["keys"]), bits, s["size"], s["exp"])


def gate_verify(token: str, lists: Lists, purpose: str, now: float) -> str:
    """Our own offline verifier, in the documented order; returns the reason code."""
    if not token.startswith("CC1:"):
        return "bad_prefix"
    try:
        compressed = base45.b45decode(token[4:])
    except ValueError:
        return "bad_base45"
    try:
        cose = inflate(compressed)
        protected, _, payload, signature = sign1_parts(cose)
        header = cbor2.loads(protected)
        alg, kid = {-7: "ES256", -8: "EdDSA"}[header[1]], header[4]
    except Exception:
        return "bad_cose"
    keys = [k for k in lists.keys if k["kid"] == kid and k["alg"] == alg]
    tbs = sig_structure(protected, payload)
    if not keys:
        return "unknown_kid"
    if not any(verify_with(alg, k["public_key"], signature, tbs) for k in keys):
        return "bad_signature"
    claims = cbor2.loads(payload)  # only now: the payload is authentic
    if claims[1] != lists.iss or claims[4] - claims[6] > lists.max_ttl:
        return "bad_claims"
    if now > claims[4] + 30:
        return "expired"
    if claims[-70001] != purpose:
        return "wrong_purpose"
    if lists.revoked(claims[-70002]):
        return "revoked"
    return "ok"


# ---------------------------------------------------------------- setting up the city


@dataclass
class City:
    """The running service as an integrator sees it, plus the staff hooks of the tests."""

    api: Any
    port: int
    city_key: ed25519.Ed25519PublicKey
    root_key: ed25519.Ed25519PublicKey

    async def get(self, path: str) -> Answer:
        return await send(self.port, "GET", path)

    async def lists(self) -> tuple[bytes, bytes]:
        trust = await self.get(f"{WELL_KNOWN}/trust-list")
        status = await self.get(f"{WELL_KNOWN}/status-list")
        assert trust.header("Content-Type") == COSE_SIGN1_TYPE
        assert status.header("Content-Type") == COSE_SIGN1_TYPE
        return trust.body, status.body

    async def register(self, partner_id: str, *scopes: str, hmac_secret: bool = False) -> Partner:
        body: dict[str, Any] = {"partner_id": partner_id, "type": "transit", "scopes": scopes}
        key = None
        if hmac_secret:
            body["hmac"] = True
        else:
            key = ed25519.Ed25519PrivateKey.generate()
            pem = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            body["keys"] = {"k1": pem.decode("ascii")}
        r = await self.api.post("/api/v1/partners", body, as_="admin")
        assert r.status == 201, await r.text()
        if hmac_secret:
            return Partner(partner_id, "hmac", secret=(await r.json())["hmac_secret"].encode())
        return Partner(partner_id, "k1", key=key)

    async def card(self, serial: int = 1) -> str:
        first17 = f"11010519900307{serial:03d}"
        weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
        check = "10X98765432"[sum(int(d) * w for d, w in zip(first17, weights, strict=True)) % 11]
        body = {"name": "张三丰", "id_number": first17 + check, "verified_source": "counter"}
        r = await self.api.post("/api/v1/residents", body)
        assert r.status == 201, await r.text()
        card = {
            "concession": "senior",
            "health_card_no": "HC-1",
            "social_security_no": "SS-1",
            "pin": "246813",
        }
        r = await self.api.post(f"/api/v1/residents/{(await r.json())['id']}/cards", card)
        assert r.status == 201, await r.text()
        return (await r.json())["card_no"]

    async def token(self, card_no: str, purpose: str) -> str:
        r = await self.api.get(f"/api/v1/cards/{card_no}/token?purpose={purpose}")
        assert r.status == 200, await r.text()
        return (await r.json())["token"]


def _pem_key(data: bytes) -> Any:
    return serialization.load_pem_public_key(data)


@pytest.fixture
async def city(sqlite_api: Any) -> City:
    port = sqlite_api.client.server.port
    city_pem = await send(port, "GET", f"{WELL_KNOWN}/receipt-key.pem")
    root_pem = await send(port, "GET", f"{WELL_KNOWN}/root-key.pem")
    assert city_pem.status == root_pem.status == 200
    return City(sqlite_api, port, _pem_key(city_pem.body), _pem_key(root_pem.body))


# ---------------------------------------------------------------- the documented vectors


VECTOR_BODY = b'{"card_no":"3301000000000001"}'
VECTOR_TARGET = "/partner/v1/cards/verify?b=2&a=1"
VECTOR_NONCE = "n0nce-0123456789abcdef"


def as_bytes_literal(data: bytes) -> str:
    """How the docs print canonical strings: `b"...\\n..."`."""
    return 'b"' + data.decode("ascii").replace("\n", "\\n") + '"'


def test_the_documented_test_vectors_reproduce_from_the_docs_alone() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    seed = bytes.fromhex(re.search(r"partner Ed25519 private key seed \(hex\): `(\w+)`", docs)[1])
    secret = re.search(r"partner HMAC secret: `([^`]+)`", docs)[1].encode()
    city_seed = bytes.fromhex(re.search(r"city Ed25519 private key seed \(hex\): `(\w+)`", docs)[1])
    ed = Partner("hospital-01", "k2026", key=ed25519.Ed25519PrivateKey.from_private_bytes(seed))
    mac = Partner("hospital-01", "hmac", secret=secret)
    canonical = canonical_request("POST", VECTOR_TARGET, 1767225600, VECTOR_NONCE, VECTOR_BODY)
    assert as_bytes_literal(canonical) in docs
    for partner in (ed, mac):
        header, _ = partner.authorization(
            "POST", VECTOR_TARGET, VECTOR_BODY, timestamp=1767225600, nonce=VECTOR_NONCE
        )
        assert f"Authorization: {header}\n" in docs
    city = ed25519.Ed25519PrivateKey.from_private_bytes(city_seed)
    digest = hashlib.sha256(b'{"valid":true}').hexdigest()
    response = f"200\n{VECTOR_NONCE}\n1767225601\n{digest}\n"
    assert as_bytes_literal(response.encode()) in docs
    sig = b64url(city.sign(response.encode()))
    assert f"key_id=city-2026,timestamp=1767225601,signature={sig}\n" in docs


# ---------------------------------------------------------------- signed calls


async def test_signed_calls_and_the_city_signatures_interoperate(city: City) -> None:
    gate = await city.register("gate-1", "transit", "pay")
    metro = await city.register("metro", "transit", hmac_secret=True)
    card_no = await city.card()
    for partner in (gate, metro):
        body = {"token": await city.token(card_no, "transit"), "purpose": "transit"}
        answer, nonce = await partner.call(city.port, "POST", VERIFY, body)
        assert answer.status == 200, answer
        assert answer.header("Content-Type") == "application/json; charset=utf-8"
        assert answer.json() == {"valid": True, "reason": "ok", "concession": "senior"}
        assert city_signed(answer, nonce, city.city_key) == "city-service"
    # the target exactly as sent: query order kept, %2D left encoded, empty body hash
    target = "/partner/v1/reconciliation/2026%2D01-01?b=2&a=1"
    answer, nonce = await gate.call(city.port, "GET", target)
    assert answer.status == 200, answer
    assert answer.header("Content-Type") == "text/csv; charset=utf-8"
    city_signed(answer, nonce, city.city_key)
    key_id, _, sig = answer.header("X-Citycard-Reconciliation-Signature").rpartition(".")
    assert key_id == "city-service"
    city.city_key.verify(unb64url(sig), answer.body)


async def test_payment_receipts_verify_offline(city: City) -> None:
    shop = await city.register("shop", "pay")
    card_no = await city.card()
    deps = city.api.app[CARD_DEPS]
    await deps.ledger.top_up(await _wallet_of(city, card_no), 5000, "interop-topup")
    body = {"token": await city.token(card_no, "pay"), "amount": 1250, "description": "咖啡"}
    raw = json.dumps(body).encode()
    auth, nonce = shop.authorization("POST", "/partner/v1/payments", raw)
    headers: list[tuple[str, str | bytes]] = [("Authorization", auth), ("Idempotency-Key", "p-1")]
    answer = await send(city.port, "POST", "/partner/v1/payments", raw, headers)
    assert answer.status == 201, answer
    city_signed(answer, nonce, city.city_key)
    receipt = json.loads(answer.json()["receipt"])
    canonical = json.dumps(receipt["payload"], sort_keys=True, separators=(",", ":"))
    city.city_key.verify(unb64url(receipt["sig"]), canonical.encode("ascii"))
    assert receipt["payload"]["amount"] == 1250
    assert sum(leg["amount"] for leg in receipt["payload"]["accounts"]) == 0


async def _wallet_of(city: City, card_no: str) -> int:
    from citizen_card import service as svc  # set-up only: the resident's wallet

    deps = city.api.app[CARD_DEPS]
    card = await svc.get_card(deps, card_no)
    return (await svc.get_resident(deps, card.resident_id)).wallet_account_id


# ---------------------------------------------------------------- tokens and lists


async def test_tokens_and_lists_verify_with_standard_cose_tooling(city: City) -> None:
    gate = await city.register("gate-1", "transit", "id")
    card_no = await city.card()
    token = await city.token(card_no, "transit")
    lists = read_lists(*await city.lists(), city.root_key)
    assert {k["alg"] for k in lists.keys} == {"ES256", "EdDSA"}
    claims = _decode_with_cwt(token, lists)
    assert set(claims) == {1, 2, 4, 6, 7, -70001, -70002, -70003}
    assert claims[1] == lists.iss == "CITY" and claims[4] - claims[6] == 60
    assert len(claims[7]) == 16 and not re.fullmatch(r"\d{15,18}X?", claims[2])
    assert (claims[-70001], claims[-70003]) == ("transit", {"concession": "senior"})
    protected, unprotected, _, signature = sign1_parts(token_cose(token))
    assert token_cose(token)[0] == 0xD2 and unprotected == {}  # tag 18, nothing unprotected
    assert cbor2.loads(protected)[1] == -7 and len(signature) == 64  # ES256, raw r || s
    assert gate_verify(token, lists, "transit", time.time()) == "ok"
    eddsa = _eddsa_token_like(city, token)
    assert _decode_with_cwt(eddsa, lists)[2] == claims[2]
    assert gate_verify(eddsa, lists, "transit", time.time()) == "ok"
    assert (await online(city, gate, eddsa, "transit"))["valid"] is True
    # a loss report: the status bit (least significant first) and both verdicts
    r = await city.api.post(f"/api/v1/cards/{card_no}/report-lost", {"channel": "api"})
    assert r.status in (200, 201), await r.text()
    lists = read_lists(*await city.lists(), city.root_key)
    assert lists.revoked(claims[-70002])
    assert gate_verify(token, lists, "transit", time.time()) == "revoked"
    assert await online(city, gate, token, "transit") == {"valid": False, "reason": "revoked"}


async def online(city: City, gate: Partner, token: str, purpose: str) -> Any:
    """POST /tokens/verify; the answer only once the city's signature checked out."""
    answer, nonce = await gate.call(city.port, "POST", VERIFY, {"token": token, "purpose": purpose})
    city_signed(answer, nonce, city.city_key)
    assert answer.status == 200, answer
    return answer.json()


def _decode_with_cwt(token: str, lists: Lists) -> dict:
    """The `cwt` library checks the Sig_structure, the raw r || s, and exp/nbf."""
    cose = token_cose(token)
    kid = cbor2.loads(sign1_parts(cose)[0])[4]
    keys = [
        COSEKey.from_pem(
            k["public_key"].public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            alg=k["alg"],
            kid=k["kid"],
        )
        for k in lists.keys
        if k["kid"] == kid
    ]
    return cwt.decode(cose, keys)


def _eddsa_token_like(city: City, token: str) -> str:
    """Set-up: the city signs the same claims with its EdDSA key (it prefers ES256)."""
    from citizen_card.keys import issue_token

    claims = cbor2.loads(sign1_parts(token_cose(token))[2])
    deps = city.api.app[CARD_DEPS]
    return issue_token(
        deps.keyring,
        sub=claims[2],
        purpose=claims[-70001],
        status_index=claims[-70002],
        payload=claims[-70003],
        now=time.time(),
        iss=claims[1],
        alg="EdDSA",
    )


# ---------------------------------------------------------------- hostile tokens


def _resigned(cose: bytes, protected: dict, signature: bytes | None = None) -> bytes:
    _, unprotected, payload, sig = sign1_parts(cose)
    return cbor2.dumps(
        cbor2.CBORTag(18, [cbor2.dumps(protected), unprotected, payload, signature or sig])
    )


def _truncated_base45(token: str) -> str:
    """The token cut to a Base45 length of 1 modulo 3, never valid (0 or 2 left over
    are; a token's length varies with how well its random parts compress), and not
    ending in a space (Base45 has one; the API strips JSON strings' edges)."""
    body = token[4:]
    end = len(body) - 1 - (len(body) - 2) % 3
    while body[end - 1] == " ":
        end -= 3
    return token[:4] + body[:end]


def _hostile_tokens(good: str) -> dict[str, tuple[str, str]]:
    """name -> (token, the verdict's reason)."""
    cose = token_cose(good)
    protected, unprotected, payload, sig = sign1_parts(cose)
    kid = cbor2.loads(protected)[4]
    return {
        "cwt tag 61 around 18": (to_token(cbor2.dumps(cbor2.CBORTag(61, cbor2.loads(cose)))), "ok"),
        "untagged": (to_token(cbor2.dumps([protected, unprotected, payload, sig])), "ok"),
        "scanner's trailing newline": (good + "\r\n", "ok"),
        "no prefix": (good[4:], "bad_prefix"),
        "lower-case prefix": ("cc1:" + good[4:], "bad_prefix"),
        "truncated base45": (_truncated_base45(good), "bad_base45"),
        "base45 lower case": (good[:4] + good[4:].lower(), "bad_base45"),
        "non-ascii": ("CC1:中文", "bad_base45"),
        "truncated zlib": (
            "CC1:" + base45.b45encode(zlib.compress(cose)[:-2]).decode(),
            "bad_compression",
        ),
        "raw deflate": (
            "CC1:" + base45.b45encode(zlib.compress(cose)[2:-4]).decode(),
            "bad_compression",
        ),
        "zip bomb": (to_token(b"\0" * 1_000_000), "too_large"),
        "longer than any field limit": ("CC1:" + "00" * 3000, "too_large"),
        "COSE_Mac0 tag 17": (
            to_token(cbor2.dumps(cbor2.CBORTag(17, [protected, {}, payload, sig]))),
            "bad_cose",
        ),
        "tag 61 alone": (
            to_token(cbor2.dumps(cbor2.CBORTag(61, [protected, {}, payload, sig]))),
            "bad_cose",
        ),
        "alg none (missing)": (to_token(_resigned(cose, {4: kid})), "bad_cose"),
        "alg 0": (to_token(_resigned(cose, {1: 0, 4: kid})), "bad_cose"),
        "alg HS256": (to_token(_resigned(cose, {1: 5, 4: kid})), "bad_cose"),
        "alg in unprotected": (
            to_token(
                cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({4: kid}), {1: -7}, payload, sig]))
            ),
            "bad_cose",
        ),
        "crit": (to_token(_resigned(cose, {1: -7, 2: [99], 4: kid})), "bad_cose"),
        "trailing byte": (to_token(cose + b"\0"), "bad_cose"),
        "unknown kid": (to_token(_resigned(cose, {1: -7, 4: b"12345678"})), "unknown_kid"),
        "kid of ES256, alg EdDSA": (to_token(_resigned(cose, {1: -8, 4: kid})), "bad_signature"),
        "DER signature": (
            to_token(_resigned(cose, {1: -7, 4: kid}, b"\x30\x44" + sig)),
            "bad_signature",
        ),
        "payload changed": (
            to_token(
                cbor2.dumps(
                    cbor2.CBORTag(18, [protected, {}, payload[:-1] + bytes([payload[-1] ^ 1]), sig])
                )
            ),
            "bad_signature",
        ),
    }


async def test_hostile_tokens_get_stable_verdicts_never_errors(city: City) -> None:
    gate = await city.register("gate-1", "transit", "id")
    card_no = await city.card()
    good = await city.token(card_no, "transit")
    lists = read_lists(*await city.lists(), city.root_key)
    got = {}
    for name, (token, _) in _hostile_tokens(good).items():
        answer, nonce = await gate.call(
            city.port, "POST", VERIFY, {"token": token, "purpose": "transit"}
        )
        city_signed(answer, nonce, city.city_key)
        got[name] = answer.json()["reason"] if answer.status == 200 else answer.status
    assert got == {name: reason for name, (_, reason) in _hostile_tokens(good).items()}
    # our own gate agrees wherever it looks (it does not tell every reason apart)
    assert gate_verify(good, lists, "id", time.time()) == "wrong_purpose"
    for name in ("cwt tag 61 around 18", "untagged", "payload changed", "unknown kid"):
        assert (
            gate_verify(_hostile_tokens(good)[name][0], lists, "transit", time.time()) == got[name]
        )
    answer, _ = await gate.call(city.port, "POST", VERIFY, {"token": good, "purpose": "id"})
    assert answer.json() == {"valid": False, "reason": "wrong_purpose"}


# ---------------------------------------------------------------- hostile requests


STATUS_OF = {"body_too_large": 413, "length_required": 411}
Headers = list[tuple[str, str | bytes]]


@dataclass(frozen=True)
class Hostile:
    """One hostile request: what is sent, and the problem type it must get."""

    code: str
    headers: Headers
    data: bytes | None = None  # None: the well-formed body
    method: str = "POST"
    target: str = VERIFY


def _hostile_requests(gate: Partner, body: bytes, replayed: str) -> dict[str, Hostile]:
    now = int(time.time())
    recon = "/partner/v1/reconciliation/2026-01-01"

    def auth(data: bytes = body, **kw: Any) -> Headers:
        return [("Authorization", gate.authorization("POST", VERIFY, data, **kw)[0])]

    def get(signed: str) -> Headers:
        return [("Authorization", gate.authorization("GET", signed)[0])]

    value = auth()[0][1]
    assert isinstance(value, str)
    other = Partner("gate-1", "k9", key=ed25519.Ed25519PrivateKey.generate())
    stranger = Partner("nobody", "k1", key=ed25519.Ed25519PrivateKey.generate())
    huge = b" " * (1 << 20) + body
    return {
        "replayed nonce": Hostile("replayed_nonce", [("Authorization", replayed)]),
        "6 minutes old": Hostile("clock_skew", auth(timestamp=now - 360)),
        "from the future": Hostile("clock_skew", auth(timestamp=now + 360)),
        "milliseconds": Hostile("malformed", auth(timestamp=now * 1000)),
        "unknown key id": Hostile(
            "unknown_key", [("Authorization", other.authorization("POST", VERIFY, body)[0])]
        ),
        "unknown partner": Hostile(
            "unknown_partner", [("Authorization", stranger.authorization("POST", VERIFY, body)[0])]
        ),
        "body changed": Hostile("bad_signature", auth(), body.replace(b"transit", b"id")),
        "query sorted": Hostile(
            "bad_signature", get(recon + "?a=1&b=2"), b"", "GET", recon + "?b=2&a=1"
        ),
        "path re-encoded": Hostile(
            "bad_signature", get(recon), b"", "GET", recon.replace("-", "%2D", 1)
        ),
        "two headers": Hostile("malformed", auth() + auth()),
        "a parameter twice": Hostile(
            "malformed", [("Authorization", value + ",nonce=abcdefabcdefabcdef")]
        ),
        "quoted values": Hostile("malformed", [("Authorization", value.replace("=", '="', 1))]),
        "padded signature": Hostile("malformed", [("Authorization", value + "==")]),
        "latin-1 byte": Hostile("malformed", [("Authorization", value.encode() + b"\xff")]),
        "2 KiB header": Hostile("malformed", [("Authorization", value + "A" * 2048)]),
        "no Authorization": Hostile("missing_signature", []),
        "bearer": Hostile("bad_scheme", [("Authorization", "Bearer abc")]),
        "lower-case scheme": Hostile("bad_scheme", [("Authorization", value.lower())]),
        "over 1 MiB": Hostile("body_too_large", auth(huge), huge),
        "chunked": Hostile(
            "length_required", [*auth(), ("Transfer-Encoding", "chunked")], b"0\r\n\r\n"
        ),
    }


async def test_hostile_requests_get_stable_signed_refusals(city: City) -> None:
    gate = await city.register("gate-1", "transit")
    body = json.dumps({"token": "CC1:", "purpose": "transit"}).encode()
    header, nonce = gate.authorization("POST", VERIFY, body)
    first = await send(city.port, "POST", VERIFY, body, [("Authorization", header)])
    assert first.status == 200 and city_signed(first, nonce, city.city_key)
    for name, case in _hostile_requests(gate, body, header).items():
        data = body if case.data is None else case.data
        answer = await send(city.port, case.method, case.target, data, case.headers)
        status = STATUS_OF.get(case.code, 401)
        assert (name, answer.status) == (name, status), answer
        assert answer.header("Content-Type") == "application/problem+json; charset=utf-8"
        problem = answer.json()
        assert problem["type"] == f"/problems/partner-{case.code}", (name, problem)
        assert problem["status"] == status and problem["title"], problem
        if status == 401:
            assert answer.header("WWW-Authenticate") == (
                'CITYCARD-ED25519 realm="partner", CITYCARD-HMAC-SHA256 realm="partner"'
            )
        sent = case.headers[0][1] if case.headers else ""
        own = re.search(r"nonce=([A-Za-z0-9_-]{16,64})", sent if isinstance(sent, str) else "")
        city_signed_refusal(answer, own[1] if own else "", city.city_key)


async def test_requests_the_http_server_cannot_parse_get_an_unsigned_400(city: City) -> None:
    """As documented: nothing of such a request can be bound, and it is no 500."""
    gate = await city.register("gate-1", "transit")
    header, _ = gate.authorization("GET", "/partner/v1/reconciliation/2026-01-01")
    for method, target, value in [
        ("GET", "/partner/v1/reconciliation/2026-01-01", header.encode()[:30] + b"\0"),
        ("get", "/partner/v1/reconciliation/2026-01-01", header.encode()),
        ("GET", "/partner/v1/reconciliation/2026-01-01?x=中".encode(), header.encode()),
    ]:
        answer = await send(city.port, method, target, b"", [("Authorization", value)])
        assert answer.status == 400, answer
        assert answer.json()["type"] == "/problems/malformed-request"
        assert answer.header("X-Citycard-Signature") is None
