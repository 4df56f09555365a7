"""GeoReport v2 bodies in XML and JSON, one structure for both.

Answers are built once as plain lists and dicts; JSON is that structure as is, and
XML follows the spec's "Spark convention" backwards: a list becomes a container
whose children are named by ITEM_NAMES (`<services><service>...`). XML is written
with the standard library's ElementTree (we only write XML, never parse any), with
the declaration the spec asks for and the characters XML 1.0 cannot carry replaced,
so text typed by anyone anywhere can never make a document ill-formed.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from typing import Any

from aiohttp import web

from channels.open311.const import FORMATS

ITEM_NAMES = {
    "services": "service",
    "service_requests": "request",
    "errors": "error",
    "attributes": "attribute",
    "values": "value",
    "endpoints": "endpoint",
    "formats": "format",
}
XML_DECLARATION = '<?xml version="1.0" encoding="utf-8"?>\n'
# XML 1.0 Char production, complemented (surrogates cannot reach us from valid UTF-8)
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return _NOT_XML.sub("\ufffd", str(value))


def _fill(parent: ET.Element, value: Any) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            _fill(ET.SubElement(parent, key), child)
    elif isinstance(value, list):
        item = ITEM_NAMES[parent.tag]
        for child in value:
            _fill(ET.SubElement(parent, item), child)
    else:
        parent.text = xml_text(value)


def to_xml(root: str, data: Any) -> bytes:
    element = ET.Element(root)
    _fill(element, data)
    return (XML_DECLARATION + ET.tostring(element, encoding="unicode") + "\n").encode("utf-8")


def to_json(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def respond(fmt: str, root: str, data: Any, status: int = 200) -> web.Response:
    """`root` names the XML root element; JSON has no root (Spark convention)."""
    return web.Response(
        status=status, body=render(fmt, root, data), content_type=FORMATS[fmt], charset="utf-8"
    )


def render(fmt: str, root: str, data: Any) -> bytes:
    return to_xml(root, data) if fmt == "xml" else to_json(data)


def errors_response(fmt: str, status: int, descriptions: list[str]) -> web.Response:
    """The spec's error list; `code` repeats the HTTP status so clients can branch on it."""
    return respond(
        fmt, "errors", [{"code": status, "description": d} for d in descriptions], status
    )
