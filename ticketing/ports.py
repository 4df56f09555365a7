"""What the ticket domain needs from outside, as protocols (the hotline wires them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ticketing.lifecycle import Role


class PiiCipher(Protocol):
    """Encrypts personal data at rest and gives a keyed blind index for lookups."""

    def encrypt(self, plaintext: str) -> str: ...

    def decrypt(self, token: str) -> str: ...

    def blind_index(self, value: str) -> str: ...


@dataclass(frozen=True)
class Principal:
    """Who is acting: a staff user, or a system actor such as a channel."""

    username: str
    role: Role
    department_code: str | None = None
    user_id: int | None = None

    @property
    def role_name(self) -> str:
        return self.role.value

    @property
    def is_floor(self) -> bool:
        return self.role in (Role.AGENT, Role.SUPERVISOR)
