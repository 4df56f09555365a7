"""Hostile input against every route the OpenAPI document lists, and the channels.

The principle under test: input from outside is validated, and bad input gets a
clear answer -- never a 500, never a hang. Under /api/v1 every error is RFC 9457
problem+json (`type`, `title`, `status`); Open311 answers its spec's `errors` list;
the channel webhooks (WeChat, Telegram) answer politely, never 5xx, for a bad message
from outside.

The routes come from GET /api/v1/openapi.json at test time, so a new route is swept
without touching this file. Cheap cases (bad JSON, wrong content types, bad path and
query parameters, bad headers, wrong types for every documented field) go to every
route; expensive ones (bodies over the limit, XML bombs) to one representative route
each. Each test collects every failing request and reports them all at once.

Everything runs on SQLite; the values a database may choke on (NUL, lone surrogates,
integers past the 32- and 64-bit columns) run on PostgreSQL as well. Defects found in
files outside this change are listed in KNOWN: their failures are reported as
warnings, the rest of their route is still swept.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import re
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import ClientTimeout
from yarl import URL

from tests.channels import telegram_fake as tg
from tests.channels import wechat_rig as rig
from tests.conftest import Api, _seed, make_settings

PROBLEM = "application/problem+json"
API = "/api/v1"
REQUEST_TIMEOUT_S = 10.0  # a hang fails the request instead of stalling the run
RAW = "\x00RAW\x00"  # placeholder in a body template for a raw JSON literal


# ---------------------------------------------------------------- sending and judging


@dataclass
class Answer:
    status: int
    ctype: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Sweep:
    """The running service, a client for it, and what the sweep found wrong."""

    api: Api
    ops: list[Op]
    tokens: dict[str, str]
    values: dict[str, str]
    failures: list[str] = field(default_factory=list)
    known_seen: list[str] = field(default_factory=list)  # failures listed in KNOWN
    sent: int = 0

    async def send(
        self,
        method: str,
        target: str,
        *,
        auth: str | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        ctype: str | None = "application/json",
    ) -> Answer | None:
        """One request with `target` sent exactly as given (already percent-encoded);
        None (and a failure) when it did not answer within REQUEST_TIMEOUT_S."""
        h = dict(headers or {})
        if auth is not None:
            h.setdefault("Authorization", f"Bearer {self.tokens[auth]}")
        skip = []
        if ctype is None:
            skip.append("Content-Type")
        else:
            h.setdefault("Content-Type", ctype)
        client = self.api.client
        client.session.cookie_jar.clear()  # a login's cookie must not sign in the next call
        url = URL(str(client.make_url("/")).rstrip("/") + target, encoded=True)
        self.sent += 1
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                async with client.session.request(
                    method,
                    url,
                    headers=h,
                    data=data,
                    skip_auto_headers=skip,
                    timeout=ClientTimeout(total=REQUEST_TIMEOUT_S),
                ) as r:
                    # a 2xx may be a stream (SSE, a websocket refusal): do not wait on it
                    body = await r.read() if r.status >= 300 else b""
                    return Answer(r.status, r.content_type, body, dict(r.headers))
        except TimeoutError:
            self.failures.append(f"{method} {target[:160]}: no answer in {REQUEST_TIMEOUT_S}s")
            return None

    def judge(
        self, label: str, method: str, target: str, a: Answer | None, known: str | None = None
    ) -> None:
        """Record what is wrong with one answer (if anything); `known`: the reason this
        case is a reported defect outside this change (see KNOWN), kept apart."""
        if a is None:
            return
        where = f"{method} {target[:160]} [{label}]"
        failure = None
        path = target.split("?", 1)[0]
        if a.status >= 500:
            failure = f"{where}: {a.status} {a.body[:300]!r}"
        elif (path == API or path.startswith(API + "/")) and a.status >= 400:
            if a.ctype != PROBLEM:
                failure = f"{where}: {a.status} as {a.ctype}, not {PROBLEM}"
            elif problem_failure := _problem_failure(a):
                failure = f"{where}: {problem_failure}"
        if failure:
            (self.known_seen if known else self.failures).append(failure)

    async def hit(
        self, label: str, method: str, target: str, known: str | None = None, **kw: Any
    ) -> Answer | None:
        a = await self.send(method, target, **kw)
        self.judge(label, method, target, a, known)
        return a

    def verdict(self, at_least: int) -> None:
        """The sweep's assertion: it really sent requests, and none was answered wrong."""
        assert self.sent >= at_least, f"only {self.sent} requests sent; the sweep lost routes"
        for seen in dict.fromkeys(self.known_seen):  # visible in the run, never hidden
            warnings.warn(f"known defect (see KNOWN): {seen}", stacklevel=2)
        if self.failures:
            more = len(self.failures) - 60
            pytest.fail(
                f"{len(self.failures)} bad answers:\n"
                + "\n".join(self.failures[:60])
                + (f"\n... and {more} more" if more > 0 else ""),
                pytrace=False,
            )


def _problem_failure(a: Answer) -> str | None:
    try:
        doc = json.loads(a.body)
    except ValueError:
        return f"{a.status} problem body is not JSON: {a.body[:200]!r}"
    if not isinstance(doc, dict):
        return f"{a.status} problem body is not an object: {a.body[:200]!r}"
    if not (isinstance(doc.get("type"), str) and doc["type"]):
        return f"{a.status} problem without a type: {doc}"
    if not (isinstance(doc.get("title"), str) and doc["title"]):
        return f"{a.status} problem without a title: {doc}"
    if doc.get("status") != a.status:
        return f"{a.status} problem with status {doc.get('status')!r}"
    return None


async def raw_http(sweep: Sweep, request: bytes) -> Answer | None:
    """Send bytes no HTTP client would (control characters, raw non-ASCII) and read
    the status line, the headers and -- for an error -- the body."""
    server = sweep.api.client.server
    sweep.sent += 1
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(server.host, server.port)
            try:
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ")[1])
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = b""
                if status >= 300:
                    if "content-length" in headers:
                        body = await reader.readexactly(int(headers["content-length"]))
                    elif headers.get("transfer-encoding", "").lower() == "chunked":
                        body = await _read_chunked(reader)
                    else:
                        body = await reader.read()
            finally:
                writer.close()
        ctype = headers.get("content-type", "").split(";")[0].strip()
        return Answer(status, ctype, body, headers)
    except TimeoutError:
        sweep.failures.append(f"raw {request[:120]!r}: no answer in {REQUEST_TIMEOUT_S}s")
        return None


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = b""
    while True:
        size = int((await reader.readline()).strip() or b"0", 16)
        if size == 0:
            return out
        out += await reader.readexactly(size)
        await reader.readline()


# ---------------------------------------------------------------- the routes, from the document


