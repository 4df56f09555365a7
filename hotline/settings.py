"""Settings from `HOTLINE_*` environment variables, validated once at start.

Everything the service reads from its environment lives here so a bad value fails
at start-up with the setting's name, not at 3 a.m. on the first call that uses it.
"""

from __future__ import annotations

import re
import zoneinfo
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# a domain name's syntax (RFC 1123 labels), as GeoReport v2 suggests for jurisdiction_id
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_JURISDICTION = re.compile(rf"(?=.{{1,100}}\Z){_LABEL}(?:\.{_LABEL})*")


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
    login_max_failures: Annotated[int, Field(ge=1, le=100)] = Field(
        5, description="Wrong staff passwords in a row before the account is locked"
    )
    login_lockout_s: Annotated[int, Field(ge=1, le=86400)] = Field(
        900, description="How long a staff account stays locked after too many wrong passwords"
    )
    login_max_failures_per_ip: Annotated[int, Field(ge=1)] = Field(
        100, description="Failed staff sign-ins from one address per lockout period (any account)"
    )
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
    gc_freeze: bool = Field(
        True,
        description="After start-up, freeze the objects it built out of Python's cyclic "
        "garbage collector (full collections otherwise stall requests for ~100 ms)",
    )
    esl_host: str = Field(
        "127.0.0.1",
        description="FreeSWITCH event socket host (inbound ESL); empty: no switch at all",
    )
    esl_port: Annotated[int, Field(ge=1, le=65535)] = Field(
        8021, description="FreeSWITCH event socket port"
    )
    esl_password: str = Field(
        "ClueCon", description="FreeSWITCH event socket password (change it)", repr=False
    )
    esl_listen: str = Field(
        "127.0.0.1:8084",
        description="host:port of our outbound socket server (dialplan `socket ... async full`)",
    )
    # ---- the call entry (hotline/phone): which IVR flow answers, survey, voicemail
    ivr_hours: str = Field(
        "always",
        description="When agents answer: 'always' (7x24) or 'HH:MM-HH:MM' on working days of "
        "the official calendar; outside it calls get the after-hours flow",
    )
    ivr_card_numbers: str = Field(
        "12345-2",
        description="Comma-separated destination numbers answered by the card-service flow",
    )
    ivr_survey: bool = Field(
        True, description="Ask the post-call satisfaction question when the agent hangs up first"
    )
    voicemail_dir: Path = Field(
        Path("./var/voicemail"), description="Where after-hours voicemail recordings are written"
    )
    # ---- phone queue (ACD), recordings, emergency hand-off (hotline/acd, hotline/emergency.py)
    acd_strategy: str = Field(
        "longest-idle", description="Agent choice: longest-idle, skills-based or ring-all"
    )
    acd_ring_timeout_s: Annotated[float, Field(gt=0, le=120)] = Field(
        15.0, description="How long an agent's phone rings before the next agent is tried"
    )
    acd_missed_ring_limit: Annotated[int, Field(ge=1)] = Field(
        3, description="Missed rings in a row that put an agent on break"
    )
    acd_wrap_up_s: Annotated[float, Field(ge=0)] = Field(
        30.0, description="After-call work time before the next call is offered"
    )
    acd_max_wait_s: Annotated[float, Field(gt=0)] = Field(
        120.0, description="Wait after which the caller is offered a callback (key 1)"
    )
    acd_queue_capacity: Annotated[int, Field(ge=1)] = Field(
        500, description="Callers waiting at most; beyond it a caller gets a callback"
    )
    acd_service_level_s: Annotated[float, Field(gt=0)] = Field(
        15.0, description="Answer target for the service level (GB/T 33358: 15 s)"
    )
    acd_announce_every_s: Annotated[float, Field(gt=0)] = Field(
        30.0, description="How often a waiting caller hears their position"
    )
    acd_callback_due_s: Annotated[float, Field(gt=0)] = Field(
        3600.0, description="Deadline of a callback work item after it is promised"
    )
    acd_chat_weight: Annotated[float, Field(ge=0, le=1)] = Field(
        0.25, description="Load of one text conversation (a call is 1.0)"
    )
    acd_max_load: Annotated[float, Field(ge=1)] = Field(
        1.5, description="Most load an agent carries: calls and chats together"
    )
    acd_dial_template: str = Field(
        "user/{ext}", description="Dial string of an agent's extension ({ext} is replaced)"
    )
    prompt_language: str = Field("zh", description="Language of queue prompts (zh or en)")
    recording_dir: Path = Field(
        Path("./var/recordings"), description="Where record_session writes call recordings"
    )
    record_calls: bool = Field(True, description="Record answered calls")
    recording_retention_days: Annotated[int, Field(ge=1)] = Field(
        180, description="Recordings older than this are deleted by the cleanup task"
    )
    emergency_dial: str = Field(
        "110=sofia/gateway/pstn/110,119=sofia/gateway/pstn/119,"
        "120=sofia/gateway/pstn/120,122=sofia/gateway/pstn/122",
        description="Dial string per emergency line: 'line=dial,...'",
    )
    emergency_alternate: str = Field(
        "", description="Alternate route per line, tried when the first is busy or silent"
    )
    emergency_endpoints: str = Field(
        "", description="HTTPS endpoint per line for the signed data notice: 'line=url,...'"
    )
    emergency_answer_timeout_s: Annotated[float, Field(gt=0, le=120)] = Field(
        20.0, description="How long an emergency line may ring before the alternate is tried"
    )
    emergency_words_file: Path | None = Field(
        None,
        description="YAML adding emergency words per line (fire, gas, medical, police, "
        "traffic) and harmless phrases to the built-in lists",
    )
    wechat_token: str | None = Field(
        None, description="WeChat official account: server token (enables /wechat)", repr=False
    )
    wechat_aes_key: str | None = Field(
        None, description="WeChat EncodingAESKey (43 characters; safe/compatible mode)", repr=False
    )
    wechat_app_id: str | None = Field(None, description="WeChat AppID (wx...)")
    wechat_app_secret: str | None = Field(
        None, description="WeChat AppSecret (for access tokens: replies, templates)", repr=False
    )
    wechat_api_base: str = Field(
        "https://api.weixin.qq.com", description="WeChat API base URL (tests use a local fake)"
    )
    wechat_max_age_s: Annotated[int, Field(ge=0)] = Field(
        300, description="Refuse WeChat pushes whose timestamp is older than this (0: off)"
    )
    wechat_template_id: str | None = Field(
        None, description="WeChat template for ticket updates (else a customer-service text)"
    )
    wechat_template_fields: str | None = Field(
        None,
        description="The template's fields: comma-separated field=source, source one of "
        "number, status, at, reply, text:<words> (e.g. 'character_string1=number,"
        "phrase2=status,time3=at,thing4=reply'); unset: first/keyword1/keyword2/remark",
    )
    telegram_token: str | None = Field(
        None,
        description="Telegram bot token from @BotFather (enables /telegram/webhook)",
        repr=False,
    )
    telegram_secret: str | None = Field(
        None,
        description="Telegram webhook secret token (1-256 of A-Z a-z 0-9 _ -), checked on "
        "every update; required with the bot token",
        repr=False,
        validate_default=True,
    )
    telegram_api_base: str = Field(
        "https://api.telegram.org",
        description="Telegram Bot API base URL (the token is appended; tests use a local fake)",
    )
    open311_base_url: str | None = Field(
        None,
        description="Public URL of the Open311 endpoint for discovery "
        "(default: this server's /open311/v2 as the request reached it)",
    )
    open311_contact: str = Field(
        "12345 citizen service hotline", description="Open311 discovery: who to contact"
    )
    open311_key_service: str = Field(
        "Ask the 12345 centre's operators for an API key.",
        description="Open311 discovery: how a client gets an API key",
    )
    open311_jurisdiction: str = Field(
        "",
        description="Open311 jurisdiction_id this endpoint serves: the city's website domain "
        "without www, e.g. hangzhou.gov.cn (empty: the city code in lower case + '.gov', "
        "city.gov for the default code)",
        validate_default=True,
    )
    # ---- city app API (channels/app): resident sign-in, reports, notification feed
    app_token_ttl_s: Annotated[int, Field(ge=300)] = Field(
        30 * 24 * 3600, description="Lifetime of a resident's app token (revoked by logout)"
    )
    app_code_ttl_s: Annotated[int, Field(ge=60, le=1800)] = Field(
        300, description="How long a sign-in code sent to the phone is valid"
    )
    app_code_max_attempts: Annotated[int, Field(ge=1, le=10)] = Field(
        5, description="Wrong tries after which a sign-in code is spent"
    )
    app_code_resend_s: Annotated[int, Field(ge=0)] = Field(
        60, description="Wait between two sign-in codes for one phone"
    )
    app_codes_per_phone_hour: Annotated[int, Field(ge=1)] = Field(
        5, description="Sign-in codes one phone may receive per hour"
    )
    app_codes_per_ip_hour: Annotated[int, Field(ge=1)] = Field(
        20, description="Sign-in codes one network address may request per hour"
    )
    app_dev_codes: bool = Field(
        False, description="Development: log sign-in codes at DEBUG (never at INFO)"
    )
    app_photo_max_bytes: Annotated[int, Field(ge=1024)] = Field(
        5 * 1_048_576, description="Largest photo of an app report"
    )
    app_photo_types: str = Field(
        "image/jpeg,image/png,image/webp,image/heic",
        description="Photo types an app report accepts (read from the bytes, not the name)",
    )
    app_sse_heartbeat_s: Annotated[float, Field(gt=0, le=300)] = Field(
        15.0, description="Heartbeat of the app's notification stream (SSE)"
    )

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

    @field_validator("acd_strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        if v not in ("longest-idle", "skills-based", "ring-all"):
            raise ValueError("must be longest-idle, skills-based or ring-all")
        return v

    @field_validator("emergency_dial", "emergency_alternate", "emergency_endpoints")
    @classmethod
    def _emergency_routes(cls, v: str) -> str:
        for part in filter(None, (p.strip() for p in v.split(","))):
            line, sep, target = part.partition("=")
            if not sep or line.strip() not in ("110", "119", "120", "122") or not target.strip():
                raise ValueError(f"{part!r}: use 110|119|120|122=target, comma-separated")
        return v

    @field_validator("ivr_hours")
    @classmethod
    def _ivr_hours(cls, v: str) -> str:
        v = v.strip()
        if v == "always" or re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d", v):
            return v
        raise ValueError("use 'always' or HH:MM-HH:MM, e.g. 08:00-20:00")

    @field_validator("esl_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("use host:port, e.g. 127.0.0.1:8084 (port 0: any free port)")
        return v

    @property
    def esl_listen_address(self) -> tuple[str, int]:
        host, _, port = self.esl_listen.rpartition(":")
        return host.strip("[]"), int(port)

    @field_validator("open311_jurisdiction")
    @classmethod
    def _jurisdiction(cls, v: str, info: ValidationInfo) -> str:
        """GeoReport v2 suggests "the jurisdiction's main website root url (without the
        www)" (sfgov.org); clients echo it in every URL and form, so it must be one
        domain-like token. Unset, it follows the city code (declared before it), so the
        default is city.gov, the spec's own example. Stored in lower case: domain names
        compare case-insensitively, and clients copy it from discovery."""
        v = v.strip()
        if v:
            if not _JURISDICTION.fullmatch(v):
                raise ValueError(
                    "must be a domain-like id such as hangzhou.gov.cn: dot-separated labels "
                    "of letters, digits and inner hyphens, at most 100 characters"
                )
            return v.lower()
        derived = f"{str(info.data.get('city_code') or 'city').strip().lower()}.gov"
        if not _JURISDICTION.fullmatch(derived):
            raise ValueError(
                f"unset, and {derived!r} made from HOTLINE_CITY_CODE is not a domain name; "
                "set it, e.g. hangzhou.gov.cn"
            )
        return derived

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

    @field_validator("wechat_template_fields")
    @classmethod
    def _template_fields(cls, v: str | None) -> str | None:
        from channels.wechat.template import TemplateLayout, TemplateLayoutError

        try:
            TemplateLayout.parse(v)
        except TemplateLayoutError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("telegram_secret")
    @classmethod
    def _telegram_secret(cls, v: str | None, info: ValidationInfo) -> str | None:
        """Telegram accepts 1-256 characters of A-Z a-z 0-9 _ - as a webhook secret; it is
        required with a token (without it anyone who finds the URL could post updates as
        any resident)."""
        if v is None or v == "":
            if info.data.get("telegram_token"):
                raise ValueError("required with HOTLINE_TELEGRAM_TOKEN")
            return None
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", v):
            raise ValueError("must be 1-256 characters of A-Z a-z 0-9 _ -")
        return v

    @field_validator("wechat_aes_key")
    @classmethod
    def _aes_key(cls, v: str | None) -> str | None:
        """EncodingAESKey: 43 base64 characters that decode (with '=') to 32 bytes."""
        if v is None or v == "":
            return None
        import base64
        import binascii

        if len(v) != 43:
            raise ValueError(f"must be 43 characters, not {len(v)}")
        try:
            key = base64.b64decode(v + "=", validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be base64 (A-Z a-z 0-9 + /)") from None
        if len(key) != 32:
            raise ValueError("must decode to a 32-byte AES key")
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
