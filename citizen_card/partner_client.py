"""Reference client for partners of the citizen-card API (/partner/v1).

    async with PartnerClient(
        "https://card.city.example", "hospital-01", "k2026",
        private_key=load_private_key(open("hospital-01.pem", "rb").read()),
        city_public_key_pem=open("city.pub.pem").read(),
    ) as client:
        status, body = await client.request("POST", "/partner/v1/cards/verify",
                                            json={...}, idempotency_key="visit-8812")

Each request is signed as `citizen_card.partner_auth` specifies, sent exactly as
signed (the URL is built once, percent-encoded, and passed on untouched; no
redirects are followed), and the answer is accepted only with a valid city
signature bound to this request's nonce, otherwise `ForgedResponse`.

From a shell (curl users), `python -m citizen_card.partner_client sign ...`
prints the Authorization header; `keygen` makes a key pair.
"""

from __future__ import annotations

import argparse
import json as jsonlib
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from yarl import URL

from citizen_card.partner_auth import (
    HMAC_KEY_ID,
    RESPONSE_SIGNATURE_HEADER,
    UNREAD_HEADER_CODES,
    ForgedResponse,
    load_private_key,
    load_public_key,
    new_nonce,
    parse_authorization,
    public_key_pem,
    sign_request,
    verify_response,
)

__all__ = ["ForgedResponse", "PartnerClient", "main", "sign_headers", "verify_answer"]

_PATH_SAFE = "/-._~!$&'()*+,;=:@%"
Query = Mapping[str, str | int] | Sequence[tuple[str, str | int]]


def _encode_query(query: Query | None) -> str:
    if not query:
        return ""
    pairs = query.items() if isinstance(query, Mapping) else query
    return "&".join(f"{quote(str(k), safe='')}={quote(str(v), safe='')}" for k, v in pairs)


def _raw_path_qs(url: URL) -> str:
    return url.raw_path_qs or "/"


