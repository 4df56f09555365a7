"""Fixtures of the console tests: a real headless Chromium, the service on a port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.console.browser_kit import launch_args, require_chromium


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    require_chromium()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: pip install -e '.[test]'")
    async with async_playwright() as p:
        b = await p.chromium.launch(**launch_args())
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def service(sqlite_api):  # type: ignore[no-untyped-def]
    """The service on a free port (SQLite), seeded with staff; `.base` is its URL."""
    sqlite_api.base = str(sqlite_api.client.make_url("")).rstrip("/")
    return sqlite_api
