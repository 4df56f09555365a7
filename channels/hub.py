"""The channels' one object: intake writer, bot effects, outbox, notifier, senders.

Channel adapters (WeChat here; Telegram and the app elsewhere) get the hub and call
`receive()` with a normalized message, and register their `ChannelSender`. The
hotline starts and stops the hub as one cleanup context.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa

from channels import bot
from channels import contacts as contacts_mod
from channels import conversations as conv
from channels.emergency_words import EmergencyRules
from channels.events import ConversationUpdated, EmergencyAlert
from channels.intake import Handled, InboundWriter
from channels.message import InboundMessage, Receipt
from channels.notify import Notifier
from channels.outbox import ChannelSender, OutboxWorker
from ticketing import workqueue
from ticketing.events import WorkItemChanged
from ticketing.handlers import Deps, announce, load_ticket, ticket_t
from ticketing.intake import Intake, NewTicket
from ticketing.lifecycle import Role
from ticketing.ports import Principal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelConfig:
    rules: EmergencyRules = field(default_factory=EmergencyRules)
    outbox_poll_s: float = 2.0
    outbox_max_attempts: int = 8


class ChannelHub:
    def __init__(self, deps: Deps, intake: Intake, config: ChannelConfig | None = None) -> None:
        self.deps = deps
        self.intake = intake
        self.config = config or ChannelConfig()
        self.senders: dict[str, ChannelSender] = {}
        self.outbox = OutboxWorker(
            deps.db,
            self.senders,
            deps.clock,
            poll_s=self.config.outbox_poll_s,
            max_attempts=self.config.outbox_max_attempts,
        )
        self.writer = InboundWriter(
            deps,
            self.config.rules,
            after_commit=self._after_commit,
            outbox_written=self.outbox.wake,
        )
        self.notifier = Notifier(deps, self.outbox.wake)
        self.started = False

    # ------------------------------------------------------------------ lifecycle

    def register_sender(self, sender: ChannelSender) -> None:
        """The sender for `sender.channel` (one per channel; the last one wins)."""
        self.senders[sender.channel] = sender

    async def start(self) -> None:
        for sender in self.senders.values():
            start = getattr(sender, "start", None)
            if start is not None:
                await start()
        await self.writer.start()
        await self.notifier.start()
        await self.outbox.start()  # its first pass picks up what a previous run left
        self.started = True

    async def stop(self) -> None:
        self.started = False
        await self.outbox.stop()
        await self.notifier.stop()
        await self.writer.stop()
        for sender in self.senders.values():
            stop = getattr(sender, "stop", None)
            if stop is not None:
                try:
                    await stop()
                except Exception:
                    log.exception("sender for %s did not stop cleanly", sender.channel)

    async def context(self, app: Any) -> AsyncIterator[None]:
        """The hub as an aiohttp cleanup context (after the store, bus and intake)."""
        await self.start()
        yield
        await self.stop()

    # ------------------------------------------------------------------ inbound

    async def receive(self, msg: InboundMessage, *, inline: bool = False) -> Receipt:
        """Store a resident's message durably (idempotent on its channel id) and decide
        what it means. Returns once committed; `receipt.replies` are the texts to show
        the resident now: a channel that answers in its HTTP response (WeChat passive
        reply) passes `inline=True` and sends them itself, otherwise they are already
        in the outbox. A retry of a stored message returns the first receipt again."""
        handled = await self.writer.receive(msg, inline=inline)
        r = handled.receipt
        if r.duplicate or handled.effect is None:
            return r
        try:
            more, number = await self._perform(handled, msg, inline)
        except Exception:
            log.exception(
                "bot effect %r failed for conversation %s", handled.effect, r.conversation_id
            )
            more, number = [_sorry(msg.lang)], None
            await conv.store_replies(
                self.deps, r.conversation_id, more, reply_to=r.message_id, inline=inline
            )
        if not inline and more:
            self.outbox.wake()
        return replace(r, replies=r.replies + tuple(more), ticket_number=number or r.ticket_number)

    async def _perform(
        self, h: Handled, msg: InboundMessage, inline: bool
    ) -> tuple[list[str], str | None]:
        """The bot's effect (after the message is committed); its replies are stored."""
        r, effect, lang = h.receipt, h.effect, msg.lang
        if isinstance(effect, bot.CreateTicket):
            who = Principal(f"{msg.channel}-bot", Role.AGENT)
            ticket = await self.intake.create(
                NewTicket(
                    kind=effect.kind,
                    title=conv._title(effect.description),
                    description=effect.description,
                    channel=msg.channel if msg.channel in conv._TICKET_CHANNELS else "web",
                    principal=who,
                    contact_name=msg.sender_name,
                    contact_ids={msg.channel: msg.sender_id},
                    address=effect.address,
                    lat=effect.lat,
                    lon=effect.lon,
                )
            )
            number = ticket["number"]
            await conv.link_ticket(
                self.deps,
                r.conversation_id,
                number,
                who,
                media=[effect.photo] if effect.photo else None,
                notify=True,
                inline=inline,
                reply_to=r.message_id,
                by_bot=True,
            )
            return [bot.ticket_created(number, lang)], number
        if isinstance(effect, bot.LookupTicket):
            view = await self._owned_ticket(msg, effect.number)
            text = bot.ticket_status_reply(view, effect.number, lang)
        elif isinstance(effect, bot.MyTickets):
            text = bot.my_tickets_reply(await self._my_tickets(msg), lang)
        else:  # pragma: no cover - Effect is a closed union
            return [], None
        await conv.store_replies(
            self.deps, r.conversation_id, [text], reply_to=r.message_id, inline=inline
        )
        return [text], None

    async def _person(self, conn: Any, msg: InboundMessage) -> list[Any]:
        c = contacts_mod.contact_t.c
        row = (
            await conn.execute(
                sa.select(c.id).where(c.channel == msg.channel, c.external_id == msg.sender_id)
            )
        ).first()
        return await contacts_mod.same_person(conn, row.id) if row else []

    async def _owned_ticket(self, msg: InboundMessage, number: str) -> dict[str, Any] | None:
        """A resident learns the status of their own tickets only (numbers are guessable)."""
        async with self.deps.db.read() as conn:
            people = await self._person(conn, msg)
            mine = await contacts_mod.ticket_numbers(conn, people, limit=1000) if people else []
            if number not in mine:
                return None
            t = await load_ticket(self.deps, conn, number)
        return {"number": t.number, "status": t.status, "reply": t.reply_text, "title": t.title}

    async def _my_tickets(self, msg: InboundMessage, limit: int = 10) -> list[dict[str, Any]]:
        async with self.deps.db.read() as conn:
            people = await self._person(conn, msg)
            numbers = await contacts_mod.ticket_numbers(conn, people, limit) if people else []
            if not numbers:
                return []
            rows = await conn.execute(
                sa.select(ticket_t.c.number, ticket_t.c.status, ticket_t.c.title)
                .where(ticket_t.c.number.in_(numbers))
                .order_by(ticket_t.c.created_at.desc())
            )
            return [{"number": x.number, "status": x.status, "title": x.title} for x in rows]

    async def _after_commit(self, batch: list[Handled]) -> None:
        """Tell supervisors and consoles (the bus is for liveness; the rows are the truth)."""
        events: list[Any] = []
        touched: dict[int, Handled] = {}
        for h in batch:
            r = h.receipt
            if r.duplicate:
                continue
            touched[r.conversation_id] = h
            if h.emergency:
                lines = ",".join(r.emergency_lines)
                events.append(EmergencyAlert(r.conversation_id, h.channel, lines, h.excerpt))
        for cid, h in touched.items():
            events.append(ConversationUpdated(cid, h.channel, h.waiting, h.emergency_conversation))
        # consoles re-read a queue item on this event: only for items that were added or
        # whose priority or deadline moved (the batch's last word on each conversation)
        changed = {h.receipt.conversation_id for h in batch if h.item_changed}
        for cid in changed:
            events.append(WorkItemChanged(workqueue.CONVERSATION, str(cid)))
        if events:
            await announce(self.deps, events)

    # ------------------------------------------------------------------ staff side

    async def reply(self, conv_id: int, who: Principal, text: str) -> dict[str, Any]:
        view = await conv.reply(self.deps, conv_id, who, text)
        self.outbox.wake()
        await self._updated(conv_id)
        return view

    async def create_ticket(
        self, conv_id: int, who: Principal, fields: conv.TicketFields
    ) -> dict[str, Any]:
        ticket = await conv.create_ticket(self.deps, self.intake, conv_id, who, fields)
        self.outbox.wake()
        await self._updated(conv_id)
        return ticket

    async def attach_ticket(self, conv_id: int, number: str, who: Principal) -> dict[str, Any]:
        out = await conv.attach_ticket(self.deps, conv_id, number, who)
        await self._updated(conv_id)
        return out

    async def close(self, conv_id: int, who: Principal) -> dict[str, Any]:
        out = await conv.close(self.deps, conv_id, who)
        await self._updated(conv_id)
        return out

    async def link_contacts(
        self, contact_ids: list[int], phone: str | None = None, display_name: str | None = None
    ) -> dict[str, Any]:
        return await contacts_mod.link(self.deps, contact_ids, phone, display_name)

    async def contact_history(self, contact_id: int) -> dict[str, Any]:
        return await contacts_mod.history(self.deps, contact_id)

    async def phone_contact(self, phone: str) -> int:
        """The contact id of a phone number (created if new), e.g. for a caller."""
        async with self.deps.db.write() as conn:
            return await contacts_mod.phone_contact(self.deps, conn, phone)

    async def _updated(self, conv_id: int) -> None:
        try:
            c = await conv.get_conversation_row(self.deps, conv_id)
            await announce(
                self.deps,
                [
                    ConversationUpdated(conv_id, c.channel, c.waiting, c.emergency),
                    WorkItemChanged(workqueue.CONVERSATION, str(conv_id)),
                ],
            )
        except Exception:
            log.exception("could not announce conversation %s", conv_id)


def _sorry(lang: str) -> str:
    if lang == "en":
        return "Sorry, that did not work; an agent will answer you."
    return "抱歉，暂时无法处理，话务员会尽快回复您。"
