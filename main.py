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
    demo = bool(getattr(args, "demo", False))
    app = create_app(settings, demo=demo)
    print(
        f"12345 hotline engine on http://{settings.host}:{settings.port}/ "
        f"(database: {settings.database_url.split('://')[0]})"
        + (" with simulated agents and callers (--demo)" if demo else ""),
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


def cmd_open311_key(args: argparse.Namespace) -> int:
    """Issue (prints the key, shown only this once), revoke or list Open311 API keys."""
    from channels.open311 import ApiKeyError, issue_key, list_keys, revoke_key

    settings = _settings(args)

    async def work(deps, _card):  # type: ignore[no-untyped-def]
        if args.revoke:
            await revoke_key(deps.db, args.revoke)
            return f"revoked the Open311 key {args.revoke!r}"
        if args.list:
            rows = await list_keys(deps.db)
            return "\n".join(
                f"{k.name}\tcreated {k.created_at:%Y-%m-%d %H:%M}Z\t"
                + (f"revoked {k.revoked_at:%Y-%m-%d %H:%M}Z" if k.revoked_at else "active")
                for k in rows
            )
        return await issue_key(deps.db, args.name)

    try:
        out = asyncio.run(_with_deps(settings, work))
    except ApiKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if out:
        print(out)
    return 0


def cmd_card_root_key(args: argparse.Namespace) -> int:
    """Print the root public key partners pin (creating the keyring on first use)."""
    from citizen_card.keystore import load_or_create_keyring

    settings = _settings(args)
    ring = load_or_create_keyring(settings.card_keyring_file, issuer=settings.city_code)
    sys.stdout.write(ring.root_public_pem().decode())
    return 0


def cmd_wechat_menu(args: argparse.Namespace) -> int:
    """Publish the WeChat menu (我要反映 / 我的工单 / 紧急求助) through the WeChat API."""
    import json

    from channels.wechat import publish_menu

    settings = _settings(args)
    try:
        menu = asyncio.run(publish_menu(settings))
    except Exception as exc:  # ValueError (settings) or DeliveryError (WeChat said no)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("published menu: " + json.dumps(menu, ensure_ascii=False))
    return 0


def cmd_telegram_webhook(args: argparse.Namespace) -> int:
    """Point the Telegram bot at our /telegram/webhook (setWebhook with the secret token)."""
    import json

    from channels.telegram import register_webhook

    settings = _settings(args)
    try:
        info = asyncio.run(register_webhook(settings, args.url, drop_pending=args.drop_pending))
    except ValueError as exc:  # settings, a non-https URL, or Telegram said no
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("telegram webhook: " + json.dumps(info, ensure_ascii=False))
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
    s.add_argument(
        "--demo",
        action="store_true",
        help="simulated switch with a few agents and a trickle of callers (see /metrics)",
    )
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
    o = sub.add_parser("open311-key", help="issue (prints it), revoke or list Open311 API keys")
    og = o.add_mutually_exclusive_group(required=True)
    og.add_argument("--name", help="issue a key for this client and print it")
    og.add_argument("--revoke", metavar="NAME", help="revoke the key of this client")
    og.add_argument("--list", action="store_true", help="list keys (names and dates only)")
    o.set_defaults(func=cmd_open311_key)
    w = sub.add_parser("wechat-menu", help="publish the WeChat official account menu")
    w.set_defaults(func=cmd_wechat_menu)
    t = sub.add_parser(
        "telegram-webhook", help="register /telegram/webhook with Telegram (setWebhook)"
    )
    t.add_argument(
        "--url",
        required=True,
        help="public https URL, e.g. https://hotline.example/telegram/webhook",
    )
    t.add_argument(
        "--drop-pending", action="store_true", help="discard updates Telegram is still holding"
    )
    t.set_defaults(func=cmd_telegram_webhook)
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
