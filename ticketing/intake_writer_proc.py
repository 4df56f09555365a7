"""The ticket intake's SQLite writer, as a child process (see `ticketing.intake`).

Why a process: in the service process, every `sqlite3` call of the writer thread had
to take the GIL back from the busy event loop (0.3-0.4 ms a call, ~8 calls a batch),
so a batch took twice its CPU in wall time, and the 32 clients waiting on it set the
throughput. Here the connection has a GIL of its own; the service pays two pipe round
trips a batch instead.

Run by the intake as ``python -I -S intake_writer_proc.py DB_PATH PRAGMA...`` (only the
standard library, so it starts in ~40 ms; the pragmas are the ones
`ticketing.store.sqlite_pragmas` runs, passed in so there is one list of them).
Protocol: length-prefixed pickle frames on stdin/stdout, one reply per request, in
order. Requests:

* ``("begin", [(day, n), ...], expected, statements)``: BEGIN IMMEDIATE, reserve n
  numbers per day. If the last numbers are `expected` (``{day: last}``, the service's
  guess, or None), run `statements` (``[(sql, params), ...]``, built with those
  numbers) and COMMIT: replies ``("ok", ("committed", lasts))``. Otherwise replies
  ``("ok", ("open", lasts))`` with the transaction left open for one of:
* ``("commit", statements)``: run them, COMMIT; replies ``("ok", None)``.
* ``("batch", [(day, n), ...], expected, statements)``: as "begin" with a guess, except
  that a guess that misses is rolled back at once and answered ``("ok", ("missed",
  lasts))``: no transaction is ever left open, so the service may send the next batch
  before this one is answered (two batches in flight; see `ticketing.intake`).
* ``("rollback",)``: ROLLBACK if a transaction is open; replies ``("ok", None)``.

Any error rolls back and replies ``("error", exception)``; the process lives on. After
an error other than a constraint violation the connection is closed and the next batch
opens a fresh one (it may have been the file that went away). EOF on stdin (the service
closed the pipe, or died) rolls back whatever is open and exits: the child never
outlives its service. SIGINT and SIGTERM are ignored for the same reason: a Ctrl-C in
a terminal or a stop of the whole process group must not kill a batch that the
service is still waiting on; the service ends this process itself.

Nothing is logged here but unexpected failures (type and message, never parameters),
on stderr, which the service copies into its own log.
"""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import struct
import sys
from typing import Any, BinaryIO

HEADER = struct.Struct("!I")  # length of the pickle that follows
BUSY_TIMEOUT_S = 30

ALLOCATE_SQL = (
    "INSERT INTO ticket_counter (day, value) VALUES (?, ?) "
    "ON CONFLICT (day) DO UPDATE SET value = ticket_counter.value + ? "
    "RETURNING value"
)


def frame(message: Any) -> bytes:
    """One message as it goes down the pipe: 4-byte big-endian length, then the pickle."""
    body = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


def error_reply(exc: BaseException) -> tuple[str, BaseException]:
    """The exception itself when it survives pickling (sqlite3 errors keep their error
    codes), else a RuntimeError naming it: the service must get an answer either way."""
    try:
        pickle.loads(pickle.dumps(exc, pickle.HIGHEST_PROTOCOL))
    except Exception:
        return "error", RuntimeError(f"{type(exc).__name__}: {exc}")
    return "error", exc


class Writer:
    """The connection and the three requests (plain functions of it, testable in-process)."""

    def __init__(self, path: str, pragmas: list[str]) -> None:
        self.path = path
        self.pragmas = pragmas
        self.conn: sqlite3.Connection | None = None

    def handle(self, request: tuple[Any, ...]) -> tuple[str, Any]:
        try:
            op = request[0]
            if op == "begin":
                _, counts, expected, statements = request
                lasts = self._begin(counts)
                if expected is not None and lasts == expected:
                    self._commit(statements)
                    return "ok", ("committed", lasts)
                return "ok", ("open", lasts)
            if op == "batch":
                _, counts, expected, statements = request
                lasts = self._begin(counts)
                if lasts != expected:
                    self._rollback()  # never left open: a next request may be queued
                    return "ok", ("missed", lasts)
                self._commit(statements)
                return "ok", ("committed", lasts)
            if op == "commit":
                self._commit(request[1])
                return "ok", None
            if op == "rollback":
                self._rollback()
                return "ok", None
            raise ValueError(f"unknown request {op!r}")
        except Exception as exc:
            self._after_error(exc)
            return error_reply(exc)

    def _connect(self) -> sqlite3.Connection:
        # cached_statements: a multi-row INSERT per batch size and table
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, cached_statements=512
        )
        try:
            for sql in self.pragmas:
                conn.execute(sql).close()
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        return conn

    def _begin(self, counts: list[tuple[str, int]]) -> dict[str, int]:
        conn = self.conn or self._connect()
        if conn.in_transaction:
            raise RuntimeError("begin while a transaction is open")
        conn.execute("BEGIN IMMEDIATE")
        lasts = {}
        for day, n in counts:
            (lasts[day],) = conn.execute(ALLOCATE_SQL, (day, n, n)).fetchone()
        return lasts

    def _commit(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        conn = self.conn
        if conn is None or not conn.in_transaction:
            raise RuntimeError("commit without begin")
        for sql, params in statements:
            conn.execute(sql, params)
        conn.execute("COMMIT")

    def _rollback(self) -> None:
        if self.conn is not None and self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _after_error(self, exc: Exception) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            self.close()  # closing rolls back
            return
        if not isinstance(exc, sqlite3.IntegrityError):
            self.close()  # a fresh connection for the next batch

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()  # rolls back an open transaction
            except sqlite3.Error:
                pass


def read_frame(stream: BinaryIO) -> Any | None:
    """The next request, or None at EOF (also a truncated frame: the service is gone)."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    body = stream.read(size)
    if len(body) < size:
        return None
    return pickle.loads(body)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The protocol gets its own descriptors; fd 1 then points at stderr, so a stray
    # print (ours or a library's) can never corrupt a frame.
    rx = os.fdopen(os.dup(0), "rb")
    tx = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    writer = Writer(argv[1], argv[2:])
    try:
        tx.write(frame(("ready", os.getpid())))
        tx.flush()
        while (request := read_frame(rx)) is not None:
            tx.write(frame(writer.handle(request)))
            tx.flush()
    except BrokenPipeError:
        pass  # the service went away mid-reply: nothing to tell anyone
    except BaseException as exc:
        print(f"intake writer process failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
