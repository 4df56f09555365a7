"""Staff API of the written channels, under /api/v1 (conversations and contacts).

The only place where the channels' domain errors become HTTP answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, model_validator

from channels import conversations as conv
from channels.contacts import ContactNotFound
from channels.hub import ChannelHub
from ticketing.deadlines import Urgency
from ticketing.handlers import InvalidRequest, TicketNotFound
from ticketing.lifecycle import Kind, Role
from ticketing.schemas import Code, LocationIn, Strict, TicketNumber
from ticketing.webkit import (
    RouteSpec,
    field_problem,
    json_response,
    principal_of,
    problem,
    read_body,
    row_id,
)

FLOOR = (Role.AGENT, Role.SUPERVISOR)


class ConversationReplyIn(Strict):
    text: Annotated[str, Field(min_length=1, max_length=2000)]


class ConversationTicketIn(Strict):
    """Either `number` (attach to that ticket) or the new ticket's fields."""

    number: TicketNumber | None = None
    kind: Kind | None = None
    title: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    description: Annotated[str, Field(min_length=1, max_length=20000)] | None = None
    category: Code | None = None
    urgency: Urgency | None = None
    contact_name: Annotated[str, Field(max_length=100)] | None = None
    location: LocationIn | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ConversationTicketIn:
        if self.number is None and self.kind is None:
            raise ValueError("give `number` to attach to a ticket, or `kind` to create one")
        if self.number is not None and self.kind is not None:
            raise ValueError("give either `number` or the new ticket's fields, not both")
        return self


class ContactLinkIn(Strict):
    # ids an INTEGER column can hold: a larger one would fail in the driver
    contact_ids: Annotated[list[Annotated[int, Field(ge=1, lt=2**31)]], Field(max_length=50)] = (
        Field(default_factory=list)
    )
    phone: Annotated[str, Field(min_length=3, max_length=32)] | None = None
    display_name: Annotated[str, Field(max_length=100)] | None = None


