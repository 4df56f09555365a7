"""Our categories seen as GeoReport v2 services.

Pure. Every active leaf category is a service (its code is the service_code, its
parent's name the group), so an admin's new category appears to Open311 clients
without a deploy; `services.yaml` only adds descriptions, keywords, notices and
attribute questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from channels.open311.definitions import AttributeDef, Definitions
from ticketing.lifecycle import Kind


@dataclass(frozen=True)
class Service:
    code: str
    name: str
    group: str | None
    description: str
    keywords: tuple[str, ...]
    kind: Kind
    notice: str | None
    attributes: tuple[AttributeDef, ...]

    @property
    def metadata(self) -> bool:
        return bool(self.attributes)

    def attribute(self, code: str) -> AttributeDef | None:
        return next((a for a in self.attributes if a.code == code), None)

    def listing(self) -> dict[str, Any]:
        """GET Service List entry, in the spec's field order."""
        return {
            "service_code": self.code,
            "service_name": self.name,
            "description": self.description,
            "metadata": self.metadata,
            "type": "realtime",  # we answer with the ticket number at once
            "keywords": ", ".join(self.keywords),
            "group": self.group,
        }

    def definition(self) -> dict[str, Any]:
        """GET Service Definition body."""
        return {
            "service_code": self.code,
            "attributes": [_attribute_view(a) for a in self.attributes],
        }


def _attribute_view(a: AttributeDef) -> dict[str, Any]:
    view: dict[str, Any] = {
        "variable": a.variable,
        "code": a.code,
        "datatype": a.datatype,
        "required": a.required,
        "datatype_description": a.datatype_description,
        "order": a.order,
        "description": a.description,
    }
    if a.values:
        view["values"] = [{"key": v.key, "name": v.name} for v in a.values]
    return view


def build_services(categories: dict[str, dict[str, Any]], defs: Definitions) -> dict[str, Service]:
    """service_code -> Service, ordered by code (the catalog's order)."""
    active = {code: row for code, row in categories.items() if row.get("active")}
    parents = {row.get("parent_code") for row in active.values()}
    out: dict[str, Service] = {}
    for code in sorted(active):
        row = active[code]
        if code in parents or code in defs.hidden:
            continue  # a group, not something a resident reports
        parent = active.get(row.get("parent_code") or "")
        if row.get("parent_code") and parent is None:
            continue  # its group was switched off
        extra = defs.extra(code)
        group = parent["name"] if parent else None
        keywords = extra.keywords or tuple(k for k in (row["name"], group) if k)
        out[code] = Service(
            code=code,
            name=row["name"],
            group=group,
            description=extra.description or (f"{group}：{row['name']}" if group else row["name"]),
            keywords=keywords,
            kind=extra.kind or defs.default_kind,
            notice=extra.service_notice or defs.default_notice,
            attributes=extra.attributes,
        )
    return out
