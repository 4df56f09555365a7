"""The one place that wires real parts: store, calendar, cipher, bus, catalog.

Tests call the same function (with a test database URL), so what they exercise is
what production runs.
"""

from __future__ import annotations

import logging

from citizen_card.keystore import load_or_create_keyring, load_or_create_service_key
from citizen_card.ledger import Ed25519Signer, Ledger
from citizen_card.service import CardDeps, PiiCipher
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


def build_card_deps(settings: Settings, db: Database, cipher: PiiCipher) -> CardDeps:
    """The citizen card shares the store (and SQLite's writer lock) with the tickets."""
    keyring = load_or_create_keyring(settings.card_keyring_file, issuer=settings.city_code)
    service_key = load_or_create_service_key(settings.card_service_key_file)
    ledger = Ledger(
        db.engine,
        Ed25519Signer(service_key, key_id=f"{settings.city_code.lower()}-service"),
        write_lock=db.write_lock,
    )
    return CardDeps(
        engine=db.engine,
        cipher=cipher,
        keyring=keyring,
        ledger=ledger,
        service_key=service_key,
        tz=settings.tz,
        write_lock=db.write_lock,
        city_code=settings.city_code,
    )
