"""What Open311 adds to our categories, read from YAML (`services.yaml` next to this file).

Pure: a file in, frozen values out. Our categories already give each service its
code, name, group and department; the file adds what GeoReport v2 clients show a
resident (description, keywords, a service notice), the ticket kind a report
becomes, the attribute questions of a service definition, and the status notes.
A bad file fails at start-up with the file and the offending entry named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ticketing.lifecycle import Kind, Status

DEFAULT_DEFINITIONS_PATH = Path(__file__).parent / "services.yaml"

DATATYPES = frozenset({"string", "number", "datetime", "text", "singlevaluelist", "multivaluelist"})
LIST_DATATYPES = frozenset({"singlevaluelist", "multivaluelist"})
ATTRIBUTE_CODE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
VALUE_KEY_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

_TOP_KEYS = frozenset({"defaults", "status_notes", "hidden", "services"})
_SERVICE_KEYS = frozenset({"description", "keywords", "kind", "service_notice", "attributes"})
_ATTRIBUTE_KEYS = frozenset(
    {"code", "datatype", "required", "variable", "description", "datatype_description", "values"}
)


@dataclass(frozen=True)
class AttributeValue:
    key: str
    name: str


@dataclass(frozen=True)
class AttributeDef:
    code: str
    datatype: str
    required: bool
    variable: bool  # false: text shown to the resident, never an input
    description: str
    datatype_description: str | None
    order: int
    values: tuple[AttributeValue, ...]

    def value_keys(self) -> frozenset[str]:
        return frozenset(v.key for v in self.values)

    def value_name(self, key: str) -> str:
        return next((v.name for v in self.values if v.key == key), key)


@dataclass(frozen=True)
class ServiceExtra:
    description: str | None
    keywords: tuple[str, ...]
    kind: Kind | None
    service_notice: str | None
    attributes: tuple[AttributeDef, ...]


@dataclass(frozen=True)
class Definitions:
    default_kind: Kind
    default_notice: str | None
    status_notes: dict[Status, str]  # templates with {department} and {merged_into}
    hidden: frozenset[str]
    services: dict[str, ServiceExtra]

    def extra(self, code: str) -> ServiceExtra:
        return self.services.get(code) or ServiceExtra(None, (), None, None, ())


def load_definitions(path: Path | None = None) -> Definitions:
    path = DEFAULT_DEFINITIONS_PATH if path is None else Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read Open311 definitions: {exc}") from exc
    return _Builder(path).build(data)


class _Builder:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> ValueError:
        return ValueError(f"{self.path}: {where}: {problem}")

    def build(self, data: object) -> Definitions:
        if not isinstance(data, dict):
            raise self.fail("top level", "expected a mapping")
        self._keys(data, _TOP_KEYS, "top level")
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise self.fail("defaults", "expected a mapping")
        self._keys(defaults, frozenset({"kind", "service_notice"}), "defaults")
        kind = self._kind(defaults.get("kind", Kind.REQUEST.value), "defaults") or Kind.REQUEST
        notes_raw = data.get("status_notes") or {}
        if not isinstance(notes_raw, dict):
            raise self.fail("status_notes", "expected a mapping")
        notes: dict[Status, str] = {}
        for key, text in notes_raw.items():
            try:
                status = Status(key)
            except ValueError:
                raise self.fail("status_notes", f"unknown status {key!r}") from None
            notes[status] = self._text(text, f"status_notes.{key}")
            try:
                notes[status].format(department="", merged_into="")
            except (KeyError, IndexError, ValueError) as exc:
                raise self.fail(f"status_notes.{key}", f"bad template: {exc}") from None
        hidden = data.get("hidden") or []
        if not isinstance(hidden, list) or not all(isinstance(h, str) for h in hidden):
            raise self.fail("hidden", "expected a list of category codes")
        services_raw = data.get("services") or {}
        if not isinstance(services_raw, dict):
            raise self.fail("services", "expected a mapping of category code to service")
        services = {
            str(code): self._service(str(code), node) for code, node in services_raw.items()
        }
        notice = defaults.get("service_notice")
        return Definitions(
            default_kind=kind,
            default_notice=self._text(notice, "defaults.service_notice") if notice else None,
            status_notes=notes,
            hidden=frozenset(hidden),
            services=services,
        )

    def _service(self, code: str, node: object) -> ServiceExtra:
        where = f"services.{code}"
        if node is None:
            node = {}
        if not isinstance(node, dict):
            raise self.fail(where, "expected a mapping")
        self._keys(node, _SERVICE_KEYS, where)
        keywords = node.get("keywords") or []
        if not isinstance(keywords, list) or not all(
            isinstance(k, str) and k.strip() and "," not in k for k in keywords
        ):
            raise self.fail(where, "keywords must be a list of words without commas")
        attrs_raw = node.get("attributes") or []
        if not isinstance(attrs_raw, list):
            raise self.fail(where, "attributes must be a list")
        attrs = tuple(self._attribute(where, i + 1, a) for i, a in enumerate(attrs_raw))
        codes = [a.code for a in attrs]
        dup = {c for c in codes if codes.count(c) > 1}
        if dup:
            raise self.fail(where, f"attribute codes used twice: {sorted(dup)}")
        desc, notice = node.get("description"), node.get("service_notice")
        return ServiceExtra(
            description=self._text(desc, f"{where}.description") if desc else None,
            keywords=tuple(k.strip() for k in keywords),
            kind=self._kind(node.get("kind"), where),
            service_notice=self._text(notice, f"{where}.service_notice") if notice else None,
            attributes=attrs,
        )

    def _attribute(self, service: str, order: int, node: object) -> AttributeDef:
        if not isinstance(node, dict):
            raise self.fail(f"{service}.attributes[{order}]", "expected a mapping")
        code = node.get("code")
        where = f"{service}.attributes.{code}"
        if not isinstance(code, str) or not ATTRIBUTE_CODE_RE.fullmatch(code):
            raise self.fail(where, "code must be 1-64 ASCII letters, digits, '_' or '-'")
        self._keys(node, _ATTRIBUTE_KEYS, where)
        datatype = node.get("datatype")
        if datatype not in DATATYPES:
            raise self.fail(where, f"datatype must be one of {sorted(DATATYPES)}")
        flags = {}
        for flag, default in (("required", False), ("variable", True)):
            value = node.get(flag, default)
            if not isinstance(value, bool):
                raise self.fail(where, f"{flag} must be true or false")
            flags[flag] = value
        if flags["required"] and not flags["variable"]:
            raise self.fail(where, "an attribute that is not variable cannot be required")
        values_raw = node.get("values") or []
        if datatype in LIST_DATATYPES:
            if not isinstance(values_raw, list) or not values_raw:
                raise self.fail(where, f"a {datatype} needs values")
            values = []
            for v in values_raw:
                if not isinstance(v, dict) or set(v) != {"key", "name"}:
                    raise self.fail(where, "each value needs exactly a key and a name")
                raw = v["key"]
                if isinstance(raw, bool) or not isinstance(raw, str | int):
                    # YAML 1.1 reads a bare off/yes/no as a boolean: quote such keys
                    raise self.fail(where, f"value key {raw!r} must be text (quote it)")
                key = str(raw)
                if not VALUE_KEY_RE.fullmatch(key):
                    raise self.fail(where, f"value key {key!r}: 1-64 ASCII letters, digits, _.-")
                values.append(AttributeValue(key, self._text(v["name"], f"{where}.{key}")))
            keys = [v.key for v in values]
            if len(set(keys)) != len(keys):
                raise self.fail(where, "value keys must be unique")
        elif values_raw:
            raise self.fail(where, f"a {datatype} takes no values")
        else:
            values = []
        dd = node.get("datatype_description")
        return AttributeDef(
            code=code,
            datatype=datatype,
            required=flags["required"],
            variable=flags["variable"],
            description=self._text(node.get("description"), f"{where}.description"),
            datatype_description=self._text(dd, f"{where}.datatype_description") if dd else None,
            order=order,
            values=tuple(values),
        )

    def _kind(self, value: Any, where: str) -> Kind | None:
        if value is None:
            return None
        try:
            return Kind(value)
        except ValueError:
            raise self.fail(where, f"kind must be one of {[k.value for k in Kind]}") from None

    def _text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, "expected non-empty text")
        return value.strip()

    def _keys(self, node: dict[Any, Any], allowed: frozenset[str], where: str) -> None:
        unknown = set(map(str, node)) - allowed
        if unknown:
            raise self.fail(where, f"unknown keys {sorted(unknown)}")
