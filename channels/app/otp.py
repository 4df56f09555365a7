"""One-time sign-in codes: generation, keyed hashing, and the sender interface.

Pure apart from the sender: the rules (expiry, attempts, resend cooldown) are
functions of the stored code and the time, so they are unit-tested without I/O.
A code is stored as a keyed hash (the PII blind-index key) over a per-code salt:
six digits hashed plainly could be reversed by trying all million.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ticketing.handlers import mask_phone
from ticketing.ports import PiiCipher

log = logging.getLogger(__name__)


def new_code(length: int = 6) -> str:
    """Uniform over all `length`-digit strings (leading zeros included)."""
    return f"{secrets.randbelow(10**length):0{length}d}"


def new_salt() -> str:
    return secrets.token_hex(16)


def code_hash(cipher: PiiCipher, salt: str, code: str) -> str:
    return cipher.blind_index(f"app-signin-code:{salt}:{code}")


def code_matches(cipher: PiiCipher, salt: str, stored: str, given: str) -> bool:
    return hmac.compare_digest(code_hash(cipher, salt, given), stored)


@dataclass(frozen=True)
class CodeState:
    """What the verifier needs of a stored code."""

    attempts: int
    expires_at: datetime
    used: bool


def usable(code: CodeState, now: datetime, max_attempts: int) -> str | None:
    """None when the code may still be tried, else why not (expired | spent | used)."""
    if code.used:
        return "used"
    if code.attempts >= max_attempts:
        return "spent"
    if now >= code.expires_at:
        return "expired"
    return None


class CodeSender(Protocol):
    """Delivers a sign-in code to a phone (an SMS gateway in production)."""

    async def send_code(self, phone_e164: str, code: str, ttl_s: int) -> None: ...


class LogCodeSender:
    """The default: no SMS, only a log line with the masked number.

    With `reveal=True` (development) the code itself is logged, at DEBUG only, so an
    INFO log never holds a live code.
    """

    def __init__(self, reveal: bool = False) -> None:
        self.reveal = reveal

    async def send_code(self, phone_e164: str, code: str, ttl_s: int) -> None:
        log.info("app sign-in code for %s (no SMS sender configured)", mask_phone(phone_e164))
        if self.reveal:
            log.debug("app sign-in code for %s is %s", mask_phone(phone_e164), code)
