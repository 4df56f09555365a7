"""The command line as a new user meets it: seed-demo twice, card-root-key, bad settings."""

from __future__ import annotations

import asyncio
import sqlite3

import main


def _env(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HOTLINE_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("HOTLINE_PII_KEY_FILE", str(tmp_path / "pii.key"))
    monkeypatch.setenv("HOTLINE_HOLIDAY_OVERRIDE_FILE", str(tmp_path / "holidays.yaml"))
    monkeypatch.setenv("HOTLINE_CARD_KEYRING_FILE", str(tmp_path / "keyring.json"))
    monkeypatch.setenv("HOTLINE_CARD_SERVICE_KEY_FILE", str(tmp_path / "service.pem"))
    monkeypatch.delenv("HOTLINE_PII_KEYS", raising=False)


async def test_seed_demo_fills_an_empty_store_once(monkeypatch, tmp_path, capsys):
    _env(monkeypatch, tmp_path)
    assert await asyncio.to_thread(main.main, ["seed-demo"]) == 0
    first = capsys.readouterr().out
    assert "5 users, 5 tickets, 2 residents with cards added" in first
    with sqlite3.connect(tmp_path / "cli.db") as db:
        uncategorised = db.execute("SELECT number FROM ticket WHERE category_code IS NULL")
        assert uncategorised.fetchall() == []  # an agent files every ticket under a category
    assert await asyncio.to_thread(main.main, ["seed-demo"]) == 0
    assert "0 users, 0 tickets, 0 residents with cards added" in capsys.readouterr().out


async def test_card_root_key_prints_the_pinned_pem_and_keeps_it(monkeypatch, tmp_path, capsys):
    _env(monkeypatch, tmp_path)
    assert await asyncio.to_thread(main.main, ["card-root-key"]) == 0
    pem = capsys.readouterr().out
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert (tmp_path / "keyring.json").stat().st_mode & 0o077 == 0
    assert await asyncio.to_thread(main.main, ["card-root-key"]) == 0
    assert capsys.readouterr().out == pem


def test_a_bad_setting_stops_with_its_name(monkeypatch, capsys):
    monkeypatch.setenv("HOTLINE_PORT", "eighty")
    assert main.main(["migrate"]) == 2
    assert "HOTLINE_PORT" in capsys.readouterr().err
