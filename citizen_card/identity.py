"""Identity numbers: the resident ID (GB 11643-1999) and our card numbers.

Pure functions, so the counter, the IVR and partners' checks agree on what a
valid number is before anything touches the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"
_ID_RE = re.compile(r"^[1-9]\d{16}[\dX]$")
# province-level codes (GB/T 2260) incl. Hong Kong, Macao, Taiwan
_PROVINCES = frozenset(
    {
        11,
        12,
        13,
        14,
        15,
        21,
        22,
        23,
        31,
        32,
        33,
        34,
        35,
        36,
        37,
        41,
        42,
        43,
        44,
        45,
        46,
        50,
        51,
        52,
        53,
        54,
        61,
        62,
        63,
        64,
        65,
        71,
        81,
        82,
    }
)


class InvalidIdNumber(ValueError):
    pass


@dataclass(frozen=True)
class IdNumber:
    value: str
    birth_date: date
    sex: str  # "M" | "F" (odd 17th digit: male)

    @property
    def masked(self) -> str:
        """110101********1234: region visible for routing, birth date hidden."""
        return self.value[:6] + "*" * 8 + self.value[-4:]

    @property
    def last6(self) -> str:
        return self.value[-6:]


def check_char(first17: str) -> str:
    return _CHECK[sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True)) % 11]


def parse_id_number(raw: str, *, today: date | None = None) -> IdNumber:
    """Validate format, province, birth date and the check character."""
    value = raw.strip().upper()
    if not _ID_RE.match(value):
        raise InvalidIdNumber("an ID number has 17 digits and a digit or X")
    if int(value[:2]) not in _PROVINCES:
        raise InvalidIdNumber("unknown province code")
    try:
        born = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        raise InvalidIdNumber("the birth date is not a date") from None
    if born.year < 1900 or born > (today or date.today()):
        raise InvalidIdNumber("the birth date is out of range")
    if check_char(value[:17]) != value[17]:
        raise InvalidIdNumber("the check character does not match")
    return IdNumber(value, born, "M" if int(value[16]) % 2 else "F")


def luhn_digit(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def make_card_number(prefix: str, serial: int, width: int = 16) -> str:
    """prefix + zero-padded serial + Luhn digit: digits only, keyed on a phone pad."""
    body = f"{prefix}{serial:0{width - len(prefix) - 1}d}"
    return body + luhn_digit(body)


def is_valid_card_number(value: str) -> bool:
    return value.isdigit() and len(value) >= 8 and luhn_digit(value[:-1]) == value[-1]


def mask_name(name: str) -> str:
    """张*三 / 王* — enough for an agent to confirm, not to identify."""
    if len(name) <= 1:
        return "*"
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]
