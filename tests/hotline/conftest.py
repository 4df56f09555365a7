"""Fixtures shared by the hotline tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from hotline.bootstrap import build_deps
from tests.conftest import make_settings


@pytest.fixture
async def deps(tmp_path, db_url) -> AsyncIterator[Any]:  # type: ignore[no-untyped-def]
    """The service's dependencies on a fresh schema (SQLite and PostgreSQL via db_url),
    as another process would see the database."""
    d = build_deps(make_settings(tmp_path, db_url))
    await d.db.create_all()
    try:
        yield d
    finally:
        await d.db.dispose()
