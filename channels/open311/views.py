"""A ticket as a GeoReport v2 service request. Pure.

Only what the spec lists and nothing personal: no name, phone, email, device or
account, and no department reply (GET is public and replies may name people).
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from channels.open311.definitions import Definitions
from channels.open311.services import Service
from ticketing.lifecycle import TERMINAL_STATES, Status


def w3c(dt: datetime | None, tz: tzinfo) -> str | None:
    """ISO 8601 in the city's zone with its offset (2026-11-23T09:30:00+08:00)."""
    return dt.astimezone(tz).isoformat(timespec="seconds") if dt else None


def public_status(status: Status) -> str:
    return "closed" if status in TERMINAL_STATES else "open"


def request_view(
    row: Any,
    *,
    categories: dict[str, dict[str, Any]],
    departments: dict[str, dict[str, Any]],
    services: dict[str, Service],
    defs: Definitions,
    tz: tzinfo,
) -> dict[str, Any]:
    status = Status(row.status)
    dept = departments.get(row.lead_department or "")
    dept_name = dept["name"] if dept else None
    note = defs.status_notes.get(status)
    if note is not None:
        note = note.format(department=dept_name or "承办单位", merged_into=row.merged_into or "")
    code = row.category_code or row.service_code
    category = categories.get(code or "")
    service = services.get(code or "")
    closed = status in TERMINAL_STATES
    if row.has_request_row is not None:
        description = row.request_description
    else:  # the side row is written right after the ticket; until then, the ticket's text
        description = row.description
    return {
        "service_request_id": row.number,
        "status": public_status(status),
        "status_notes": note,
        "service_name": category["name"] if category else None,
        "service_code": code,
        "description": description,
        "agency_responsible": dept_name,
        "service_notice": service.notice if service else defs.default_notice,
        "requested_datetime": w3c(row.created_at, tz),
        "updated_datetime": w3c((row.closed_at if closed else None) or row.updated_at, tz),
        "expected_datetime": w3c(row.feedback_due_at, tz),
        "address": row.address,
        "address_id": row.address_id,
        "zipcode": None,  # we keep no postal codes
        "lat": row.lat,
        "long": row.lon,
        "media_url": row.media_url,
    }
