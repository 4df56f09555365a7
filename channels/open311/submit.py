"""POST Service Request: one report becomes one ticket in the normal queue, once.

The ticket is written by the ticket intake together with an idempotency record
(same transaction), so "the client was told its number" always means "the ticket is
on disk". Open311 clients retry blindly when an answer is lost, so:

* with an `Idempotency-Key` header, a retry with the same content gets the first
  answer and a different request under the same key is refused;
* without one, the same content from the same API key within RETRY_WINDOW (24 h)
  is taken for a retry and gets the first answer too. The record's key holds the
  content digest and the city-local day, and both today's and yesterday's are
  looked up, so the window has no midnight edge.

The side row (the client's own description, media_url, address_id, answers and
extra attributes, the encrypted email) follows the ticket; a replay writes it again if
a crash came in between, and until then GET shows the ticket's own text.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from channels.open311 import const
from channels.open311.forms import (
    NewRequest,
    Open311Error,
    attribute_lines,
    extra_attribute_lines,
)
from channels.open311.store import Earlier, SideRowWriter, earlier_answers
from ticketing.handlers import Deps, InvalidRequest
from ticketing.intake import IdempotencySpec, Intake, NewTicket
from ticketing.lifecycle import Role
from ticketing.ports import Principal

log = logging.getLogger(__name__)

TITLE_SNIPPET = 40
# where the side row's `attributes` JSON keeps the client's own attribute[code] values:
# not a possible definition code (ASCII letters, digits, "_" and "-"), so never confused
EXTRA_ATTRIBUTES_KEY = "@extra"


def request_digest(pairs: list[tuple[str, str]]) -> str:
    """Content identity of a POST: its fields in any order, without the key itself."""
    canon = sorted(
        (k, v.strip()) for k, v in pairs if k not in ("api_key", "jurisdiction_id") and v.strip()
    )
    h = hashlib.sha256()
    for k, v in canon:
        h.update(k.encode() + b"\x00" + v.encode() + b"\x01")
    return h.hexdigest()


@dataclass
class Submitter:
    deps: Deps
    intake: Intake
    side_rows: SideRowWriter
    # one lock per (principal, key) while a create with it runs in this process
    _locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = field(default_factory=dict)

    async def submit(
        self, key_name: str, req: NewRequest, digest: str, idempotency_key: str | None
    ) -> str:
        """The ticket number for this report, creating the ticket unless it is a retry."""
        principal = const.PRINCIPAL_PREFIX + key_name
        now = self.deps.clock()
        if idempotency_key is not None:
            keys = [idempotency_key]
        else:
            today = now.astimezone(self.deps.tz).date()
            keys = [f"auto:{digest}:{d:%Y%m%d}" for d in (today, today - timedelta(days=1))]
        ident = (principal, keys[0])
        lock, users = self._locks.get(ident, (asyncio.Lock(), 0))
        self._locks[ident] = (lock, users + 1)
        try:
            async with lock:
                number = await self._earlier(principal, keys, digest, now)
                if number is None:
                    number = await self._create(principal, key_name, req, keys, digest, now)
        finally:
            lock, users = self._locks[ident]
            if users <= 1:
                del self._locks[ident]
            else:
                self._locks[ident] = (lock, users - 1)
        await self.side_rows.save(self._side_row(number, key_name, req))
        return number

    async def _earlier(
        self, principal: str, keys: list[str], digest: str, now: datetime
    ) -> str | None:
        found: list[Earlier] = await earlier_answers(self.deps.db, principal, keys)
        for e in sorted(found, key=lambda e: e.created_at, reverse=True):
            if e.request_hash != digest:
                raise Open311Error(
                    400, "this Idempotency-Key was used for a different request; send a new one"
                )
            if e.key.startswith("auto:") and now - e.created_at > const.RETRY_WINDOW:
                continue
            return e.number
        return None

    async def _create(
        self,
        principal: str,
        key_name: str,
        req: NewRequest,
        keys: list[str],
        digest: str,
        now: datetime,
    ) -> str:
        cmd = NewTicket(
            kind=req.service.kind.value,
            title=_title(req),
            description=_ticket_text(req),
            channel=const.CHANNEL,
            principal=Principal(principal, Role.AGENT),
            category=req.service.code,
            contact_name=req.contact_name,
            contact_phone=req.phone,
            contact_ids={
                k: v
                for k, v in (("open311_account", req.account_id), ("open311_device", req.device_id))
                if v
            },
            address=req.address_string,
            lat=req.lat,
            lon=req.lon,
        )
        try:
            view = await self.intake.create(cmd, IdempotencySpec(principal, keys[0], digest))
        except InvalidRequest as exc:
            field_name = {"contact.phone": "phone"}.get(exc.field or "", exc.field or "")
            raise Open311Error(400, f"{field_name}: {exc}" if field_name else str(exc)) from None
        except Exception:
            # another instance recorded the same key first: its answer is the answer
            number = await self._earlier(principal, keys, digest, now)
            if number is None:
                raise
            return number
        number = view["number"]
        log.info("open311 request %s from %s (%s)", number, key_name, req.service.code)
        return str(number)

    def _side_row(self, number: str, key_name: str, req: NewRequest) -> dict[str, Any]:
        return {
            "ticket_number": number,
            "api_key_name": key_name,
            "service_code": req.service.code,
            "description": req.description,
            "attributes": _stored_attributes(req),
            "address_id": req.address_id,
            "media_url": req.media_url,
            "account_id": req.account_id,
            "device_id": req.device_id,
            "email_enc": self.deps.cipher.encrypt(req.email) if req.email else None,
            "created_at": self.deps.clock(),
        }


def _stored_attributes(req: NewRequest) -> dict[str, Any]:
    """The definition's answers, and the client's own attributes under their own key."""
    stored: dict[str, Any] = dict(req.attributes)
    if req.extra_attributes:
        stored[EXTRA_ATTRIBUTES_KEY] = dict(req.extra_attributes)
    return stored


def _title(req: NewRequest) -> str:
    first = (req.description or "").strip().splitlines()[0:1]
    if not first:
        return req.service.name
    snippet = first[0].strip()
    if len(snippet) > TITLE_SNIPPET:
        snippet = snippet[:TITLE_SNIPPET] + "…"
    return f"{req.service.name}：{snippet}"[:200]


def _ticket_text(req: NewRequest) -> str:
    """What the agent reads: the report, then the answers and links it came with."""
    lines = attribute_lines(req.service, req.attributes)
    if req.address_id:
        lines.append(f"地址编号：{req.address_id}")
    if req.media_url:
        lines.append(f"图片/媒体：{req.media_url}")
    text = req.description or req.service.name
    if lines:
        text += "\n\n【Open311 补充信息】\n" + "\n".join(lines)
    extra = extra_attribute_lines(req.extra_attributes)
    if extra:  # apart from the answers above: the sending system's data, unchecked
        text += "\n\n【客户端附加字段（未核实）】\n" + "\n".join(extra)
    return text
