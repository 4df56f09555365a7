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
from ticketing.taxonomy import Taxonomy

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


class CatalogError(Exception):
    """An admin change that would break the catalog (duplicate code, unknown parent)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


async def seed_from_taxonomy(db: Database, tax: Taxonomy) -> int:
    """Load the packaged taxonomy into an empty catalog; existing codes are kept as is."""
    deps = [
        {
            "code": d.code,
            "name": d.name,
            "parent_code": d.parent_code,
            "level": d.level,
            "district": d.district,
            "is_fallback": d.is_fallback,
            "active": True,
        }
        for d in tax.departments
    ]
    cats = [
        {
            "code": c.code,
            "name": c.name,
            "parent_code": c.parent_code,
            "default_department": c.default_department,
            "urgency": str(c.urgency),
            "dispatch_limit": c.dispatch_limit,
            "feedback_limit": c.feedback_limit,
            "active": True,
        }
        for c in tax.categories
    ]
    async with db.write() as conn:
        before = (await conn.execute(sa.select(sa.func.count()).select_from(category_t))).scalar()
        await conn.execute(db.insert_ignore(department_t, deps))
        await conn.execute(db.insert_ignore(category_t, cats))
        after = (await conn.execute(sa.select(sa.func.count()).select_from(category_t))).scalar()
    return int(after or 0) - int(before or 0)


async def create_row(
    db: Database, catalog: Catalog, table: sa.Table, values: dict[str, Any]
) -> dict[str, Any]:
    _check_refs(catalog, table, values)
    existing = catalog.departments if table is department_t else catalog.categories
    if values["code"] in existing:
        raise CatalogError(f"code {values['code']!r} already exists", "code")
    async with db.write() as conn:
        dup = (
            await conn.execute(sa.select(table.c.code).where(table.c.code == values["code"]))
        ).first()
        if dup:
            raise CatalogError(f"code {values['code']!r} already exists", "code")
        await conn.execute(sa.insert(table).values(**values))
        row = (await conn.execute(sa.select(table).where(table.c.code == values["code"]))).one()
    await catalog.reload(db)
    return dict(row._mapping)


async def update_row(
    db: Database, catalog: Catalog, table: sa.Table, code: str, patch: dict[str, Any]
) -> dict[str, Any] | None:
    _check_refs(catalog, table, patch)
    if patch.get("parent_code") == code:
        raise CatalogError("a node cannot be its own parent", "parent_code")
    async with db.write() as conn:
        if patch:
            await conn.execute(sa.update(table).where(table.c.code == code).values(**patch))
        row = (await conn.execute(sa.select(table).where(table.c.code == code))).first()
    await catalog.reload(db)
    return dict(row._mapping) if row else None


def _check_refs(catalog: Catalog, table: sa.Table, values: dict[str, Any]) -> None:
    parent = values.get("parent_code")
    pool = catalog.departments if table is department_t else catalog.categories
    if parent and parent not in pool:
        raise CatalogError(f"unknown parent {parent!r}", "parent_code")
    dep = values.get("default_department")
    if dep and dep not in catalog.departments:
        raise CatalogError(f"unknown department {dep!r}", "default_department")
