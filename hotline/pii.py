"""Personal data at rest: AES-GCM encryption plus a keyed blind index.

Tokens are `v1.<key id>.<base64 nonce+ciphertext>` so keys can rotate: new writes
use the current key, reads find the key by id. The blind index (HMAC-SHA256 with a
key derived separately) lets us find "all tickets from this phone" without
storing the phone in the clear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)


class PiiKeyError(ValueError):
    pass


def _kid(key: bytes) -> str:
    return hashlib.sha256(b"kid" + key).hexdigest()[:8]


class AesGcmCipher:
    def __init__(self, keys: list[bytes]) -> None:
        """`keys[0]` encrypts; all of them decrypt (old keys stay until re-encrypted)."""
        if not keys:
            raise PiiKeyError("at least one key is needed")
        for k in keys:
            if len(k) != 32:
                raise PiiKeyError("PII keys must be 32 bytes (base64 of 32 random bytes)")
        self._current = _kid(keys[0])
        self._aead = {_kid(k): AESGCM(k) for k in keys}
        # every ticket encrypts a phone: look the current key up once
        self._current_aead = self._aead[self._current]
        self._current_aad = self._current.encode()
        self._prefix = f"v1.{self._current}."
        self._index_key = hmac.new(keys[0], b"blind-index-v1", hashlib.sha256).digest()

    def encrypt(self, plaintext: str) -> str:
        nonce = os.urandom(12)
        ct = self._current_aead.encrypt(nonce, plaintext.encode(), self._current_aad)
        return self._prefix + base64.urlsafe_b64encode(nonce + ct).decode()

    def decrypt(self, token: str) -> str:
        try:
            version, kid, blob = token.split(".", 2)
            raw = base64.urlsafe_b64decode(blob)
            aead = self._aead[kid]
        except (ValueError, KeyError) as exc:
            raise PiiKeyError("unreadable PII token or unknown key id") from exc
        if version != "v1":
            raise PiiKeyError(f"unknown PII token version {version}")
        return aead.decrypt(raw[:12], raw[12:], kid.encode()).decode()

    def blind_index(self, value: str) -> str:
        # one-shot HMAC (C, no Python HMAC object): same digest, a fraction of the cost
        return hmac.digest(self._index_key, value.encode(), "sha256").hex()


def load_keys(setting: str | None, key_file: Path) -> list[bytes]:
    """Keys from the setting (comma-separated base64, newest first) or a local key file.

    The embedded set-up must work with no configuration, so a missing key file is
    created (0600) on first start, with a warning: production sets the variable.
    """
    if setting:
        try:
            return [base64.b64decode(k.strip(), validate=True) for k in setting.split(",") if k]
        except ValueError as exc:
            raise PiiKeyError("HOTLINE_PII_KEYS must be base64") from exc
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        log.warning("created a new PII key in %s; set HOTLINE_PII_KEYS in production", key_file)
    text = key_file.read_text().strip()
    return load_keys(text, key_file)