def _errors(fn: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except conv.ConversationNotFound as exc:
            raise problem("not-found", f"no conversation {exc}") from None
        except ContactNotFound as exc:
            raise problem("not-found", f"no contact {exc}") from None
        except TicketNotFound as exc:
            raise problem("not-found", f"no ticket {exc}") from None
        except conv.ConversationConflict as exc:
            raise problem("conflict", str(exc)) from None
        except InvalidRequest as exc:
            raise field_problem(str(exc), exc.field) from None

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


def _id(request: web.Request, name: str = "id") -> int:
    raw = request.match_info[name]
    rid = row_id(raw)
    if rid is None:
        raise problem("not-found", f"{raw!r} is not an id")
    return rid


def _bool(request: web.Request, name: str) -> bool | None:
    v = request.query.get(name)
    if v is None or v == "":
        return None
    if v.lower() in ("1", "true", "yes"):
        return True
    if v.lower() in ("0", "false", "no"):
        return False
    raise problem("validation-error", errors=[{"field": name, "message": "true or false"}])


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    try:
        v = int(request.query.get(name, str(default)))
    except ValueError:
        v = lo - 1
    if not lo <= v <= hi:
        raise problem("validation-error", errors=[{"field": name, "message": f"{lo} to {hi}"}])
    return v


def conversation_routes(hub: ChannelHub) -> list[RouteSpec]:
    deps = hub.deps

    @_errors
    async def list_conversations(request: web.Request) -> web.StreamResponse:
        principal_of(request, *FLOOR)
        q = request.query
        status = q.get("status") or None
        if status is not None and status not in conv.OPEN_STATUSES:
            raise problem(
                "validation-error",
                errors=[{"field": "status", "message": "open, ticketed or closed"}],
            )
        flt = conv.ConversationFilter(
            channel=q.get("channel") or None,
            status=status,
            waiting=_bool(request, "waiting"),
            emergency=_bool(request, "emergency"),
        )
        items = await conv.list_conversations(
            deps,
            flt,
            limit=_int(request, "limit", 50, 1, 200),
            offset=_int(request, "offset", 0, 0, 100_000),
        )
        return json_response({"items": items})

    @_errors
    async def get_conversation(request: web.Request) -> web.StreamResponse:
        principal_of(request, *FLOOR)
        return json_response(await conv.get_conversation(deps, _id(request)))

    @_errors
    async def post_message(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *FLOOR)
        cid = _id(request)
        body = await read_body(request, ConversationReplyIn)
        return json_response(await hub.reply(cid, who, body.text), status=201)

    @_errors
    async def to_ticket(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *FLOOR)
        cid = _id(request)
        body = await read_body(request, ConversationTicketIn)
        if body.number is not None:
            return json_response(await hub.attach_ticket(cid, body.number, who))
        assert body.kind is not None
        loc = body.location
        ticket = await hub.create_ticket(
            cid,
            who,
            conv.TicketFields(
                kind=body.kind.value,
                title=body.title,
                description=body.description,
                category=body.category,
                urgency=body.urgency.value if body.urgency else None,
                contact_name=body.contact_name,
                address=loc.address if loc else None,
                district=loc.district if loc else None,
                lat=loc.lat if loc else None,
                lon=loc.lon if loc else None,
            ),
        )
        return json_response(
            ticket, status=201, headers={"Location": f"/api/v1/tickets/{ticket['number']}"}
        )

    @_errors
    async def close_conversation(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *FLOOR)
        return json_response(await hub.close(_id(request), who))

    @_errors
    async def link_contacts(request: web.Request) -> web.StreamResponse:
        principal_of(request, *FLOOR)
        body = await read_body(request, ContactLinkIn)
        if len(body.contact_ids) + (1 if body.phone else 0) < 2:
            raise InvalidRequest(
                "link at least two contacts (ids, or ids and a phone)", "contact_ids"
            )
        return json_response(
            await hub.link_contacts(body.contact_ids, body.phone, body.display_name)
        )

    @_errors
    async def contact_history(request: web.Request) -> web.StreamResponse:
        principal_of(request, *FLOOR)
        return json_response(await hub.contact_history(_id(request)))

    c = "/api/v1/conversations"
    one = c + "/{id}"
    tag = "conversations"
    return [
        RouteSpec(
            "GET",
            c,
            list_conversations,
            "Written conversations (emergencies, then longest waiting first)",
            roles=FLOOR,
            tag=tag,
            query=(
                ("channel", "wechat, telegram, app, ..."),
                ("status", "open, ticketed or closed"),
                ("waiting", "true: a resident message awaits an agent"),
                ("emergency", "true/false"),
                ("limit", "1..200, default 50"),
                ("offset", "skip this many"),
            ),
        ),
        RouteSpec(
            "GET",
            one,
            get_conversation,
            "One conversation with its messages and delivery states",
            roles=FLOOR,
            tag=tag,
            responses={200: "OK", 404: "no such conversation"},
        ),
        RouteSpec(
            "POST",
            one + "/messages",
            post_message,
            "Reply to the resident (delivered through the outbox)",
            ConversationReplyIn,
            FLOOR,
            tag=tag,
            responses={201: "stored and queued", 404: "no such conversation", 409: "closed"},
        ),
        RouteSpec(
            "POST",
            one + "/ticket",
            to_ticket,
            "Create a ticket from the conversation, or attach it to ticket `number`",
            ConversationTicketIn,
            FLOOR,
            tag=tag,
            responses={
                200: "attached",
                201: "ticket created",
                409: "already linked to another ticket",
                422: "invalid body",
            },
        ),
        RouteSpec(
            "POST",
            one + "/close",
            close_conversation,
            "Close the conversation (the resident's next message opens a new one)",
            roles=FLOOR,
            tag=tag,
        ),
        RouteSpec(
            "POST",
            "/api/v1/contacts/link",
            link_contacts,
            "Link contacts (and a phone number) as one resident",
            ContactLinkIn,
            FLOOR,
            tag=tag,
            responses={200: "the resident with all its contacts", 404: "no such contact"},
        ),
        RouteSpec(
            "GET",
            "/api/v1/contacts/{id}/history",
            contact_history,
            "Everything of the person behind a contact: linked contacts, conversations, tickets",
            roles=FLOOR,
            tag=tag,
            responses={200: "OK", 404: "no such contact"},
        ),
    ]
