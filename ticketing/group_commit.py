"""One writer task that commits whatever has queued up as one transaction.

Tickets and inbound channel messages are both acknowledged only after their commit,
and both arrive in bursts: a single writer that takes everything waiting and commits
it together turns N fsyncs into one. A batch that fails is halved and retried, so one
bad item never fails its neighbours; on stop, nobody is left waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

R = TypeVar("R")


class Pending(Protocol):
    """A queued item: its submitter awaits `future`."""

    future: asyncio.Future[Any]


P = TypeVar("P", bound=Pending)


class GroupCommit(Generic[P, R]):
    """`commit(batch)` writes a batch in one transaction and returns one result per
    item; `committed(batch, results)` runs after it (results already delivered)."""

    def __init__(
        self,
        name: str,
        commit: Callable[[list[P]], Awaitable[list[R]]],
        committed: Callable[[list[P], list[R]], None],
        *,
        max_batch: int,
        may_overlap: Callable[[], bool] | None = None,
    ) -> None:
        """`may_overlap`: whether the next batch may start while one is still being
        committed (at most two at once). The committer says so when its store can
        take a second transaction queued behind the first (the SQLite writer process:
        the next batch is already in its pipe when the first commits, instead of
        waiting for our round trip)."""
        self.name = name
        self.max_batch = max_batch
        self._commit = commit
        self._committed = committed
        self._may_overlap = may_overlap
        self._queue: asyncio.Queue[P] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self.batches = 0  # for the benchmarks' reports

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Stop writing (a batch in flight fails) and fail what is still queued."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._in_flight):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            _shutting_down([self._queue.get_nowait()])

    def put(self, item: P) -> None:
        if self._task is None:
            raise RuntimeError(f"{self.name} not started")
        self._queue.put_nowait(item)

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if self._may_overlap is None:
                await self._one(self._take(first))
                continue
            # room for one more only beside a batch the committer lets us overlap
            try:
                while self._in_flight and (len(self._in_flight) >= 2 or not self._may_overlap()):
                    await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                _shutting_down([first])
                raise
            batch = self._take(first)
            task = asyncio.create_task(self._one(batch), name=f"{self.name}-batch")
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            # a task cancelled before its first step never runs `_one`'s handler
            task.add_done_callback(lambda t, batch=batch: t.cancelled() and _shutting_down(batch))
            await asyncio.sleep(0)  # it sends (or queues for the lock) before we go on

    def _take(self, first: P) -> list[P]:
        batch = [first]
        while len(batch) < self.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _one(self, batch: list[P]) -> None:
        try:
            await self._isolating(batch)
        except asyncio.CancelledError:
            _shutting_down(batch)  # stopped mid-batch: nobody may wait forever
            raise
        except Exception:  # never let the writer die
            log.exception("%s failed on a batch of %d", self.name, len(batch))

    async def _isolating(self, batch: list[P]) -> None:
        try:
            results = await self._commit(batch)
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            mid = len(batch) // 2  # one bad item must not fail its neighbours
            await self._isolating(batch[:mid])
            await self._isolating(batch[mid:])
            return
        self.batches += 1
        for p, result in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)
        self._committed(batch, results)


def _shutting_down(batch: list[Any]) -> None:
    """Whoever still waits on an item of `batch` hears that the service is stopping."""
    for p in batch:
        if not p.future.done():
            p.future.set_exception(RuntimeError("service shutting down"))
