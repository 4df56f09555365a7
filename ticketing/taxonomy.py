"""The category taxonomy and department tree, read from YAML.

Pure: a file in, frozen values out, no database. The packaged file
(`ticketing/data/taxonomy.yaml`) is the default a centre ships with; a city replaces
it with its own. The file is the whole truth: nothing here knows any category.

Both sections are trees nested with `children:`; loading flattens them parents
first, fills in what children inherit (a category's department and urgency, a
department's district) and refuses anything doubtful with a `ValueError` naming the
file and the offending code, so a bad file fails at start-up, not on a live call.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from ticketing.deadlines import Duration, Urgency

__all__ = [
    "DEFAULT_TAXONOMY_PATH",
    "DEPARTMENT_LEVELS",
    "CategorySpec",
    "DepartmentSpec",
    "Taxonomy",
    "load_taxonomy",
]

DEFAULT_TAXONOMY_PATH = Path(__file__).parent / "data" / "taxonomy.yaml"

DEPARTMENT_LEVELS = frozenset({"city", "district", "street", "grid", "agency"})

_DEPARTMENT_KEYS = frozenset({"code", "name", "level", "district", "is_fallback", "children"})
_CATEGORY_KEYS = frozenset(
    {"code", "name", "department", "urgency", "dispatch_limit", "feedback_limit", "children"}
)
_DEPARTMENT_CODE_RE = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*")
_CATEGORY_PART_RE = _DEPARTMENT_CODE_RE
_URGENCIES = frozenset(u.value for u in Urgency)


@dataclass(frozen=True)
class DepartmentSpec:
    code: str
    name: str
    parent_code: str | None
    level: str  # city | district | street | grid | agency
    district: str | None  # the district's name, for the district and all below it
    is_fallback: bool  # the district's 兜底 unit


@dataclass(frozen=True)
class CategorySpec:
    code: str
    name: str
    parent_code: str | None
    default_department: str
    urgency: Urgency
    dispatch_limit: str | None  # None: the urgency's default applies
    feedback_limit: str | None


@dataclass(frozen=True)
class Taxonomy:
    """Departments and categories, each parents before children."""

    departments: tuple[DepartmentSpec, ...]
    categories: tuple[CategorySpec, ...]

    @cached_property
    def _departments_by_code(self) -> dict[str, DepartmentSpec]:
        return {d.code: d for d in self.departments}

    @cached_property
    def _categories_by_code(self) -> dict[str, CategorySpec]:
        return {c.code: c for c in self.categories}

    def department(self, code: str) -> DepartmentSpec:
        """The department with this code; KeyError if there is none."""
        return self._departments_by_code[code]

    def category(self, code: str) -> CategorySpec:
        """The category with this code; KeyError if there is none."""
        return self._categories_by_code[code]

    def top_categories(self) -> tuple[CategorySpec, ...]:
        return tuple(c for c in self.categories if c.parent_code is None)

    def subcategories(self, code: str) -> tuple[CategorySpec, ...]:
        return tuple(c for c in self.categories if c.parent_code == code)

    def fallback_for(self, district: str) -> DepartmentSpec:
        """The 兜底 unit of a district, by the district's name; KeyError if unknown."""
        for dept in self.departments:
            if dept.is_fallback and dept.district == district:
                return dept
        raise KeyError(district)


def load_taxonomy(path: Path | None = None) -> Taxonomy:
    """Read, flatten and check a taxonomy file (the packaged default when `path` is None)."""
    path = DEFAULT_TAXONOMY_PATH if path is None else Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read taxonomy file: {exc}") from exc
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {exc}") from exc
    return _Builder(path).build(data)


