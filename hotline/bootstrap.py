"""The one place that wires real parts: store, calendar, cipher, bus, catalog.

Tests call the same function (with a test database URL), so what they exercise is
what production runs.
"""

from __future__ import annotations

import logging

from hotline.pii import AesGcmCipher, load_keys
from hotline.settings import Settings
from ticketing.bus import make_bus
from ticketing.catalog import Catalog
from ticketing.handlers import Deps
from ticketing.store import Database
from ticketing.workdays import WorkCalendar

log = logging.getLogger(__name__)


def build_deps(settings: Settings) -> Deps:
    """Construct (not start) everything; starting is the app's cleanup context."""
    calendar = WorkCalendar.from_file(settings.holiday_override_file)
    cipher = AesGcmCipher(load_keys(settings.pii_keys, settings.pii_key_file))
    return Deps(
        db=Database(settings.database_url),
        calendar=calendar,
        tz=settings.tz,
        bus=make_bus(settings.database_url),
        cipher=cipher,
        catalog=Catalog(),
        claim_ttl_s=settings.claim_ttl_s,
    )