def sign_headers(
    method: str,
    url: str,
    body: bytes = b"",
    *,
    partner_id: str,
    key_id: str,
    private_key: Ed25519PrivateKey | None = None,
    hmac_secret: bytes | None = None,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """`{"Authorization": ...}` for one request; `url` is taken as already encoded.

    Send the URL byte for byte as given (curl: `--path-as-is`, and `--data-binary`
    with exactly the signed body).
    """
    target = _raw_path_qs(URL(url, encoded=True))
    header = sign_request(
        method.upper(),
        target,
        body,
        partner_id=partner_id,
        key_id=key_id,
        private_key=private_key,
        hmac_secret=hmac_secret,
        timestamp=timestamp,
        nonce=nonce,
    )
    return {"Authorization": header}


def _unread_header_code(status: int, body: bytes) -> bool:
    """Whether `body` is a 401 refusing the Authorization header as unreadable."""
    if status != 401:
        return False
    try:
        kind = jsonlib.loads(body).get("type", "")
    except (ValueError, AttributeError):
        return False
    return kind in {f"/problems/partner-{code}" for code in UNREAD_HEADER_CODES}


def verify_answer(
    header: str | None,
    city_keys: Ed25519PublicKey | Mapping[str, Ed25519PublicKey],
    status: int,
    nonce: str,
    body: bytes,
) -> str:
    """The city's signature on an answer to the request with `nonce`; ForgedResponse if not.

    A 401 refusing the header as missing, of an unknown scheme or malformed is bound to
    the empty nonce (the city could not read ours): accepted with it, so the partner
    sees why it was refused instead of a false alarm about forgery. Nothing else is.
    """
    try:
        return verify_response(header, city_keys, status, nonce, body)
    except ForgedResponse:
        if not _unread_header_code(status, body):
            raise
        return verify_response(header, city_keys, status, "", body)


class PartnerClient:
    """Signs requests, verifies the city's response signatures."""

    def __init__(
        self,
        base_url: str,
        partner_id: str,
        key_id: str | None = None,
        private_key: Ed25519PrivateKey | None = None,
        hmac_secret: bytes | None = None,
        city_public_key_pem: str | bytes | Mapping[str, str | bytes] = "",
        session: aiohttp.ClientSession | None = None,
        *,
        clock: Any = time.time,
    ) -> None:
        if (private_key is None) == (hmac_secret is None):
            raise ValueError("give exactly one of private_key and hmac_secret")
        if not city_public_key_pem:
            raise ValueError("the city's public key is needed to verify responses")
        self.base_url = URL(base_url.rstrip("/"), encoded=True)
        self.partner_id = partner_id
        self.key_id = key_id if key_id is not None else HMAC_KEY_ID
        self.private_key = private_key
        self.hmac_secret = hmac_secret
        self.city_keys: Ed25519PublicKey | dict[str, Ed25519PublicKey]
        if isinstance(city_public_key_pem, Mapping):
            self.city_keys = {k: load_public_key(v) for k, v in city_public_key_pem.items()}
        else:
            self.city_keys = load_public_key(city_public_key_pem)
        self._session = session
        self._own_session = session is None
        self._clock = clock

    async def __aenter__(self) -> PartnerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, path: str, query: Query | None) -> URL:
        raw = quote(path if path.startswith("/") else "/" + path, safe=_PATH_SAFE)
        qs = _encode_query(query)
        base_path = self.base_url.raw_path.rstrip("/")
        target = f"{base_path}{raw}?{qs}" if qs else f"{base_path}{raw}"
        return URL(f"{self.base_url.origin()}{target}", encoded=True)

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        query: Query | None = None,
        idempotency_key: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        timestamp: int | None = None,
        nonce: str | None = None,
    ) -> tuple[int, Any]:
        """Send one signed request; returns (status, parsed JSON or raw bytes).

        `path` is the full path on the server (e.g. `/partner/v1/cards/verify`);
        `query` pairs are sent in the order given. `timestamp`/`nonce` are for
        tests; leave them out.
        """
        method = method.upper()
        url = self._url(path, query)
        body = (
            b""
            if json is None
            else jsonlib.dumps(json, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        )
        n = new_nonce() if nonce is None else nonce
        ts = int(self._clock()) if timestamp is None else timestamp
        auth = sign_request(
            method,
            _raw_path_qs(url),
            body,
            partner_id=self.partner_id,
            key_id=self.key_id,
            private_key=self.private_key,
            hmac_secret=self.hmac_secret,
            timestamp=ts,
            nonce=n,
        )
        out = {"Authorization": auth, "Accept": "application/json"}
        if json is not None:
            out["Content-Type"] = "application/json"
        if idempotency_key is not None:
            out["Idempotency-Key"] = idempotency_key
        out.update(headers or {})
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.request(
            method, url, data=body if body else None, headers=out, allow_redirects=False
        ) as resp:
            raw = await resp.read()
            verify_answer(
                resp.headers.get(RESPONSE_SIGNATURE_HEADER), self.city_keys, resp.status, n, raw
            )
            ctype = resp.content_type
            if raw and (ctype == "application/json" or ctype.endswith("+json")):
                return resp.status, jsonlib.loads(raw)
            return resp.status, raw


# ---------------------------------------------------------------- command line


def _cmd_sign(args: argparse.Namespace) -> int:
    if args.data is not None and args.data_file is not None:
        print("give --data or --data-file, not both", file=sys.stderr)
        return 2
    body = args.data.encode("utf-8") if args.data is not None else b""
    if args.data_file is not None:
        body = Path(args.data_file).read_bytes()
    private_key = hmac_secret = None
    if args.key_file and not args.key_id:
        print("--key-id is needed with --key-file", file=sys.stderr)
        return 2
    if args.key_file:
        private_key = load_private_key(Path(args.key_file).read_bytes())
    else:
        hmac_secret = Path(args.hmac_secret_file).read_bytes().strip()
    headers = sign_headers(
        args.method,
        args.url,
        body,
        partner_id=args.partner,
        key_id=args.key_id or HMAC_KEY_ID,
        private_key=private_key,
        hmac_secret=hmac_secret,
        timestamp=args.timestamp,
        nonce=args.nonce,
    )
    parse_authorization(headers["Authorization"])  # never hand out a header we would refuse
    print(f"Authorization: {headers['Authorization']}")
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    out = Path(args.out)
    if out.exists():
        print(f"{out} exists; not overwriting", file=sys.stderr)
        return 1
    out.touch(mode=0o600)
    out.write_bytes(pem)
    print(public_key_pem(key), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m citizen_card.partner_client",
        description="Sign requests for the citizen-card partner API (/partner/v1).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sign = sub.add_parser(
        "sign",
        help="print the Authorization header for one request",
        description="Print the Authorization header. Send the URL exactly as given "
        "(curl --path-as-is) and exactly the signed body (curl --data-binary).",
    )
    sign.add_argument("method", metavar="METHOD", help="GET, POST, ...")
    sign.add_argument("url", metavar="URL", help="full URL, already percent-encoded")
    sign.add_argument("--partner", required=True, help="your partner_id")
    sign.add_argument("--key-id", help="the id of your registered key (HMAC: hmac)")
    key = sign.add_mutually_exclusive_group(required=True)
    key.add_argument("--key-file", help="your Ed25519 private key, PEM (PKCS#8)")
    key.add_argument("--hmac-secret-file", help="file holding your HMAC secret")
    sign.add_argument("--data", help="the request body, as text (UTF-8)")
    sign.add_argument("--data-file", help="the request body, from a file")
    sign.add_argument("--timestamp", type=int, help="Unix seconds (default: now)")
    sign.add_argument("--nonce", help="16-64 of [A-Za-z0-9_-] (default: random)")
    sign.set_defaults(run=_cmd_sign)
    keygen = sub.add_parser(
        "keygen", help="write a new Ed25519 private key; print its public key (PEM)"
    )
    keygen.add_argument("--out", required=True, help="where to write the private key (PEM)")
    keygen.set_defaults(run=_cmd_keygen)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
