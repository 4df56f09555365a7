"""Staff accounts after `create-user`: changing one's password, and the admin's desk.

What a security auditor asks of a hotline's staff accounts, and the shell alone could
not give: a staff member changes their own password (the old one proven, other
sessions ended); an admin lists accounts with their lock state, creates them, changes
a role or department, deactivates a leaver (every session ends at once, on every
instance), unlocks an account locked by wrong passwords and sets a new password. Each
change is a row of `staff_event` (who did what to whom, when), never a silent update.
An admin cannot remove the last active admin: the centre would have nobody to undo it.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import sqlalchemy as sa
from aiohttp import web
from pydantic import Field

from hotline.auth import (
    LoginLocked,
    SessionStore,
    UserExists,
    create_user,
    department_problem,
    password_problem,
    request_token,
    session_t,
    user_t,
)
from ticketing.handlers import Deps
from ticketing.lifecycle import Role
from ticketing.models import StaffEvent
from ticketing.ports import Principal
from ticketing.schemas import Strict
from ticketing.webkit import (
    RouteSpec,
    field_problem,
    json_response,
    principal_of,
    problem,
    read_body,
)

log = logging.getLogger(__name__)
event_t = StaffEvent.__table__  # type: ignore[attr-defined]
ADMIN = (Role.ADMIN,)
EVENTS_SHOWN = 50
Password = Annotated[str, Field(min_length=1, max_length=1024)]
Username = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]


class PasswordChangeIn(Strict):
    current_password: Password
    new_password: Password


class PasswordSetIn(Strict):
    new_password: Password


class StaffIn(Strict):
    username: Username
    password: Password
    role: Role
    department: Annotated[str, Field(max_length=64)] | None = None
    display_name: Annotated[str, Field(max_length=200)] = ""


class StaffPatch(Strict):
    role: Role | None = None
    department: Annotated[str, Field(max_length=64)] | None = None
    display_name: Annotated[str, Field(max_length=200)] | None = None
    active: bool | None = None


def staff_view(row: Any, now: Any, sessions: int | None = None) -> dict[str, Any]:
    locked = row.locked_until is not None and row.locked_until > now
    view = {
        "username": row.username,
        "display_name": row.display_name,
        "role": row.role,
        "department": row.department_code,
        "active": row.active,
        "locked_until": row.locked_until.isoformat() if locked else None,
        "failed_logins": 0 if row.locked_until is not None else row.failed_logins,
        "created_at": row.created_at.isoformat(),
    }
    if sessions is not None:
        view["sessions"] = sessions
    return view


async def _record(
    conn: Any, deps: Deps, actor: Principal, username: str, action: str, **data: Any
) -> None:
    await conn.execute(
        sa.insert(event_t).values(
            at=deps.clock(), actor=actor.username, username=username, action=action, data=data
        )
    )
    log.info("staff account %r: %s by %s %s", username, action, actor.username, data or "")


def staff_routes(deps: Deps, sessions: SessionStore) -> list[RouteSpec]:
    async def load(conn: Any, username: str, *, lock: bool = False) -> Any:
        q = sa.select(user_t).where(user_t.c.username == username)
        if lock and not deps.db.is_sqlite:
            q = q.with_for_update()
        row = (await conn.execute(q)).first()
        if row is None:
            raise problem("not-found", f"no staff account {username!r}")
        return row

    async def change_own_password(request: web.Request) -> web.StreamResponse:
        who = principal_of(request)
        body = await read_body(request, PasswordChangeIn)
        weak = password_problem(body.new_password, who.username)
        if weak:
            raise field_problem(weak, "new_password")
        token, _ = request_token(request)
        try:
            changed = await sessions.change_password(
                who, body.current_password, body.new_password, keep_token=token
            )
        except LoginLocked as exc:
            return exc.response()
        if not changed:
            raise problem("forbidden", "the current password is wrong")
        async with deps.db.write() as conn:
            await _record(conn, deps, who, who.username, "password_changed")
        return web.Response(status=204)

    async def list_staff(request: web.Request) -> web.StreamResponse:
        principal_of(request, *ADMIN)
        now = deps.clock()
        live = (
            sa.select(session_t.c.user_id, sa.func.count().label("n"))
            .where(session_t.c.expires_at > now)
            .group_by(session_t.c.user_id)
            .subquery()
        )
        q = (
            sa.select(user_t, sa.func.coalesce(live.c.n, 0).label("sessions"))
            .outerjoin(live, live.c.user_id == user_t.c.id)
            .order_by(user_t.c.username)
        )
        async with deps.db.read() as conn:
            rows = (await conn.execute(q)).all()
        return json_response({"items": [staff_view(r, now, r.sessions) for r in rows]})

    async def get_staff(request: web.Request) -> web.StreamResponse:
        principal_of(request, *ADMIN)
        username = request.match_info["username"]
        async with deps.db.read() as conn:
            row = await load(conn, username)
            events = (
                await conn.execute(
                    sa.select(event_t)
                    .where(event_t.c.username == username)
                    .order_by(event_t.c.id.desc())
                    .limit(EVENTS_SHOWN)
                )
            ).all()
        view = staff_view(row, deps.clock())
        view["events"] = [
            {"at": e.at.isoformat(), "actor": e.actor, "action": e.action, "data": e.data}
            for e in events
        ]
        return json_response(view)

    async def create_staff(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *ADMIN)
        body = await read_body(request, StaffIn)
        if wrong := department_problem(deps, body.role, body.department):
            raise field_problem(wrong, "department")
        if weak := password_problem(body.password, body.username):
            raise field_problem(weak, "password")
        try:
            await create_user(
                deps,
                body.username,
                body.password,
                body.role,
                body.department,
                body.display_name,
            )
        except UserExists:
            raise problem("conflict", f"a staff account {body.username!r} exists") from None
        async with deps.db.write() as conn:
            await _record(
                conn, deps, who, body.username, "created", role=body.role.value,
                department=body.department,
            )  # fmt: skip
            row = await load(conn, body.username)
        return json_response(staff_view(row, deps.clock(), 0), status=201)

    async def patch_staff(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *ADMIN)
        body = await read_body(request, StaffPatch)
        username = request.match_info["username"]
        patch = body.model_dump(exclude_unset=True)
        async with deps.db.write() as conn:
            if not deps.db.is_sqlite:
                # every active admin locked first, in one order: two admins removing each
                # other at once are serialised here, and the second sees it is the last
                await conn.execute(
                    sa.select(user_t.c.id)
                    .where(user_t.c.role == Role.ADMIN.value, user_t.c.active.is_(True))
                    .order_by(user_t.c.id)
                    .with_for_update()
                )
            row = await load(conn, username, lock=True)
            role = Role(patch.get("role") or row.role)
            if "department" in patch:
                department = patch["department"]
            else:  # kept while still a department user, dropped when the role moves on
                department = row.department_code if role is Role.DEPARTMENT else None
            if wrong := department_problem(deps, role, department):
                raise field_problem(wrong, "department")
            active = patch["active"] if patch.get("active") is not None else row.active
            leaves_admins = role is not Role.ADMIN or not active
            if row.role == Role.ADMIN.value and row.active and leaves_admins:
                others = (
                    await conn.execute(
                        sa.select(sa.func.count()).where(
                            user_t.c.role == Role.ADMIN.value,
                            user_t.c.active.is_(True),
                            user_t.c.id != row.id,
                        )
                    )
                ).scalar_one()
                if not others:
                    raise problem("conflict", "this is the last active admin")
            values: dict[str, Any] = {
                "role": role.value,
                "department_code": department,
                "active": active,
            }
            if patch.get("display_name") is not None:
                values["display_name"] = patch["display_name"]
            changes = {
                k: v
                for k, v in values.items()
                if getattr(row, k) != v and not (k == "display_name" and not v)
            }
            if changes:
                await conn.execute(sa.update(user_t).where(user_t.c.id == row.id).values(changes))
                action = "deactivated" if changes.get("active") is False else "changed"
                await _record(conn, deps, who, username, action, **changes)
            row = await load(conn, username)
        if changes.keys() & {"role", "department_code", "active"}:
            # a session carries the role it was opened with: a change ends them all
            await sessions.revoke_user(row.id)
        return json_response(staff_view(row, deps.clock()))

    async def unlock_staff(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *ADMIN)
        username = request.match_info["username"]
        async with deps.db.write() as conn:
            row = await load(conn, username, lock=True)
            await conn.execute(
                sa.update(user_t)
                .where(user_t.c.id == row.id)
                .values(failed_logins=0, locked_until=None)
            )
            await _record(conn, deps, who, username, "unlocked")
            row = await load(conn, username)
        return json_response(staff_view(row, deps.clock()))

    async def set_staff_password(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *ADMIN)
        username = request.match_info["username"]
        body = await read_body(request, PasswordSetIn)
        weak = password_problem(body.new_password, username)
        if weak:
            raise field_problem(weak, "new_password")
        async with deps.db.read() as conn:
            row = await load(conn, username)
        await sessions.set_password(row.id, body.new_password, keep_token=None)
        async with deps.db.write() as conn:
            await _record(conn, deps, who, username, "password_set")
        return web.Response(status=204)

    s = "/api/v1/staff"
    one = s + "/{username}"
    tag = "staff"
    return [
        RouteSpec(
            "POST",
            "/api/v1/auth/password",
            change_own_password,
            "Change my password (the current one proven); my other sessions end",
            PasswordChangeIn,
            (),
            tag="auth",
            responses={
                204: "changed",
                403: "the current password is wrong",
                422: "the new password is refused (named)",
                429: "locked after too many wrong passwords",
            },
        ),
        RouteSpec("GET", s, list_staff, "Staff accounts with lock state", roles=ADMIN, tag=tag),
        RouteSpec(
            "POST",
            s,
            create_staff,
            "Create a staff account",
            StaffIn,
            ADMIN,
            tag=tag,
            responses={201: "created", 409: "the username is taken", 422: "invalid"},
        ),
        RouteSpec(
            "GET", one, get_staff, "A staff account and its audit trail", roles=ADMIN, tag=tag
        ),
        RouteSpec(
            "PATCH",
            one,
            patch_staff,
            "Change role, department, name, or deactivate (sessions end)",
            StaffPatch,
            ADMIN,
            tag=tag,
            responses={200: "changed", 404: "no such account", 409: "the last active admin"},
        ),
        RouteSpec(
            "POST",
            one + "/unlock",
            unlock_staff,
            "Lift a lockout after wrong passwords",
            roles=ADMIN,
            tag=tag,
        ),
        RouteSpec(
            "POST",
            one + "/password",
            set_staff_password,
            "Set a new password (the account's sessions end)",
            PasswordSetIn,
            ADMIN,
            tag=tag,
            responses={204: "set", 404: "no such account", 422: "the password is refused"},
        ),
    ]
