"""Numbers and names fixed by the GeoReport v2 specification (wiki.open311.org/GeoReport_v2)."""

from __future__ import annotations

from datetime import timedelta

SPECIFICATION = "http://wiki.open311.org/GeoReport_v2"
ROOT = "/open311"
PREFIX = f"{ROOT}/v2"
CHANNEL = "open311"  # the ticket channel, so agents see where a case came from

# "Appropriate HTTP headers must be set": the spec names text/xml for XML
FORMATS: dict[str, str] = {"xml": "text/xml", "json": "application/json"}
DEFAULT_FORMAT = "xml"  # XML is the required format; errors about the URL itself use it

MAX_DESCRIPTION = 4000  # "free form text limited to 4,000 characters"
DEFAULT_WINDOW = timedelta(days=90)  # "a span of 90 days or first 1000 requests"
MAX_WINDOW = timedelta(days=90)  # start_date..end_date "may not span more than 90 days"
MAX_RECORDS = 1000
MAX_IDS = 1000  # service_request_id list: no more than one answer can hold

# our own limits on what the spec leaves open (fit the ticket columns)
MAX_ADDRESS = 300
MAX_SHORT = 100  # address_id, account_id, device_id, names, jurisdiction_id
MAX_EMAIL = 254  # RFC 5321 path limit
MAX_PHONE = 40
MAX_URL = 2048
MAX_MEDIA_URLS = 10  # photos of one report (FixMyStreet sends one media_url per photo)
MAX_STRING_ATTRIBUTE = 200
MAX_FIELDS = 200  # form fields in one POST
# attribute[code] a client sends beyond the service definition, kept as extra data for the
# agent (FixMyStreet sends up to about ten of its own): how many, and how long each
MAX_EXTRA_ATTRIBUTES = 30
MAX_EXTRA_CODE = 64  # as long as a definition's own codes may be
MAX_EXTRA_VALUE = 2000
MAX_TOKEN = 255

# the last request with the same content from the same key within this window is a
# retry, answered with the first answer (Open311 clients retry failed sends blindly)
RETRY_WINDOW = timedelta(hours=24)

PRINCIPAL_PREFIX = "open311:"
KEY_NAME_MAX = 48  # "open311:" + name fits the 64-character actor columns
