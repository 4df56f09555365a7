"""Staff accounts: one's own password, and the admin's desk (the security auditor's view)."""

from __future__ import annotations

import asyncio

from tests.conftest import PASSWORD

NEW = "correct horse battery staple"


async def _login(api, username: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    return await api.client.post(
        "/api/v1/auth/login", json={"username": username, "password": password}
    )


async def _token(api, username: str, password: str = PASSWORD) -> str:  # type: ignore[no-untyped-def]
    r = await _login(api, username, password)
    assert r.status == 200, await r.text()
    return (await r.json())["token"]


async def _me(api, token: str) -> int:  # type: ignore[no-untyped-def]
    r = await api.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    return r.status


async def _post(api, path: str, body, token: str):  # type: ignore[no-untyped-def]
    return await api.client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})


async def test_changing_my_password_proves_the_old_one_and_ends_my_other_sessions(api):
    here = await _token(api, "agent")
    elsewhere = await _token(api, "agent")  # a session left open on another desk
    r = await _post(
        api, "/api/v1/auth/password", {"current_password": "nope", "new_password": NEW}, here
    )
    assert r.status == 403
    for weak, why in (("short", "at least"), ("agent-2026!", "username"), ("a" * 12, "repeated")):
        r = await _post(
            api,
            "/api/v1/auth/password",
            {"current_password": PASSWORD, "new_password": weak},
            here,
        )
        assert r.status == 422
        [err] = (await r.json())["errors"]
        assert err["field"] == "new_password" and why in err["message"]
    r = await _post(
        api, "/api/v1/auth/password", {"current_password": PASSWORD, "new_password": NEW}, here
    )
    assert r.status == 204
    assert await _me(api, here) == 200  # the session that changed it goes on
    assert await _me(api, elsewhere) == 401  # every other one ends at once
    assert (await _login(api, "agent")).status == 401
    assert (await _login(api, "agent", NEW)).status == 200
    r = await api.get("/api/v1/staff/agent", as_="admin")
    assert [e["action"] for e in (await r.json())["events"]] == ["password_changed"]


async def test_guessing_the_current_password_counts_toward_the_lockout(api):
    """A stolen session must not be a way round the sign-in lockout."""
    token = await _token(api, "agent2")
    codes = []
    for _ in range(6):
        r = await _post(
            api,
            "/api/v1/auth/password",
            {"current_password": "guess", "new_password": NEW},
            token,
        )
        codes.append(r.status)
    assert codes == [403] * 5 + [429]
    assert (await _login(api, "agent2")).status == 429  # the account is locked


async def test_admin_creates_lists_and_cannot_be_a_non_admin(api):
    r = await api.post(
        "/api/v1/staff",
        {"username": "night1", "password": NEW, "role": "agent", "display_name": "夜班一号"},
        as_="admin",
    )
    assert r.status == 201, await r.text()
    assert (await r.json())["display_name"] == "夜班一号"
    r = await api.post(
        "/api/v1/staff", {"username": "night1", "password": NEW, "role": "agent"}, as_="admin"
    )
    assert r.status == 409
    r = await api.post(
        "/api/v1/staff", {"username": "d1", "password": NEW, "role": "department"}, as_="admin"
    )
    assert r.status == 422 and (await r.json())["errors"][0]["field"] == "department"
    r = await api.post(
        "/api/v1/staff", {"username": "x y", "password": NEW, "role": "agent"}, as_="admin"
    )
    assert r.status == 422
    await _token(api, "night1", NEW)
    listing = {
        u["username"]: u
        for u in (await (await api.get("/api/v1/staff", as_="admin")).json())["items"]
    }
    assert listing["night1"]["sessions"] == 1 and listing["night1"]["active"] is True
    assert "password_hash" not in listing["night1"]
    for who in ("agent", "supervisor", "urban"):
        assert (await api.get("/api/v1/staff", as_=who)).status == 403
        r = await api.post(
            "/api/v1/staff", {"username": "sneaky", "password": NEW, "role": "admin"}, as_=who
        )
        assert r.status == 403


