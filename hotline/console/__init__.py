"""The agent console and supervisor wall: served by the service at /console/.

`Console` holds the live queue feed and the wall; `hotline/app.py` adds its routes,
runs `lifecycle` as a cleanup context after the bus has started, and hands it the
phone line's ACD (`attach_phone`) for the wall's live figures. Queue items of the
channels (conversations) and the phone line (calls, callbacks) get their display
fields from `hotline.console.enrich`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from hotline.acd.service import AcdService
from hotline.console import enrich
from hotline.console.feed import QueueFeed
from hotline.console.routes import console_routes
from hotline.console.wall import Wall
from ticketing.handlers import Deps
from ticketing.webkit import RouteSpec

__all__ = ["Console"]


class Console:
    def __init__(self, deps: Deps, warn_fraction: float, *, reconcile_s: float = 10.0) -> None:
        self.deps = deps
        self.feed = QueueFeed(deps, reconcile_s=reconcile_s, enrichers=enrich.ENRICHERS)
        self.wall = Wall(deps, warn_fraction, alerts=self.feed.alerts)

    def attach_phone(self, acd: AcdService) -> None:
        """The ACD whose live figures (queue, agents by state) the wall shows."""
        self.wall.acd = acd

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
