"""Settings from `HOTLINE_*` environment variables, validated once at start.

Everything the service reads from its environment lives here so a bad value fails
at start-up with the setting's name, not at 3 a.m. on the first call that uses it.
"""

from __future__ import annotations

import zoneinfo
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(Exception):
    """Raised with a human sentence naming each bad setting."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HOTLINE_", extra="ignore", frozen=True)

    database_url: str = Field(
        "sqlite+aiosqlite:///./var/hotline.db",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///path or postgresql+asyncpg://...",
    )
    host: str = Field("127.0.0.1", description="Address the HTTP server listens on")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(8080, description="HTTP port")
    timezone: str = Field(
        "Asia/Shanghai", description="City time zone for deadlines, 'today' and ticket numbers"
    )
    holiday_override_file: Path = Field(
        Path("./var/holidays.yaml"),
        description="Admin-edited holiday/make-up day list for years the library lacks",
    )
    max_body_bytes: Annotated[int, Field(ge=1024)] = Field(
        1_048_576, description="Largest JSON request body accepted"
    )
    attachment_max_bytes: Annotated[int, Field(ge=1024)] = Field(
        10 * 1_048_576, description="Largest attachment accepted"
    )
    attachment_types: str = Field(
        "image/jpeg,image/png,image/webp,application/pdf,audio/mpeg,audio/amr,video/mp4,text/plain",
        description="Comma-separated content types accepted as attachments",
    )
    attachment_dir: Path = Field(Path("./var/attachments"), description="Attachment storage")
    session_ttl_s: Annotated[int, Field(ge=60)] = Field(
        12 * 3600, description="Staff session lifetime (one shift)"
    )
    cookie_secure: bool = Field(False, description="Mark the session cookie Secure (behind TLS)")
    deadline_scan_s: Annotated[float, Field(gt=0)] = Field(
        30.0, description="How often the deadline watcher looks for warnings and breaches"
    )
    deadline_warn_fraction: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.8, description="Fraction of a deadline elapsed that raises deadline.warning"
    )
    claim_ttl_s: Annotated[int, Field(ge=10)] = Field(
        600, description="How long a claimed queue item stays with its claimer"
    )
    pii_keys: str | None = Field(
        None,
        description="Comma-separated base64 AES-256 keys for personal data, newest first "
        "(default: a key file generated under ./var/)",
        repr=False,
    )
    pii_key_file: Path = Field(Path("./var/pii.key"), description="Key file used when unset")
    city_code: str = Field("CITY", description="Issuer code in citizen-card tokens and receipts")
    card_keyring_file: Path = Field(
        Path("./var/citycard-keyring.json"),
        description="Citizen-card root and token-signing keys (created on first start)",
    )
    card_service_key_file: Path = Field(
        Path("./var/citycard-service.pem"),
        description="Ed25519 key signing freeze receipts, ledger receipts, partner answers",
    )
    hospital_levels: str = Field(
        "",
        description="Hospital partner id -> level for the insurance ratio, e.g. "
        "'hosp-a:tertiary,hosp-b:secondary' (unlisted hospitals cannot settle bills)",
    )
    log_level: str = Field("INFO", description="Python logging level")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}") from exc
        return v

    @field_validator("database_url")
    @classmethod
    def _supported_url(cls, v: str) -> str:
        if not (v.startswith("sqlite+aiosqlite://") or v.startswith("postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return v.upper()

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def hospital_level_map(self) -> dict[str, str]:
        pairs = (p.split(":", 1) for p in self.hospital_levels.split(",") if p.strip())
        return {k.strip(): v.strip() for k, v in pairs}

    @field_validator("hospital_levels")
    @classmethod
    def _levels(cls, v: str) -> str:
        for part in filter(None, (p.strip() for p in v.split(","))):
            key, _, level = part.partition(":")
            if not key or level not in ("primary", "secondary", "tertiary"):
                raise ValueError(f"{part!r}: use partner-id:primary|secondary|tertiary")
        return v

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @property
    def allowed_attachment_types(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.attachment_types.split(",") if t.strip())


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning pydantic's error into one line per bad env var."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            lines.append(f"HOTLINE_{field.upper()}: {err['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
