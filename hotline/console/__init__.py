"""The agent console and supervisor wall: served by the service at /console/.

`Console` holds the live queue feed and the wall; `hotline/app.py` adds its routes
and runs `lifecycle` as a cleanup context after the bus has started. Other parts
plug in here as they land: `console.feed.enrichers[kind]` adds display fields to
queue items of a kind (conversation, call), `console.wall.phone_sources` adds the
ACD's figures to the wall.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from hotline.console.feed import QueueFeed
from hotline.console.routes import console_routes
from hotline.console.wall import Wall
from ticketing.handlers import Deps
from ticketing.webkit import RouteSpec

__all__ = ["Console"]


class Console:
    def __init__(self, deps: Deps, warn_fraction: float, *, reconcile_s: float = 10.0) -> None:
        self.deps = deps
        self.feed = QueueFeed(deps, reconcile_s=reconcile_s)
        self.wall = Wall(deps, warn_fraction)

    def routes(self) -> list[RouteSpec]:
        return console_routes(self.deps, self.feed, self.wall)

    async def on_shutdown(self, app: web.Application) -> None:
        """Close the sockets first: the server waits for open handlers before cleanup,
        and a console's socket would otherwise hold a restart up for a minute. Clients
        reconnect (to another instance, or this one restarted) and resume."""
        await self.feed.close_all()

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """Cleanup context: subscribe first, then load the mirror, so no event is missed."""
        unsubscribe = self.deps.bus.subscribe(self.feed.on_event)
        await self.feed.start()
        yield
        unsubscribe()
        await self.feed.stop()
