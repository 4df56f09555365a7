"""Command line: serve (default), migrate, create-user, seed-demo.

Only argument parsing lives here; the work is in `hotline`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from hotline.settings import Settings, SettingsError, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None):
        overrides["port"] = args.port
    return load_settings(**overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from hotline.app import create_app

    settings = _settings(args)
    logging.getLogger().setLevel(settings.log_level)
    app = create_app(settings)
    print(
        f"12345 hotline engine on http://{settings.host}:{settings.port}/ "
        f"(database: {settings.database_url.split('://')[0]})",
        flush=True,
    )
    web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from hotline.migrate import upgrade_head

    settings = _settings(args)
    upgrade_head(settings.database_url)
    print("database is at the latest schema")
    return 0


async def _with_deps(settings: Settings, work):  # type: ignore[no-untyped-def]
    from hotline.bootstrap import build_card_deps, build_deps
    from hotline.migrate import upgrade_head_async

    await upgrade_head_async(settings.database_url)
    deps = build_deps(settings)
    await deps.bus.start()
    try:
        await deps.catalog.reload(deps.db)
        return await work(deps, build_card_deps(settings, deps.db, deps.cipher))
    finally:
        await deps.bus.stop()
        await deps.db.dispose()


def cmd_create_user(args: argparse.Namespace) -> int:
    from hotline.auth import UserExists, create_user
    from ticketing.lifecycle import Role

    settings = _settings(args)

    async def work(deps, _card):  # type: ignore[no-untyped-def]
        return await create_user(
            deps, args.username, args.password, Role(args.role), args.department, args.name or ""
        )

    try:
        user = asyncio.run(_with_deps(settings, work))
    except UserExists:
        print(f"error: user {args.username!r} already exists", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"created {user['role']} {user['username']}"
        + (f" of {user['department']}" if user["department"] else "")
    )
    return 0


def cmd_seed_demo(args: argparse.Namespace) -> int:
    from hotline.seed import DEMO_PASSWORD, USERS, seed_demo

    settings = _settings(args)
    result = asyncio.run(_with_deps(settings, seed_demo))
    print(
        f"demo data: {result['categories']} categories, {result['users']} users, "
        f"{result['tickets']} tickets, {result['residents']} residents with cards added"
    )
    print("sign in as " + ", ".join(u for u, *_ in USERS) + f" with password {DEMO_PASSWORD!r}")
    return 0


def cmd_card_root_key(args: argparse.Namespace) -> int:
    """Print the root public key partners pin (creating the keyring on first use)."""
    from citizen_card.keystore import load_or_create_keyring

    settings = _settings(args)
    ring = load_or_create_keyring(settings.card_keyring_file, issuer=settings.city_code)
    sys.stdout.write(ring.root_public_pem().decode())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main.py",
        description="12345 citizen hotline and citizen card engine. "
        "Settings come from HOTLINE_* environment variables (see README).",
    )
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("serve", help="run the HTTP service (default)")
    s.add_argument("--host", help="listen address (HOTLINE_HOST, default 127.0.0.1)")
    s.add_argument("--port", type=int, help="listen port (HOTLINE_PORT, default 8080)")
    s.set_defaults(func=cmd_serve)
    m = sub.add_parser("migrate", help="upgrade the database schema to the latest version")
    m.set_defaults(func=cmd_migrate)
    u = sub.add_parser("create-user", help="create a staff account")
    u.add_argument("--username", required=True)
    u.add_argument("--password", required=True, help="at least 8 characters")
    u.add_argument("--role", required=True, choices=["agent", "supervisor", "department", "admin"])
    u.add_argument("--department", help="department code (department users only)")
    u.add_argument("--name", help="display name")
    u.set_defaults(func=cmd_create_user)
    d = sub.add_parser("seed-demo", help="load the default taxonomy, demo users and tickets")
    d.set_defaults(func=cmd_seed_demo)
    k = sub.add_parser("card-root-key", help="print the citizen-card root public key (PEM)")
    k.set_defaults(func=cmd_card_root_key)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    if not getattr(args, "func", None):
        args = build_parser().parse_args(["serve", *(argv or [])])
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
