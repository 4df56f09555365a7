"""WeChat's signatures and message encryption (WXBizMsgCrypt), via wechatpy.

Signatures are SHA-1 over the sorted strings; compared in constant time here
(wechatpy compares with `!=`). AES-256-CBC with the EncodingAESKey and the AppID
appended to each plaintext is wechatpy's `PrpCrypto`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
import time

from wechatpy.crypto import PrpCrypto


class SignatureError(Exception):
    pass


class DecryptError(Exception):
    pass


def sign(*parts: str) -> str:
    # surrogatepass: a query value may carry lone surrogates; it then simply mismatches
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8", "surrogatepass")).hexdigest()


def check(expected: str | None, *parts: str) -> None:
    # compare_digest refuses non-ASCII strings (TypeError); a hex digest is ASCII
    if (
        not expected
        or not expected.isascii()
        or not hmac.compare_digest(sign(*parts), expected.lower())
    ):
        raise SignatureError("signature mismatch")


class MessageCrypto:
    """Safe-mode envelope for one account (token, EncodingAESKey, AppID)."""

    def __init__(self, token: str, aes_key: str, app_id: str) -> None:
        self.token = token
        self.app_id = app_id
        key = base64.b64decode(aes_key + "=")
        if len(key) != 32:
            raise ValueError("EncodingAESKey must decode to 32 bytes")
        self._prp = PrpCrypto(key)

    def decrypt(self, encrypted: str, msg_signature: str | None, timestamp: str, nonce: str) -> str:
        check(msg_signature, self.token, timestamp, nonce, encrypted)
        try:
            return str(self._prp.decrypt(encrypted, self.app_id))
        except Exception as exc:  # bad base64, padding, length, app id: all "not ours"
            raise DecryptError(f"cannot decrypt: {type(exc).__name__}") from None

    def encrypt(self, xml: str, nonce: str | None = None, timestamp: str | None = None) -> str:
        """The reply envelope WeChat expects in safe mode."""
        nonce = nonce or "".join(secrets.choice(string.ascii_letters) for _ in range(16))
        timestamp = timestamp or str(int(time.time()))
        encrypted = self._prp.encrypt(xml, self.app_id).decode()
        signature = sign(self.token, timestamp, nonce, encrypted)
        return (
            f"<xml><Encrypt><![CDATA[{encrypted}]]></Encrypt>"
            f"<MsgSignature><![CDATA[{signature}]]></MsgSignature>"
            f"<TimeStamp>{timestamp}</TimeStamp>"
            f"<Nonce><![CDATA[{nonce}]]></Nonce></xml>"
        )
