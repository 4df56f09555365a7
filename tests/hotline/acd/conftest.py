"""Fixtures: an ACD service on a real store (SQLite and PostgreSQL), in-memory switch."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.hotline.acd.acd_rig import Rig, make_rig


@pytest.fixture
async def rig(tmp_path, db_url) -> AsyncIterator[Rig]:  # type: ignore[no-untyped-def]
    async with make_rig(tmp_path, db_url) as r:
        yield r


@pytest.fixture
async def sqlite_rig(tmp_path, sqlite_url) -> AsyncIterator[Rig]:  # type: ignore[no-untyped-def]
    async with make_rig(tmp_path, sqlite_url) as r:
        yield r