async def test_deactivating_a_leaver_ends_every_session_at_once(api):
    token = await _token(api, "water")
    assert await _me(api, token) == 200
    r = await api.patch("/api/v1/staff/water", {"active": False})
    assert r.status == 200 and (await r.json())["active"] is False
    assert await _me(api, token) == 401
    assert (await _login(api, "water")).status == 401
    r = await api.get("/api/v1/staff/water", as_="admin")
    [event] = (await r.json())["events"]
    assert (event["action"], event["actor"], event["data"]) == (
        "deactivated",
        "admin",
        {"active": False},
    )


async def test_a_role_change_ends_the_sessions_that_carry_the_old_role(api):
    token = await _token(api, "agent")
    r = await api.patch("/api/v1/staff/agent", {"role": "supervisor"})
    assert r.status == 200 and (await r.json())["role"] == "supervisor"
    assert await _me(api, token) == 401
    r = await _login(api, "agent")
    assert (await r.json())["user"]["role"] == "supervisor"
    r = await api.patch("/api/v1/staff/agent", {"role": "department"})
    assert r.status == 422  # a department user needs its department
    r = await api.patch("/api/v1/staff/agent", {"role": "department", "department": "water"})
    assert r.status == 200 and (await r.json())["department"] == "water"
    r = await api.patch("/api/v1/staff/agent", {"role": "agent"})
    assert (await r.json())["department"] is None  # dropped with the role
    assert (await api.patch("/api/v1/staff/nobody", {"active": False})).status == 404


async def test_the_last_active_admin_cannot_be_removed(api):
    for patch in ({"active": False}, {"role": "supervisor"}):
        r = await api.patch("/api/v1/staff/admin", patch)
        assert r.status == 409
    r = await api.post(
        "/api/v1/staff", {"username": "admin2", "password": NEW, "role": "admin"}, as_="admin"
    )
    assert r.status == 201
    assert (await api.patch("/api/v1/staff/admin", {"role": "supervisor"})).status == 200


async def test_unlock_and_set_password(api):
    token = await _token(api, "transport")
    for _ in range(6):
        await _login(api, "transport", "wrong")
    assert (await _login(api, "transport")).status == 429
    r = await api.get("/api/v1/staff/transport", as_="admin")
    assert (await r.json())["locked_until"] is not None
    r = await api.post("/api/v1/staff/transport/unlock", {}, as_="admin")
    assert r.status == 200 and (await r.json())["locked_until"] is None
    assert (await _login(api, "transport")).status == 200
    r = await api.post(
        "/api/v1/staff/transport/password", {"new_password": "transport"}, as_="admin"
    )
    assert r.status == 422  # the username inside
    r = await api.post("/api/v1/staff/transport/password", {"new_password": NEW}, as_="admin")
    assert r.status == 204
    assert await _me(api, token) == 401  # an admin's reset ends the account's sessions
    assert (await _login(api, "transport")).status == 401
    assert (await _login(api, "transport", NEW)).status == 200
    r = await api.get("/api/v1/staff/transport", as_="admin")
    actions = [e["action"] for e in (await r.json())["events"]]
    assert actions == ["password_set", "unlocked"]  # newest first


async def test_concurrent_deactivations_of_the_last_two_admins_keep_one(api):
    """Two admins removing each other at the same moment: one must remain."""
    r = await api.post(
        "/api/v1/staff", {"username": "admin2", "password": NEW, "role": "admin"}, as_="admin"
    )
    assert r.status == 201
    other = await _token(api, "admin2", NEW)
    a = api.patch("/api/v1/staff/admin2", {"active": False})
    b = api.client.patch(
        "/api/v1/staff/admin",
        json={"active": False},
        headers={"Authorization": f"Bearer {other}"},
    )
    results = await asyncio.gather(a, b)
    assert sorted(r.status for r in results) in ([200, 409], [200, 401])
    r = await api.get("/api/v1/staff", as_="admin")
    if r.status == 401:  # the other one won: ask as the admin that remains
        r = await api.client.get("/api/v1/staff", headers={"Authorization": f"Bearer {other}"})
    listing = (await r.json())["items"]
    active_admins = [u for u in listing if u["role"] == "admin" and u["active"]]
    assert len(active_admins) == 1
