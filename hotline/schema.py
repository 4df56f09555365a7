"""Every module that puts tables on `SQLModel.metadata`, imported in one place.

Alembic's env.py and the migration tests import this module so the metadata holds
the whole schema whatever else has been imported. A package that adds tables adds
its model module here and a revision under hotline/migrations/versions.
"""

from __future__ import annotations

import importlib

MODEL_MODULES: tuple[str, ...] = (
    "ticketing.models",
    "channels.models",
    "channels.open311.models",
    "channels.app.models",
    "citizen_card.dbtypes",
    "citizen_card.models",
    "citizen_card.partner_models",
    "citizen_card.ledger_models",
    "citizen_card.medical",
    "hotline.console.models",
    "hotline.calls.models",
    "hotline.card_binding",
)


def load_models() -> None:
    """Import every model module (idempotent)."""
    for name in MODEL_MODULES:
        importlib.import_module(name)
