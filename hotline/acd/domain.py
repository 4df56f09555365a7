"""The ACD's rules as plain code: agents, their states, the queue, who gets which call.

No I/O and no asyncio here: the service feeds facts in (a call arrived, a phone
rang out, a call ended, the clock moved) and acts on the decisions that come
back (ring these agents, offer this caller a callback). Time is a float of
seconds from an injected clock so tests can move it by hand.

Why the rules are what they are:
- GB/T 33358-2016 judges a centre by calls answered within 15 s and by the share
  of calls connected over 24 h, so the queue is strict first-come-first-served
  inside a priority band and the service-level bookkeeping lives next to it.
- An agent who lets the phone ring out N times is probably away from the desk;
  putting them on break stops every following caller from losing a ring timeout.
- Calls and text conversations share people: a call weighs 1.0, a chat a
  fraction, and neither queue may push an agent beyond the configured load.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any


class AgentState(StrEnum):
    LOGGED_OUT = "logged_out"
    AVAILABLE = "available"
    RINGING = "ringing"
    ON_CALL = "on_call"
    WRAP_UP = "wrap_up"
    BREAK = "break"


class Strategy(StrEnum):
    LONGEST_IDLE = "longest-idle"
    SKILLS = "skills-based"
    RING_ALL = "ring-all"


class Priority(IntEnum):
    """Lower is served first."""

    EMERGENCY = 0
    RETURNING = 1
    NORMAL = 2


# Which moves an agent (or the ACD on their behalf) may make. Ringing and talking
# cannot be left by a button: the call decides.
TRANSITIONS: dict[AgentState, frozenset[AgentState]] = {
    AgentState.LOGGED_OUT: frozenset({AgentState.AVAILABLE, AgentState.BREAK}),
    AgentState.AVAILABLE: frozenset(
        {AgentState.RINGING, AgentState.BREAK, AgentState.LOGGED_OUT, AgentState.ON_CALL}
    ),
    AgentState.RINGING: frozenset({AgentState.ON_CALL, AgentState.AVAILABLE, AgentState.BREAK}),
    AgentState.ON_CALL: frozenset({AgentState.WRAP_UP}),
    AgentState.WRAP_UP: frozenset(
        {AgentState.AVAILABLE, AgentState.BREAK, AgentState.LOGGED_OUT, AgentState.ON_CALL}
    ),
    AgentState.BREAK: frozenset({AgentState.AVAILABLE, AgentState.LOGGED_OUT}),
}
# What an agent may ask for themselves (the rest is the ACD's to set).
SELF_SERVICE = frozenset({AgentState.AVAILABLE, AgentState.BREAK})


class AcdError(Exception):
    """A request the ACD refuses; `code` is stable for the HTTP layer."""

    code = "acd-error"


class IllegalAgentMove(AcdError):
    code = "illegal-agent-move"


class UnknownAgent(AcdError):
    code = "unknown-agent"


class UnknownCall(AcdError):
    code = "unknown-call"


@dataclass(frozen=True)
class Rules:
    strategy: Strategy = Strategy.LONGEST_IDLE
    ring_timeout_s: float = 15.0
    missed_ring_limit: int = 3
    wrap_up_s: float = 30.0
    max_wait_s: float = 120.0  # then the caller is offered a callback
    queue_capacity: int = 500  # beyond it a caller goes straight to a callback
    service_level_s: float = 15.0
    chat_weight: float = 0.25
    max_load: float = 1.5
    default_handle_s: float = 180.0  # expected-wait estimate until real calls teach us
    window_s: float = 24 * 3600.0


@dataclass
class Agent:
    username: str
    dial_string: str
    skills: frozenset[str] = frozenset()
    state: AgentState = AgentState.LOGGED_OUT
    since: float = 0.0
    idle_since: float = 0.0  # when they last became free; longest idle goes first
    missed: int = 0
    wrap_until: float | None = None
    call: str | None = None
    chats: int = 0
    reason: str | None = None
    seq: int = 0  # login order: breaks ties between equally ranked agents

    def load(self, rules: Rules) -> float:
        busy = 1.0 if self.state in (AgentState.RINGING, AgentState.ON_CALL) else 0.0
        return busy + self.chats * rules.chat_weight


@dataclass
class QueuedCall:
    uuid: str
    caller: str
    priority: Priority = Priority.NORMAL
    skills: frozenset[str] = frozenset()
    entered_at: float = 0.0
    seq: int = 0
    tried: set[str] = field(default_factory=set)
    ringing: frozenset[str] = frozenset()
    callback_offered: bool = False

    def sort_key(self) -> tuple[int, float, int]:
        return (int(self.priority), self.entered_at, self.seq)


@dataclass(frozen=True)
class AgentChanged:
    username: str
    state: AgentState
    previous: AgentState
    reason: str | None = None
    call: str | None = None


@dataclass(frozen=True)
class Offer:
    """Ring these agents (one, or several for ring-all) for this call."""

    call: str
    agents: tuple[str, ...]
    dial_strings: tuple[str, ...]
    timeout_s: float


@dataclass(frozen=True)
class CallbackDue:
    """The caller has waited `max_wait_s`: offer a callback (once per call)."""

    call: str
    waited_s: float


@dataclass(frozen=True)
class Answered:
    call: str
    agent: str
    wait_s: float


@dataclass(frozen=True)
class Abandoned:
    call: str
    wait_s: float


@dataclass
class ServiceLevel:
    """Rolling 24 h record of outcomes plus counters since start.

    Callbacks and emergency hand-offs leave the queue without an answer or an
    abandon; they are counted apart so the answer rate is not flattered.
    """

    window_s: float = 24 * 3600.0
    target_s: float = 15.0
    offered: int = 0
    answered: int = 0
    abandoned: int = 0
    within_target: int = 0
    wait_total_s: float = 0.0
    _recent: deque[tuple[float, bool, float]] = field(default_factory=deque)

    def record_offered(self) -> None:
        self.offered += 1

    def record_answer(self, now: float, wait_s: float) -> None:
        self.answered += 1
        self.wait_total_s += wait_s
        if wait_s <= self.target_s:
            self.within_target += 1
        self._recent.append((now, True, wait_s))
        self._trim(now)

    def record_abandon(self, now: float, wait_s: float) -> None:
        self.abandoned += 1
        self._recent.append((now, False, wait_s))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - self.window_s:
            self._recent.popleft()

    @property
    def asa_s(self) -> float:
        """Average speed of answer (seconds), over answered calls."""
        return self.wait_total_s / self.answered if self.answered else 0.0

    @property
    def service_level(self) -> float:
        """Share of answered calls answered within the target (1.0 with none yet)."""
        return self.within_target / self.answered if self.answered else 1.0

    def connection_rate(self, now: float) -> float:
        """Answered / (answered + abandoned) over the last window (1.0 with none)."""
        self._trim(now)
        done = len(self._recent)
        if not done:
            return 1.0
        return sum(1 for _, ok, _ in self._recent if ok) / done


class Acd:
    """Agents and one call queue. Methods return what changed; nothing else happens.

    Every arrival, offer, answer and hang-up asks the same questions (who is free,
    how many are staffed, where is this caller in line), so their answers are kept
    up to date as agents move and callers come and go instead of being recounted
    from every agent and every caller each time: the agents' states are counted,
    the agents free for a call are kept apart, and the queue is kept in order.
    `agents` and `queue` stay plain dicts to read; only this class changes them.
    """

    def __init__(self, rules: Rules, clock: Callable[[], float]) -> None:
        self.rules = rules
        self.clock = clock
        self.agents: dict[str, Agent] = {}
        self.queue: dict[str, QueuedCall] = {}
        self.sl = ServiceLevel(rules.window_s, rules.service_level_s)
        self._seq = itertools.count()
        self._handle_s = rules.default_handle_s  # moving average of talk + wrap-up
        self._states: dict[AgentState, int] = dict.fromkeys(AgentState, 0)
        self._free: dict[str, Agent] = {}  # agents who can take a call now
        # (sort key, uuid) of every queued call, in queue order
        self._line: list[tuple[tuple[int, float, int], str]] = []

    # ------------------------------------------------------------ agents

    def _agent(self, username: str) -> Agent:
        try:
            return self.agents[username]
        except KeyError:
            raise UnknownAgent(username) from None

    def _move(
        self, a: Agent, to: AgentState, reason: str | None = None, *, force: bool = False
    ) -> AgentChanged:
        if not force and to not in TRANSITIONS[a.state]:
            raise IllegalAgentMove(f"{a.username}: {a.state.value} -> {to.value} is not allowed")
        prev, now = a.state, self.clock()
        a.state, a.since, a.reason = to, now, reason
        self._states[prev] -= 1
        self._states[to] += 1
        if to is AgentState.AVAILABLE and prev is not AgentState.RINGING:
            a.idle_since = now  # a ring-out does not reset the idle clock
        if to is not AgentState.WRAP_UP:
            a.wrap_until = None
        if to in (AgentState.AVAILABLE, AgentState.BREAK, AgentState.LOGGED_OUT):
            a.call = None
        self._refresh_free(a)
        return AgentChanged(a.username, to, prev, reason, a.call)

    def _refresh_free(self, a: Agent) -> None:
        """Keep `_free` equal to the agents for whom `_can_take_call` holds (it depends
        on the state and the open chats only: call after either changes)."""
        if self._can_take_call(a):
            self._free[a.username] = a
        else:
            self._free.pop(a.username, None)

    def login(
        self,
        username: str,
        dial_string: str,
        skills: Iterable[str] = (),
        *,
        state: AgentState = AgentState.AVAILABLE,
    ) -> list[AgentChanged]:
        a = self.agents.get(username)
        if a is None:
            a = self.agents[username] = Agent(username, dial_string, seq=len(self.agents))
            self._states[a.state] += 1
        elif a.state is not AgentState.LOGGED_OUT:
            # a second login (new browser tab) updates the phone and skills only
            if a.state in (AgentState.RINGING, AgentState.ON_CALL) and a.dial_string != dial_string:
                raise IllegalAgentMove(f"{username} cannot change phone during a call")
            a.dial_string, a.skills = dial_string, frozenset(skills)
            return []
        a.dial_string, a.skills, a.missed = dial_string, frozenset(skills), 0
        if state not in SELF_SERVICE:
            raise IllegalAgentMove(f"cannot log in as {state.value}")
        return [self._move(a, state, "login")]

    def logout(self, username: str) -> list[AgentChanged]:
        a = self._agent(username)
        if a.state is AgentState.LOGGED_OUT:
            return []
        return [self._move(a, AgentState.LOGGED_OUT, "logout")]

    def set_state(
        self, username: str, state: AgentState, reason: str | None = None
    ) -> list[AgentChanged]:
        """The agent's own request: available (incl. ending wrap-up early) or break."""
        a = self._agent(username)
        if state not in SELF_SERVICE:
            raise IllegalAgentMove(f"{state.value} is set by the ACD, not by the agent")
        if a.state is state:
            return []
        if state is AgentState.AVAILABLE:
            a.missed = 0
        return [self._move(a, state, reason)]

    def can_take_chat(self, username: str) -> bool:
        """The text queue asks before giving this agent another conversation."""
        a = self.agents.get(username)
        if a is None or a.state in (AgentState.LOGGED_OUT, AgentState.BREAK):
            return False
        return a.load(self.rules) + self.rules.chat_weight <= self.rules.max_load + 1e-9

    def chat_allowed(self, username: str, open_chats: int) -> bool | None:
        """May this agent take one more conversation beside `open_chats` they hold?
        None when the phone line has no say (not signed in to it: a text-only agent)."""
        a = self.agents.get(username)
        if a is None or a.state is AgentState.LOGGED_OUT:
            return None
        if a.state is AgentState.BREAK:
            return False
        busy = 1.0 if a.state in (AgentState.RINGING, AgentState.ON_CALL) else 0.0
        load = busy + (open_chats + 1) * self.rules.chat_weight
        return load <= self.rules.max_load + 1e-9

    def set_chats(self, username: str, chats: int) -> None:
        a = self._agent(username)
        a.chats = max(0, chats)
        self._refresh_free(a)

    def _can_take_call(self, a: Agent) -> bool:
        return (
            a.state is AgentState.AVAILABLE
            and a.chats * self.rules.chat_weight + 1.0 <= self.rules.max_load + 1e-9
        )

    # ------------------------------------------------------------ queue

    def enqueue(
        self,
        uuid: str,
        caller: str,
        priority: Priority = Priority.NORMAL,
        skills: Iterable[str] = (),
    ) -> QueuedCall | None:
        """None when the queue is full (the caller gets a callback instead).

        An emergency is never refused for capacity: it must not wait behind anybody.
        """
        if uuid in self.queue:
            return self.queue[uuid]
        if len(self.queue) >= self.rules.queue_capacity and priority is not Priority.EMERGENCY:
            return None
        q = QueuedCall(uuid, caller, priority, frozenset(skills), self.clock(), next(self._seq))
        self.queue[uuid] = q
        bisect.insort(self._line, (q.sort_key(), uuid))
        self.sl.record_offered()
        return q

    def _dequeue(self, uuid: str) -> QueuedCall | None:
        """Out of `queue` and out of line (every way of leaving the queue comes here)."""
        q = self.queue.pop(uuid, None)
        if q is not None:
            i = bisect.bisect_left(self._line, (q.sort_key(),))
            del self._line[i]
        return q

    def waiting(self) -> list[QueuedCall]:
        """The queue in order: priority band, then arrival."""
        return [self.queue[uuid] for _, uuid in self._line]

    def position(self, uuid: str) -> int:
        """1-based place in line (calls already ringing an agent count as ahead)."""
        q = self.queue.get(uuid)
        if q is None:
            raise UnknownCall(uuid)
        return bisect.bisect_left(self._line, (q.sort_key(),)) + 1

    def staffed(self) -> int:
        return (
            len(self.agents) - self._states[AgentState.LOGGED_OUT] - self._states[AgentState.BREAK]
        )

    def expected_wait_s(self, uuid: str) -> float:
        """Position x average handle time / agents staffed: crude, honest, cheap.

        With nobody staffed the answer is the longest wait we promise before a
        callback, since that is what will happen.
        """
        pos = self.position(uuid)
        staffed = self.staffed()
        if not staffed:
            return self.rules.max_wait_s
        free_now = len(self._free)
        if pos <= free_now:
            return 0.0
        return (pos - free_now) * self._handle_s / staffed

    def longest_wait_s(self) -> float:
        now = self.clock()
        return max((now - q.entered_at for q in self.queue.values()), default=0.0)

    def _rank_key(self, q: QueuedCall) -> Callable[[Agent], tuple[Any, ...]]:
        """Who gets the call first (lowest key). Login order settles a tie, as it did
        when the agents were sorted in login order."""
        if self.rules.strategy is Strategy.SKILLS:
            # specialists first: keep the generalists free for calls only they can take
            return lambda a: (len(a.skills - q.skills), a.idle_since, a.seq)
        return lambda a: (a.idle_since, a.username)

    def _rank(self, q: QueuedCall, agents: list[Agent]) -> list[Agent]:
        """Ring-all rings every one of them (in this order); the other strategies ring
        the first only, found with one pass instead of a sort of every free agent."""
        key = self._rank_key(q)
        if self.rules.strategy is Strategy.RING_ALL:
            return sorted(agents, key=key)
        return [min(agents, key=key)]

    def dispatch(self) -> list[Offer]:
        """Match waiting calls (in priority order) with free agents; mark them ringing.

        Every arrival, answer, hang-up and tick dispatches. The agents free for a
        call are kept up to date as agents move (`_free`), and with none free (a busy
        centre's usual state) the queue is not even looked at.
        """
        offers: list[Offer] = []
        if not self._free:
            return offers
        free = list(self._free.values())
        for q in self.waiting():
            if not free:
                break
            if q.ringing:
                continue
            agents = [a for a in free if q.skills <= a.skills and a.username not in q.tried]
            if not agents and q.tried:
                # everyone suitable has already let it ring: start another round
                # rather than leave the caller with nobody
                retry = [a for a in free if q.skills <= a.skills]
                if retry:
                    q.tried.clear()
                    agents = retry
            if not agents:
                continue
            chosen = self._rank(q, agents)
            for a in chosen:
                self._move(a, AgentState.RINGING, "offer")
                a.call = q.uuid
            q.ringing = frozenset(a.username for a in chosen)
            if len(chosen) == 1:
                free.remove(chosen[0])
            else:
                free = [a for a in free if a.username not in q.ringing]
            offers.append(
                Offer(
                    q.uuid,
                    tuple(a.username for a in chosen),
                    tuple(a.dial_string for a in chosen),
                    self.rules.ring_timeout_s,
                )
            )
        return offers

    def ring_answered(self, uuid: str, username: str) -> tuple[Answered, list[AgentChanged]]:
        """The agent picked up: the call leaves the queue; other rung phones stop."""
        q = self.queue.get(uuid)
        if q is None or username not in q.ringing:
            raise UnknownCall(f"{uuid} is not ringing {username}")
        self._dequeue(uuid)
        now = self.clock()
        wait = now - q.entered_at
        self.sl.record_answer(now, wait)
        changes = [
            self._move(self.agents[other], AgentState.AVAILABLE, "answered_elsewhere")
            for other in q.ringing - {username}
            if self._rings_for(other, uuid)
        ]
        a = self.agents[username]
        a.missed = 0
        changes.append(self._move(a, AgentState.ON_CALL, "answered"))
        a.call = uuid
        return Answered(uuid, username, wait), changes

    def _rings_for(self, username: str, uuid: str) -> bool:
        """Whether this agent's phone is still ringing for this call: a rung agent may
        have gone available or on break meanwhile, or be ringing for another call now
        (ring-all rings several phones; only the ones still ringing for it stop)."""
        a = self.agents.get(username)
        return a is not None and a.state is AgentState.RINGING and a.call == uuid

    def ring_failed(self, uuid: str, usernames: Iterable[str], cause: str) -> list[AgentChanged]:
        """No answer, busy or rejected: count the miss, put the call back in line."""
        changes = []
        q = self.queue.get(uuid)
        for name in usernames:
            a = self.agents.get(name)
            if a is None or a.state is not AgentState.RINGING or a.call != uuid:
                continue
            if cause in ("no_answer", "rejected"):
                a.missed += 1
            if a.missed >= self.rules.missed_ring_limit:
                changes.append(self._move(a, AgentState.BREAK, "missed_rings"))
            else:
                changes.append(self._move(a, AgentState.AVAILABLE, cause))
            if q is not None:
                q.tried.add(name)
        if q is not None:
            q.ringing = q.ringing - set(usernames)
        return changes

    def abandon(self, uuid: str) -> tuple[Abandoned | None, list[AgentChanged]]:
        """The caller hung up while waiting (or while an agent's phone rang)."""
        q = self._dequeue(uuid)
        if q is None:
            return None, []
        now = self.clock()
        wait = now - q.entered_at
        self.sl.record_abandon(now, wait)
        changes = [
            self._move(self.agents[n], AgentState.AVAILABLE, "caller_hung_up")
            for n in q.ringing
            if self._rings_for(n, uuid)
        ]
        return Abandoned(uuid, wait), changes

    def leave_queue(self, uuid: str) -> list[AgentChanged]:
        """Out of line without answer or abandon: callback taken, emergency hand-off."""
        q = self._dequeue(uuid)
        if q is None:
            return []
        return [
            self._move(self.agents[n], AgentState.AVAILABLE, "call_left_queue")
            for n in q.ringing
            if self._rings_for(n, uuid)
        ]

    def call_ended(self, username: str, talk_s: float) -> list[AgentChanged]:
        """The agent's call is over: wrap-up, timed, before the next call."""
        a = self._agent(username)
        if a.state is not AgentState.ON_CALL:
            return []
        self._handle_s = 0.8 * self._handle_s + 0.2 * (talk_s + self.rules.wrap_up_s)
        ch = self._move(a, AgentState.WRAP_UP, "call_ended")
        a.wrap_until = self.clock() + self.rules.wrap_up_s
        return [ch]

    def connect_direct(self, username: str, uuid: str) -> list[AgentChanged]:
        """A transferred call lands on this agent without going through the queue."""
        a = self._agent(username)
        if a.state not in (AgentState.AVAILABLE, AgentState.WRAP_UP):
            raise IllegalAgentMove(f"{username} is {a.state.value}")
        ch = self._move(a, AgentState.ON_CALL, "transfer")
        a.call = uuid
        return [ch]

    def tick(self) -> tuple[list[AgentChanged], list[CallbackDue]]:
        """Wrap-ups that ran out; callers who have waited long enough for a callback offer."""
        now = self.clock()
        changes = [
            self._move(a, AgentState.AVAILABLE, "wrap_up_done")
            for a in list(self.agents.values())
            if a.state is AgentState.WRAP_UP and a.wrap_until is not None and a.wrap_until <= now
        ]
        due = []
        for q in self.waiting():
            waited = now - q.entered_at
            if not q.callback_offered and not q.ringing and waited >= self.rules.max_wait_s:
                if q.priority is Priority.EMERGENCY:
                    continue
                q.callback_offered = True
                due.append(CallbackDue(q.uuid, waited))
        return changes, due

    def counts(self) -> dict[str, int]:
        return {s.value: n for s, n in self._states.items()}