# --- internals ---------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping.

    Plain YAML keeps the last one silently, so a pasted `urgency:` line would win
    without anybody noticing.
    """


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Builder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.departments: list[DepartmentSpec] = []
        self.categories: list[CategorySpec] = []
        self._district_names: dict[str, str] = {}  # district name -> district code

    def fail(self, what: str, code: object, problem: str) -> ValueError:
        return ValueError(f"{self.path}: {what} {code!r}: {problem}")

    def build(self, data: object) -> Taxonomy:
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: expected a mapping with departments and categories")
        unknown = set(data) - {"departments", "categories"}
        if unknown:
            raise ValueError(f"{self.path}: unknown top-level keys {sorted(map(str, unknown))}")
        for section in ("departments", "categories"):
            if not isinstance(data.get(section), list) or not data[section]:
                raise ValueError(f"{self.path}: '{section}' must be a non-empty list")

        for node in data["departments"]:
            self._department(node, parent=None)
        self._check_fallbacks()
        known_departments = {d.code for d in self.departments}
        for node in data["categories"]:
            self._category(node, parent=None, departments=known_departments)
        return Taxonomy(tuple(self.departments), tuple(self.categories))

    # --- departments ---------------------------------------------------------------

    def _department(self, node: object, parent: DepartmentSpec | None) -> None:
        code = self._code(node, "department", parent.code if parent else None)
        assert isinstance(node, dict)
        self._keys(node, _DEPARTMENT_KEYS, "department", code)
        if not _DEPARTMENT_CODE_RE.fullmatch(code):
            raise self.fail("department", code, "code must be lower-case ASCII words and '-'")
        if any(d.code == code for d in self.departments):
            raise self.fail("department", code, "duplicate code")
        name = self._name(node, "department", code)

        level = node.get("level")
        if level not in DEPARTMENT_LEVELS:
            raise self.fail(
                "department", code, f"unknown level {level!r} (one of {sorted(DEPARTMENT_LEVELS)})"
            )
        is_fallback = node.get("is_fallback", False)
        if not isinstance(is_fallback, bool):
            raise self.fail(
                "department", code, f"is_fallback must be true or false, not {is_fallback!r}"
            )

        inherited = parent.district if parent else None
        district = node.get("district")
        if district is not None and (not isinstance(district, str) or not district.strip()):
            raise self.fail("department", code, f"invalid district {district!r}")
        if level == "district":
            if inherited is not None:
                raise self.fail(
                    "department", code, f"district nested inside district {inherited!r}"
                )
            district = district or name
            if district in self._district_names:
                raise self.fail(
                    "department",
                    code,
                    f"district name {district!r} is already {self._district_names[district]!r}",
                )
            self._district_names[district] = code
        elif district is None:
            district = inherited
        elif inherited is not None and district != inherited:
            raise self.fail(
                "department", code, f"district {district!r} differs from its parent's {inherited!r}"
            )
        if is_fallback and district is None:
            raise self.fail("department", code, "a fallback unit must belong to a district")

        spec = DepartmentSpec(
            code=code,
            name=name,
            parent_code=parent.code if parent else None,
            level=level,
            district=district,
            is_fallback=is_fallback,
        )
        self.departments.append(spec)
        for child in self._children(node, "department", code):
            self._department(child, parent=spec)

    def _check_fallbacks(self) -> None:
        for district, code in self._district_names.items():
            units = [d.code for d in self.departments if d.is_fallback and d.district == district]
            if len(units) != 1:
                found = ", ".join(units) if units else "none"
                raise self.fail(
                    "department", code, f"district needs exactly one fallback unit, found {found}"
                )
        for dept in self.departments:
            if dept.district is not None and dept.district not in self._district_names:
                raise self.fail(
                    "department", dept.code, f"district {dept.district!r} is not a known district"
                )

    # --- categories ----------------------------------------------------------------

    def _category(self, node: object, parent: CategorySpec | None, departments: set[str]) -> None:
        code = self._code(node, "category", parent.code if parent else None)
        assert isinstance(node, dict)
        self._keys(node, _CATEGORY_KEYS, "category", code)
        if parent is None:
            parts_ok = bool(_CATEGORY_PART_RE.fullmatch(code))
        else:
            prefix = parent.code + "."
            parts_ok = code.startswith(prefix) and bool(
                _CATEGORY_PART_RE.fullmatch(code[len(prefix) :])
            )
        if not parts_ok:
            expected = f"'{parent.code}.<part>'" if parent else "one ASCII part"
            raise self.fail("category", code, f"code must be {expected}, lower-case ASCII")
        if any(c.code == code for c in self.categories):
            raise self.fail("category", code, "duplicate code")
        name = self._name(node, "category", code)

        department = node.get("department", parent.default_department if parent else None)
        if department is None:
            raise self.fail("category", code, "no department (set one on it or its parent)")
        if department not in departments:
            raise self.fail("category", code, f"unknown department {department!r}")

        urgency = node.get("urgency", parent.urgency if parent else Urgency.NORMAL.value)
        if urgency not in _URGENCIES:
            raise self.fail(
                "category", code, f"unknown urgency {urgency!r} (one of {sorted(_URGENCIES)})"
            )

        limits: dict[str, str | None] = {}
        for key in ("dispatch_limit", "feedback_limit"):
            value = node.get(key)
            if value is not None:
                try:
                    Duration.parse(value)
                except ValueError as exc:
                    raise self.fail("category", code, f"{key}: {exc}") from exc
            limits[key] = value

        spec = CategorySpec(
            code=code,
            name=name,
            parent_code=parent.code if parent else None,
            default_department=department,
            urgency=Urgency(urgency),
            dispatch_limit=limits["dispatch_limit"],
            feedback_limit=limits["feedback_limit"],
        )
        self.categories.append(spec)
        for child in self._children(node, "category", code):
            self._category(child, parent=spec, departments=departments)

    # --- shared --------------------------------------------------------------------

    def _code(self, node: object, what: str, parent_code: str | None) -> str:
        where = f"under {parent_code!r}" if parent_code else "at top level"
        if not isinstance(node, dict):
            raise ValueError(f"{self.path}: {what} {where}: expected a mapping, got {node!r}")
        code = node.get("code")
        if not isinstance(code, str) or not code:
            raise ValueError(f"{self.path}: {what} {where}: missing or non-text code {code!r}")
        return code

    def _name(self, node: dict[str, Any], what: str, code: str) -> str:
        name = node.get("name")
        if not isinstance(name, str) or not name.strip():
            raise self.fail(what, code, "missing name")
        return name.strip()

    def _keys(self, node: dict[str, Any], allowed: frozenset[str], what: str, code: str) -> None:
        unknown = set(node) - allowed
        if unknown:
            raise self.fail(what, code, f"unknown keys {sorted(map(str, unknown))}")

    def _children(self, node: dict[str, Any], what: str, code: str) -> Iterator[object]:
        children = node.get("children", [])
        if children is None:
            return iter(())
        if not isinstance(children, list):
            raise self.fail(what, code, "children must be a list")
        return iter(children)
