"""A WeChat push (XML) -> the intake's `InboundMessage`, and passive replies.

Field names follow the official account's message reference (接收普通消息 /
接收事件推送). Anything unexpected becomes a `ParseError` (the route logs it and
answers "success", so WeChat stops retrying garbage), never a crash.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree

from channels.message import InboundMessage, Kind, Location, Media
from channels.wechat.const import CHANNEL, MAX_TEXT_BYTES


class ParseError(Exception):
    pass


_DECLARATIONS = re.compile(r"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# The shape of every push WeChat sends: <xml>, then flat elements holding one CDATA
# section or plain text without markup, then </xml>. Anything else (attributes,
# nesting, entities, comments, a declaration, a BOM, CR, characters XML forbids)
# leaves the fast path and goes to the XML parser, which decides.
_FLAT_OPEN = re.compile(r"[ \t\n]*<xml>")
_FLAT_ELEMENT = re.compile(
    r"[ \t\n]*<([A-Za-z_][A-Za-z0-9_.\-]*)>"
    r"(?:<!\[CDATA\[([^\]]*(?:\](?!\]>)[^\]]*)*)\]\]>|([^<&]*))</\1>"
)
_FLAT_CLOSE = re.compile(r"[ \t\n]*</xml>[ \t\n]*")
_NOT_FLAT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\r\ud800-\udfff\ufffe\uffff]")


def parse_xml(body: bytes | str) -> dict[str, Any]:
    """The <xml> root as a flat dict of strings.

    WeChat's XML is flat, UTF-8 and never has a DOCTYPE. Bytes are decoded as UTF-8
    first (strictly) and the DOCTYPE check runs on that text: a check on the raw bytes
    misses a document in UTF-16, which the XML parser would read (and whose entities it
    would expand); UTF-16 without a BOM "decodes" as UTF-8 full of NULs, which XML
    forbids, so it is refused too. The parser is told the encoding, so a declaration
    inside the document cannot make it read other characters than the check saw. A push in
    WeChat's own flat shape is read by `_parse_flat` (what ElementTree would give, a
    few times cheaper); any other document goes to ElementTree's C parser.
    """
    if isinstance(body, str):
        doc = body
    else:
        try:
            doc = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("not UTF-8") from None
    if _CONTROL.search(doc):  # XML forbids them; UTF-16 read as UTF-8 is full of NULs
        raise ParseError("not XML: control characters")
    if _DECLARATIONS.search(doc):
        raise ParseError("DOCTYPE/ENTITY declarations are not accepted")
    flat = _parse_flat(doc)
    if flat is not None:
        return flat
    try:
        raw = doc.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates in a str: not a character XML allows
        raise ParseError("not XML: not encodable as UTF-8") from None
    try:
        parser = ElementTree.XMLParser(encoding="utf-8")
        parser.feed(raw)
        root = parser.close()
    except (ElementTree.ParseError, ValueError) as exc:
        raise ParseError(f"not XML: {exc}") from None
    if root.tag != "xml":
        raise ParseError("no <xml> root")
    out: dict[str, Any] = {}
    for child in root:
        out[child.tag] = {"children": len(child)} if len(child) else (child.text or "")
    return out


def _parse_flat(doc: str) -> dict[str, Any] | None:
    """`parse_xml` of a document in WeChat's flat shape; None for any other document."""
    if _NOT_FLAT.search(doc):
        return None
    m = _FLAT_OPEN.match(doc)
    if m is None:
        return None
    pos = m.end()
    out: dict[str, Any] = {}
    element = _FLAT_ELEMENT.match
    while (m := element(doc, pos)) is not None:
        tag, cdata, text = m.groups()
        if cdata is None:
            if "]]>" in text:  # not allowed in text: the parser refuses it
                return None
            out[tag] = text
        else:
            out[tag] = cdata
        pos = m.end()
    if _FLAT_CLOSE.fullmatch(doc, pos) is None:
        return None
    return out


def _s(d: dict[str, Any], key: str) -> str | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise ParseError(f"{key} is not a plain value")
    return v.strip()


def _req(d: dict[str, Any], key: str) -> str:
    v = _s(d, key)
    if not v:
        raise ParseError(f"missing {key}")
    return v


def _float(d: dict[str, Any], key: str, lo: float, hi: float) -> float:
    try:
        v = float(_req(d, key))
    except ValueError:
        raise ParseError(f"{key} is not a number") from None
    if not lo <= v <= hi:
        raise ParseError(f"{key} out of range")
    return v


