"""Keep SQLite's WAL checkpoints off the commit path.

By default SQLite checkpoints inside whichever COMMIT pushes the WAL past 1,000 pages:
that commit copies every page back into the database file and, with synchronous=FULL,
fsyncs it. Measured on the WeChat webhook at 500 msg/s: commits normally take 2-5 ms,
the one that checkpointed took 185-384 ms, and every message behind it waited (the
whole p99 of that phase). A resident's message, a ticket or a payment should not pay
for the database's housekeeping.

So the service's connections checkpoint on their own only as a safety net (at
`AUTOCHECKPOINT_PAGES`, should this task be stopped), and this task runs a PASSIVE
checkpoint every second on its own connection, in its own thread. A passive checkpoint
takes no writer lock: commits go on appending to the WAL while it copies, and once
everything is copied the next writer starts the WAL again from its beginning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)

AUTOCHECKPOINT_PAGES = 10_000  # ~40 MB of WAL with 4 KiB pages: only if the task stops
INTERVAL_S = 1.0


class WalCheckpointer:
    """One connection, one thread, one PASSIVE checkpoint per interval."""

    def __init__(self, path: Path, interval_s: float = INTERVAL_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self._conn: sqlite3.Connection | None = None  # only touched in the thread
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
        self._failing = False

    def checkpoint(self) -> tuple[int, int, int]:
        """(busy, WAL frames, frames copied), as `PRAGMA wal_checkpoint` says; in the
        thread. The connection is opened lazily, so a missing file is retried later."""
        if self._conn is None:  # mode=rw: never create a database where none is
            uri = f"{self.path.resolve().as_uri()}?mode=rw"
            self._conn = sqlite3.connect(uri, uri=True, timeout=5, isolation_level=None)
        row = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    async def run_once(self) -> tuple[int, int, int] | None:
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(self._executor, self.checkpoint)
        except (sqlite3.Error, OSError) as exc:
            await loop.run_in_executor(self._executor, self._close)
            if not self._failing:  # one line per outage, not one a second
                log.warning("SQLite checkpoint of %s failed (%s); retrying", self.path, exc)
            self._failing = True
            return None
        if self._failing:
            log.info("SQLite checkpoints of %s work again", self.path)
        self._failing = False
        return out

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.run_once()

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=False)


@contextlib.asynccontextmanager
async def checkpointing(path: Path | None, interval_s: float = INTERVAL_S) -> AsyncIterator[None]:
    """Run the checkpointer while the block runs (nothing to do without an SQLite file)."""
    if path is None:
        yield
        return
    cp = WalCheckpointer(path, interval_s)
    task = asyncio.create_task(cp.run_forever(), name="sqlite-checkpoint")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await cp.close()