@dataclass(frozen=True)
class Op:
    method: str
    template: str  # as documented: /api/v1/tickets/{number}
    path_params: tuple[str, ...]
    query: tuple[str, ...]
    schema: dict[str, Any] | None  # the JSON body's schema, references resolved
    raw_body: bool  # documented as a non-JSON body (uploads, Open311's form)
    secured: bool
    roles: tuple[str, ...]

    @property
    def api(self) -> bool:
        return self.template.startswith(API + "/")

    @property
    def resident(self) -> bool:
        return self.template.startswith(API + "/app/")

    @property
    def writes(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


def resolve(schema: Any, components: dict[str, Any], depth: int = 0) -> Any:
    """The schema with every `$ref` replaced by its definition (bounded depth)."""
    if isinstance(schema, dict):
        if "$ref" in schema and depth < 8:
            return resolve(components[schema["$ref"].rsplit("/", 1)[1]], components, depth + 1)
        return {k: resolve(v, components, depth) for k, v in schema.items()}
    if isinstance(schema, list):
        return [resolve(v, components, depth) for v in schema]
    return schema


def operations(doc: dict[str, Any]) -> list[Op]:
    components = doc["components"]["schemas"]
    ops = []
    for template, methods in doc["paths"].items():
        for method, op in methods.items():
            params = op.get("parameters", [])
            content = op.get("requestBody", {}).get("content", {})
            schema = content.get("application/json", {}).get("schema")
            desc = op.get("description", "")
            roles = tuple(r.strip() for r in desc.removeprefix("Roles:").split(",")) if desc else ()
            ops.append(
                Op(
                    method=method.upper(),
                    template=template,
                    path_params=tuple(p["name"] for p in params if p["in"] == "path"),
                    query=tuple(p["name"] for p in params if p["in"] == "query"),
                    schema=resolve(schema, components) if schema else None,
                    raw_body=bool(content) and schema is None,
                    secured=bool(op.get("security")),
                    roles=roles,
                )
            )
    return ops


STAFF_FOR_ROLE = {"agent": "agent", "supervisor": "supervisor", "admin": "admin"}
STAFF_FOR_ROLE["department"] = "urban"


def who(op: Op) -> str | None:
    """The identity that gets past the route's role check (so the input is read)."""
    if not op.secured:
        return None
    spare = op.template.endswith("/auth/logout")  # a logout must not end the sweep's session
    if op.resident:
        return "resident2" if spare else "resident"
    if spare:
        return "agent2"
    return STAFF_FOR_ROLE[op.roles[0]] if op.roles else "agent"


def fill(op: Op, values: dict[str, str], nasty: tuple[str, str] | None = None) -> str:
    """The route's path with real resources in its parameters, one of them nasty
    (`(name, already-encoded value)`)."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if nasty and nasty[0] == name:
            return nasty[1]
        return quote(path_value(op.template, name, values), safe="")

    return re.sub(r"{([^}]+)}", value, op.template)


def path_value(template: str, name: str, values: dict[str, str]) -> str:
    if name == "id":  # the same name for different resources
        for prefix, key in (
            ("/api/v1/residents/", "resident_id"),
            ("/api/v1/kb/articles/", "article_id"),
            ("/api/v1/partners/", "partner_id"),
        ):
            if template.startswith(prefix):
                return values[key]
        return "1"
    return values.get(name, "1")


# ---------------------------------------------------------------- example bodies from the schemas

# real values for fields whose schema alone does not say what the service accepts
FIELD_VALUES: dict[str, Any] = {
    "category": "urban.street-lights",
    "department": "urban-mgmt",
    "default_department": "urban-mgmt",
    "owner_department": "urban-mgmt",
    "parent_code": "urban",
    "phone": "13812345678",
    "title": "路灯不亮",
    "description": "幸福小区南门路灯不亮",
    "name": "张三丰",
    "pin": "246813",
    "new_pin": "135792",
    "code": "123456",
    "purpose": "treatment",
    "hospital_code": "hosp-1",
    "channel": "phone",
}
PATTERN_CANDIDATES = (
    "urban.street-lights",
    "2026010100001",
    "123456",
    "12h",
    "counter",
    "a1",
    "110105",
)


def example(schema: dict[str, Any], name: str = "", values: dict[str, str] | None = None) -> Any:
    """A value the schema accepts (best effort: the sweep only needs plausible bodies)."""
    values = values or {}
    if name in values:
        return values[name]
    if name in FIELD_VALUES:
        return FIELD_VALUES[name]
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        return example(options[0], name, values) if options else None
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: example(v, k, values) for k, v in props.items()}
    if kind == "array":
        item = example(schema.get("items", {}), name, values)
        return [item] * max(1, schema.get("minItems", 1))
    if kind == "string":
        return _string_example(schema)
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1)
        return max(1, low) if low <= schema.get("maximum", low + 1) else low
    if kind == "number":
        return schema.get("minimum", 0) if schema.get("minimum", 0) > 0 else 0.5
    if kind == "boolean":
        return False
    return "x"


def _string_example(schema: dict[str, Any]) -> str:
    fmt = schema.get("format")
    if fmt == "date":
        return dt.date.today().isoformat()
    if fmt == "date-time":
        return dt.datetime.now(dt.UTC).isoformat()
    if "pattern" in schema:
        for candidate in PATTERN_CANDIDATES:
            if re.fullmatch(schema["pattern"].strip("^$"), candidate):
                return candidate
    return "x" * max(1, schema.get("minLength", 1))


def leaves(schema: dict[str, Any], prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths to every documented field, nested objects and first array items included."""
    if "anyOf" in schema:
        for option in schema["anyOf"]:
            if option.get("type") in ("object", "array"):
                yield from leaves(option, prefix)
                return
    if schema.get("type") == "object" and schema.get("properties"):
        for k, v in schema["properties"].items():
            yield (*prefix, k)
            yield from leaves(v, (*prefix, k))
    elif schema.get("type") == "array" and prefix:
        item = schema.get("items", {})
        if item.get("type") in ("object", "array") or "anyOf" in item:
            yield from leaves(item, (*prefix, 0))
        else:
            yield (*prefix, 0)


def kinds(schema: dict[str, Any], path: tuple[Any, ...]) -> set[str]:
    """The JSON types the field at `path` documents."""
    node: dict[str, Any] = schema
    for step in path:
        node = _object_of(node)
        node = node.get("items", {}) if isinstance(step, int) else node["properties"][step]
    options = node.get("anyOf", [node])
    return {o.get("type", "string" if "enum" in o else "?") for o in options}


def _object_of(node: dict[str, Any]) -> dict[str, Any]:
    for option in node.get("anyOf", [node]):
        if option.get("type") in ("object", "array"):
            return option
    return node


def with_raw(body: Any, path: tuple[Any, ...], literal: str) -> bytes:
    """The JSON text of `body` with the field at `path` replaced by `literal` as is."""
    body = json.loads(json.dumps(body))
    node = body
    for step, nxt in itertools.pairwise(path):
        fresh: Any = [None] if isinstance(nxt, int) else {}
        if isinstance(node, list):
            if not node or not isinstance(node[0], dict | list):
                node[:] = [fresh]
            node = node[0]
        else:
            if not isinstance(node.get(step), dict | list):
                node[step] = fresh
            node = node[step]
    if isinstance(node, list):
        node[:] = [RAW]
    else:
        node[path[-1]] = RAW
    text = json.dumps(body, ensure_ascii=False)
    return text.replace(json.dumps(RAW), literal, 1).encode("utf-8", "surrogatepass")


# wrong JSON types, sent to every documented field
WRONG_TYPES = {
    "string": ["12345", "true", "[]", '{"x": 1}', "1.5"],
    "integer": ['"12"', "true", "[]", "{}", "1.5", '"x"'],
    "number": ['"12"', "true", "[]", "{}", '"x"'],
    "boolean": ['"true"', "1", "[]", "{}", '"x"'],
    "array": ['"x"', "{}", "1", "[[]]", "[null]", "[{}]"],
    "object": ['"x"', "[]", "1", '{"": {}}', "true"],
    "null": ["1"],
    "?": ["[]", "{}"],
}
# values a database or an encoder may choke on
NASTY_STRINGS = [
    '"\\u0000"',
    '"abc\\u0000def"',
    '"\\ud800"',
    '"x\\udfffy"',
    '"\\ud83d\\ude00\\u202e\\ufeff"',
    '"' + "长" * 30_000 + '"',
]
NASTY_NUMBERS = [
    str(10**400),
    str(-(10**400)),
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "-Infinity",
    str(2**63),
    str(-(2**63) - 1),
    str(2**31),
    "1e-400",
    "-0",
    "0",
    "-1",
]
DB_SENSITIVE_STRINGS = NASTY_STRINGS[:4]
DB_SENSITIVE_NUMBERS = [str(10**400), str(2**63), str(-(2**63) - 1), str(2**31), "1e400"]


def field_cases(op: Op, values: dict[str, str], db_only: bool) -> Iterator[tuple[str, bytes]]:
    """(label, body) with one field of a plausible body replaced by a bad value."""
    assert op.schema is not None
    base = example(op.schema, values=values)
    for path in leaves(op.schema):
        types = kinds(op.schema, path)
        literals: list[str] = []
        if not db_only:
            for t in types:
                literals += WRONG_TYPES.get(t, WRONG_TYPES["?"])
        if types & {"string", "?", "object"}:
            literals += DB_SENSITIVE_STRINGS if db_only else NASTY_STRINGS
        if types & {"integer", "number"} or (types & {"array"} and isinstance(path[-1], str)):
            literals += DB_SENSITIVE_NUMBERS if db_only else NASTY_NUMBERS
        label = ".".join(str(p) for p in path)
        for literal in dict.fromkeys(literals):
            yield f"{label}={literal[:24]}", with_raw(base, path, literal)


# ---------------------------------------------------------------- the service

# Defects the sweep finds in files this change may not touch (reported to their
# owners): (route, path parameter) -> why. Their failures are kept apart, not hidden:
# the rest of the route is still swept.
KNOWN: dict[tuple[str, str], str] = {}


def _id_number(serial: int) -> str:
    from citizen_card.identity import check_char

    first17 = f"11010519900307{serial:03d}"
    return first17 + check_char(first17)


class _Codes:
    """The app's code sender: keeps the last code per number (the resident's phone)."""

    def __init__(self) -> None:
        self.codes: dict[str, str] = {}

    async def send_code(self, phone_e164: str, code: str, ttl_s: int) -> None:
        self.codes[phone_e164] = code


async def _resident_token(api: Api, phone: str) -> str:
    from channels.app import APP_CHANNEL

    codes = _Codes()
    api.app[APP_CHANNEL].signin.sender = codes
    r = await api.client.post(f"{API}/app/auth/code", json={"phone": phone})
    assert r.status == 202, await r.text()
    (code,) = codes.codes.values()
    r = await api.client.post(f"{API}/app/auth/token", json={"phone": phone, "code": code})
    assert r.status == 200, await r.text()
    return str((await r.json())["token"])


async def _staff_token(api: Api, username: str) -> str:
    """A session as the login route makes it, without its argon2 check (seconds over
    a run): the sweep sends the login route its own hostile bodies."""
    import secrets

    import sqlalchemy as sa

    from hotline.appkeys import DEPS
    from hotline.auth import session_t, token_hash, user_t
    from ticketing.models import utcnow

    token = secrets.token_urlsafe(32)
    now = utcnow()
    async with api.app[DEPS].db.write() as conn:
        uid = (
            await conn.execute(sa.select(user_t.c.id).where(user_t.c.username == username))
        ).scalar_one()
        await conn.execute(
            sa.insert(session_t).values(
                token_hash=token_hash(token),
                user_id=uid,
                created_at=now,
                expires_at=now + dt.timedelta(hours=1),
            )
        )
    return token


def _check_document(ops: list[Op]) -> None:
    """A sweep over an empty or half-read document would pass without testing anything."""
    listed = {str(op) for op in ops}
    assert len(ops) >= 100, len(ops)
    assert len([op for op in ops if op.schema is not None]) >= 40
    for expected in (
        "POST /api/v1/tickets",
        "GET /api/v1/tickets",
        "POST /api/v1/tickets/{number}/dispatch",
        "PATCH /api/v1/kb/articles/{id}",
        "POST /open311/v2/requests.{fmt}",
        "GET /api/v1/app/tickets",
    ):
        assert expected in listed, expected
    ticket_in = next(op for op in ops if str(op) == "POST /api/v1/tickets").schema
    assert ticket_in is not None
    assert ("location", "lat") in set(leaves(ticket_in))
    assert kinds(ticket_in, ("location", "lat")) == {"number", "null"}
    for key in KNOWN:
        assert key[0] in listed, f"KNOWN names a route that is gone: {key}"


async def _service(aiohttp_client, aiohttp_server, db_url: str, tmp_path) -> Sweep:  # type: ignore[no-untyped-def]
    from channels.open311 import issue_key
    from channels.telegram import TELEGRAM
    from hotline.app import create_app
    from hotline.appkeys import DEPS
    from hotline.bootstrap import build_deps

    wechat, telegram = rig.FakeWeChat(), tg.FakeBotApi()
    wechat_server = await aiohttp_server(wechat.app())
    telegram_server = await aiohttp_server(telegram.app())
    telegram.base = str(telegram_server.make_url("")).rstrip("/")
    settings = make_settings(
        tmp_path,
        db_url,
        wechat_token=rig.TOKEN,
        wechat_aes_key=rig.AES_KEY,
        wechat_app_id=rig.APP_ID,
        wechat_app_secret="s3cret",
        wechat_api_base=str(wechat_server.make_url("")).rstrip("/"),
        telegram_token=tg.TOKEN,
        telegram_secret=tg.SECRET,
        telegram_api_base=telegram.base,
    )
    deps = build_deps(settings)
    await deps.db.create_all()
    app = create_app(settings, deps=deps, migrate=False, watch_deadlines=False)
    api = Api(await aiohttp_client(app), app)
    await _seed(app[DEPS])

    tokens = {n: await _staff_token(api, n) for n in ("agent", "agent2", "supervisor", "admin")}
    tokens["urban"] = await _staff_token(api, "urban")
    api.tokens.update(tokens)
    tokens["resident"] = await _resident_token(api, "13812345678")
    tokens["resident2"] = await _resident_token(api, "13912345678")

    ticket = await api.new_ticket()
    other = await api.new_ticket()
    r = await api.post(
        f"{API}/residents",
        {"name": "张三丰", "id_number": _id_number(1), "verified_source": "counter-id-check"},
    )
    assert r.status == 201, await r.text()
    resident = await r.json()
    r = await api.post(f"{API}/residents/{resident['id']}/cards", {"pin": "246813"})
    assert r.status == 201, await r.text()
    card = await r.json()
    r = await api.post(
        f"{API}/kb/articles", {"question": "路灯坏了找谁", "answer": "城管"}, as_="supervisor"
    )
    assert r.status == 201, await r.text()
    article = await r.json()
    r = await api.post(
        f"{API}/partners",
        {"partner_id": "sweep-metro", "type": "transit", "scopes": ["transit"], "hmac": True},
        as_="admin",
    )
    assert r.status == 201, await r.text()
    partner_secret = (await r.json())["hmac_secret"]

    values = {
        "number": ticket["number"],
        "into": other["number"],
        "ticket": other["number"],
        "service_request_id": ticket["number"],
        "resident_id": str(resident["id"]),
        "article_id": str(article["id"]),
        "partner_id": "sweep-metro",
        "card_no": card["card_no"],
        "id_number": _id_number(2),
        "uuid": str(uuid.uuid4()),
        "batch_id": "sweep-batch-1",
        "grant_id": "1",
        "name": "index.html",
        "metric": "backlog",
        "slug": "not-found",
        "fmt": "json",
        "service_code": "urban.street-lights",
        "token": "sweep-token",
        "code": "urban-mgmt",
        "open311_key": await issue_key(app[DEPS].db, "sweep"),
        "partner_secret": partner_secret,
    }
    r = await api.client.get(f"{API}/openapi.json")
    assert r.status == 200
    ops = operations(await r.json())
    _check_document(ops)
    for _ in range(200):  # the webhook takes updates once the bot's getMe went through
        if app[TELEGRAM].is_ready():
            break
        await asyncio.sleep(0.01)
    return Sweep(api, ops, tokens, values)


@pytest.fixture
async def sweep(aiohttp_client, aiohttp_server, sqlite_url, tmp_path) -> Sweep:  # type: ignore[no-untyped-def]
    """The whole service on SQLite, with WeChat and Telegram configured against fakes."""
    return await _service(aiohttp_client, aiohttp_server, sqlite_url, tmp_path)


@pytest.fixture
async def sweep_pg(aiohttp_client, aiohttp_server, pg_url, tmp_path) -> Sweep:  # type: ignore[no-untyped-def]
    """The same on PostgreSQL, for the values a database may refuse."""
    return await _service(aiohttp_client, aiohttp_server, pg_url, tmp_path)


def base_body(op: Op, s: Sweep) -> bytes:
    return json.dumps(example(op.schema, values=s.values) if op.schema else {}).encode()


def known(op: Op, param: str) -> str | None:
    return KNOWN.get((str(op), param))


# ---------------------------------------------------------------- bodies


def _broken_bodies(base: bytes) -> list[tuple[str, bytes, str | None]]:
    """(label, body, content type) that no route may answer with a 500."""
    nested = b"[" * 10_000 + b"]" * 10_000
    nested_obj = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    nested_field = b'{"title": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    return [
        ("invalid JSON", b'{"kind": complaint}', "application/json"),
        ("truncated JSON", base[: max(1, len(base) // 2)], "application/json"),
        ("an array", b"[1, 2, 3]", "application/json"),
        ("a string", b'"a string"', "application/json"),
        ("null", b"null", "application/json"),
        ("a number", b"42", "application/json"),
        ("a huge number", str(10**400).encode(), "application/json"),
        ("NaN", b"NaN", "application/json"),
        ("true", b"true", "application/json"),
        ("invalid UTF-8", b'{"title": "\xff\xfe\xc3\x28"}', "application/json"),
        ("a GBK body", '{"title": "路灯"}'.encode("gbk"), "application/json"),
        ("a BOM", b"\xef\xbb\xbf" + base, "application/json"),
        ("a UTF-16 body", base.decode().encode("utf-16"), "application/json"),
        ("NUL in a key", b'{"\\u0000": 1}', "application/json"),
        ("a lone surrogate key", b'{"\\ud800": 1}', "application/json"),
        ("a raw NUL byte", b'{"title": "a\x00b"}', "application/json"),
        ("10,000 nested arrays", nested, "application/json"),
        ("10,000 nested objects", nested_obj, "application/json"),
        ("a deeply nested field", nested_field, "application/json"),
        ("duplicate keys", b'{"title": "a", "title": 1}', "application/json"),
        ("an unknown field", base[:-1] + b', "zz_unknown": {"a": [1]}}', "application/json"),
        ("empty with a JSON type", b"", "application/json"),
        ("whitespace only", b" \n\t ", "application/json"),
        ("text/plain", base, "text/plain"),
        ("multipart without boundary", base, "multipart/form-data"),
        ("a form", b"title=x&kind=y", "application/x-www-form-urlencoded"),
        ("a garbage content type", base, "%%%/;;;==="),
        ("json with latin-1 charset", base, "application/json; charset=latin-1"),
        ("json with a bogus charset", base, "application/json; charset=no-such-charset"),
        ("no content type", base, None),
    ]


async def test_broken_bodies_to_every_writing_route(sweep: Sweep) -> None:
    writing = [op for op in sweep.ops if op.writes]
    for op in writing:
        target = fill(op, sweep.values)
        for label, data, ctype in _broken_bodies(base_body(op, sweep)):
            await sweep.hit(label, op.method, target, auth=who(op), data=data, ctype=ctype)
    # over the size limit: one route per way of reading a body
    big = b'{"description": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    for method, target, auth, ctype in (
        ("POST", f"{API}/tickets", "agent", "application/json"),
        ("POST", f"{API}/auth/login", None, "application/json"),
        ("PATCH", f"{API}/kb/articles/{sweep.values['article_id']}", "admin", "application/json"),
        ("POST", f"{API}/tickets/{sweep.values['number']}/attachments", "agent", "image/png"),
        ("POST", f"{API}/app/reports", "resident", "application/json"),
        ("POST", f"{API}/residents/{sweep.values['resident_id']}/cards", "admin", None),
    ):
        a = await sweep.hit("3 MiB body", method, target, auth=auth, data=big, ctype=ctype)
        if a is not None and a.status < 400:
            sweep.failures.append(f"{method} {target}: a 3 MiB body was accepted ({a.status})")
    sweep.verdict(at_least=len(writing) * 30)


async def test_wrong_types_and_nasty_values_in_every_documented_field(sweep: Sweep) -> None:
    for op in sweep.ops:
        if op.schema is None:
            continue
        target = fill(op, sweep.values)
        for label, data in field_cases(op, sweep.values, db_only=False):
            await sweep.hit(label, op.method, target, auth=who(op), data=data)
    sweep.verdict(at_least=1000)


# ---------------------------------------------------------------- path and query parameters

NASTY_PATH_VALUES = [
    ("very long", "9" * 4000),
    ("past int()'s digit limit", "9" * 4400),
    ("very long text", "a" * 4000),
    ("NUL", "%00"),
    ("NUL inside", "12%0034"),
    ("encoded ../", "..%2F..%2Fetc%2Fpasswd"),
    ("raw ../", "../../../../etc/passwd"),
    ("unicode", quote("路灯💥")),
    ("invalid UTF-8", "%FF%FE%C3%28"),
    ("lone surrogate", "%ED%A0%80"),
    ("superscript two", "%C2%B2"),
    ("full-width digits", "%EF%BC%91%EF%BC%92"),
    ("not a number", "abc"),
    ("negative", "-1"),
    ("zero", "0"),
    ("past 32 bits", "2147483648"),
    ("ten digits", "9999999999"),
    ("past 64 bits", "9" * 30),
    ("2**63", str(2**63)),
    ("exponent", "1e400"),
    ("NaN", "NaN"),
    ("a fraction", "1.5"),
    ("underscores", "1_000"),
    ("blank", "%20"),
    ("padded", "%2012%20"),
    ("newline", "%0D%0A"),
    ("percent sign", "%25"),
    ("dots", ".."),
]
DB_SENSITIVE_PATH_VALUES = ["%00", "12%0034", "2147483648", "9999999999", "9" * 30, str(2**63)]


async def test_nasty_path_parameters_on_every_route(sweep: Sweep) -> None:
    for op in sweep.ops:
        data = base_body(op, sweep) if op.writes else None
        for name in op.path_params:
            for label, value in NASTY_PATH_VALUES:
                target = fill(op, sweep.values, (name, value))
                await sweep.hit(
                    f"{name}: {label}",
                    op.method,
                    target,
                    known=known(op, name),
                    auth=who(op),
                    data=data,
                )
    sweep.verdict(at_least=2000)


NASTY_QUERY_VALUES = [
    ("empty", ""),
    ("negative", "-1"),
    ("zero", "0"),
    ("10**30", "1" + "0" * 30),
    ("past 64 bits", str(2**64)),
    ("past 32 bits", "2147483648"),
    ("not a number", "abc"),
    ("a fraction", "1.5"),
    ("exponent", "1e400"),
    ("NaN", "NaN"),
    ("NUL", "%00"),
    ("invalid UTF-8", "%FF%FE"),
    ("lone surrogate", "%ED%A0%80"),
    ("superscript two", "%C2%B2"),
    ("unicode", quote("路灯💥")),
    ("base64 garbage", "eyJhdCI6IDEsICJpZCI6IC0xfQ"),
    ("base64 of junk", "AAAAAAAAAAAAAAAA"),
    ("not base64", "!!!***%25%25"),
    ("a bad date", "2026-13-45T99:99:99"),
    ("far future", "9999-12-31T23:59:59%2B14:00"),
    ("long", "x" * 3000),
    ("past int()'s digit limit", "9" * 4400),
    ("a list", "1,2,,,3,-4,abc"),
    ("a lone %", "%"),
]
DB_SENSITIVE_QUERY_VALUES = ["%00", "a%00b", "2147483648", str(2**64), "9" * 30]


async def test_nasty_query_parameters_on_every_route(sweep: Sweep) -> None:
    for op in sweep.ops:
        data = base_body(op, sweep) if op.writes else None
        base = fill(op, sweep.values)
        for name in op.query:
            for label, value in NASTY_QUERY_VALUES:
                target = f"{base}?{name}={value}"
                await sweep.hit(f"{name}: {label}", op.method, target, auth=who(op), data=data)
            target = f"{base}?{name}=1&{name}=2&{name}="
            await sweep.hit(f"{name}: repeated", op.method, target, auth=who(op), data=data)
        # undocumented, repeated and malformed pairs on every route
        for junk in ("limit=-1&limit=10&cursor=%%%&x", "=&&=&a=b=c", "limit=1" + "0" * 30):
            await sweep.hit(junk, op.method, f"{base}?{junk}", auth=who(op), data=data)
    sweep.verdict(at_least=1000)


# ---------------------------------------------------------------- headers

BAD_AUTHORIZATION = [
    "garbage",
    "Bearer ",
    "Bearer a b c",
    "Bearer " + "x" * 6000,
    "Bearer 路灯令牌",
    "Basic Zm9vOmJhcg==",
]
# raw header bytes every route reads (the auth middlewares run for all of them)
RAW_HEADERS = [
    ("Authorization not UTF-8", "Authorization", b"Bearer caf\xe9\xff\xfe"),
    ("Cookie not UTF-8", "Cookie", b"hotline_session=\xff\xfe; x=\x80"),
    ("Cookie garbage", "Cookie", b'hotline_session="; ;;==; "'),
]
RAW_POST_HEADERS = [
    ("Idempotency-Key not UTF-8", "Idempotency-Key", b"key-\xff\xfe"),
    ("Idempotency-Key UTF-8", "Idempotency-Key", "键-1".encode()),
    ("Idempotency-Key 5,000", "Idempotency-Key", b"k" * 5_000),
]
# what the HTTP parser itself may refuse before the app runs (one route of each kind)
PARSER_HEADERS = [
    ("Authorization control char", "Authorization", b"Bearer a\x01b"),
    ("Authorization 10,000", "Authorization", b"Bearer " + b"t" * 10_000),
    ("Idempotency-Key control chars", "Idempotency-Key", b"key\x01\x02\x7f"),
    ("Idempotency-Key DEL", "Idempotency-Key", b"key\x7f"),
    ("Idempotency-Key 10,000", "Idempotency-Key", b"k" * 10_000),
]


def _raw_request(method: str, target: str, headers: list[tuple[str, bytes]], body: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: localhost", b"Connection: close"]
    lines += [name.encode() + b": " + value for name, value in headers]
    lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def test_bad_headers_on_every_route(sweep: Sweep) -> None:
    """Garbage Authorization on every route; bytes no well-behaved client sends (not
    UTF-8, control characters, a 10,000-character Idempotency-Key). What the HTTP
    parser refuses, before any middleware runs, is answered as problem+json all the
    same (`hotline.errors.ProblemRequestHandler`); the rest is the app's. Headers are read by
    the middlewares, before any body: `{}` keeps the login route off argon2 here."""
    for op in sweep.ops:
        data = b"{}" if op.writes else None
        target = fill(op, sweep.values)
        for value in BAD_AUTHORIZATION:
            a = await sweep.hit(
                f"Authorization {value[:20]!r}",
                op.method,
                target,
                headers={"Authorization": value},
                data=data,
            )
            if a is not None and op.secured and op.api and a.status < 400:
                sweep.failures.append(f"{op}: Authorization {value[:20]!r} got {a.status}")

        ident = who(op)
        auth = [("Authorization", f"Bearer {sweep.tokens[ident]}".encode())] if ident else []
        ctype = [("Content-Type", b"application/json")] if op.writes else []
        cases = RAW_HEADERS + (RAW_POST_HEADERS if op.method == "POST" else [])
        if str(op) in ("POST /api/v1/tickets", "GET /api/v1/tickets", "POST /api/v1/app/reports"):
            cases = cases + PARSER_HEADERS
        for label, name, value in cases:
            headers = [h for h in auth if h[0] != name] + ctype + [(name, value)]
            a = await raw_http(sweep, _raw_request(op.method, target, headers, data or b""))
            sweep.judge(label, op.method, target, a)
    # bytes in the request line itself: the parser's to refuse, or the app's to answer
    for line in (
        b"GET /api/v1/tickets/\xe8\xb7\xaf\xe7\x81\xaf HTTP/1.1",
        b"GET /api/v1/tickets?q=\xff\xfe HTTP/1.1",
        b"GET /api/v1/tickets/\x00 HTTP/1.1",
        b"GET /api/v1/tickets/%00%ff HTTP/1.1",
    ):
        a = await raw_http(sweep, line + b"\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        sweep.judge("raw request line", "GET", line.decode("latin-1").split()[1], a)
    sweep.verdict(at_least=len(sweep.ops) * (len(BAD_AUTHORIZATION) + len(RAW_HEADERS)))


# ---------------------------------------------------------------- everywhere, on PostgreSQL


@pytest.mark.postgres
async def test_values_postgresql_refuses_never_reach_it(sweep_pg: Sweep) -> None:
    """NUL (PostgreSQL's text cannot hold it), lone surrogates (not UTF-8) and integers
    past the columns' range, in every field (one route per body schema), every path
    and query parameter, and the channels' own inputs: refused (or cleaned) before
    the database, never a 500."""
    s = sweep_pg
    seen: set[str] = set()
    for op in s.ops:
        data = base_body(op, s) if op.writes else None
        if op.schema is not None and (key := json.dumps(op.schema, sort_keys=True)) not in seen:
            seen.add(key)
            target = fill(op, s.values)
            for label, body in field_cases(op, s.values, db_only=True):
                await s.hit(label, op.method, target, auth=who(op), data=body)
        for name in op.path_params:
            for value in DB_SENSITIVE_PATH_VALUES:
                target = fill(op, s.values, (name, value))
                await s.hit(
                    f"{name}={value[:20]}",
                    op.method,
                    target,
                    known=known(op, name),
                    auth=who(op),
                    data=data,
                )
        base = fill(op, s.values)
        for name in op.query:
            for value in DB_SENSITIVE_QUERY_VALUES:
                target = f"{base}?{name}={value}"
                await s.hit(f"{name}={value[:20]}", op.method, target, auth=who(op), data=data)

    a = await s.send("POST", TELEGRAM, data=TELEGRAM_NUL_UPDATE, headers=TELEGRAM_SECRET)
    if a is not None and a.status != 200:
        s.failures.append(f"POST {TELEGRAM} [NUL and a surrogate]: {a.status} {a.body[:200]!r}")
    key = s.values["open311_key"]
    for fmt in ("json", "xml"):
        for label, form in _open311_forms(key):
            if "NUL" in label or "surrogate" in label or "huge" in label:
                await _open311_post(s, fmt, label, form)
    await _partner_garbage(s, PARTNER_DB_BODIES)
    s.verdict(at_least=500)


# ---------------------------------------------------------------- Open311

V2 = "/open311/v2"


def _open311_failure(fmt: str, a: Answer) -> str | None:
    """Open311 answers in its own formats: XML or JSON as the extension says, errors
    as the spec's list of {code, description}."""
    if a.status >= 500:
        return f"{a.status} {a.body[:300]!r}"
    want = "application/json" if fmt == "json" else "text/xml"
    if a.ctype != want:
        return f"{a.status} as {a.ctype}, not {want}"
    if a.status < 400:
        return None
    if fmt == "json":
        try:
            doc = json.loads(a.body)
        except ValueError:
            return f"{a.status} error body is not JSON: {a.body[:200]!r}"
        ok = isinstance(doc, list) and doc and all({"code", "description"} <= set(e) for e in doc)
        return None if ok else f"{a.status} not the spec's errors list: {doc!r:.200}"
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(a.body)
    except ET.ParseError:
        return f"{a.status} error body is not XML: {a.body[:200]!r}"
    if root.tag != "errors" or root.find("error/code") is None:
        return f"{a.status} not the spec's errors list: {a.body[:200]!r}"
    return None


def _open311_forms(key: str) -> Iterable[tuple[str, bytes]]:
    good = {
        "api_key": key,
        "jurisdiction_id": "city.gov",
        "service_code": "urban.street-lights",
        "lat": "39.9087",
        "long": "116.3975",
        "description": "路灯不亮",
    }

    def form(**over: str | None) -> bytes:
        merged = {**good, **over}
        return "&".join(
            f"{quote(k)}={quote(v, safe='%')}" for k, v in merged.items() if v is not None
        ).encode()

    yield "no api_key", form(api_key=None)
    yield "garbage api_key", form(api_key="%00%FF" + "k" * 300)
    yield "unknown service_code", form(service_code="no.such.service")
    yield "garbage service_code", form(service_code="%00../..%FF")
    yield "no service_code", form(service_code=None)
    yield "garbage jurisdiction", form(jurisdiction_id="%00%FF" + "j" * 5000)
    yield "unknown jurisdiction", form(jurisdiction_id="elsewhere.example")
    for lat, long in (
        ("91", "116"),
        ("-91", "116"),
        ("39", "181"),
        ("39", "-180.0001"),
        ("1e400", "116"),
        ("NaN", "NaN"),
        ("Infinity", "-Infinity"),
        ("abc", "def"),
        ("", ""),
        ("9" * 5000, "1"),
        ("0x1p3", "1_000"),
        ("39", None),
    ):
        yield f"lat={lat[:10]} long={(long or '')[:10]}", form(lat=lat, long=long)
    yield "no location", form(lat=None, long=None)
    yield "NUL in description", form(description="a%00b")
    yield "surrogate in description", form(description="%ED%A0%80")
    yield "invalid UTF-8", form(description="%FF%FE")
    yield "huge description", form(description="x" * 200_000)
    yield "repeated fields", form() + b"&service_code=water.leak&lat=1&lat=2"
    yield "attribute garbage", form() + b"&attribute[%00]=1&attribute[]=&attribute[x][y]=z"
    yield "email garbage", form(email="not-an-email%00", phone="%FF" * 40)
    yield "media_url garbage", form(media_url="javascript:alert(1)")
    yield "address_id huge", form(address_id="9" * 400, address_string="%00")
    yield "device_id garbage", form(device_id="%ED%A0%80" * 50, account_id="-1e400")
    yield "first_name huge", form(first_name="名" * 10_000, last_name="%00")
    yield "malformed pairs", b"&&=&api_key&=x&%%%&" + form()
    yield "empty", b""


async def _open311_post(
    s: Sweep, fmt: str, label: str, data: bytes, ctype: str | None = None
) -> None:
    target = f"{V2}/requests.{fmt}"
    a = await s.send("POST", target, data=data, ctype=ctype or "application/x-www-form-urlencoded")
    failure = a and _open311_failure(fmt, a)
    if failure:
        s.failures.append(f"POST {target} [{label}]: {failure}")


async def test_open311_garbage_in_its_own_error_format(sweep: Sweep) -> None:
    key = sweep.values["open311_key"]
    for fmt in ("json", "xml"):
        for label, data in _open311_forms(key):
            await _open311_post(sweep, fmt, label, data)
        for label, data, ctype in (
            ("JSON body", b'{"api_key": "x"}', "application/json"),
            ("multipart without boundary", b"x", "multipart/form-data"),
            ("latin-1 charset", b"api_key=x", "application/x-www-form-urlencoded; charset=latin1"),
            ("no content type", b"api_key=x", "text/plain"),
        ):
            await _open311_post(sweep, fmt, label, data, ctype)
    queries = [
        "jurisdiction_id=%00%FF",
        "jurisdiction_id=" + "j" * 3000,
        "start_date=garbage&end_date=2026-99-99",
        "start_date=9999-12-31T23:59:59Z&end_date=0001-01-01T00:00:00Z",
        "start_date=1e400",
        "page=-1&page_size=" + "1" + "0" * 30,
        "page=" + "9" * 40,
        "page_size=0",
        "page_size=NaN",
        "status=%00,open,,closed,nope",
        "service_request_id=" + ",".join(["9" * 30, "-1", "abc", "%00"]),
        "service_request_id=" + ",".join(["1"] * 1500),
        "service_code=%FF%FE,,",
        "service_code=a&service_code=b",
        "=&&%%%&",
    ]
    for fmt in ("json", "xml"):
        for path in (f"/requests.{fmt}", f"/services.{fmt}", f"/discovery.{fmt}"):
            for q in queries:
                target = f"{V2}{path}?{q}"
                a = await sweep.send("GET", target, ctype=None)
                failure = a and _open311_failure(fmt, a)
                if failure:
                    sweep.failures.append(f"GET {target[:160]}: {failure}")
    for path, fmt in (
        ("/requests.yaml", "xml"),  # an unknown format is answered in the default, XML
        ("/requests.%00", "xml"),
        ("/requests.JSON", "json"),
        ("/services/%00.json", "json"),
        ("/services/" + "x" * 4000 + ".xml", "xml"),
        ("/requests/" + "9" * 400 + ".json", "json"),
        ("/requests/%FF.xml", "xml"),
        ("/tokens/%00.json", "json"),
        ("/tokens/" + "t" * 4000 + ".json", "json"),
    ):
        a = await sweep.send("GET", f"{V2}{path}", ctype=None)
        failure = a and _open311_failure(fmt, a)
        if failure:
            sweep.failures.append(f"GET {V2}{path[:120]}: {failure}")
    sweep.verdict(at_least=170)


# ---------------------------------------------------------------- WeChat

BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n'
        for i in range(1, 10)
    )
    + "]>\n<xml><ToUserName>&lol9;</ToUserName><MsgType>text</MsgType>"
    "<Content>&lol9;</Content></xml>"
)
QUADRATIC_BLOWUP = (
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "'
    + "a" * 50_000
    + '">]><xml><Content>'
    + "&a;" * 5_000
    + "</Content></xml>"
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    "<xml><MsgType>text</MsgType><Content>&e;</Content></xml>"
)


def _wechat_bodies() -> list[tuple[str, bytes]]:
    deep = "<a>" * 50_000 + "</a>" * 50_000
    laughs_utf16 = BILLION_LAUGHS.replace('<?xml version="1.0"?>', "").encode("utf-16")
    huge_time = rig.text_xml("x").replace("</CreateTime>", "9" * 400 + "</CreateTime>")
    location = (
        b"<xml><FromUserName>o</FromUserName><MsgType>location</MsgType>"
        b"<Location_X>1e400</Location_X><Location_Y>NaN</Location_Y><Scale>x</Scale>"
        b"<MsgId>77</MsgId><CreateTime>1</CreateTime></xml>"
    )
    return [
        ("not XML", b"this is not xml"),
        ("JSON", b'{"MsgType": "text"}'),
        ("empty", b""),
        ("truncated", rig.text_xml("路灯").encode()[:40]),
        ("billion laughs", BILLION_LAUGHS.encode()),
        ("billion laughs in UTF-16", laughs_utf16),
        ("billion laughs, lower case", BILLION_LAUGHS.replace("DOCTYPE", "doctype").encode()),
        ("quadratic blowup", QUADRATIC_BLOWUP.encode()),
        ("external entity", EXTERNAL_ENTITY.encode()),
        ("deep nesting", f"<xml>{deep}</xml>".encode()),
        ("wrong root", b"<html><body/></html>"),
        ("invalid UTF-8", b"<xml><Content>\xff\xfe</Content></xml>"),
        ("NUL", b"<xml><MsgType>text</MsgType><Content>a\x00b</Content></xml>"),
        ("char ref to NUL", b"<xml><MsgType>text</MsgType><Content>&#0;</Content></xml>"),
        ("huge CreateTime", huge_time.encode()),
        ("garbage MsgId", rig.text_xml("x", msg_id="%00" * 100 + "-1e400").encode()),
        ("unknown MsgType", rig.text_xml("x").replace("text", "no-such-type").encode()),
        ("location garbage", location),
        ("huge text", rig.text_xml("长" * 200_000).encode()),
        ("huge body", b"<xml>" + b"x" * (4 * 1024 * 1024) + b"</xml>"),
    ]


async def test_wechat_garbage_is_answered_politely(sweep: Sweep) -> None:
    """Verification with missing or garbage signatures: 403. A push unsigned: 403 (not
    WeChat); signed but unreadable: 200 "success" at once (WeChat would only retry
    it); over the limit 413 -- never a 5xx, never a hang, XML bombs never expanded."""
    good = rig.signed_query()
    queries = [
        "",
        "echostr=1",
        "signature=&timestamp=&nonce=&echostr=x",
        "signature=" + "0" * 40 + f"&timestamp={good['timestamp']}&nonce=n0nce&echostr=1",
        "signature=%00%FF&timestamp=%00&nonce=%FF&echostr=%ED%A0%80",
        "signature=%E4%BD%A0" + "0" * 37 + "&timestamp=1&nonce=2&echostr=1",
        "signature=" + "z" * 3000 + "&echostr=" + "e" * 3000,
        "msg_signature=abc&timestamp=1&nonce=2&echostr=%%%",
        "msg_signature=%FF%00&timestamp=%FF&nonce=2&echostr=" + "A" * 64,
        "msg_signature=" + "0" * 40 + "&timestamp=1&nonce=2&echostr=" + "A" * 64,
        "signature=a&signature=b&timestamp=1&timestamp=2",
    ]
    for q in queries:
        a = await sweep.send("GET", f"/wechat?{q}", ctype=None)
        if a is not None and a.status != 403:
            sweep.failures.append(f"GET /wechat?{q[:80]}: {a.status} {a.body[:100]!r}")

    for label, body in _wechat_bodies():
        for signed in (False, True):
            q = rig.signed_query() if signed else {"timestamp": "1", "nonce": "2"}
            target = "/wechat?" + "&".join(f"{k}={v}" for k, v in q.items())
            started = time.monotonic()
            a = await sweep.send("POST", target, data=body, ctype="text/xml")
            took = time.monotonic() - started
            if a is None:
                continue
            where = f"POST /wechat [{label}, {'signed' if signed else 'unsigned'}]"
            if a.status >= 500:
                sweep.failures.append(f"{where}: {a.status} {a.body[:200]!r}")
            elif not signed and a.status != 403:
                sweep.failures.append(f"{where}: {a.status}, not 403")
            elif signed and a.status not in (200, 413):
                sweep.failures.append(f"{where}: {a.status} {a.body[:200]!r}")
            elif took > 3.0:  # WeChat gives up after 5 s
                sweep.failures.append(f"{where}: took {took:.1f}s")
    # safe mode: garbage inside a correctly signed envelope, and bad envelopes
    for label, inner in (("bomb inside the envelope", BILLION_LAUGHS), ("junk inside", "junk")):
        q, body = rig.encrypted(inner)
        target = "/wechat?" + "&".join(f"{k}={v}" for k, v in q.items())
        a = await sweep.send("POST", target, data=body.encode(), ctype="text/xml")
        if a is not None and a.status != 200:
            sweep.failures.append(f"POST /wechat [{label}]: {a.status} {a.body[:200]!r}")
    q = {**rig.signed_query(), "encrypt_type": "aes", "msg_signature": "%FF" + "0" * 38}
    target = "/wechat?" + "&".join(f"{k}={v}" for k, v in q.items())
    for body in (b"<xml><Encrypt>%%%not-base64</Encrypt></xml>", b"<xml><Encrypt/></xml>"):
        a = await sweep.send("POST", target, data=body, ctype="text/xml")
        if a is not None and a.status >= 500:
            sweep.failures.append(f"POST /wechat [bad envelope {body!r}]: {a.status}")
    sweep.verdict(at_least=len(queries) + 40)


# ---------------------------------------------------------------- Telegram

TELEGRAM = "/telegram/webhook"
TELEGRAM_SECRET = {"X-Telegram-Bot-Api-Secret-Token": tg.SECRET}
TELEGRAM_NUL_UPDATE = (
    b'{"update_id": 6, "message": {"message_id": 1, "date": 0, "chat": {"id": 7, '
    b'"type": "private"}, "from": {"id": 7, "is_bot": false, "first_name": "\\u0000"},'
    b' "text": "a\\u0000b\\ud800"}}'
)


async def test_telegram_webhook_garbage(sweep: Sweep) -> None:
    """Wrong or missing secret: 403. With the secret, a body that is not an update is a
    400 and an update the bot cannot use is a 200 -- never a 5xx (Telegram would retry
    a 5xx for a day, holding back the resident's later messages)."""
    ok_update = (
        b'{"update_id": 1, "message": {"message_id": 1, "date": 0,'
        b' "chat": {"id": 1, "type": "private"}}}'
    )
    for label, secret in (
        ("no secret", None),
        ("wrong secret", "nope"),
        ("empty secret", ""),
        ("long secret", "s" * 6000),
        ("UTF-8 secret", "秘密"),
    ):
        headers = {} if secret is None else {"X-Telegram-Bot-Api-Secret-Token": secret}
        a = await sweep.send("POST", TELEGRAM, data=ok_update, headers=headers)
        if a is not None and a.status != 403:
            sweep.failures.append(f"POST {TELEGRAM} [{label}]: {a.status}, not 403")
    raw = _raw_request(
        "POST", TELEGRAM, [("X-Telegram-Bot-Api-Secret-Token", b"\xff\xfe")], ok_update
    )
    a = await raw_http(sweep, raw)
    if a is not None and a.status != 403:
        sweep.failures.append(f"POST {TELEGRAM} [secret not UTF-8]: {a.status}")
    huge_id = str(10**400).encode()
    bodies = [
        ("invalid JSON", b"{not json", 400),
        ("truncated", ok_update[:30], 400),
        ("an array", b"[1]", 400),
        ("null", b"null", 400),
        ("invalid UTF-8", b'{"update_id": 1, "x": "\xff"}', 400),
        ("deeply nested", b"[" * 100_000 + b"]" * 100_000, 400),
        ("nested message", b'{"update_id": 5, "message": ' + b"[" * 5000 + b"]" * 5000 + b"}", 0),
        ("update_id huge", b'{"update_id": ' + huge_id + b"}", 400),
        ("update_id 1e400", b'{"update_id": 1e400}', 400),
        ("update_id NaN", b'{"update_id": NaN}', 400),
        ("update_id string", b'{"update_id": "1"}', 400),
        ("update_id negative", b'{"update_id": -1}', 400),
        ("message a string", b'{"update_id": 2, "message": "garbage"}', 0),
        ("message wrong types", b'{"update_id": 3, "message": {"message_id": "x", "chat": 5}}', 0),
        (
            "message with a huge chat id",
            b'{"update_id": 4, "message": {"message_id": 1, "date": 0, "chat": {"id": '
            + huge_id
            + b', "type": "private"}, "text": "hi"}}',
            0,
        ),
        ("NUL and a surrogate in the text", TELEGRAM_NUL_UPDATE, 200),
        (
            "callback garbage",
            b'{"update_id": 8, "callback_query": {"id": "1", "from": {"id": 7, "is_bot": false,'
            b' "first_name": "x"}, "chat_instance": "c", "data": "\\u0000:\\ud800"}}',
            200,
        ),
        ("unknown update kind", b'{"update_id": 9, "no_such_thing": {"a": 1}}', 200),
        ("huge body", b'{"update_id": 10, "x": "' + b"x" * (4 * 1024 * 1024) + b'"}', 413),
        ("empty", b"", 400),
    ]
    for label, body, want in bodies:
        a = await sweep.send("POST", TELEGRAM, data=body, headers=TELEGRAM_SECRET)
        if a is not None and (a.status >= 500 or (want and a.status != want)):
            sweep.failures.append(f"POST {TELEGRAM} [{label}]: {a.status} {a.body[:200]!r}")
    sweep.verdict(at_least=25)


# ---------------------------------------------------------------- the partner API

PARTNER_PATHS = [
    ("POST", "/partner/v1/identity/verify"),
    ("POST", "/partner/v1/tokens/verify"),
    ("POST", "/partner/v1/payments"),
    ("POST", "/partner/v1/payments/%00/refund"),
    ("POST", "/partner/v1/payments/" + "9" * 30 + "/refund"),
    ("GET", "/partner/v1/reconciliation/2026-01-01"),
    ("GET", "/partner/v1/reconciliation/9999-99-99"),
    ("GET", "/partner/v1/reconciliation/%00"),
    ("GET", "/partner/v1/hospital-cards/h/1"),
    ("GET", "/partner/v1/hospital-cards/%00/" + "9" * 30),
    ("GET", "/partner/v1/no-such-thing"),
]
BAD_PARTNER_AUTH = [
    "",
    "garbage",
    "CITYCARD-ED25519",
    "CITYCARD-ED25519 ",
    "citycard-ed25519 partner_id=a,key_id=b,nonce=cccccccccccccccc,timestamp=1,signature=x",
    "CITYCARD-ED25519 partner_id=a,key_id=b,nonce=cccccccccccccccc,timestamp=1,signature=x",
    "CITYCARD-ED25519 partner_id=a,partner_id=a,key_id=b,nonce=n,timestamp=1,signature=x",
    "CITYCARD-ED25519 partner_id=sweep-metro,key_id=hmac,nonce=cccccccccccccccc,"
    "timestamp=99999999999999999999999,signature=" + "A" * 86,
    "CITYCARD-HMAC-SHA256 partner_id=sweep-metro,key_id=hmac,nonce=cccccccccccccccc,"
    f"timestamp={int(time.time())},signature=" + "!" * 43,
    "CITYCARD-HMAC-SHA256 partner_id=%00,key_id=\t,nonce=\t,timestamp=-1,signature===",
    "CITYCARD-HMAC-SHA256 " + "a=b," * 300,
    "Bearer x",
    "CITYCARD-ED25519 partner_id=路,key_id=键,nonce=随机随机随机随机随机随机,"
    "timestamp=1,signature=x",
]
PARTNER_BODIES = [b"", b"{", b"[]", b"null", b'"x"', b"42", b"\xff\xfe", b"[" * 10_000]
PARTNER_BODIES += [
    b'{"token": 12345, "purpose": []}',
    b'{"amount": ' + str(10**400).encode() + b', "authorization": "x"}',
    b'{"amount": 1e400, "authorization": {}}',
    b'{"amount": NaN}',
    b'{"unknown": 1}',
]
PARTNER_DB_BODIES = [
    b'{"token": "\\u0000", "purpose": "\\ud800"}',
    b'{"token": "a\\u0000b", "purpose": "pay"}',
    b'{"card_no": "' + b"9" * 5000 + b'", "name": "\\u0000"}',
    b'{"amount": 9223372036854775808, "authorization": "x"}',
]


def _judge_partner(sweep: Sweep, where: str, a: Answer | None, *, refused: bool) -> None:
    if a is None:
        return
    if a.status >= 500:
        sweep.failures.append(f"{where}: {a.status} {a.body[:200]!r}")
        return
    if refused and a.status not in (400, 401, 403, 404, 405, 411, 413):
        sweep.failures.append(f"{where}: {a.status} for an unsigned request")
        return
    if "x-citycard-signature" not in {k.lower() for k in a.headers}:
        sweep.failures.append(f"{where}: {a.status} without X-Citycard-Signature")
    if a.status >= 400 and (a.ctype != PROBLEM or _problem_failure(a)):
        sweep.failures.append(f"{where}: {a.status} {a.ctype} {a.body[:200]!r}")


async def _partner_garbage(sweep: Sweep, bodies: list[bytes]) -> None:
    """Correctly signed calls (an HMAC partner the admin registered), so the garbage
    reaches the handlers; any answer but a 5xx is fine, and every answer is signed."""
    from citizen_card.partner_client import sign_headers

    secret = sweep.values["partner_secret"].encode()
    for method, path in PARTNER_PATHS:
        queries = ["", "?a=%00&a=%FF", "?" + "q" * 3000]
        for body in bodies if method == "POST" else [b""]:
            for query in queries if body == bodies[0] else [""]:
                url = str(sweep.api.client.make_url("/")).rstrip("/") + path + query
                headers = sign_headers(
                    method, url, body, partner_id="sweep-metro", key_id="hmac", hmac_secret=secret
                )
                headers["Idempotency-Key"] = f"sweep-{uuid.uuid4()}"
                a = await sweep.send(method, path + query, headers=headers, data=body)
                where = f"{method} {path}{query[:20]} [signed {body[:30]!r}]"
                _judge_partner(sweep, where, a, refused=False)


async def test_partner_api_garbage(sweep: Sweep) -> None:
    """Missing and garbage signatures are refused (401, signed, problem+json); signed
    calls with garbage bodies and parameters are answered, never with a 5xx."""
    for method, path in PARTNER_PATHS:
        for auth in BAD_PARTNER_AUTH:
            headers = {"Authorization": auth} if auth else {}
            a = await sweep.send(method, path, headers=headers, data=b'{"x": 1}')
            _judge_partner(sweep, f"{method} {path} [{auth[:30]!r}]", a, refused=True)
        for raw in (b"CITYCARD-ED25519 partner_id=\xff\xfe", b"Bearer \xff"):
            a = await raw_http(sweep, _raw_request(method, path, [("Authorization", raw)], b""))
            _judge_partner(sweep, f"{method} {path} [{raw!r}]", a, refused=True)
    await _partner_garbage(sweep, PARTNER_BODIES + PARTNER_DB_BODIES)
    sweep.verdict(at_least=len(PARTNER_PATHS) * (len(BAD_PARTNER_AUTH) + 2) + 40)
