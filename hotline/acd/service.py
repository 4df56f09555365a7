"""The ACD at work: drives real calls through the switch by the domain's decisions.

One task per waiting caller (`handle_call`) and one per ringing offer; the domain
(`hotline.acd.domain.Acd`) decides, this module acts, records and tells the bus.
Every step is written to the call's row before it is announced, so a restart
loses at most the step in flight. While the database is out of reach the calls go
on all the same: their steps are kept in order and written when it is back
(hotline.calls.store), and only a stop before then loses them (counted in an ERROR).

Calls live on the instance whose socket holds them: the in-memory queue is this
instance's, the database and the bus tell everybody else. Each call's row names its
instance, which beats while it runs (hotline.calls.instances); whichever instance
notices that another stopped or went silent closes the calls it left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from hotline.acd import events as ev
from hotline.acd.domain import (
    Acd,
    AcdError,
    AgentChanged,
    AgentState,
    IllegalAgentMove,
    Offer,
    Priority,
    Rules,
    UnknownCall,
)
from hotline.acd.metrics import AcdMetrics
from hotline.acd.switch import Ring, RingResult, Switch, SwitchError
from hotline.calls import instances, store
from ticketing import workqueue
from ticketing.events import DomainEvent, WorkItemChanged
from ticketing.handlers import Deps, announce
from ticketing.store import StoreUnavailable, log_pass_failure

log = logging.getLogger(__name__)

# what an agent may give as a transfer target or phone: digits, user/..., agent:<name>
_DIAL_RE = re.compile(r"^(?:user|sofia/[A-Za-z0-9_.-]+|loopback|sip)/[A-Za-z0-9_.@+-]{1,80}$")
_EXT_RE = re.compile(r"^[0-9]{2,15}$")


class CallNotFound(AcdError):
    code = "call-not-found"


class NotYourCall(AcdError):
    code = "not-your-call"


class BadTarget(AcdError):
    code = "bad-target"


def dial_string_for(target: str, template: str = "user/{ext}") -> str:
    """An extension or a dial string, checked so nothing reaches the switch's parser
    that could smuggle a second command or channel variables ({...}, commas, spaces)."""
    target = target.strip()
    if _EXT_RE.match(target):
        return template.format(ext=target)
    if _DIAL_RE.match(target):
        return target
    raise BadTarget(f"{target!r} is neither an extension (digits) nor a dial string like user/1001")


@dataclass(frozen=True)
class AcdConfig:
    rules: Rules = field(default_factory=Rules)
    announce_every_s: float = 30.0
    tick_s: float = 1.0
    ring_cycle_s: float = 1.0  # a failed offer holds its agent this long (no busy loops)
    callback_due_s: float = 3600.0
    callback_digit_timeout_s: float = 8.0
    returning_within_h: float = 24.0
    recording_dir: Path | None = None
    dial_template: str = "user/{ext}"
    prompt_dir: Path | None = None
    language: str = "zh"
    hangup_after_agent: bool = True
    # this instance's heartbeat, and the silence after which an instance is presumed
    # dead and its live calls closed (a few missed beats, so a slow beat is no crash)
    heartbeat_s: float = 5.0
    instance_stale_s: float = 30.0


@dataclass
class LiveCall:
    uuid: str
    caller: str
    masked: str
    priority: Priority
    entered: datetime
    state: str = "queued"
    agent: str | None = None
    agent_leg: str | None = None
    consult_leg: str | None = None
    consult_target: str | None = None
    answered: datetime | None = None
    answered_mono: float | None = None
    ticket: str | None = None
    recording: str | None = None
    history: dict[str, Any] = field(default_factory=dict)
    done: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    ring_task: asyncio.Task[None] | None = None
    ringing: tuple[str, ...] = ()
    last_announce: float = 0.0
    busy_with_prompt: bool = False
    room: str | None = None
    emergency: bool = False
    other_legs: list[str] = field(default_factory=list)  # e.g. an emergency centre
    ending: bool = False

    def view(self, acd: Acd) -> dict[str, Any]:
        pos = exp = None
        if self.uuid in acd.queue:
            pos = acd.position(self.uuid)
            exp = round(acd.expected_wait_s(self.uuid), 1)
        return {
            "uuid": self.uuid,
            "caller": self.masked,
            "state": self.state,
            "priority": int(self.priority),
            "agent": self.agent,
            "ringing": list(self.ringing),
            "position": pos,
            "expected_wait_s": exp,
            "entered_at": _iso(self.entered),
            "answered_at": _iso(self.answered),
            "ticket": self.ticket,
            "recording": self.recording,
            "emergency": self.emergency,
        }


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


class AcdService:
    def __init__(
        self,
        deps: Deps,
        switch: Switch,
        config: AcdConfig,
        metrics: AcdMetrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        registry: Any = None,
    ) -> None:
        self.deps = deps
        self.switch = switch
        self.config = config
        self.acd = Acd(config.rules, clock)
        self.clock = clock
        if metrics is None and registry is not None:
            metrics = AcdMetrics(registry, self.acd)
        self.metrics = metrics
        if metrics is not None:
            metrics.deferred_steps.set_function(lambda: store.deferred_call_steps(deps))
        self.calls: dict[str, LiveCall] = {}
        self.answer_clicks: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        # who holds this process's calls, in the database shared with other instances
        self.instance = instances.Instance()
        self._db_clock_offset = timedelta(0)  # measured at start (hotline.calls.instances)
        self.emergency: Any = None  # hotline.emergency.EmergencyDesk, set by the wiring

    @property
    def instance_id(self) -> str:
        return self.instance.id

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Register this instance, then close the calls nobody holds any more: those
        of instances that stopped or went silent, and rows from before instances were
        recorded. Other instances' live calls are theirs, whatever this one finds."""
        self._db_clock_offset = await instances.clock_offset(self.deps)
        now = self._instance_now()
        await instances.register(self.deps, self.instance, now)
        await self._close_orphans(now, include_unowned=True)
        await instances.prune(self.deps, now)
        self._ticker = asyncio.create_task(self._tick_forever(), name="acd-ticker")
        self._heartbeat = asyncio.create_task(self._beat_forever(), name="acd-heartbeat")

    async def stop(self) -> None:
        tasks = [t for t in (self._ticker, self._heartbeat, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._ticker = self._heartbeat = None
        # steps of calls handed in before the stop are committed before the store
        # closes; those the database still refuses are counted in an ERROR, and lost
        with contextlib.suppress(Exception):
            await store.close_call_writes(self.deps)
        # then stopped: what is still live is left over, for the next start (or another
        # instance's next heartbeat) to close at once rather than after the stale wait
        try:
            await instances.mark_stopped(self.deps, self.instance, self._instance_now())
        except Exception:
            log.exception("could not record this instance's stop; its calls close when stale")

    async def heartbeat(self) -> int:
        """One beat: this instance is alive, and the live calls of instances that
        stopped or went silent are closed (their sockets went with them). Returns how
        many were closed.

        A beat that gets through may follow a silence of this instance's own (the
        database was out of reach): the others may have closed calls it still holds,
        so it takes those back first, once the steps kept while it was away are
        written (what the ACD says now then lands on top of them)."""
        now = self._instance_now()
        await instances.beat(self.deps, self.instance, now)
        if store.deferred_call_steps(self.deps):  # bounded: a late beat reads as silence
            await store.flush_call_writes(self.deps, self.config.heartbeat_s)
        await self._reclaim()
        return await self._close_orphans(now, include_unowned=False)

    async def _reclaim(self) -> int:
        back = await instances.reclaim_lost_calls(
            self.deps, self.instance.id, self.deps.clock(), self._held
        )
        if back:
            log.warning(
                "%d calls still live here had been closed as lost by other instances while "
                "this one could not reach the database; taken back: %s",
                len(back),
                ", ".join(f"{uuid} ({state})" for uuid, state in sorted(back.items())),
            )
            await self._items_changed(back)
        return len(back)

    async def _items_changed(self, uuids: Iterable[str]) -> None:
        """Consoles on every instance re-read these calls' queue items now: a sweep or a
        reclaim adds or removes items outside the ACD's own steps, and without this a
        ghost call stayed on the agents' screens (or a caller off them) until the
        feed's next full re-read."""
        await self._publish([WorkItemChanged(workqueue.CALL, uuid) for uuid in uuids])

    def _held(self, uuids: Sequence[str]) -> dict[str, instances.Held]:
        """What this instance knows now of those calls (hotline.calls.instances asks with
        their rows locked). Only a caller still on the line counts: a call that has
        ended here, or is ending, keeps the row the sweep gave it or its own end step's."""
        now = self.deps.clock()
        sla = timedelta(seconds=self.config.rules.service_level_s)
        held: dict[str, instances.Held] = {}
        for uuid in uuids:
            call = self.calls.get(uuid)
            if call is None or call.done.done() or call.ending:
                continue
            item = None
            if uuid in self.acd.queue:  # waiting or ringing: agents see it until answered
                item = store.queue_item(
                    uuid, int(call.priority), call.entered + sla, now, created=call.entered
                )
            held[uuid] = instances.Held(call.state, item)
        return held

    def _instance_now(self) -> datetime:
        """This host's time on the database's clock, for instances to judge each other."""
        return self.deps.clock() + self._db_clock_offset

    async def _close_orphans(self, now: datetime, *, include_unowned: bool) -> int:
        lost = await instances.close_orphaned_calls(
            self.deps,
            self.instance.id,
            now,
            self.config.instance_stale_s,
            include_unowned=include_unowned,
        )
        if lost:
            log.warning(
                "%d calls were live on instances that stopped or went silent; marked lost",
                len(lost),
            )
            await self._items_changed(lost)
        return len(lost)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            try:
                await self.heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_pass_failure(log, exc, "instance heartbeat failed; retrying on the next beat")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("ACD task %s failed", task.get_name(), exc_info=task.exception())

    async def _publish(self, events: Sequence[DomainEvent]) -> None:
        try:
            await announce(self.deps, events)
        except Exception:  # the bus is for liveness; a call must not die of it
            log.exception("publishing %s failed", [e.name for e in events])

    async def _changed(self, changes: Sequence[AgentChanged]) -> None:
        if not changes:
            return
        if self.metrics:
            self.metrics.refresh_agents()
        await self._publish(
            [
                ev.AgentStateEvent(c.username, c.state.value, c.previous.value, c.reason, c.call)
                for c in changes
            ]
        )

    # ------------------------------------------------------------ a caller in the queue

    async def handle_call(
        self,
        uuid: str,
        caller: str,
        *,
        priority: Priority | None = None,
        skills: Sequence[str] = (),
        hangup_after: bool | None = None,
    ) -> str:
        """Queue this (answered) caller and return when the ACD is done with them:
        'completed', 'abandoned', 'callback', 'emergency' or 'overflow'.

        With `hangup_after=False` the caller's leg is left up after the agent hangs
        up, for a post-call survey by the IVR.
        """
        if uuid in self.calls:
            return await asyncio.shield(self.calls[uuid].done)
        now = self.deps.clock()
        # one read per call for both the queue priority and the agent's screen pop;
        # without the database the caller is served all the same, as a first call
        try:
            returning, history = await store.caller_profile(
                self.deps, caller, uuid, now, self.config.returning_within_h
            )
        except StoreUnavailable as exc:
            log.warning("no caller history for %s (the database is out of reach): %s", uuid, exc)
            returning, history = False, {}
        if priority is None:
            priority = Priority.RETURNING if returning else Priority.NORMAL
        call = LiveCall(uuid, caller, store.masked(caller), priority, now, history=history)
        call.last_announce = self.clock()  # the first announcement is made below
        self.calls[uuid] = call
        queued = self.acd.enqueue(uuid, caller, priority, skills)
        if self.metrics:
            self.metrics.offered.inc()
        due = now + timedelta(seconds=self.config.rules.service_level_s)
        await store.insert_call(
            self.deps,
            uuid,
            caller,
            int(priority),
            "queued" if queued else "overflow",
            now,
            work_due=due,
            instance_id=self.instance.id,
        )
        watcher = self._spawn(self._watch_caller(call), f"acd-watch-{uuid}")
        try:
            if queued is None:
                await self._callback(call, "queue_full")
            else:
                if uuid in self.acd.queue:  # the caller may have hung up meanwhile
                    position = self.acd.position(uuid)
                    expect = round(self.acd.expected_wait_s(uuid), 1)
                    await self._publish(
                        [ev.CallQueued(uuid, call.masked, int(priority), position, expect)]
                    )
                await self._pump()
                if call.state == "queued":
                    await self._announce(call)
            outcome = await asyncio.shield(call.done)
        finally:
            watcher.cancel()
            self.calls.pop(uuid, None)
        keep = (
            not (hangup_after if hangup_after is not None else self.config.hangup_after_agent)
            and outcome == "completed"
        )
        if not keep:
            with contextlib.suppress(SwitchError):
                await self.switch.hangup(uuid)
        return outcome

    async def _watch_caller(self, call: LiveCall) -> None:
        cause = await self.switch.wait_hangup(call.uuid)
        if call.done.done():
            return
        now = self.deps.clock()
        if call.uuid in self.acd.queue:
            if call.ring_task:
                call.ring_task.cancel()
            abandoned, changes = self.acd.abandon(call.uuid)
            await self._changed(changes)
            wait = abandoned.wait_s if abandoned else 0.0
            call.state = "abandoned"
            await store.update_call(
                self.deps,
                call.uuid,
                now,
                event="abandoned",
                data={"wait_s": round(wait, 3)},
                leave_queue=True,
                state="abandoned",
                ended_at=now,
                wait_s=wait,
                hangup_cause=cause,
            )
            if self.metrics:
                self.metrics.abandoned.inc()
            await self._publish([ev.CallAbandoned(call.uuid, round(wait, 3))])
            call.done.set_result("abandoned")
            await self._pump()
            return
        await self._end_conversation(call, cause, by="caller")

    async def _announce(self, call: LiveCall, after_s: float = 0.0) -> None:
        """Position and expected wait, then hold music (GB/T 33358 wants the caller told)."""
        if after_s > 0:
            await asyncio.sleep(after_s)
        call.last_announce = self.clock()
        if call.uuid not in self.acd.queue or call.busy_with_prompt:
            return
        call.busy_with_prompt = True
        try:
            pos = self.acd.position(call.uuid)
            for prompt in self._position_prompts(pos):
                if call.state != "queued":
                    return
                await self.switch.play(call.uuid, prompt)
            if call.state == "queued":
                await self.switch.music_on_hold(call.uuid)
        except (SwitchError, UnknownCall):
            pass
        finally:
            call.busy_with_prompt = False

    def prompt(self, name: str) -> str:
        base = self.config.prompt_dir
        if base is None:
            return name
        return str(base / self.config.language / f"{name}.wav")

    def _position_prompts(self, pos: int) -> list[str]:
        return [
            self.prompt("position_is"),
            *(self.prompt(f"digit_{d}") for d in str(pos)),
            self.prompt("position_suffix"),
        ]

    # ------------------------------------------------------------ offering calls

    async def _pump(self) -> None:
        """Give free agents the longest-waiting calls (by priority); ring them."""
        offers = self.acd.dispatch()
        for offer in offers:
            call = self.calls.get(offer.call)
            if call is None:  # cannot happen: queue and calls move together
                self.acd.leave_queue(offer.call)
                continue
            call.state = "ringing"
            call.ringing = offer.agents
            call.ring_task = self._spawn(self._ring(call, offer), f"acd-ring-{offer.call}")
        for offer in offers:
            await self._changed(
                [
                    AgentChanged(a, AgentState.RINGING, AgentState.AVAILABLE, "offer", offer.call)
                    for a in offer.agents
                ]
            )

    async def _ring(self, call: LiveCall, offer: Offer) -> None:
        started = self.clock()
        now = self.deps.clock()
        await store.update_call(
            self.deps,
            call.uuid,
            now,
            event="offered",
            data={"agents": list(offer.agents)},
            state="ringing",
        )
        pops: list[DomainEvent] = []
        for agent in offer.agents:
            pops.append(ev.CallOffered(call.uuid, agent))
            pops.append(
                ev.CallScreenPop(
                    call.uuid,
                    agent,
                    call.masked,
                    call.history.get("contact"),
                    call.history.get("resident"),
                    call.history.get("open_tickets", []),
                    call.history.get("previous_calls", 0),
                )
            )
        await self._publish(pops)
        try:
            ring = await self._ring_phones(call, offer)
        except asyncio.CancelledError:
            raise
        except SwitchError as exc:
            log.warning("offering %s to %s failed: %s", call.uuid, offer.agents, exc)
            ring = Ring(RingResult.FAILED, cause=str(exc)[:64])
        if call.done.done() or call.uuid not in self.acd.queue:
            if ring.leg:  # the caller left while the agent picked up
                with contextlib.suppress(SwitchError):
                    await self.switch.hangup(ring.leg, "ORIGINATOR_CANCEL")
            return
        if ring.result is RingResult.ANSWERED and ring.leg:
            await self._connect(call, offer.agents[ring.index or 0], ring.leg)
            return
        rest = self.config.ring_cycle_s - (self.clock() - started)
        if rest > 0:
            await asyncio.sleep(rest)
        if call.uuid not in self.acd.queue:
            return
        changes = self.acd.ring_failed(call.uuid, offer.agents, ring.result.value)
        call.state, call.ringing, call.ring_task = "queued", (), None
        await store.update_call(
            self.deps,
            call.uuid,
            self.deps.clock(),
            event="ring_failed",
            data={"agents": list(offer.agents), "result": ring.result.value, "cause": ring.cause},
            state="queued",
        )
        await self._changed(changes)
        await self._pump()
        if call.state == "queued":
            with contextlib.suppress(SwitchError):
                await self.switch.music_on_hold(call.uuid)

    async def _ring_phones(self, call: LiveCall, offer: Offer) -> Ring:
        """Ring the phones; an agent who answers in the console instead is rung with
        auto-answer the moment they click (their SIP phone picks up by itself)."""
        clicks = [self.answer_clicks.setdefault(a, asyncio.Event()) for a in offer.agents]
        for c in clicks:
            c.clear()
        ring_task = asyncio.ensure_future(
            self.switch.ring(
                offer.dial_strings,
                offer.timeout_s,
                caller_id=call.caller,
                variables={"hotline_call_uuid": call.uuid},
            )
        )
        click_tasks = {asyncio.ensure_future(c.wait()): i for i, c in enumerate(clicks)}
        try:
            done, _ = await asyncio.wait(
                {ring_task, *click_tasks}, return_when=asyncio.FIRST_COMPLETED
            )
            if ring_task in done:
                return ring_task.result()
            idx = click_tasks[next(iter(done))]
            ring_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, SwitchError):
                await ring_task
            auto = await self.switch.ring(
                [offer.dial_strings[idx]],
                5.0,
                caller_id=call.caller,
                variables={"sip_auto_answer": "true", "hotline_call_uuid": call.uuid},
            )
            return Ring(auto.result, auto.leg, idx, auto.cause)
        finally:
            ring_task.cancel()
            for t in click_tasks:
                t.cancel()

    async def _connect(self, call: LiveCall, agent: str, leg: str) -> None:
        answered, changes = self.acd.ring_answered(call.uuid, agent)
        now = self.deps.clock()
        call.state, call.agent, call.agent_leg, call.ringing = "talking", agent, leg, ()
        call.answered, call.answered_mono = now, self.clock()
        try:
            await self.switch.stop_media(call.uuid)
            await self.switch.bridge(call.uuid, leg)
        except SwitchError as exc:
            log.warning("bridging %s to %s failed: %s", call.uuid, agent, exc)
        recording = await self._record(call)
        await store.update_call(
            self.deps,
            call.uuid,
            now,
            event="answered",
            actor=agent,
            data={"wait_s": round(answered.wait_s, 3)},
            leave_queue=True,
            state="talking",
            agent=agent,
            answered_at=now,
            wait_s=answered.wait_s,
            recording_path=recording,
        )
        if self.metrics:
            self.metrics.answered_call(answered.wait_s, self.config.rules.service_level_s)
        await self._changed(changes)
        await self._publish([ev.CallAnswered(call.uuid, agent, round(answered.wait_s, 3))])
        self._spawn(self._watch_agent_leg(call, leg), f"acd-agent-{call.uuid}")

    async def _record(self, call: LiveCall) -> str | None:
        base = self.config.recording_dir
        if base is None:
            return None
        day = call.entered.strftime("%Y/%m/%d")
        path = base / day / f"{call.uuid}.wav"
        try:
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            await self.switch.record(call.uuid, str(path))
        except (OSError, SwitchError) as exc:
            log.warning("cannot record %s: %s", call.uuid, exc)
            return None
        call.recording = str(path)
        return call.recording

    async def _watch_agent_leg(self, call: LiveCall, leg: str) -> None:
        cause = await self.switch.wait_hangup(leg)
        if call.done.done() or call.agent_leg != leg:
            return  # a transfer moved the call on; this leg's end is not the call's
        if call.state == "conference":
            # the agent left a three-way call: the caller stays with the third party
            await self._agent_released(call, leg_cause=cause)
            return
        await self._end_conversation(call, cause, by="agent")

    async def _agent_released(self, call: LiveCall, leg_cause: str) -> None:
        agent, talk = call.agent, self._talk_s(call)
        call.agent, call.agent_leg = None, None
        if agent:
            await self._changed(self.acd.call_ended(agent, talk))
            await store.update_call(
                self.deps,
                call.uuid,
                self.deps.clock(),
                event="agent_left",
                actor=agent,
                data={"cause": leg_cause},
            )
            await self._pump()

    def _talk_s(self, call: LiveCall) -> float:
        return self.clock() - call.answered_mono if call.answered_mono is not None else 0.0

    async def _end_conversation(self, call: LiveCall, cause: str, by: str) -> None:
        if call.done.done() or call.ending:
            return
        call.ending = True  # hanging up the other legs wakes their watchers: once only
        now = self.deps.clock()
        talk = self._talk_s(call)
        for leg in (call.agent_leg, call.consult_leg, *call.other_legs):
            if leg:
                with contextlib.suppress(SwitchError):
                    await self.switch.hangup(leg)
        if call.room:  # a conference: everyone left in the room goes too
            with contextlib.suppress(SwitchError):
                await self.switch.end_conference(call.room)
        agent = call.agent
        call.state = "ended"
        await store.update_call(
            self.deps,
            call.uuid,
            now,
            event="ended",
            actor=agent,
            data={"by": by, "cause": cause},
            state="ended",
            ended_at=now,
            talk_s=talk,
            hangup_cause=cause,
        )
        if agent:
            await self._changed(self.acd.call_ended(agent, talk))
        await self._publish([ev.CallEnded(call.uuid, agent, cause, round(talk, 3))])
        if not call.done.done():
            call.done.set_result("completed")
        await self._pump()

    # ------------------------------------------------------------ callbacks and leaving

    async def _callback(self, call: LiveCall, reason: str) -> None:
        """Promise a callback (a work item), tell the caller, let them go.

        A promise we cannot write down (the store is away) is not made: a caller who
        chose a callback stays in line, where an agent still answers; one the full
        queue turned away hears goodbye rather than a promise nobody would keep."""
        now = self.deps.clock()
        try:
            cb_id = await store.create_callback(
                self.deps,
                call.caller,
                reason,
                now,
                call_uuid=call.uuid,
                due_in_s=self.config.callback_due_s,
            )
        except StoreUnavailable:
            log.error(
                "call %s: the callback (%s) could not be recorded, the store is away; %s",
                call.uuid,
                reason,
                "the caller stays in line" if call.uuid in self.acd.queue else "goodbye",
            )
            if call.uuid not in self.acd.queue:
                with contextlib.suppress(SwitchError):
                    await self.switch.stop_media(call.uuid)
                    await self.switch.play(call.uuid, self.prompt("goodbye"))
                if not call.done.done():
                    call.done.set_result("overflow")
            return
        self.acd.leave_queue(call.uuid)
        if call.ring_task:
            call.ring_task.cancel()
        call.state = "callback"
        await store.update_call(
            self.deps,
            call.uuid,
            now,
            event="callback",
            data={"callback": cb_id, "reason": reason},
            leave_queue=True,
            state="callback",
            ended_at=now,
            wait_s=(now - call.entered).total_seconds(),
        )
        if self.metrics:
            self.metrics.callbacks.labels(reason).inc()
        await self._publish([ev.CallbackRequested(cb_id, call.uuid, call.masked, reason)])
        with contextlib.suppress(SwitchError):
            await self.switch.stop_media(call.uuid)
            await self.switch.play(call.uuid, self.prompt("callback_confirmed"))
        if not call.done.done():
            call.done.set_result("callback" if reason != "queue_full" else "overflow")

    async def _offer_callback(self, call: LiveCall) -> None:
        if call.busy_with_prompt or call.state != "queued":
            return
        call.busy_with_prompt = True
        try:
            await self.switch.stop_media(call.uuid)
            digit = await self.switch.read_digit(
                call.uuid, self.prompt("callback_offer"), self.config.callback_digit_timeout_s
            )
        except SwitchError:
            return
        finally:
            call.busy_with_prompt = False
        if call.state != "queued" or call.uuid not in self.acd.queue:
            return
        if digit == "1":
            await self._callback(call, "max_wait")
            await self._pump()
            if call.state == "queued":  # no callback could be promised: still in line
                with contextlib.suppress(SwitchError):
                    await self.switch.music_on_hold(call.uuid)
        else:
            with contextlib.suppress(SwitchError):
                await self.switch.music_on_hold(call.uuid)

    async def take_out_of_queue(self, uuid: str, why: str) -> LiveCall | None:
        """An emergency hand-off takes the caller: never left waiting in line."""
        call = self.calls.get(uuid)
        if call is None:
            return None
        if call.ring_task:
            call.ring_task.cancel()
        await self._changed(self.acd.leave_queue(uuid))
        # handed in, not awaited: a database that hangs (rather than refusing) would
        # otherwise hold the ring of 110/119/120/122 for the writer's stall time; the
        # step is written in its turn, or kept through an outage (hotline.calls.store)
        self._spawn(
            store.update_call(
                self.deps, uuid, self.deps.clock(), event=why, leave_queue=True, state=why
            ),
            f"leave-queue-{uuid}",
        )
        await asyncio.sleep(0)  # handed in before the hand-off's own steps
        call.state = why
        return call

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_pass_failure(log, exc, "ACD tick failed")

    async def tick(self) -> None:
        changes, due = self.acd.tick()
        await self._changed(changes)
        for d in due:
            call = self.calls.get(d.call)
            if call:
                self._spawn(self._offer_callback(call), f"acd-callback-{d.call}")
        now = self.clock()
        due = [
            call
            for call in self.calls.values()
            if call.state == "queued"
            and not call.busy_with_prompt
            and now - call.last_announce >= self.config.announce_every_s
        ]
        # Callers who came in together fall due together (hundreds in one tick after a
        # ramp): their announcements start spread over the tick, in queue-arrival
        # order, instead of hundreds of prompts sent in one turn of the event loop.
        for i, call in enumerate(due):
            call.last_announce = now  # not due again while it waits for its turn
            after = i * self.config.tick_s / len(due)
            self._spawn(self._announce(call, after), f"acd-announce-{call.uuid}")
        if changes:
            await self._pump()

    # ------------------------------------------------------------ agents (HTTP)

    async def login(
        self, username: str, extension: str | None = None, skills: Sequence[str] | None = None
    ) -> dict[str, Any]:
        profile = await store.load_profile(self.deps, username)
        if extension is not None:
            dial = dial_string_for(extension, self.config.dial_template)
        elif profile:
            dial = profile["dial_string"]
            extension = profile["extension"]
        else:
            raise BadTarget("first login: give your phone's extension")
        if skills is None:
            skills = profile["skills"] if profile else []
        skills = sorted({s.strip() for s in skills if s.strip()})
        await store.save_profile(self.deps, username, extension, dial, list(skills))
        await self._changed(self.acd.login(username, dial, skills))
        await self._pump()
        return self.agent_view(username)

    async def logout(self, username: str) -> dict[str, Any]:
        if username not in self.acd.agents:
            return {"username": username, "state": AgentState.LOGGED_OUT.value}
        await self._changed(self.acd.logout(username))
        return self.agent_view(username)

    async def set_state(self, username: str, state: str, reason: str | None) -> dict[str, Any]:
        try:
            target = AgentState(state)
        except ValueError:
            raise IllegalAgentMove(f"unknown state {state!r}") from None
        await self._changed(self.acd.set_state(username, target, reason))
        await self._pump()
        return self.agent_view(username)

    def agent_view(self, username: str) -> dict[str, Any]:
        a = self.acd.agents.get(username)
        if a is None:
            return {"username": username, "state": AgentState.LOGGED_OUT.value}
        now = self.clock()
        return {
            "username": a.username,
            "state": a.state.value,
            "state_for_s": round(now - a.since, 1),
            "reason": a.reason,
            "dial_string": a.dial_string,
            "skills": sorted(a.skills),
            "missed_rings": a.missed,
            "load": round(a.load(self.acd.rules), 2),
            "chats": a.chats,
            "call_uuid": a.call,
            "wrap_up_left_s": round(max(0.0, a.wrap_until - now), 1) if a.wrap_until else None,
        }

    def agents_view(self) -> list[dict[str, Any]]:
        return [self.agent_view(u) for u in sorted(self.acd.agents)]

    def live_calls(self) -> list[dict[str, Any]]:
        order = {q.uuid: i for i, q in enumerate(self.acd.waiting())}
        calls = sorted(
            self.calls.values(), key=lambda c: (order.get(c.uuid, -1), c.entered, c.uuid)
        )
        return [c.view(self.acd) for c in calls]

    def kpis(self) -> dict[str, Any]:
        sl = self.acd.sl
        return {
            "offered": sl.offered,
            "answered": sl.answered,
            "abandoned": sl.abandoned,
            "answered_within_target": sl.within_target,
            "service_level_target_s": self.config.rules.service_level_s,
            "service_level": round(sl.service_level, 4),
            "asa_s": round(sl.asa_s, 2),
            "connection_rate_24h": round(sl.connection_rate(self.clock()), 4),
            "waiting": len(self.acd.queue),
            "longest_wait_s": round(self.acd.longest_wait_s(), 1),
            "agents": self.acd.counts(),
        }

    # ------------------------------------------------------------ call control (HTTP)

    def _own_call(self, uuid: str, username: str, *, supervisor: bool = False) -> LiveCall:
        call = self.calls.get(uuid)
        if call is None:
            raise CallNotFound(uuid)
        if call.agent != username and not supervisor:
            raise NotYourCall(f"call {uuid} is not with {username}")
        return call

    async def answer(self, uuid: str, username: str) -> dict[str, Any]:
        """The console's answer button while the call rings this agent."""
        call = self.calls.get(uuid)
        if call is None:
            raise CallNotFound(uuid)
        if username not in call.ringing:
            if call.agent == username:
                return call.view(self.acd)  # answered on the phone already
            raise NotYourCall(f"call {uuid} is not ringing {username}")
        self.answer_clicks.setdefault(username, asyncio.Event()).set()
        for _ in range(100):
            if call.agent == username or call.done.done():
                break
            await asyncio.sleep(0.05)
        return call.view(self.acd)

    async def hold(self, uuid: str, username: str, on: bool) -> dict[str, Any]:
        call = self._own_call(uuid, username)
        if call.state not in (("talking",) if on else ("held",)):
            raise IllegalAgentMove(f"call is {call.state}")
        try:
            if on:
                await self.switch.hold(uuid)
            else:
                await self.switch.unhold(uuid)
        except SwitchError as exc:
            raise CallNotFound(str(exc)) from None
        call.state = "held" if on else "talking"
        await store.update_call(
            self.deps, uuid, self.deps.clock(), event=call.state, actor=username, state=call.state
        )
        await self._publish([ev.CallHeld(uuid, username, on)])
        return call.view(self.acd)

    async def hangup(self, uuid: str, username: str, supervisor: bool = False) -> dict[str, Any]:
        call = self._own_call(uuid, username, supervisor=supervisor)
        await self._end_conversation(call, "NORMAL_CLEARING", by=username)
        return call.view(self.acd)

    def _resolve_target(self, target: str) -> tuple[str, str | None]:
        """(dial string, agent username or None)."""
        if target.startswith("agent:"):
            name = target[6:]
            a = self.acd.agents.get(name)
            if a is None or a.state not in (AgentState.AVAILABLE, AgentState.WRAP_UP):
                raise BadTarget(f"agent {name!r} is not free")
            return a.dial_string, name
        return dial_string_for(target, self.config.dial_template), None

    async def transfer_blind(self, uuid: str, username: str, target: str) -> dict[str, Any]:
        """The agent leaves at once; the caller hears music while the target rings and
        goes back to the head of the queue if nobody answers (never dropped)."""
        call = self._own_call(uuid, username)
        if call.state not in ("talking", "held"):
            raise IllegalAgentMove(f"call is {call.state}")
        dial, target_agent = self._resolve_target(target)
        old_leg = call.agent_leg
        await self._agent_released(call, "BLIND_TRANSFER")
        if old_leg:
            with contextlib.suppress(SwitchError):
                await self.switch.hangup(old_leg, "BLIND_TRANSFER")
        call.state = "transferring"
        with contextlib.suppress(SwitchError):
            await self.switch.unhold(uuid)
            await self.switch.music_on_hold(uuid)
        self._spawn(
            self._finish_blind(call, username, target, dial, target_agent), f"acd-xfer-{uuid}"
        )
        await self._publish([ev.CallTransferred(uuid, username, "blind", "started", target)])
        return call.view(self.acd)

    async def _finish_blind(
        self, call: LiveCall, by: str, target: str, dial: str, target_agent: str | None
    ) -> None:
        if target_agent:
            await self._changed(self.acd.connect_direct(target_agent, call.uuid))
        try:
            ring = await self.switch.ring(
                [dial], self.config.rules.ring_timeout_s, caller_id=call.caller
            )
        except SwitchError:
            ring = Ring(RingResult.FAILED)
        if call.done.done():
            if ring.leg:
                with contextlib.suppress(SwitchError):
                    await self.switch.hangup(ring.leg)
            if target_agent:
                await self._changed(self.acd.call_ended(target_agent, 0))
            return
        if ring.result is RingResult.ANSWERED and ring.leg:
            with contextlib.suppress(SwitchError):
                await self.switch.stop_media(call.uuid)
                await self.switch.bridge(call.uuid, ring.leg)
            call.state, call.agent, call.agent_leg = "talking", target_agent, ring.leg
            call.answered_mono = self.clock()
            await store.update_call(
                self.deps,
                call.uuid,
                self.deps.clock(),
                event="transferred",
                actor=by,
                data={"mode": "blind", "target": target},
                state="talking",
                agent=target_agent,
            )
            await self._publish([ev.CallTransferred(call.uuid, by, "blind", "done", target)])
            self._spawn(self._watch_agent_leg(call, ring.leg), f"acd-agent-{call.uuid}")
            return
        if target_agent:
            # nobody picked up: that agent is back to free, not in wrap-up
            a = self.acd.agents.get(target_agent)
            if a is not None and a.state is AgentState.ON_CALL:
                await self._changed(self.acd.call_ended(target_agent, 0))
                await self._changed(self.acd.set_state(target_agent, AgentState.AVAILABLE))
        await self._publish([ev.CallTransferred(call.uuid, by, "blind", "failed", target)])
        await self.requeue(call, Priority.RETURNING)

    async def requeue(self, call: LiveCall, priority: Priority) -> None:
        """Back into line ahead of new callers (failed transfer, failed hand-off)."""
        call.state, call.agent, call.agent_leg, call.priority = "queued", None, None, priority
        self.acd.enqueue(call.uuid, call.caller, priority)
        now = self.deps.clock()
        due = now + timedelta(seconds=self.config.rules.service_level_s)
        # its item left the agents' queue when it was answered: back in line, back in view
        await store.update_call(
            self.deps,
            call.uuid,
            now,
            event="requeued",
            state="queued",
            item=store.queue_item(call.uuid, int(priority), due, now),
        )
        await self._pump()
        if call.state == "queued":
            with contextlib.suppress(SwitchError):
                await self.switch.music_on_hold(call.uuid)

    async def transfer_attended(
        self, uuid: str, username: str, step: str, target: str | None
    ) -> dict[str, Any]:
        call = self._own_call(uuid, username)
        if step == "consult":
            if call.state not in ("talking", "held") or not call.agent_leg:
                raise IllegalAgentMove(f"call is {call.state}")
            if not target:
                raise BadTarget("consult needs a target")
            dial, _ = self._resolve_target(target)
            await self.switch.music_on_hold(uuid)
            call.state = "consulting"
            ring = await self.switch.ring(
                [dial], self.config.rules.ring_timeout_s, caller_id=call.caller
            )
            if ring.result is not RingResult.ANSWERED or not ring.leg:
                with contextlib.suppress(SwitchError):
                    await self.switch.stop_media(uuid)
                    await self.switch.bridge(uuid, call.agent_leg)
                call.state = "talking"
                await self._publish(
                    [ev.CallTransferred(uuid, username, "attended", "failed", target)]
                )
                raise BadTarget(f"{target} did not answer ({ring.result.value})")
            call.consult_leg, call.consult_target = ring.leg, target
            await self.switch.bridge(call.agent_leg, ring.leg)
        elif step == "complete":
            if call.state != "consulting" or not call.consult_leg:
                raise IllegalAgentMove("no consultation in progress")
            leg, old = call.consult_leg, call.agent_leg
            call.consult_leg = None
            await self.switch.stop_media(uuid)
            await self.switch.bridge(uuid, leg)
            await self._agent_released(call, "ATTENDED_TRANSFER")
            call.agent_leg, call.state = leg, "talking"
            if old:
                with contextlib.suppress(SwitchError):
                    await self.switch.hangup(old, "ATTENDED_TRANSFER")
            self._spawn(self._watch_agent_leg(call, leg), f"acd-agent-{uuid}")
        elif step == "cancel":
            if call.state != "consulting" or not call.consult_leg:
                raise IllegalAgentMove("no consultation in progress")
            with contextlib.suppress(SwitchError):
                await self.switch.hangup(call.consult_leg)
            call.consult_leg = None
            await self.switch.stop_media(uuid)
            if call.agent_leg:
                await self.switch.bridge(uuid, call.agent_leg)
            call.state = "talking"
        elif step == "conference":
            if call.state != "consulting" or not call.consult_leg or not call.agent_leg:
                raise IllegalAgentMove("no consultation in progress")
            room = f"hotline-{uuid}"
            await self.switch.stop_media(uuid)
            await self.switch.conference(room, [uuid, call.agent_leg, call.consult_leg])
            call.room, call.state = room, "conference"
        else:
            raise BadTarget(f"unknown step {step!r}")
        await store.update_call(
            self.deps,
            uuid,
            self.deps.clock(),
            event=f"transfer_{step}",
            actor=username,
            data={"mode": "attended", "target": target or call.consult_target},
            state=call.state,
        )
        await self._publish(
            [
                ev.CallTransferred(
                    uuid, username, "attended", step, target or call.consult_target or ""
                )
            ]
        )
        return call.view(self.acd)
