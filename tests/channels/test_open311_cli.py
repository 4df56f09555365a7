"""`main.py open311-key`: issue (prints the key once), list, revoke; the key then works."""

from __future__ import annotations

import asyncio
import re

import main
from channels.open311.keys import key_hash, key_owner
from ticketing.store import Database


def _env(monkeypatch, tmp_path) -> str:  # type: ignore[no-untyped-def]
    url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("HOTLINE_DATABASE_URL", url)
    monkeypatch.setenv("HOTLINE_PII_KEY_FILE", str(tmp_path / "pii.key"))
    monkeypatch.setenv("HOTLINE_HOLIDAY_OVERRIDE_FILE", str(tmp_path / "holidays.yaml"))
    monkeypatch.setenv("HOTLINE_CARD_KEYRING_FILE", str(tmp_path / "keyring.json"))
    monkeypatch.setenv("HOTLINE_CARD_SERVICE_KEY_FILE", str(tmp_path / "service.pem"))
    monkeypatch.delenv("HOTLINE_PII_KEYS", raising=False)
    return url


async def _owner(url: str, key: str) -> str | None:
    db = Database(url)
    try:
        return await key_owner(db, key)
    finally:
        await db.dispose()


async def test_issue_list_and_revoke_a_key(monkeypatch, tmp_path, capsys):
    url = _env(monkeypatch, tmp_path)
    assert await asyncio.to_thread(main.main, ["open311-key", "--name", "fixmystreet"]) == 0
    key = capsys.readouterr().out.strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key)
    assert await _owner(url, key) == "fixmystreet"
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("cli.db*")).decode("latin-1")
    assert key_hash(key) in stored and key not in stored  # only its hash is kept

    assert await asyncio.to_thread(main.main, ["open311-key", "--name", "fixmystreet"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert await asyncio.to_thread(main.main, ["open311-key", "--name", "bad name"]) == 2
    capsys.readouterr()

    assert await asyncio.to_thread(main.main, ["open311-key", "--list"]) == 0
    assert re.fullmatch(r"fixmystreet\tcreated \S+ \S+Z\tactive\n", capsys.readouterr().out)
    assert await asyncio.to_thread(main.main, ["open311-key", "--revoke", "fixmystreet"]) == 0
    assert await _owner(url, key) is None
    assert await asyncio.to_thread(main.main, ["open311-key", "--revoke", "fixmystreet"]) == 2
