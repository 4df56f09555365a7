"""Reading database driver errors: which SQLSTATE they carry, and whether they mean
"the database cannot serve now" rather than "this statement is wrong".

The card's hot paths use asyncpg directly (``pgpool``) as well as SQLAlchemy, so an
error arrives either as the driver's own exception or wrapped (``DBAPIError.orig``,
``__cause__``). The partner API answers the unavailable kind 503 with Retry-After, as
a partner's retry is the right response to PostgreSQL being out of connection slots;
a 500 would say the city has a bug. (``ticketing.store`` classifies the hotline's
errors the same way; the packages do not import each other.)
"""

from __future__ import annotations

# 08 connection exception, 53 insufficient resources (too many connections, disk
# full, out of memory), 57P operator intervention (shutdown, recovery, starting up)
UNAVAILABLE_SQLSTATES = ("08", "53", "57P")


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE of a driver error, looking through a few wrappers."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        code = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if isinstance(code, str):
            return code
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


def unavailable(exc: BaseException) -> bool:
    """A driver error whose SQLSTATE says the database cannot serve now, or a failure to
    reach it at all (``OSError``: refused, reset, unreachable)."""
    code = sqlstate(exc)
    if code is not None:
        return code.startswith(UNAVAILABLE_SQLSTATES)
    return isinstance(exc, OSError) or isinstance(getattr(exc, "orig", None), OSError)


def first_line(exc: BaseException) -> str:
    """The driver's own message, one line: what a log needs of an unavailable database."""
    return (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0][:200]
