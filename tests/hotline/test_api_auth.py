"""Staff sign-in, sessions and who may see or do what, over HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt

from tests.conftest import PASSWORD, make_settings

PROBLEM = "application/problem+json"


async def login(client, username: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    return await client.post(
        "/api/v1/auth/login", json={"username": username, "password": password}
    )


# ---------------------------------------------------------------- login


async def test_login_returns_a_bearer_token_and_the_user(sqlite_api):
    r = await login(sqlite_api.client, "urban")
    assert r.status == 200
    body = await r.json()
    assert len(body["token"]) >= 40
    assert body == {
        "token": body["token"],
        "token_type": "Bearer",
        "expires_in": 12 * 3600,
        "user": {"username": "urban", "role": "department", "department": "urban-mgmt"},
    }


async def test_login_sets_an_http_only_same_site_strict_cookie(sqlite_api):
    r = await login(sqlite_api.client, "agent")
    assert r.status == 200
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("hotline_session=" + (await r.json())["token"])
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/" in cookie


async def test_wrong_password_and_unknown_user_get_the_same_401(sqlite_api):
    wrong = await login(sqlite_api.client, "agent", "not-the-password")
    unknown = await login(sqlite_api.client, "nobody", PASSWORD)
    for r in (wrong, unknown):
        assert r.status == 401
        assert r.content_type == PROBLEM
        assert "Set-Cookie" not in r.headers
    expected = {
        "type": "/problems/unauthorized",
        "title": "Sign in first",
        "status": 401,
        "detail": "wrong username or password",
    }
    assert await wrong.json() == expected
    assert await unknown.json() == expected


# ---------------------------------------------------------------- lockout


async def _locked_answer(r) -> dict:  # type: ignore[no-untyped-def]
    assert r.status == 429, await r.text()
    assert r.content_type == PROBLEM
    assert int(r.headers["Retry-After"]) >= 1
    body = await r.json()
    assert body["type"] == "/problems/too-many-requests"
    return body


async def test_five_wrong_passwords_lock_the_account_even_against_the_right_one(sqlite_api):
    """An account's lockout holds against the right password too (else the lock would
    only tell the guesser when they were right), and other accounts are untouched."""
    c = sqlite_api.client
    for _ in range(5):
        assert (await login(c, "agent", "wrong-password")).status == 401
    body = await _locked_answer(await login(c, "agent"))
    assert "locked" in body["detail"]
    assert int((await login(c, "agent")).headers["Retry-After"]) <= 900
    assert (await login(c, "agent2")).status == 200


async def test_the_lock_opens_by_itself_and_a_good_sign_in_resets_the_count(sqlite_api):
    from hotline.appkeys import DEPS

    c = sqlite_api.client
    deps = sqlite_api.app[DEPS]
    start = deps.clock()
    for _ in range(4):
        assert (await login(c, "agent", "wrong-password")).status == 401
    assert (await login(c, "agent")).status == 200  # the count starts again
    for _ in range(5):
        assert (await login(c, "agent", "wrong-password")).status == 401
    await _locked_answer(await login(c, "agent"))
    deps.clock = lambda: start + dt.timedelta(seconds=900 + 60)  # the lock is from later
    assert (await login(c, "agent")).status == 200


async def test_a_burst_of_parallel_guesses_checks_no_more_passwords_than_allowed(api):
    """Attempts are counted before the (slow) password check: 30 guesses at once get
    5 wrong-password answers and 25 refusals, not 30 checks."""
    answers = await asyncio.gather(
        *(login(api.client, "supervisor", f"guess-{i}") for i in range(30))
    )
    statuses = sorted(r.status for r in answers)
    assert statuses == [401] * 5 + [429] * 25


async def test_many_usernames_from_one_address_are_throttled(aiohttp_client, tmp_path):
    """Spraying one password over many usernames (most of them made up) trips the
    per-address count; the answer says how long to wait."""
    from hotline.app import create_app
    from hotline.appkeys import DEPS
    from hotline.bootstrap import build_deps
    from tests.conftest import _seed

    settings = make_settings(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path}/t.db", login_max_failures_per_ip=10
    )
    deps = build_deps(settings)
    await deps.db.create_all()
    client = await aiohttp_client(
        create_app(settings, deps=deps, migrate=False, watch_deadlines=False)
    )
    await _seed(client.app[DEPS])
    for i in range(10):
        assert (await login(client, f"user-{i}", "Password1")).status == 401
    await _locked_answer(await login(client, "agent"))


async def test_login_with_a_missing_field_is_422(sqlite_api):
    r = await sqlite_api.client.post("/api/v1/auth/login", json={"username": "agent"})
    assert r.status == 422
    assert await r.json() == {
        "type": "/problems/validation-error",
        "title": "Some fields are not valid",
        "status": 422,
        "errors": [{"field": "password", "message": "Field required"}],
    }


# ---------------------------------------------------------------- bearer, cookie, logout


async def test_bearer_token_signs_requests_in(sqlite_api):
    token = (await (await login(sqlite_api.client, "supervisor")).json())["token"]
    sqlite_api.client.session.cookie_jar.clear()
    r = await sqlite_api.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status == 200
    assert await r.json() == {"username": "supervisor", "role": "supervisor", "department": None}


async def test_session_cookie_signs_requests_in(sqlite_api):
    r = await login(sqlite_api.client, "water")
    assert r.status == 200
    # no Authorization header: the cookie jar sends hotline_session
    r = await sqlite_api.client.get("/api/v1/auth/me")
    assert r.status == 200
    assert await r.json() == {"username": "water", "role": "department", "department": "water"}


async def test_logout_revokes_the_token(sqlite_api):
    token = (await (await login(sqlite_api.client, "agent")).json())["token"]
    sqlite_api.client.session.cookie_jar.clear()
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await sqlite_api.client.get("/api/v1/auth/me", headers=bearer)).status == 200

    r = await sqlite_api.client.post("/api/v1/auth/logout", headers=bearer)
    assert r.status == 204

    r = await sqlite_api.client.get("/api/v1/auth/me", headers=bearer)
    assert r.status == 401
    assert r.content_type == PROBLEM
    r = await sqlite_api.client.get("/api/v1/tickets", headers=bearer)
    assert r.status == 401


async def test_logout_clears_the_cookie(sqlite_api):
    await login(sqlite_api.client, "agent")
    r = await sqlite_api.client.post("/api/v1/auth/logout")
    assert r.status == 204
    assert 'hotline_session=""' in r.headers["Set-Cookie"]
    assert (await sqlite_api.client.get("/api/v1/auth/me")).status == 401


async def test_a_made_up_token_is_401(sqlite_api):
    r = await sqlite_api.client.get(
        "/api/v1/tickets", headers={"Authorization": "Bearer not-a-real-token"}
    )
    assert r.status == 401
    assert await r.json() == {
        "type": "/problems/unauthorized",
        "title": "Sign in first",
        "status": 401,
        "detail": "send a bearer token or the session cookie",
    }


async def test_protected_routes_without_a_token_are_401(sqlite_api):
    number = (await sqlite_api.new_ticket())["number"]
    sqlite_api.client.session.cookie_jar.clear()
    c = sqlite_api.client
    requests = [
        c.get("/api/v1/auth/me"),
        c.post("/api/v1/auth/logout"),
        c.get("/api/v1/tickets"),
        c.post("/api/v1/tickets", json={}),
        c.get(f"/api/v1/tickets/{number}"),
        c.get(f"/api/v1/tickets/{number}/events"),
        c.post(f"/api/v1/tickets/{number}/dispatch", json={}),
        c.post(f"/api/v1/tickets/{number}/contact", json={"reason": "callback"}),
        c.get(f"/api/v1/tickets/{number}/attachments"),
        c.get("/api/v1/queue"),
        c.get("/api/v1/departments"),
        c.post("/api/v1/departments", json={}),
        c.get("/api/v1/categories"),
        c.get("/api/v1/admin/audit/verify"),
    ]
    for req in requests:
        r = await req
        assert r.status == 401, (r.method, r.url.path)
        assert r.content_type == PROBLEM
        assert (await r.json())["type"] == "/problems/unauthorized"


async def test_public_routes_need_no_token(sqlite_api):
    c = sqlite_api.client
    for path in ("/", "/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"):
        assert (await c.get(path)).status == 200, path


# ---------------------------------------------------------------- roles


async def test_department_user_cannot_create_tickets(sqlite_api):
    r = await sqlite_api.post(
        "/api/v1/tickets",
        {"kind": "complaint", "title": "t", "description": "d", "channel": "phone"},
        as_="urban",
    )
    assert r.status == 403
    assert await r.json() == {
        "type": "/problems/forbidden",
        "title": "Your role may not do this",
        "status": 403,
        "detail": "this needs the role agent or supervisor; you are department",
    }


async def test_admin_cannot_create_tickets_either(sqlite_api):
    r = await sqlite_api.post(
        "/api/v1/tickets",
        {"kind": "complaint", "title": "t", "description": "d", "channel": "phone"},
        as_="admin",
    )
    assert r.status == 403


async def test_only_admin_creates_departments(sqlite_api):
    body = {"code": "d-east-parks", "name": "东城区园林绿化所", "level": "agency"}
    for who, role in (("agent", "agent"), ("supervisor", "supervisor"), ("urban", "department")):
        r = await sqlite_api.post("/api/v1/departments", body, as_=who)
        assert r.status == 403, who
        assert (await r.json())["detail"] == f"this needs the role admin; you are {role}"

    r = await sqlite_api.post("/api/v1/departments", body, as_="admin")
    assert r.status == 201
    assert await r.json() == {
        "code": "d-east-parks",
        "name": "东城区园林绿化所",
        "parent_code": None,
        "level": "agency",
        "district": None,
        "is_fallback": False,
        "active": True,
    }


async def test_department_user_sees_only_its_own_tickets(api):
    lights = await api.new_ticket(title="路灯不亮", category="urban.street-lights")
    water = await api.new_ticket(title="停水", category="utilities.water-outage")
    undispatched = await api.new_ticket(title="噪音", category="urban.noise")
    await api.move(lights["number"], "dispatch")
    await api.move(water["number"], "dispatch")

    r = await api.get("/api/v1/tickets", as_="urban")
    assert r.status == 200
    assert [t["number"] for t in (await r.json())["items"]] == [lights["number"]]

    r = await api.get("/api/v1/tickets", as_="water")
    assert [t["number"] for t in (await r.json())["items"]] == [water["number"]]

    r = await api.get("/api/v1/tickets", as_="transport")
    assert (await r.json())["items"] == []

    # the floor sees everything
    r = await api.get("/api/v1/tickets", as_="agent")
    assert [t["number"] for t in (await r.json())["items"]] == [
        undispatched["number"],
        water["number"],
        lights["number"],
    ]

    # another department's ticket does not exist, as far as urban can tell
    for path in ("", "/events", "/attachments"):
        r = await api.get(f"/api/v1/tickets/{water['number']}{path}", as_="urban")
        assert r.status == 404, path
        assert (await r.json())["type"] == "/problems/not-found"
    r = await api.get(f"/api/v1/tickets/{undispatched['number']}", as_="urban")
    assert r.status == 404
    r = await api.post(f"/api/v1/tickets/{water['number']}/sign", {}, as_="urban")
    assert r.status == 404

    r = await api.get(f"/api/v1/tickets/{lights['number']}", as_="urban")
    assert r.status == 200
    assert (await r.json())["allowed_actions"] == ["sign", "return"]


async def test_assisting_department_sees_the_ticket_but_cannot_sign(api):
    t = await api.new_ticket()
    await api.move(t["number"], "dispatch", {"department": "urban-mgmt", "assist": ["water"]})

    r = await api.get("/api/v1/tickets", as_="water")
    assert [x["number"] for x in (await r.json())["items"]] == [t["number"]]
    r = await api.get(f"/api/v1/tickets/{t['number']}", as_="water")
    assert r.status == 200
    assert (await r.json())["allowed_actions"] == []
    r = await api.post(f"/api/v1/tickets/{t['number']}/sign", {}, as_="water")
    assert r.status == 403


async def test_cross_site_post_with_the_session_cookie_is_refused(sqlite_api):
    await login(sqlite_api.client, "agent")
    body = {"kind": "complaint", "title": "t", "description": "d", "channel": "phone"}

    r = await sqlite_api.client.post(
        "/api/v1/tickets", json=body, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert r.status == 403
    assert await r.json() == {
        "type": "/problems/forbidden",
        "title": "Your role may not do this",
        "status": 403,
        "detail": "cross-site request with the session cookie",
    }
    r = await sqlite_api.client.post(
        "/api/v1/auth/logout", headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert r.status == 403
    # the session survived the refused logout
    assert (await sqlite_api.client.get("/api/v1/auth/me")).status == 200

    # the same request from the console itself is fine
    r = await sqlite_api.client.post(
        "/api/v1/tickets", json=body, headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert r.status == 201
    # reads are harmless
    r = await sqlite_api.client.get("/api/v1/tickets", headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status == 200
    assert len((await r.json())["items"]) == 1


async def test_cross_site_post_with_a_bearer_token_is_allowed(sqlite_api):
    """A bearer token is not sent by browsers on their own: no CSRF risk."""
    r = await sqlite_api.post(
        "/api/v1/tickets",
        {"kind": "complaint", "title": "t", "description": "d", "channel": "phone"},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert r.status == 201


# ---------------------------------------------------------------- CLI


async def test_create_user_command_makes_a_user_who_can_sign_in(
    aiohttp_client, tmp_path, monkeypatch
):
    import main
    from hotline.app import create_app

    url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("HOTLINE_DATABASE_URL", url)
    monkeypatch.setenv("HOTLINE_PII_KEY_FILE", str(tmp_path / "pii.key"))
    monkeypatch.setenv("HOTLINE_HOLIDAY_OVERRIDE_FILE", str(tmp_path / "no-holidays.yaml"))
    monkeypatch.setenv("HOTLINE_CARD_KEYRING_FILE", str(tmp_path / "keyring.json"))
    monkeypatch.setenv("HOTLINE_CARD_SERVICE_KEY_FILE", str(tmp_path / "service.pem"))
    monkeypatch.delenv("HOTLINE_PII_KEYS", raising=False)
    argv = ["create-user", "--username", "lihua", "--password", "long-enough-1"]

    # main() runs its own event loop, so it gets a thread of its own
    code = await asyncio.to_thread(main.main, [*argv, "--role", "supervisor", "--name", "李华"])
    assert code == 0
    assert (tmp_path / "pii.key").exists()
    # the same name twice is refused with exit code 1
    assert await asyncio.to_thread(main.main, [*argv, "--role", "agent"]) == 1
    # a department user needs a department that exists
    code = await asyncio.to_thread(
        main.main,
        ["create-user", "--username", "x", "--password", "long-enough-1", "--role", "department"],
    )
    assert code == 2

    client = await aiohttp_client(create_app(make_settings(tmp_path, url), watch_deadlines=False))
    r = await login(client, "lihua", "long-enough-1")
    assert r.status == 200
    assert (await r.json())["user"] == {
        "username": "lihua",
        "role": "supervisor",
        "department": None,
    }
    assert (await login(client, "lihua", "wrong-password")).status == 401
    assert (await login(client, "x", "long-enough-1")).status == 401


async def test_a_burst_of_requests_with_one_token_looks_the_session_up_once(sqlite_api):
    import sqlalchemy as sa

    from hotline.appkeys import DEPS, SESSIONS

    api = sqlite_api
    token = await api.token("agent")
    sessions = api.app[SESSIONS]
    sessions._cache.clear()  # as if the cache entry had just expired
    lookups = []

    def count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if "staff_session" in statement and statement.lstrip().upper().startswith("SELECT"):
            lookups.append(statement)

    engine = api.app[DEPS].db.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        who = await asyncio.gather(*(sessions.resolve(token) for _ in range(32)))
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert {w.username for w in who} == {"agent"}
    assert len(lookups) == 1
