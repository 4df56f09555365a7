"""The city app's paths and defaults (each default has a HOTLINE_APP_* setting)."""

from __future__ import annotations

PREFIX = "/api/v1/app"
CHANNEL = "app"
TAG = "app"

CODE_LENGTH = 6
CODE_TTL_S = 300  # a sign-in code is good for five minutes
CODE_MAX_ATTEMPTS = 5  # wrong tries before the code is spent
CODE_RESEND_S = 60  # one code per phone per minute
CODES_PER_PHONE_HOUR = 5
CODES_PER_IP_HOUR = 20
VERIFY_FAILURES_PER_IP_HOUR = 30  # wrong codes from one address, whatever the phone
TOKEN_TTL_S = 30 * 24 * 3600

MAX_PHOTOS = 4
PHOTO_MAX_BYTES = 5 * 1_048_576
PHOTO_TYPES = "image/jpeg,image/png,image/webp,image/heic"
MAX_FIELD_BYTES = 16_384  # a text field of the multipart report
MAX_DESCRIPTION = 4000
MIN_DESCRIPTION = 5

FEED_PAGE = 50
SSE_HEARTBEAT_S = 15.0
IN_FLIGHT_STALE_S = 120.0  # a pending Idempotency-Key older than this is resumed, not 409
