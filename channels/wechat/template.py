"""Which value of a ticket update goes into which field of the account's template.

A WeChat template's fields are the account's choice, made when it picks a template
from the library: the classic ones are ``first`` / ``keyword1`` / ``keyword2`` /
``remark``; templates added since 2023 have typed fields such as ``character_string1``
(工单编号), ``phrase2`` (状态), ``time3`` (时间), ``thing4`` (事项). WeChat refuses a
template message whose value breaks its field's type rule (errcode 47003, "argument
invalid! data.thing4.value invalid"), and that refusal is permanent: the resident
would never hear of the update. So the layout is a setting, and each value is made to
fit its field's type before it is sent:

=================  ============================================================
field name prefix   value sent
=================  ============================================================
``thing``           at most 20 characters (a longer text cut, ending in "…")
``character_string`` at most 32 of digits, ASCII letters and symbols
``phrase``          at most 5 Chinese characters (only those are kept)
``number``          digits (and one decimal point), at most 32
``letter``          ASCII letters, at most 32
``time``            ``2026年11月23日 15:01`` in the city's time zone
``date``            ``2026年11月23日``
other (classic)     the value unchanged, without control characters
=================  ============================================================

Setting syntax (``HOTLINE_WECHAT_TEMPLATE_FIELDS``): comma-separated
``field=source`` pairs; a source is ``number`` (the ticket number), ``status`` (its
new status in words), ``at`` (when it changed), ``reply`` (the department's answer,
empty when none) or ``text:<fixed words>``. Unset: the classic layout
``first=text:您反映的问题有新进展,keyword1=number,keyword2=status,remark=reply``
(``remark`` falls back to a hint when there is no answer).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

SOURCES = ("number", "status", "at", "reply")
CLASSIC = "first=text:您反映的问题有新进展,keyword1=number,keyword2=status,remark=reply"
REMARK_HINT = "发送“查询 工单号”查看详情"
_FIELD_RE = re.compile(r"^[a-z][a-z_]*[0-9]{0,2}$")
_TYPE_RE = re.compile(r"^([a-z_]+?)_?[0-9]*$")
_HAN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_ASCII_PRINTABLE_RE = re.compile(r"[\x21-\x7e]")


class TemplateLayoutError(ValueError):
    """The layout setting names a field or a source that cannot be used."""


@dataclass(frozen=True)
class TemplateLayout:
    """Field name -> source (one of `SOURCES`, or fixed text after ``text:``)."""

    fields: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, spec: str | None) -> TemplateLayout:
        """Reads the setting (None or blank: the classic layout); raises
        `TemplateLayoutError` naming the bad pair."""
        text = (spec or "").strip() or CLASSIC
        fields: list[tuple[str, str]] = []
        for pair in text.split(","):
            name, sep, source = (p.strip() for p in pair.partition("="))
            if not sep or not _FIELD_RE.match(name):
                raise TemplateLayoutError(
                    f"{pair.strip()!r}: expected field=source, the field as WeChat names it "
                    "(e.g. thing4, character_string1, keyword2)"
                )
            if not source.startswith("text:") and source not in SOURCES:
                raise TemplateLayoutError(
                    f"{pair.strip()!r}: source must be one of {', '.join(SOURCES)} or text:..."
                )
            if any(name == seen for seen, _ in fields):
                raise TemplateLayoutError(f"field {name!r} given twice")
            fields.append((name, source))
        return cls(tuple(fields))

    def data(self, update: Mapping[str, Any], tz: tzinfo, now: datetime) -> dict[str, str]:
        """The template's ``data`` values for one ticket update, each fitted to its field."""
        at = _when(update.get("at"), now)
        values = {
            "number": str(update.get("number") or ""),
            "status": str(update.get("status_text") or update.get("status") or ""),
            "at": at.astimezone(tz).strftime("%Y年%m月%d日 %H:%M"),
            "reply": str(update.get("reply") or ""),
        }
        out: dict[str, str] = {}
        for name, source in self.fields:
            if source.startswith("text:"):
                raw = source[5:]
            elif source == "at":
                raw = values["at"]
                if _type_of(name) == "date":
                    raw = raw.split(" ")[0]
            else:
                raw = values[source]
            if name == "remark" and source == "reply" and not raw:
                raw = REMARK_HINT
            out[name] = fit(name, raw)
        return out


def _when(value: Any, now: datetime) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return now
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return now


def _type_of(field: str) -> str:
    m = _TYPE_RE.match(field)
    return m.group(1) if m else field


def _clean(value: str) -> str:
    """No line breaks or other control characters: WeChat refuses them in typed fields."""
    return "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in value).strip()


def fit(field: str, value: str) -> str:
    """`value` made to satisfy the type rule of `field` (see the module's table)."""
    kind = _type_of(field)
    value = _clean(value)
    if kind == "thing":
        return value if len(value) <= 20 else value[:19] + "…"
    if kind == "character_string":
        return "".join(_ASCII_PRINTABLE_RE.findall(value))[:32]
    if kind == "phrase":
        return "".join(_HAN_RE.findall(value))[:5]
    if kind == "number":
        digits = re.sub(r"[^0-9.]", "", value)
        head, dot, tail = digits.partition(".")
        return (head + dot + tail.replace(".", ""))[:32]
    if kind == "letter":
        return re.sub(r"[^A-Za-z]", "", value)[:32]
    return value
