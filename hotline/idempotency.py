"""`Idempotency-Key` on POST: a retry gets the first answer, a changed retry is refused.

The ticket intake writes its record in the same transaction as the ticket (so a
crash can never leave a ticket without its record); other POSTs are recorded here
right after the handler answers. Concurrent duplicates inside one instance wait
for the first; across instances the primary key decides.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from ticketing.intake import IdempotencySpec
from ticketing.models import IdempotencyRecord, utcnow
from ticketing.ports import Principal
from ticketing.store import Database
from ticketing.webkit import IDEMPOTENCY, IDEMPOTENCY_RECORDED, PRINCIPAL, problem

HEADER = "Idempotency-Key"
idem_t = IdempotencyRecord.__table__  # type: ignore[attr-defined]


def idempotency_middleware(db: Database) -> Any:
    # one lock per key while any request with it is running; refcounted so a waiter
    # never finds its lock replaced by a fresh one
    inflight: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        key = request.headers.get(HEADER)
        who: Principal | None = request.get(PRINCIPAL)
        # the partner API keeps its own idempotency (signed, per partner, in the ledger),
        # and so does Open311 (per API key, recorded with the ticket)
        if (
            request.method != "POST"
            or key is None
            or who is None
            or request.path.startswith(("/partner/", "/open311/"))
        ):
            return await handler(request)
        if not (1 <= len(key) <= 255) or not key.isprintable() or not key.isascii():
            raise problem(
                "validation-error",
                errors=[{"field": HEADER, "message": "1 to 255 printable ASCII characters"}],
            )
        is_json = request.content_type.endswith("json") or "Content-Type" not in request.headers
        if request.can_read_body and not is_json:
            # raw uploads are streamed, never buffered here; they are idempotent by
            # content instead (the same file on the same ticket is stored once)
            return await handler(request)
        body = await request.read() if request.can_read_body else b""
        digest = hashlib.sha256(
            request.method.encode() + b" " + request.path.encode() + b"\n" + body
        ).hexdigest()
        ident = (who.username, key)
        lock, users = inflight.get(ident, (asyncio.Lock(), 0))
        inflight[ident] = (lock, users + 1)
        try:
            async with lock:
                async with db.read() as conn:
                    rec = (
                        await conn.execute(
                            sa.select(idem_t).where(
                                idem_t.c.principal == who.username, idem_t.c.key == key
                            )
                        )
                    ).first()
                if rec is not None:
                    if rec.request_hash != digest:
                        raise problem(
                            "idempotency-key-reuse",
                            "send a new Idempotency-Key for a different request",
                        )
                    return web.Response(
                        status=rec.status,
                        text=rec.body,
                        content_type="application/json",
                        headers={"Idempotent-Replayed": "true"},
                    )
                request[IDEMPOTENCY] = IdempotencySpec(who.username, key, digest)
                resp = await handler(request)
                if (
                    not request.get(IDEMPOTENCY_RECORDED)
                    and isinstance(resp, web.Response)
                    and resp.status < 300
                    and resp.text is not None
                ):
                    async with db.write() as conn:
                        await conn.execute(
                            db.insert_ignore(
                                idem_t,
                                [
                                    {
                                        "principal": who.username,
                                        "key": key,
                                        "request_hash": digest,
                                        "status": resp.status,
                                        "body": resp.text or json.dumps(None),
                                        "created_at": utcnow(),
                                    }
                                ],
                            )
                        )
                return resp
        finally:
            lock, users = inflight[ident]
            if users <= 1:
                del inflight[ident]
            else:
                inflight[ident] = (lock, users - 1)

    return middleware
