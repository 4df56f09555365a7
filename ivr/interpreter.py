"""Run a flow on one call.

``run_flow`` walks the nodes: each handler plays, asks, calls a service and names
the next node, or ends the run with an ``Outcome``. It never raises for what a call
or a service does (a hang-up, a timeout, a failing database): the outcome says what
happened and the call is left as it is, so the telephony side decides what comes
next (per the standard: an agent). Only a wiring mistake (a service the flow needs
is missing) raises, before the call is touched.

Privacy: the step log and the outcome carry node ids and result codes ("ok",
"timeout", "key 2", "wrong_pin"), never the keys of a collected number, PIN or ID.
Writes the caller was promised (a loss report, a callback, a survey answer, a
voicemail) are shielded from cancellation: a caller hanging up the moment they
finish keying must not undo the freeze of their card.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from ivr import validators
from ivr.audio import say_amount, say_digits
from ivr.loader import Flow
from ivr.nodes import (
    CallbackNode,
    CardNode,
    CollectNode,
    EmergencyNode,
    HangupNode,
    LanguageNode,
    LookupNode,
    MenuNode,
    PlayNode,
    QueueNode,
    RegexCheck,
    SurveyNode,
    VoicemailNode,
    _Node,
)
from ivr.protocols import (
    SATISFACTION_BY_SCORE,
    BalanceQuery,
    CallbackRequest,
    CallControl,
    CallerHungUp,
    CardOutcome,
    CardReply,
    EmergencyRequest,
    IvrServices,
    LossReport,
    QueueRequest,
    QueueStatus,
    SurveyAnswer,
    VoicemailMessage,
)

log = logging.getLogger("ivr")

DEFAULT_MAX_STEPS = 200
T = TypeVar("T")
# writes that must finish even if the run is cancelled (the caller hung up mid-write)
_SHIELDED: set[asyncio.Future[Any]] = set()


class OutcomeStatus(StrEnum):
    QUEUED = "queued"  # handed to the ACD (or back from an agent with nothing to follow)
    EMERGENCY = "emergency"  # connected to an emergency line
    HUNG_UP = "hung_up"  # the flow hung up (a hangup node)
    CALLER_HUNG_UP = "caller_hung_up"
    OVERFLOW = "overflow"  # the ACD declined and the flow had nowhere else to go
    STEP_LIMIT = "step_limit"  # the runaway guard stopped the run
    FAILED = "failed"  # a service or the call leg failed where the flow had no way out


@dataclass(frozen=True)
class Step:
    node: str
    type: str
    result: str  # a code, never what the caller keyed (except a menu key)


@dataclass(frozen=True)
class Outcome:
    status: OutcomeStatus
    flow_id: str
    node: str  # where the run ended
    language: str
    steps: tuple[Step, ...]
    variables: Mapping[str, str] = field(default_factory=dict)  # non-sensitive only
    queue: str | None = None
    detail: str = ""


class MissingService(LookupError):
    """The flow calls a service the caller of run_flow did not provide."""


@dataclass(frozen=True)
class _End:
    status: OutcomeStatus
    detail: str = ""
    queue: str | None = None


class _ServiceFailed(Exception):
    pass


async def run_flow(
    flow: Flow,
    call: CallControl,
    services: IvrServices,
    *,
    language: str | None = None,
    variables: Mapping[str, str] | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> Outcome:
    """Run ``flow`` on ``call`` and say how it ended.

    ``language``: the caller's language if known (e.g. from the number dialled);
    one the flow does not offer falls back to the flow's default. ``variables``
    seed the run (``ticket_number`` for the post-call survey).
    """
    missing = sorted(s for s in flow.services_needed() if getattr(services, s) is None)
    if missing:
        raise MissingService(f"flow {flow.id!r} needs {', '.join(missing)} in IvrServices")
    if language is not None and language not in flow.languages:
        log.warning(
            "ivr flow=%s: language %r not offered, using %r", flow.id, language, flow.language
        )
        language = None
    run = _Run(flow, call, services, language or flow.language, dict(variables or {}))
    return await run.run(max_steps)


class _Run:
    def __init__(
        self,
        flow: Flow,
        call: CallControl,
        services: IvrServices,
        language: str,
        variables: dict[str, str],
    ):
        self.flow = flow
        self.call = call
        self.services = services
        self.language = language
        self.variables = variables
        self.sensitive: set[str] = set()
        self.steps: list[Step] = []
        self.node_id = flow.start
        self.uuid = "?"
        self.handlers: dict[type[_Node], Callable[[Any], Awaitable[str | _End]]] = {
            PlayNode: self._play_node,
            MenuNode: self._menu,
            CollectNode: self._collect,
            LanguageNode: self._language,
            LookupNode: self._lookup,
            CardNode: self._card,
            QueueNode: self._queue,
            EmergencyNode: self._emergency,
            VoicemailNode: self._voicemail,
            CallbackNode: self._callback,
            SurveyNode: self._survey,
            HangupNode: self._hangup,
        }

    # --- the loop ----------------------------------------------------------------

    async def run(self, max_steps: int) -> Outcome:
        try:
            self.uuid = self.call.uuid
            await self.call.answer()
            for _ in range(max_steps):
                node = self.flow.nodes[self.node_id]
                result = await self.handlers[type(node)](node)
                if isinstance(result, _End):
                    return self._outcome(result)
                self.node_id = result
            log.error(
                "ivr call=%s flow=%s: step limit %d reached", self.uuid, self.flow.id, max_steps
            )
            return self._outcome(_End(OutcomeStatus.STEP_LIMIT, f"{max_steps} steps"))
        except CallerHungUp:
            self._step("caller hung up")
            return self._outcome(_End(OutcomeStatus.CALLER_HUNG_UP))
        except Exception as exc:  # the call leg broke: report it, never take the service down
            log.warning(
                "ivr call=%s flow=%s node=%s: call control failed: %s",
                self.uuid,
                self.flow.id,
                self.node_id,
                type(exc).__name__,
            )
            self._step(f"call failed: {type(exc).__name__}")
            return self._outcome(_End(OutcomeStatus.FAILED, f"call: {type(exc).__name__}"))

    def _outcome(self, end: _End) -> Outcome:
        log.info(
            "ivr call=%s flow=%s ended %s at node=%s after %d steps",
            self.uuid,
            self.flow.id,
            end.status.value,
            self.node_id,
            len(self.steps),
        )
        return Outcome(
            status=end.status,
            flow_id=self.flow.id,
            node=self.node_id,
            language=self.language,
            steps=tuple(self.steps),
            variables={k: v for k, v in self.variables.items() if k not in self.sensitive},
            queue=end.queue,
            detail=end.detail,
        )

    def _step(self, result: str) -> None:
        node = self.flow.nodes[self.node_id]
        kind = getattr(node, "type", "?")
        self.steps.append(Step(self.node_id, kind, result))
        log.info(
            "ivr call=%s flow=%s node=%s type=%s result=%s",
            self.uuid,
            self.flow.id,
            self.node_id,
            kind,
            result,
        )

    def _fail(
        self, target: str | None, detail: str, status: OutcomeStatus = OutcomeStatus.FAILED
    ) -> str | _End:
        return target if target is not None else _End(status, detail)

    async def _service(self, name: str, work: Awaitable[T], *, shield: bool = False) -> T:
        """A service call; failures become _ServiceFailed (logged by type only: an
        exception's text may quote a card or phone number)."""
        try:
            if shield:
                task = asyncio.ensure_future(work)
                _SHIELDED.add(task)  # a strong reference until it is done
                task.add_done_callback(_SHIELDED.discard)
                return await asyncio.shield(task)
            return await work
        except (CallerHungUp, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.warning(
                "ivr call=%s flow=%s node=%s: %s service failed: %s",
                self.uuid,
                self.flow.id,
                self.node_id,
                name,
                type(exc).__name__,
            )
            raise _ServiceFailed(name) from exc

    # --- prompts and keys --------------------------------------------------------

    def _paths(self, names: Sequence[str]) -> list[str]:
        return self.flow.prompts.paths(self.language, names)

    async def _play(self, names: Sequence[str], *, interruptible: bool = False) -> str:
        if not names:
            return ""
        return await self.call.play(self._paths(names), interruptible=interruptible)

    async def _gather(
        self,
        prompt: Sequence[str],
        *,
        tries: int,
        wait_s: float,
        max_digits: int,
        check: Callable[[str], str | None],
        invalid_prompt: str | None,
        terminators: str = "",
        digit_timeout: float | None = None,
    ) -> tuple[str | None, str]:
        """Ask up to ``tries`` times; (value, "ok") or (None, "timeout" | "invalid")
        after the last attempt. Silence repeats the prompt; a wrong entry plays the
        invalid prompt first."""
        last = "timeout"
        for _ in range(tries):
            keys = await self.call.play_and_get_digits(
                self._paths(prompt),
                min_digits=1,
                max_digits=max_digits,
                tries=1,
                timeout_ms=int(wait_s * 1000),
                terminators=terminators,
                digit_timeout_ms=int(digit_timeout * 1000) if digit_timeout else None,
            )
            if not keys:
                last = "timeout"
                continue
            value = check(keys)
            if value is not None:
                return value, "ok"
            last = "invalid"
            if invalid_prompt:
                await self._play([invalid_prompt])
        return None, last

    async def _variable(self, name: str) -> str | None:
        value = self.variables.get(name)
        if value is None:
            value = await self.call.get_variable(name)
        return value or None

    # --- node handlers -----------------------------------------------------------

    async def _play_node(self, node: PlayNode) -> str | _End:
        pressed = await self._play(node.prompt, interruptible=node.interruptible)
        self._step("interrupted" if pressed else "played")
        return node.next

    async def _menu(self, node: MenuNode) -> str | _End:
        key, why = await self._gather(
            node.prompt,
            tries=node.tries,
            wait_s=node.timeout,
            max_digits=1,
            check=lambda k: k if k in node.digits else None,
            invalid_prompt=node.invalid_prompt,
        )
        if key is not None:
            self._step(f"key {key}")
            return node.digits[key]
        self._step(why)
        if why == "timeout" and node.on_timeout is not None:
            return node.on_timeout
        return node.on_invalid

    async def _collect(self, node: CollectNode) -> str | _End:
        rule = node.validate_

        def check(keys: str) -> str | None:
            if not node.min <= len(keys) <= node.max:
                return None
            if rule is None:
                return keys
            if isinstance(rule, RegexCheck):
                return keys if re.fullmatch(rule.regex, keys) else None
            return validators.KNOWN[rule](keys)

        value, why = await self._gather(
            node.prompt,
            tries=node.tries,
            wait_s=node.timeout,
            max_digits=node.max,
            check=check,
            invalid_prompt=node.invalid_prompt,
            terminators=node.terminator,
            digit_timeout=node.digit_timeout,
        )
        self._step(why)
        if value is None:
            if why == "timeout" and node.on_timeout is not None:
                return node.on_timeout
            return node.on_invalid
        self.variables[node.store] = value
        if node.sensitive:
            self.sensitive.add(node.store)
        else:
            self.sensitive.discard(node.store)
        return node.next

    async def _language(self, node: LanguageNode) -> str | _End:
        self.language = node.set
        await self.call.set_variable("ivr_language", node.set)
        self._step(f"language {node.set}")
        return node.next

    async def _lookup(self, node: LookupNode) -> str | _End:
        assert self.services.tickets is not None
        number = await self._variable(node.variable)
        if not number or validators.ticket_number(number) is None:
            self._step("no number")
            return node.on_not_found
        try:
            phase = await self._service("tickets", self.services.tickets.ticket_phase(number))
        except _ServiceFailed:
            self._step("service failed")
            return self._fail(node.on_failure, "tickets")
        if phase is None:
            self._step("not found")
            return node.on_not_found
        self._step(f"phase {phase.value}")
        names = [node.intro_prompt] if node.intro_prompt else []
        if node.say_number:
            names += say_digits(number)
        await self._play([*names, *node.statuses[phase]])
        return node.next

    async def _card(self, node: CardNode) -> str | _End:
        assert self.services.cards is not None
        cards = self.services.cards
        lost = node.operation == "report_lost"

        async def entry(
            prompt: str, max_digits: int, check: Callable[[str], str | None]
        ) -> str | None:
            value, why = await self._gather(
                [prompt],
                tries=node.input_tries,
                wait_s=node.timeout,
                max_digits=max_digits,
                check=check,
                invalid_prompt=node.invalid_prompt,
                terminators="#",
                digit_timeout=node.digit_timeout,
            )
            if value is None:
                self._step(f"{prompt}: {why}")
            return value

        card_no: str | None = None
        id6: str | None = None
        refusals = 0
        while refusals < node.tries:
            if card_no is None:
                card_no = await entry(node.card_number_prompt, 19, validators.card_number)
                if card_no is None:
                    return node.on_failure
            if lost and id6 is None:
                id6 = await entry(node.id_last6_prompt, 6, validators.id_last6)
                if id6 is None:
                    return node.on_failure
            pin = await entry(node.pin_prompt, 6, validators.pin)
            if pin is None:
                return node.on_failure
            try:
                reply: CardReply
                if lost:
                    assert id6 is not None
                    report = LossReport(self.uuid, card_no, id6, pin, self.call.caller_id)
                    reply = await self._service("cards", cards.report_lost(report), shield=True)
                else:
                    query = BalanceQuery(self.uuid, card_no, pin)
                    reply = await self._service("cards", cards.balance(query))
            except _ServiceFailed:
                self._step("service failed")
                return node.on_failure
            try:
                outcome = CardOutcome(reply.outcome)
            except ValueError:
                outcome = CardOutcome.REFUSED  # an answer we do not know: let an agent help
            self._step(f"{node.operation} {outcome.value}")
            if outcome is CardOutcome.OK:
                await self._card_done(node, reply)
                return node.next
            if outcome is CardOutcome.WRONG_PIN:
                refusals += 1
                await self._play([node.wrong_pin_prompt])
                id6 = None  # the caller is not told which of the two was wrong
            elif outcome is CardOutcome.UNKNOWN_CARD:
                refusals += 1
                await self._play([node.unknown_card_prompt])
                card_no = None
            elif outcome is CardOutcome.LOCKED:
                await self._play([node.locked_prompt])
                return node.on_failure
            else:
                return node.on_failure
        self._step("gave up")
        return node.on_failure

    async def _card_done(self, node: CardNode, reply: CardReply) -> None:
        if node.operation == "balance":
            fen = reply.balance_fen
            if fen is None or fen < 0:
                log.warning("ivr call=%s: balance reply without a usable amount", self.uuid)
                return
            await self._play([node.balance_prompt, *say_amount(fen, self.language)])
            return
        receipt = say_digits(reply.receipt or "")
        if not receipt:
            log.warning("ivr call=%s: loss report reply without a receipt number", self.uuid)
            await self._play([node.frozen_prompt])
            return
        await self._play([node.frozen_prompt, *receipt * node.read_receipt_times])

    async def _queue(self, node: QueueNode) -> str | _End:
        assert self.services.queue is not None
        request = QueueRequest(
            call_uuid=self.uuid,
            caller_id=self.call.caller_id,
            queue=node.queue,
            priority=node.priority,
            skills=tuple(node.skills),
            language=self.language,
            flow_id=self.flow.id,
            node=self.node_id,
            variables={k: v for k, v in self.variables.items() if k not in self.sensitive},
        )
        try:
            result = await self._service("queue", self.services.queue.enqueue(request))
        except _ServiceFailed:
            self._step("service failed")
            return self._fail(node.on_failure, "queue")
        try:
            status = QueueStatus(result.status)
        except ValueError:
            self._step("unknown queue status")
            return self._fail(node.on_failure, "queue")
        self._step(status.value)
        if status is QueueStatus.HANDED_OFF:
            return _End(OutcomeStatus.QUEUED, result.detail, queue=node.queue)
        if status is QueueStatus.AGENT_DONE:
            if node.next is not None:
                return node.next
            return _End(OutcomeStatus.QUEUED, result.detail, queue=node.queue)
        if node.on_overflow is not None:
            return node.on_overflow
        return _End(OutcomeStatus.OVERFLOW, result.detail, queue=node.queue)

    async def _emergency(self, node: EmergencyNode) -> str | _End:
        assert self.services.emergency is not None
        request = EmergencyRequest(
            call_uuid=self.uuid,
            caller_id=self.call.caller_id,
            line=node.line,
            language=self.language,
            flow_id=self.flow.id,
            hold_prompts=tuple(self._paths(node.prompt)),
        )
        try:
            result = await self._service("emergency", self.services.emergency.hand_off(request))
        except _ServiceFailed:
            self._step(f"line {node.line} service failed")
            return self._fail(node.on_failure, f"emergency {node.line}")
        if result.connected:
            self._step(f"line {node.line} connected")
            return _End(OutcomeStatus.EMERGENCY, result.line or node.line)
        self._step(f"line {node.line} not connected")
        return self._fail(node.on_failure, f"emergency {node.line} not connected")

    async def _voicemail(self, node: VoicemailNode) -> str | _End:
        assert self.services.voicemail is not None
        store = self.services.voicemail
        try:
            path = await self._service("voicemail", store.voicemail_path(self.uuid))
        except _ServiceFailed:
            self._step("service failed")
            return self._fail(node.on_failure, "voicemail")
        await self._play(node.prompt)
        seconds = await self.call.record(path, max_seconds=node.max_seconds)
        message = VoicemailMessage(self.uuid, self.call.caller_id, path, seconds, self.language)
        try:
            await self._service("voicemail", store.voicemail_recorded(message), shield=True)
        except _ServiceFailed:
            self._step("service failed")
            return self._fail(node.on_failure, "voicemail")
        self._step(f"recorded {seconds:.0f}s")
        return node.next

    async def _callback(self, node: CallbackNode) -> str | _End:
        assert self.services.callbacks is not None
        own = validators.caller_number(self.call.caller_id, node.region)

        async def other_number() -> str | None:
            number, why = await self._gather(
                [node.number_prompt],
                tries=node.tries,
                wait_s=node.timeout,
                max_digits=16,
                check=lambda k: validators.phone(k, node.region),
                invalid_prompt=node.invalid_prompt,
                terminators="#",
                digit_timeout=4.0,
            )
            if number is None:
                self._step(f"other number {why}")
            return number

        number: str | None
        if own is None:
            number = await other_number()
        else:
            keys = (node.this_number_key, node.other_number_key)
            choice, why = await self._gather(
                node.prompt,
                tries=node.tries,
                wait_s=node.timeout,
                max_digits=1,
                check=lambda k: k if k in keys else None,
                invalid_prompt=node.invalid_prompt,
            )
            if choice is None:
                self._step(f"offer {why}")
                return node.on_failure
            number = own if choice == node.this_number_key else await other_number()
        if number is None:
            return node.on_failure
        request = CallbackRequest(self.uuid, number, node.queue, self.language, self.flow.id)
        try:
            await self._service(
                "callbacks", self.services.callbacks.request_callback(request), shield=True
            )
        except _ServiceFailed:
            self._step("service failed")
            return node.on_failure
        self._step("booked, this number" if number == own else "booked, other number")
        await self._play([node.confirmed_prompt])
        return node.next

    async def _survey(self, node: SurveyNode) -> str | _End:
        assert self.services.surveys is not None
        key, why = await self._gather(
            node.prompt,
            tries=node.tries,
            wait_s=node.timeout,
            max_digits=1,
            check=lambda k: k if k in ("1", "2", "3") else None,
            invalid_prompt=node.invalid_prompt,
        )
        if key is None:
            self._step(f"no answer ({why})")
            return node.on_invalid if node.on_invalid is not None else node.next
        score = int(key)
        answer = SurveyAnswer(
            call_uuid=self.uuid,
            ticket_number=await self._variable(node.ticket_variable),
            score=score,
            satisfaction=SATISFACTION_BY_SCORE[score],
        )
        try:
            await self._service("surveys", self.services.surveys.record_survey(answer), shield=True)
        except _ServiceFailed:
            self._step("service failed")
            return node.next
        self._step(f"score {score}")
        if node.thanks_prompt:
            await self._play([node.thanks_prompt])
        return node.next

    async def _hangup(self, node: HangupNode) -> str | _End:
        await self._play(node.prompt)
        await self.call.hangup(node.cause)
        self._step(f"hangup {node.cause}")
        return _End(OutcomeStatus.HUNG_UP, node.cause)
