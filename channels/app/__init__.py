"""The city app's API under /api/v1/app: resident sign-in (one-time code to the
phone, then a bearer token), reports with photos, the resident's tickets and their
public timeline, follow-up messages, ratings, and a notification feed (poll + SSE).

`setup(app, hub, intake, settings)` builds it on the channel hub (registering the
"app" sender that writes the feed) and keeps it on the app under `APP_CHANNEL`;
`routes(channel)` gives the RouteSpecs. Other packages that serve the signed-in
resident (the citizen card) call `channel.resolve(request)` -> `ResidentPrincipal`.
Settings are read duck-typed (`app_*` attributes), so this package needs no hotline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from channels.app import const
from channels.app.accounts import ResidentPrincipal, SignIn, SignInConfig, SignInRefused
from channels.app.feed import AppNotified, AppSender, Feed
from channels.app.otp import CodeSender, LogCodeSender
from channels.app.routes import app_routes, resolve
from channels.app.service import AppService
from channels.hub import ChannelHub
from ticketing.intake import Intake
from ticketing.webkit import RouteSpec


@dataclass
class AppChannel:
    signin: SignIn
    service: AppService
    feed: Feed
    photo_limits: dict[str, Any]

    async def resolve(self, request: web.Request) -> ResidentPrincipal:
        """The signed-in resident of the request, or the app's 401 problem."""
        return await resolve(self.signin, request)


APP_CHANNEL = web.AppKey("app_channel", AppChannel)


def setup(
    app: web.Application,
    hub: ChannelHub,
    intake: Intake,
    settings: Any,
    *,
    code_sender: CodeSender | None = None,
) -> AppChannel:
    """Build the app channel from the service's settings and register its sender."""

    def s(name: str, default: Any) -> Any:
        value = getattr(settings, name, None)
        return default if value is None else value

    config = SignInConfig(
        code_ttl_s=int(s("app_code_ttl_s", const.CODE_TTL_S)),
        max_attempts=int(s("app_code_max_attempts", const.CODE_MAX_ATTEMPTS)),
        resend_s=int(s("app_code_resend_s", const.CODE_RESEND_S)),
        per_phone_hour=int(s("app_codes_per_phone_hour", const.CODES_PER_PHONE_HOUR)),
        per_ip_hour=int(s("app_codes_per_ip_hour", const.CODES_PER_IP_HOUR)),
        token_ttl_s=int(s("app_token_ttl_s", const.TOKEN_TTL_S)),
    )
    sender = code_sender or LogCodeSender(reveal=bool(s("app_dev_codes", False)))
    signin = SignIn(hub.deps, sender, config)
    feed = Feed(hub.deps, float(s("app_sse_heartbeat_s", const.SSE_HEARTBEAT_S)))
    hub.register_sender(AppSender(feed))
    service = AppService(
        hub.deps, hub, intake, signin, Path(s("attachment_dir", "./var/attachments"))
    )
    types = s("app_photo_types", const.PHOTO_TYPES)
    channel = AppChannel(
        signin=signin,
        service=service,
        feed=feed,
        photo_limits={
            "max_photos": const.MAX_PHOTOS,
            "max_bytes": int(s("app_photo_max_bytes", const.PHOTO_MAX_BYTES)),
            "types": frozenset(t.strip() for t in str(types).split(",") if t.strip()),
        },
    )
    app[APP_CHANNEL] = channel

    async def end_streams(_: web.Application) -> None:
        await feed.stop()  # open SSE streams end now, not at the shutdown timeout

    app.on_shutdown.append(end_streams)
    return channel


def routes(channel: AppChannel) -> list[RouteSpec]:
    return app_routes(
        channel.signin,
        channel.service,
        channel.feed,
        photo_limits=channel.photo_limits,
    )


__all__ = [
    "APP_CHANNEL",
    "AppChannel",
    "AppNotified",
    "AppSender",
    "CodeSender",
    "LogCodeSender",
    "ResidentPrincipal",
    "SignInRefused",
    "routes",
    "setup",
]
