"""Which flow answers a call now: the 12345 default in working time, the after-hours
flow outside it. The hotline passes the ticketing calendar's working-time test, so
holidays and make-up working days follow the same official calendar as deadlines."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime

from ivr.loader import Flow

log = logging.getLogger("ivr")

DEFAULT_FLOW = "12345-default"
AFTER_HOURS_FLOW = "12345-after-hours"


def select_flow(
    flows: Mapping[str, Flow],
    is_working_time: Callable[[datetime], bool],
    now: datetime,
    *,
    working: str = DEFAULT_FLOW,
    after_hours: str = AFTER_HOURS_FLOW,
) -> Flow:
    """The flow for a call arriving at ``now``.

    Fails towards the agents: if the calendar cannot answer, or there is no
    after-hours flow, the caller gets the working-time flow (a queue, not silence).
    """
    try:
        open_now = is_working_time(now)
    except Exception as exc:
        log.warning("ivr: working-time check failed (%s); using %s", type(exc).__name__, working)
        open_now = True
    if not open_now and after_hours in flows:
        return flows[after_hours]
    return flows[working]