def to_message(d: dict[str, Any]) -> InboundMessage:
    """Normalize one decrypted push. Dedupe key: MsgId for messages; for events (which
    have none) FromUserName + CreateTime (+ the event name, so two different events in
    one second stay two)."""
    sender = _req(d, "FromUserName")
    if len(sender) > 128:
        raise ParseError("FromUserName too long")
    try:
        created = int(_req(d, "CreateTime"))
        sent_at = datetime.fromtimestamp(created, UTC)
    except (ValueError, OverflowError, OSError):
        raise ParseError("CreateTime is not a Unix time") from None
    mtype = (_s(d, "MsgType") or "").lower()
    msg_id = _s(d, "MsgId") or _s(d, "MsgID")
    base: dict[str, Any] = {
        "channel": CHANNEL,
        "sender_id": sender,
        "sent_at": sent_at,
        "lang": "zh",
        "data": {"account": _s(d, "ToUserName"), "msg_type": mtype},
    }

    def ext() -> str:
        if not msg_id or not msg_id.isdigit() or len(msg_id) > 40:
            raise ParseError("missing or malformed MsgId")
        return msg_id

    if mtype == "text":
        return InboundMessage(
            **base, external_id=ext(), kind=Kind.TEXT, text=_s(d, "Content") or ""
        )
    if mtype == "image":
        media = Media(_req(d, "MediaId"), "image", _s(d, "PicUrl"), "image/jpeg")
        return InboundMessage(**base, external_id=ext(), kind=Kind.IMAGE, media=(media,))
    if mtype == "voice":
        fmt = (_s(d, "Format") or "amr").lower()
        media = Media(_req(d, "MediaId"), "voice", None, f"audio/{fmt}")
        return InboundMessage(
            **base,
            external_id=ext(),
            kind=Kind.VOICE,
            media=(media,),
            text=_s(d, "Recognition") or None,  # WeChat's speech recognition, when enabled
        )
    if mtype in ("video", "shortvideo"):
        media = Media(_req(d, "MediaId"), "video", None, "video/mp4")
        base["data"]["thumb_media_id"] = _s(d, "ThumbMediaId")
        return InboundMessage(**base, external_id=ext(), kind=Kind.VIDEO, media=(media,))
    if mtype == "location":
        loc = Location(
            _float(d, "Location_X", -90, 90), _float(d, "Location_Y", -180, 180), _s(d, "Label")
        )
        return InboundMessage(**base, external_id=ext(), kind=Kind.LOCATION, location=loc)
    if mtype == "link":
        title, desc, url = _s(d, "Title") or "", _s(d, "Description") or "", _s(d, "Url") or ""
        base["data"].update(url=url, title=title)
        return InboundMessage(
            **base,
            external_id=ext(),
            kind=Kind.LINK,
            text="\n".join(x for x in (title, desc, url) if x),
        )
    if mtype == "event":
        event = (_s(d, "Event") or "").lower()
        if not event or len(event) > 40:
            raise ParseError("missing Event")
        key = _s(d, "EventKey")
        loc = None
        data = dict(base["data"])
        if event == "location":
            loc = Location(_float(d, "Latitude", -90, 90), _float(d, "Longitude", -180, 180), None)
            data["precision"] = _s(d, "Precision")
        if event in ("subscribe", "scan") and _s(d, "Ticket"):
            # a parametric QR code: subscribe carries "qrscene_" + the scene, SCAN (an
            # existing follower) the scene alone; the Ticket redeems the code's image
            data["ticket"] = (_s(d, "Ticket") or "")[:256]
            data["scene"] = (key or "").removeprefix("qrscene_")[:128] or None
        if event == "templatesendjobfinish":
            data["template_msg_id"] = msg_id
            data["status"] = _s(d, "Status")
        base["data"] = data
        return InboundMessage(
            **base,
            external_id=f"ev:{sender}:{created}:{event}"[:128],
            kind=Kind.EVENT,
            event=event,
            event_key=(key or None) and key[:128],
            location=loc,
        )
    # a type this service does not know (yet): kept, for the record, but not acted on
    if not mtype or len(mtype) > 32:
        raise ParseError("missing MsgType")
    return InboundMessage(
        **base,
        external_id=msg_id if msg_id and len(msg_id) <= 40 else f"ev:{sender}:{created}:{mtype}",
        kind=Kind.EVENT,
        event=f"unsupported:{mtype}",
    )


def _cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def xml_safe(text: str) -> str:
    """`text` without the characters XML 1.0 forbids: one of them (a control character
    in a ticket title typed on another channel) makes the whole reply unreadable to
    WeChat, which then shows the resident "该公众号暂时无法提供服务"."""
    return _XML_FORBIDDEN.sub("", text)


def split_text(text: str, limit: int = MAX_TEXT_BYTES) -> list[str]:
    """`text` in pieces of at most `limit` UTF-8 bytes (WeChat refuses longer texts),
    cut after a line break where there is one in the second half of a piece, else
    between two characters. No empty pieces; "" gives []."""
    pieces: list[str] = []
    rest = text
    while len(rest.encode("utf-8", "surrogatepass")) > limit:
        head = rest.encode("utf-8", "surrogatepass")[:limit].decode("utf-8", "ignore")
        cut = head.rfind("\n")
        if cut >= len(head) // 2:
            head = head[: cut + 1]
        pieces.append(head.rstrip("\n"))
        rest = rest[len(head) :]
    if rest.strip("\n"):
        pieces.append(rest.strip("\n") if pieces else rest)
    return [p for p in pieces if p]


def text_reply(to_user: str, from_account: str, content: str, now: int | None = None) -> str:
    """A passive text reply (被动回复消息): To = the resident's openid, From = us.

    Content longer than WeChat takes is cut to its first `MAX_TEXT_BYTES` (the caller
    sends the rest another way: see `split_text`), and characters XML forbids are
    dropped, so WeChat can always read the reply."""
    content = xml_safe(content)
    if len(content.encode("utf-8")) > MAX_TEXT_BYTES:
        content = split_text(content)[0]
    return (
        f"<xml><ToUserName>{_cdata(to_user)}</ToUserName>"
        f"<FromUserName>{_cdata(from_account)}</FromUserName>"
        f"<CreateTime>{now or int(time.time())}</CreateTime>"
        f"<MsgType><![CDATA[text]]></MsgType>"
        f"<Content>{_cdata(content)}</Content></xml>"
    )
