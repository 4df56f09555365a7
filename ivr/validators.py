"""Checks for what a caller keys in: each returns the normalised value or None.

Pure and synchronous, so a flow's ``collect`` node and the ``card`` node agree, and
tests need no call. The card-number rule mirrors citizen_card.identity (16 digits,
Luhn) without importing it: the IVR depends on nothing else of ours.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import phonenumbers

Validator = Callable[[str], str | None]


def luhn_ok(digits: str) -> bool:
    """Luhn (ISO/IEC 7812) check digit, as on citizen-card and bank-card numbers."""
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_number(keys: str) -> str | None:
    """A citizen-card number: 8 to 19 digits ending in a Luhn check digit."""
    return keys if 8 <= len(keys) <= 19 and luhn_ok(keys) else None


def luhn(keys: str) -> str | None:
    """Any number with a Luhn check digit."""
    return keys if luhn_ok(keys) else None


def id_last6(keys: str) -> str | None:
    """The last six characters of a resident ID number. The check character may be X,
    which a phone pad cannot key: ``*`` stands for it (the prompt says so)."""
    if len(keys) == 6 and keys[:5].isdigit() and (keys[5].isdigit() or keys[5] == "*"):
        return keys[:5] + ("X" if keys[5] == "*" else keys[5])
    return None


def pin(keys: str) -> str | None:
    """A citizen-card PIN: six digits."""
    return keys if len(keys) == 6 and keys.isdigit() else None


_TICKET = re.compile(r"\d{8,20}")


def ticket_number(keys: str) -> str | None:
    """A ticket number as residents read it aloud (digits only, e.g. 2026112200123)."""
    return keys if _TICKET.fullmatch(keys) else None


def _e164(raw: str, region: str) -> str | None:
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def phone(keys: str, region: str = "CN") -> str | None:
    """A callable phone number (mobile, or fixed line with its area code), as E.164."""
    if not keys.isdigit() or len(keys) > 16:
        return None
    return _e164(keys, region)


def caller_number(caller_id: str, region: str = "CN") -> str | None:
    """The switch's caller id as E.164, or None for anonymous / unusable ids."""
    raw = caller_id.strip()
    body = raw.removeprefix("+")
    if not body.isdigit() or len(body) > 16:
        return None
    return _e164(raw, region)


def digits(keys: str) -> str | None:
    """Digits only, no other rule."""
    return keys if keys.isdigit() else None


KNOWN: dict[str, Validator] = {
    "card_number": card_number,
    "luhn": luhn,
    "id_last6": id_last6,
    "pin": pin,
    "ticket_number": ticket_number,
    "phone": phone,
    "digits": digits,
}
