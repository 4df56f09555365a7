"""Helpers for the console's browser tests: a real headless Chromium (Debian's
/usr/bin/chromium) driven by Playwright, and signing in through the login form.

No browser, no pass: without Chromium these tests FAIL with the install command,
unless HOTLINE_NO_BROWSER=1 says explicitly that this machine has none.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("HOTLINE_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "test-password-1"


def require_chromium() -> None:
    if os.environ.get("HOTLINE_NO_BROWSER") == "1":
        pytest.skip("HOTLINE_NO_BROWSER=1: browser tests switched off explicitly")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: apt-get install -y chromium "
            "(or set HOTLINE_NO_BROWSER=1 to skip the browser tests on purpose)"
        )


def launch_args() -> dict[str, Any]:
    return {"executable_path": CHROMIUM, "args": ARGS}


async def login(browser, service, who: str, shots: Path | None = None):  # type: ignore[no-untyped-def]
    context = await browser.new_context(viewport={"width": 1440, "height": 1000}, locale="zh-CN")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    await page.goto(service.base + "/console/")
    await page.wait_for_selector("#login-form")
    if shots:
        await page.screenshot(path=str(shots / "login.png"))
    await page.fill("#login-username", who)
    await page.fill("#login-password", PASSWORD)
    await page.press("#login-password", "Enter")
    await page.wait_for_selector("#app-view:not([hidden])")
    await page.wait_for_selector("#live:not(.down):text('实时')")
    return page
