"""Agent control and the live queue over HTTP, for the console and supervisors.

Domain refusals become problem+json here and only here: an illegal state move is
409, a call that is not yours 403, an unknown call 404, a bad transfer target 422.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hotline.acd.domain import AcdError, IllegalAgentMove, UnknownAgent, UnknownCall
from hotline.acd.service import AcdService, BadTarget, CallNotFound, NotYourCall
from hotline.calls import store
from ticketing.handlers import TicketNotFound
from ticketing.lifecycle import Role
from ticketing.webkit import RouteSpec, json_response, principal_of, problem, read_body, row_id

FLOOR = (Role.AGENT, Role.SUPERVISOR)
SUPERVISION = (Role.SUPERVISOR, Role.ADMIN)
TAG = "calls"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginBody(_Strict):
    extension: str | None = Field(None, max_length=90, description="Digits or a dial string")
    skills: list[Annotated[str, Field(max_length=32)]] | None = Field(None, max_length=20)


class StateBody(_Strict):
    state: Literal["available", "break"]
    reason: str | None = Field(None, max_length=100)


class TransferBody(_Strict):
    mode: Literal["blind", "attended"]
    target: str | None = Field(None, max_length=100)
    step: Literal["consult", "complete", "cancel", "conference"] | None = None


class EmergencyBody(_Strict):
    line: Literal["110", "119", "120", "122"]
    summary: str = Field("", max_length=2000)
    location: str | None = Field(None, max_length=300)
    ticket: str | None = Field(None, pattern=r"^[0-9]{6,20}$")


class TicketLinkBody(_Strict):
    ticket: str = Field(pattern=r"^[0-9]{6,20}$")


class CallbackDoneBody(_Strict):
    status: Literal["done", "failed"] = "done"
    note: str | None = Field(None, max_length=500)


def _problem(exc: AcdError) -> web.HTTPException:
    if isinstance(exc, (CallNotFound, UnknownCall, UnknownAgent)):
        return problem("not-found", str(exc))
    if isinstance(exc, NotYourCall):
        return problem("forbidden", str(exc))
    if isinstance(exc, BadTarget):
        return problem("invalid-request", str(exc))
    if isinstance(exc, IllegalAgentMove):
        return problem("conflict", str(exc))
    return problem("invalid-request", str(exc))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _guard(fn: Handler) -> Handler:
    @functools.wraps(fn)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except AcdError as exc:
            raise _problem(exc) from None

    wrapped.__name__ = f"phone_{fn.__name__}"  # operationIds unique across packages
    return wrapped


def acd_routes(service: AcdService) -> list[RouteSpec]:
    async def me(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *FLOOR)
        return json_response(service.agent_view(who.username))

    async def login(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *FLOOR)
        body = await read_body(request, LoginBody)
        return json_response(await service.login(who.username, body.extension, body.skills))

    async def logout(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *FLOOR)
        return json_response(await service.logout(who.username))

    async def put_state(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *FLOOR)
        body = await read_body(request, StateBody)
        if who.username not in service.acd.agents:
            raise problem("conflict", "log in to the phone queue first")
        return json_response(await service.set_state(who.username, body.state, body.reason))

    async def agents(request: web.Request) -> web.StreamResponse:
        principal_of(request, *SUPERVISION)
        return json_response({"agents": service.agents_view()})

    async def calls(request: web.Request) -> web.StreamResponse:
        principal_of(request, *FLOOR, Role.ADMIN)
        return json_response({"calls": service.live_calls()})

    async def one_call(request: web.Request) -> web.StreamResponse:
        principal_of(request, *FLOOR, Role.ADMIN)
        uuid = request.match_info["uuid"]
        live = service.calls.get(uuid)
        row = await store.get_call(service.deps, uuid)
        if row is None and live is None:
            raise problem("not-found", f"no call {uuid}")
        out: dict[str, Any] = row or {}
        if live is not None:
            out = {**out, **live.view(service.acd), "live": True}
        return json_response(out)

    async def answer(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *FLOOR)
        return json_response(await service.answer(request.match_info["uuid"], who.username))

    async def hold(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *FLOOR)
        return json_response(await service.hold(request.match_info["uuid"], who.username, True))

    async def unhold(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *FLOOR)
        return json_response(await service.hold(request.match_info["uuid"], who.username, False))

    async def hangup(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *FLOOR)
        return json_response(
            await service.hangup(
                request.match_info["uuid"], who.username, supervisor=who.role is Role.SUPERVISOR
            )
        )

    async def transfer(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *FLOOR)
        body = await read_body(request, TransferBody)
        uuid = request.match_info["uuid"]
        if body.mode == "blind":
            if not body.target:
                raise problem("invalid-request", "a blind transfer needs a target")
            return json_response(await service.transfer_blind(uuid, who.username, body.target))
        step = body.step or "consult"
        return json_response(await service.transfer_attended(uuid, who.username, step, body.target))

    async def emergency(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *FLOOR)
        body = await read_body(request, EmergencyBody)
        uuid = request.match_info["uuid"]
        desk = service.emergency
        if desk is None:
            raise problem("invalid-request", "no emergency lines are configured")
        call = service.calls.get(uuid)
        if call is None:
            raise problem("not-found", f"no live call {uuid}")
        if call.agent not in (who.username, None) and who.role is not Role.SUPERVISOR:
            raise problem("forbidden", f"call {uuid} is with {call.agent}")
        result = await desk.hand_off(
            uuid,
            body.line,
            agent=who.username,
            summary=body.summary,
            location=body.location,
            ticket=body.ticket,
        )
        return json_response(result, status=200 if result["outcome"] == "connected" else 502)

    async def link_ticket(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *FLOOR)
        body = await read_body(request, TicketLinkBody)
        uuid = request.match_info["uuid"]
        try:
            out = await store.attach_ticket(service.deps, uuid, body.ticket, who)
        except LookupError:
            raise problem("not-found", f"no call {uuid}") from None
        except TicketNotFound:
            raise problem("not-found", f"no ticket {body.ticket}") from None
        live = service.calls.get(uuid)
        if live is not None:
            live.ticket = body.ticket
        return json_response(out)

    async def kpis(request: web.Request) -> web.StreamResponse:
        principal_of(request, *FLOOR, Role.ADMIN)
        return json_response(service.kpis())

    async def callbacks(request: web.Request) -> web.StreamResponse:
        principal_of(request, *FLOOR, Role.ADMIN)
        status = request.query.get("status", "open")
        if status not in ("open", "done", "failed"):
            raise problem("invalid-request", "status is open, done or failed")
        return json_response({"callbacks": await store.list_callbacks(service.deps, status)})

    async def callback_done(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *FLOOR)
        body = await read_body(request, CallbackDoneBody)
        cb_id = row_id(request.match_info["id"])
        if cb_id is None:
            raise problem("not-found", "no such callback")
        out = await store.close_callback(service.deps, cb_id, who.username, body.status, body.note)
        if out is None:
            raise problem("conflict", "this callback is not open (done already, or unknown)")
        return json_response(out)

    agent_ok = {200: "the agent", 401: "not signed in", 409: "not allowed now"}
    call_ok = {200: "the call", 403: "not your call", 404: "no such call", 409: "not now"}

    def spec(
        method: str,
        path: str,
        handler: Handler,
        summary: str,
        body: type[BaseModel] | None = None,
        roles: tuple[Role, ...] = FLOOR,
        responses: dict[int, str] | None = None,
        query: tuple[tuple[str, str], ...] = (),
    ) -> RouteSpec:
        return RouteSpec(
            method,
            path,
            _guard(handler),
            summary,
            body,
            roles,
            tag=TAG,
            responses=responses or {200: "OK"},
            query=query,
        )

    return [
        spec("GET", "/api/v1/agents/me", me, "My phone-queue state", responses=agent_ok),
        spec(
            "POST",
            "/api/v1/agents/me/login",
            login,
            "Log in to the phone queue (extension and skills remembered)",
            LoginBody,
            responses={**agent_ok, 422: "bad extension"},
        ),
        spec("POST", "/api/v1/agents/me/logout", logout, "Log out of the phone queue"),
        spec(
            "PUT",
            "/api/v1/agents/me/state",
            put_state,
            "Set my state: available (also ends wrap-up) or break",
            StateBody,
            responses=agent_ok,
        ),
        spec("GET", "/api/v1/agents", agents, "All agents and their states", roles=SUPERVISION),
        spec(
            "GET",
            "/api/v1/calls",
            calls,
            "Live calls in queue order",
            roles=(*FLOOR, Role.ADMIN),
        ),
        spec(
            "GET",
            "/api/v1/calls/{uuid}",
            one_call,
            "One call with its trail",
            roles=(*FLOOR, Role.ADMIN),
            responses={200: "the call", 404: "no such call"},
        ),
        spec(
            "POST",
            "/api/v1/calls/{uuid}/answer",
            answer,
            "Answer the call ringing me",
            responses=call_ok,
        ),
        spec("POST", "/api/v1/calls/{uuid}/hold", hold, "Hold", responses=call_ok),
        spec("POST", "/api/v1/calls/{uuid}/unhold", unhold, "Resume", responses=call_ok),
        spec("POST", "/api/v1/calls/{uuid}/hangup", hangup, "Hang up", responses=call_ok),
        spec(
            "POST",
            "/api/v1/calls/{uuid}/transfer",
            transfer,
            "Transfer: blind, or attended (consult, complete, cancel, conference)",
            TransferBody,
            responses={**call_ok, 400: "bad target or step"},
        ),
        spec(
            "POST",
            "/api/v1/calls/{uuid}/emergency",
            emergency,
            "Hand the call to 110/119/120/122 (attended, three-way)",
            EmergencyBody,
            responses={
                200: "connected; `recorded` false and `deferred` true when the database was "
                "out of reach: the caller is put through all the same, the records (and the "
                "data notice to the centre) are written when it is back, `id` null till then",
                404: "no live call",
                502: "no emergency route answered (same body: `outcome` failed)",
            },
        ),
        spec(
            "POST",
            "/api/v1/calls/{uuid}/ticket",
            link_ticket,
            "Attach the call (times, recording) to a ticket",
            TicketLinkBody,
            responses={200: "linked", 404: "no such call or ticket"},
        ),
        spec(
            "GET",
            "/api/v1/acd/kpis",
            kpis,
            "Service level, answer speed, connection rate, queue and agents",
            roles=(*FLOOR, Role.ADMIN),
        ),
        spec(
            "GET",
            "/api/v1/callbacks",
            callbacks,
            "Callback requests",
            roles=(*FLOOR, Role.ADMIN),
            query=(("status", "open (default), done or failed"),),
        ),
        spec(
            "POST",
            "/api/v1/callbacks/{id}/close",
            callback_done,
            "Record the outcome of a callback",
            CallbackDoneBody,
            responses={200: "closed", 409: "not open"},
        ),
    ]
