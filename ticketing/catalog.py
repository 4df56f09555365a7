"""Departments and categories held in memory.

They change a few times a year and are read on every ticket created, so each
instance keeps a copy, reloaded after an admin change (here or, through the bus,
on another instance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ticketing.models import Category, Department
from ticketing.store import Database

department_t = Department.__table__  # type: ignore[attr-defined]
category_t = Category.__table__  # type: ignore[attr-defined]


@dataclass
class Catalog:
    departments: dict[str, dict[str, Any]] = field(default_factory=dict)
    categories: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def reload(self, db: Database) -> None:
        async with db.read() as conn:
            deps = (await conn.execute(sa.select(department_t).order_by(department_t.c.code))).all()
            cats = (await conn.execute(sa.select(category_t).order_by(category_t.c.code))).all()
        self.departments = {r.code: dict(r._mapping) for r in deps}
        self.categories = {r.code: dict(r._mapping) for r in cats}

    def category(self, code: str) -> dict[str, Any] | None:
        c = self.categories.get(code)
        return c if c and c["active"] else None

    def department(self, code: str) -> dict[str, Any] | None:
        d = self.departments.get(code)
        return d if d and d["active"] else None

    def category_and_descendants(self, code: str) -> list[str]:
        """A filter on 城市管理 should also find 城市管理 > 路灯不亮."""
        out = [code]
        frontier = [code]
        while frontier:
            parent = frontier.pop()
            kids = [c for c, row in self.categories.items() if row["parent_code"] == parent]
            out.extend(kids)
            frontier.extend(kids)
        return out

    def fallback_for_district(self, district: str | None) -> str | None:
        """The district's 兜底 unit, matched by district code or name."""
        if not district:
            return None
        for code, row in self.departments.items():
            if not (row["is_fallback"] and row["active"]):
                continue
            parent = self.departments.get(row["parent_code"] or "")
            names = {row["district"], row["parent_code"], parent["name"] if parent else None}
            if district in names:
                return code
        return None
