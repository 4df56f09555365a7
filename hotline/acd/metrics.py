"""The phone line's numbers as Prometheus metrics, on the service's registry.

GB/T 33358-2016 asks for an answer within 15 s and >= 95 % of calls connected in
any 24 h: both are exported ready-made (`hotline_calls_service_level`,
`hotline_calls_connection_rate_24h`) as well as the raw counters and the wait
histogram a dashboard needs to compute them over other windows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hotline.acd.domain import AgentState

if TYPE_CHECKING:
    from hotline.acd.domain import Acd


class AcdMetrics:
    def __init__(self, registry: CollectorRegistry, acd: Acd) -> None:
        self.registry = r = registry
        self.offered = Counter("hotline_calls_offered", "Calls that reached the queue", registry=r)
        self.answered = Counter("hotline_calls_answered", "Calls answered by an agent", registry=r)
        self.abandoned = Counter(
            "hotline_calls_abandoned", "Callers who hung up while waiting", registry=r
        )
        self.within_target = Counter(
            "hotline_calls_answered_within_target",
            "Calls answered within the service-level target (15 s)",
            registry=r,
        )
        self.callbacks = Counter(
            "hotline_callbacks_requested", "Callback requests by reason", ["reason"], registry=r
        )
        self.emergencies = Counter(
            "hotline_emergency_handoffs",
            "Emergency hand-offs by line and outcome",
            ["line", "outcome"],
            registry=r,
        )
        self.wait = Histogram(
            "hotline_call_wait_seconds",
            "Time from queue entry to answer (average speed of answer = sum / count)",
            buckets=(1, 2, 5, 10, 15, 20, 30, 60, 120, 300),
            registry=r,
        )
        self.agents = Gauge("hotline_agents", "Agents by state", ["state"], registry=r)
        self.waiting = Gauge("hotline_calls_waiting", "Callers in the queue now", registry=r)
        self.longest = Gauge(
            "hotline_queue_longest_wait_seconds", "Longest current wait in the queue", registry=r
        )
        self.asa = Gauge(
            "hotline_calls_average_speed_of_answer_seconds",
            "Average speed of answer since start",
            registry=r,
        )
        self.service_level = Gauge(
            "hotline_calls_service_level",
            "Share of answered calls answered within the target",
            registry=r,
        )
        self.connection_rate = Gauge(
            "hotline_calls_connection_rate_24h",
            "Answered / (answered + abandoned) over the last 24 h",
            registry=r,
        )
        self.deferred_steps = Gauge(
            "hotline_call_steps_deferred",
            "Call steps kept in memory, to be written when the database is back (0 while it is up)",
            registry=r,
        )
        # read at scrape time, so they are right even when nothing happens
        self.waiting.set_function(lambda: len(acd.queue))
        self.longest.set_function(acd.longest_wait_s)
        self.asa.set_function(lambda: acd.sl.asa_s)
        self.service_level.set_function(lambda: acd.sl.service_level)
        self.connection_rate.set_function(lambda: acd.sl.connection_rate(acd.clock()))
        self._acd = acd
        # one child per state, looked up once: every agent move refreshes them all
        self._by_state = [(s.value, self.agents.labels(s.value)) for s in AgentState]
        self.refresh_agents()

    def refresh_agents(self) -> None:
        counts = self._acd.counts()
        for state, gauge in self._by_state:
            gauge.set(counts.get(state, 0))

    def answered_call(self, wait_s: float, target_s: float) -> None:
        self.answered.inc()
        self.wait.observe(wait_s)
        if wait_s <= target_s:
            self.within_target.inc()
