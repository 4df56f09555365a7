"""Fixtures for the ticket domain tests (helpers in ticket_world.py).

`world`: seeded catalog, started intake, a clock that moves only when told; once on
SQLite and once on PostgreSQL. `sqlite_world`: SQLite only, for the slow property tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from ticket_world import World, open_world


@pytest.fixture
async def world(db_url: str) -> AsyncIterator[World]:
    """Seeded catalog, started intake, fixed clock: once on SQLite, once on PostgreSQL."""
    async for w in open_world(db_url):
        yield w


@pytest.fixture
async def sqlite_world(sqlite_url: str) -> AsyncIterator[World]:
    async for w in open_world(sqlite_url):
        yield w
