"""ESL wire format: the incremental frame parser, events, and command encoding.

Pure code, no I/O, so it can be fed any byte split a TCP stream produces and tested
against the real FreeSWITCH transcripts byte for byte. The wire rules it follows
(LF only; a body is exactly Content-Length bytes; replies start with Content-Type,
events with Content-Length; plain events nest their own Content-Length body; plain
and XML values are URL-encoded, JSON values are not; headers repeat) are the ones
in the fixtures' README.

Framing is cheap and eager (a few outer headers and a slice per frame); an event's
hundred-odd headers are decoded lazily on first access, because most events on a
busy switch are routed by name and uuid and never read further.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote
from xml.etree import ElementTree

from hotline.telephony.errors import ESLProtocolError

MAX_HEADER_BYTES = 256 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
# A body over MAX_BODY_BYTES is read and thrown away (its command fails, the link
# stays); past this, a Content-Length is taken for garbage and the link is dropped.
MAX_DISCARD_BYTES = 1024 * 1024 * 1024

# Content types FreeSWITCH sends (mod_event_socket.c).
AUTH_REQUEST = "auth/request"
COMMAND_REPLY = "command/reply"
API_RESPONSE = "api/response"
EVENT_PLAIN = "text/event-plain"
EVENT_JSON = "text/event-json"
EVENT_XML = "text/event-xml"
DISCONNECT_NOTICE = "text/disconnect-notice"
RUDE_REJECTION = "text/rude-rejection"
LOG_DATA = "log/data"
EVENT_TYPES = frozenset({EVENT_PLAIN, EVENT_JSON, EVENT_XML})


class Frame:
    """One ESL message: its outer header block and its body (Content-Length bytes).

    `headers` keeps the first value of a repeated name and values as sent (the outbound
    `connect` reply URL-encodes them: use `Frame.decoded_headers` there). `oversized`
    is the length of a body that was over the parser's limit and skipped (`body` is
    then empty): the frame still takes its place in the stream, so the reply it was
    fails alone.
    """

    __slots__ = ("body", "headers", "oversized")

    def __init__(self, headers: dict[str, str], body: bytes = b"", oversized: int = 0) -> None:
        self.headers = headers
        self.body = body
        self.oversized = oversized

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @property
    def reply_text(self) -> str:
        """Reply-Text of a command/reply, percent-decoded only where FreeSWITCH encoded it.

        Only the outbound `connect` reply is a serialized event (`Reply-Text: %2BOK%0A`
        amid the channel data); every other reply is raw text that may hold a literal
        `%` (`+OK filter added. [X]=[50%25]` echoes the value as sent), so decoding
        those would alter them.
        """
        text = self.headers.get("Reply-Text", "")
        if "%" in text and "Event-Name" in self.headers:
            return unquote(text)
        return text

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        """Whether a command/reply or api/response reports success (FreeSWITCH's -ERR prefix)."""
        if self.content_type == API_RESPONSE:
            return not self.body.startswith(b"-ERR") and not self.body.startswith(b"-USAGE")
        return not self.reply_text.startswith("-ERR")

    def decoded_headers(self) -> dict[str, str]:
        return {k: unquote(v) if "%" in v else v for k, v in self.headers.items()}

    def __repr__(self) -> str:
        return f"Frame({self.content_type or '?'}, {len(self.headers)} headers, {len(self.body)} B)"


class FrameParser:
    """Incremental ESL framer: `feed()` any chunk, get back the frames it completed.

    Bounds on header block and body size turn a garbled or hostile stream into an
    ESLProtocolError naming what was wrong, instead of unbounded buffering. A body
    over `max_body` but within `max_discard` is not a broken stream, just a big
    answer (`show channels` on a busy switch): it is skipped as it arrives, holding
    nothing, and reported as a Frame with `oversized` set, so only its command fails.

    A body arriving over many reads is collected as a list of chunks and joined once,
    when complete: re-concatenating the held bytes on every read made a 16 MB body
    (a `show channels` on a busy switch) cost seconds of copying on the event loop
    every call shares. The search for a header block's end likewise resumes where the
    previous read left it.
    """

    __slots__ = (
        "_buf",
        "_chunks",
        "_have",
        "_headers",
        "_need",
        "_scanned",
        "_skip",
        "_skipped",
        "max_body",
        "max_discard",
        "max_header",
    )

    def __init__(
        self,
        max_header: int = MAX_HEADER_BYTES,
        max_body: int = MAX_BODY_BYTES,
        max_discard: int = MAX_DISCARD_BYTES,
    ) -> None:
        self.max_header = max_header
        self.max_body = max_body
        self.max_discard = max(max_discard, max_body)
        self._buf = b""  # an incomplete header block (only while _headers is None)
        self._scanned = 0  # bytes of _buf already searched for the blank line
        self._headers: dict[str, str] | None = None
        self._need = 0
        self._chunks: list[bytes] = []  # the body read so far (only while _headers is set)
        self._have = 0
        self._skip = 0  # bytes still to throw away of an oversized body
        self._skipped: Frame | None = None  # its frame, handed out once it is all read

    @property
    def pending(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf) + self._have

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        if self._skip:
            if len(data) < self._skip:
                self._skip -= len(data)
                return frames
            data = data[self._skip :]
            self._skip = 0
            assert self._skipped is not None
            frames.append(self._skipped)
            self._skipped = None
            if not data:
                return frames
        if self._headers is not None:
            self._chunks.append(bytes(data))
            self._have += len(data)
            if self._have < self._need:
                return frames
            buf = b"".join(self._chunks)
            self._chunks, self._have = [], 0
            scan_from = 0
        else:
            buf = self._buf + data if self._buf else bytes(data)
            # the blank line may straddle the previous read's end: back up one byte
            scan_from = max(0, self._scanned - 1)
        pos = 0
        end_of_data = len(buf)
        headers = self._headers
        need = self._need
        while True:
            if headers is None:
                end = buf.find(b"\n\n", max(pos, scan_from))
                if end < 0:
                    if end_of_data - pos > self.max_header:
                        raise ESLProtocolError(
                            f"no end of header block within {self.max_header} bytes"
                        )
                    break
                if end - pos > self.max_header:
                    raise ESLProtocolError(f"header block of {end - pos} bytes exceeds the limit")
                headers = _parse_header_block(buf[pos:end])
                pos = end + 2
                need = _content_length(headers.get("Content-Length"), self.max_discard)
                if need > self.max_body:
                    skipped = Frame(headers, oversized=need)
                    if end_of_data - pos >= need:
                        frames.append(skipped)
                        pos += need
                    else:
                        self._skip = need - (end_of_data - pos)
                        self._skipped = skipped
                        pos = end_of_data
                    headers = None
                    need = 0
                    if self._skip:
                        break
                    continue
            if end_of_data - pos < need:
                break
            frames.append(Frame(headers, buf[pos : pos + need] if need else b""))
            pos += need
            headers = None
            need = 0
        rest = buf[pos:] if pos else buf
        if headers is None:
            # an idle call's socket keeps no copy of its last read
            self._buf = rest if pos < end_of_data else b""
            self._scanned = len(self._buf)
        else:
            self._buf, self._scanned = b"", 0
            if pos < end_of_data:
                self._chunks, self._have = [rest], len(rest)
        self._headers = headers
        self._need = need
        return frames

    def eof_reason(self) -> str | None:
        """Why the stream ending now would truncate a frame, or None if it ends cleanly."""
        if self._skip:
            return f"connection closed inside an oversized body ({self._skip} bytes unread)"
        if self._headers is not None:
            return f"connection closed inside a body ({self._have} of {self._need} bytes read)"
        if self._buf:
            return f"connection closed inside a header block ({len(self._buf)} bytes pending)"
        return None


def _parse_header_block(block: bytes) -> dict[str, str]:
    if not block:
        raise ESLProtocolError("empty header block (a stray blank line)")
    headers: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\n"):
        name, sep, value = line.partition(": ")
        if not sep:
            name, sep, value = line.partition(":")
            if not sep:
                raise ESLProtocolError(f"header line without a colon: {line[:80]!r}")
        if not name or " " in name:
            raise ESLProtocolError(f"invalid header name in {line[:80]!r}")
        if name not in headers:
            headers[name] = value
    return headers


def _content_length(raw: str | None, limit: int) -> int:
    if raw is None:
        return 0
    # isdigit() alone also admits "²" (int() then raises ValueError, which nothing
    # catches) and other scripts' digits ("١٢" would be read as 12); FreeSWITCH only
    # ever writes ASCII decimal
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise ESLProtocolError(f"Content-Length is not a number: {raw[:40]!r}")
    length = int(raw)
    if length > limit:
        raise ESLProtocolError(f"Content-Length {length} exceeds the {limit}-byte limit")
    return length


class Event:
    """A FreeSWITCH event (plain, JSON or XML), decoded on first use.

    `items` holds every header in order with duplicates (CHANNEL_HANGUP_COMPLETE repeats
    Hangup-Cause); `get()` returns the first, as FreeSWITCH's own lookup does. Values
    are always decoded text, whichever format carried them.
    """

    __slots__ = ("_body", "_headers", "_items", "_raw", "format")

    def __init__(self, raw: bytes, fmt: str = "plain") -> None:
        self._raw = raw
        self.format = fmt
        self._items: list[tuple[str, str]] | None = None
        self._headers: dict[str, str] = {}
        self._body: str | None = None

    @classmethod
    def from_frame(cls, frame: Frame) -> Event:
        ct = frame.content_type
        fmt = "json" if ct == EVENT_JSON else "xml" if ct == EVENT_XML else "plain"
        return cls(frame.body, fmt)

    @classmethod
    def from_headers(cls, items: Iterable[tuple[str, str]], body: str | None = None) -> Event:
        """An already-decoded event (the outbound `connect` reply's channel data, tests)."""
        ev = cls(b"", "plain")
        ev._set(list(items), body)
        return ev

    def _set(self, items: list[tuple[str, str]], body: str | None) -> None:
        headers: dict[str, str] = {}
        for k, v in items:
            if k not in headers:
                headers[k] = v
        self._items = items
        self._headers = headers
        self._body = body

    def _decode(self) -> None:
        if self.format == "json":
            items, body = _decode_json(self._raw)
        elif self.format == "xml":
            items, body = _decode_xml(self._raw)
        else:
            items, body = _decode_plain(self._raw)
        self._set(items, body)

    @property
    def items(self) -> list[tuple[str, str]]:
        if self._items is None:
            self._decode()
        return self._items  # type: ignore[return-value]

    @property
    def headers(self) -> dict[str, str]:
        if self._items is None:
            self._decode()
        return self._headers

    @property
    def body(self) -> str | None:
        if self._items is None:
            self._decode()
        return self._body

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header `name`; on a plain event not yet decoded, found by
        a byte search instead of decoding all ~100 headers (JSON is parsed once)."""
        value = self._fast(name)
        return default if value is None else value

    def _fast(self, name: str) -> str | None:
        """One header of a not-yet-decoded plain event, without decoding the rest.

        Routing needs only Event-Name and a uuid or two per event; decoding all ~100
        headers of each would dominate the cost of a busy socket.
        """
        if self._items is not None or self.format != "plain":
            return self.headers.get(name)
        raw = self._raw
        key = name.encode() + b": "
        at = 0 if raw.startswith(key) else raw.find(b"\n" + key) + 1
        if at <= 0 and not raw.startswith(key):
            return None
        head_end = raw.find(b"\n\n")
        if 0 <= head_end < at:
            return None
        start = at + len(key)
        stop = raw.find(b"\n", start)
        value = raw[start : stop if stop >= 0 else len(raw)].decode("utf-8", "replace")
        return unquote(value) if "%" in value else value

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.items if k == name]

    def __getitem__(self, name: str) -> str:
        return self.headers[name]

    def __contains__(self, name: object) -> bool:
        return name in self.headers

    @property
    def name(self) -> str:
        return self._fast("Event-Name") or ""

    @property
    def unique_id(self) -> str | None:
        return self._fast("Unique-ID")

    @property
    def job_uuid(self) -> str | None:
        return self._fast("Job-UUID")

    @property
    def application_uuid(self) -> str | None:
        return self._fast("Application-UUID")

    @property
    def variables(self) -> dict[str, str]:
        """Channel variables carried by the event, without the `variable_` prefix."""
        out: dict[str, str] = {}
        for k, v in self.items:
            if k.startswith("variable_") and k[9:] not in out:
                out[k[9:]] = v
        return out

    def variable(self, name: str, default: str | None = None) -> str | None:
        value = self._fast("variable_" + name)
        return default if value is None else value

    def __repr__(self) -> str:
        return f"Event({self.name or '?'}, {self.unique_id or '-'})"


def _decode_plain(raw: bytes) -> tuple[list[tuple[str, str]], str | None]:
    sep = raw.find(b"\n\n")
    head = raw[:sep] if sep >= 0 else raw.rstrip(b"\n")
    items: list[tuple[str, str]] = []
    length: str | None = None
    for line in head.decode("utf-8", "replace").split("\n"):
        name, colon, value = line.partition(": ")
        if not colon:
            name, colon, value = line.partition(":")
            if not colon or not name:
                raise ESLProtocolError(f"event header line without a colon: {line[:80]!r}")
        if "%" in value:
            value = unquote(value)
        if name == "Content-Length":
            length = value
        items.append((name, value))
    if sep < 0:
        return items, None
    rest = raw[sep + 2 :]
    if length is None:
        return items, rest.decode("utf-8", "replace") if rest else None
    size = _content_length(length, len(rest))
    return items, rest[:size].decode("utf-8", "replace")


def _decode_json(raw: bytes) -> tuple[list[tuple[str, str]], str | None]:
    try:
        pairs = json.loads(raw, object_pairs_hook=lambda p: p)
    except (ValueError, RecursionError) as exc:
        raise ESLProtocolError(f"event-json body is not JSON: {exc}") from None
    if not isinstance(pairs, list):
        raise ESLProtocolError("event-json body is not a JSON object")
    items: list[tuple[str, str]] = []
    body: str | None = None
    for name, value in pairs:
        if name == "_body":
            body = value if isinstance(value, str) else json.dumps(value)
        elif isinstance(value, list):  # multi-valued header (ARRAY:: in plain)
            items.extend((name, v if isinstance(v, str) else json.dumps(v)) for v in value)
        else:
            items.append((name, value if isinstance(value, str) else json.dumps(value)))
    return items, body


def _decode_xml(raw: bytes) -> tuple[list[tuple[str, str]], str | None]:
    try:
        root = ElementTree.fromstring(raw)
    except ElementTree.ParseError as exc:
        raise ESLProtocolError(f"event-xml body is not XML: {exc}") from None
    headers = root.find("headers")
    items = [
        (child.tag, unquote(child.text or "")) for child in (headers if headers is not None else ())
    ]
    body_el = root.find("body")
    body = None if body_el is None else body_el.text or ""
    length = root.findtext("Content-Length")
    if body is not None and length and length.isdigit():
        body = body.encode()[: int(length)].decode("utf-8", "replace")
    return items, body


# ----------------------------------------------------------------------------- encoding

# switch_url_encode's unsafe set, plus control characters and everything non-ASCII.
_URL_UNSAFE = re.compile('[\x00-\x20"#%&+:;<=>?@\\[\\\\\\]^`{|}\x7f-\U0010ffff]+')


def _percent(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group().encode("utf-8"))


def url_encode(value: str) -> str:
    """FreeSWITCH's switch_url_encode: what plain event values look like on the wire."""
    return _URL_UNSAFE.sub(_percent, value)


def _check_line(what: str, value: str) -> None:
    if "\n" in value or "\r" in value:
        raise ValueError(f"{what} must not contain a line break: {value[:60]!r}")


def encode_command(
    command: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    body: str | bytes | None = None,
) -> bytes:
    """One command as FreeSWITCH reads it: a line, header lines, a blank line, a body.

    Line breaks inside the command or a header would let data smuggle extra commands
    onto the socket, so they are refused; multi-line text goes in the body.
    """
    _check_line("ESL command", command)
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    lines = [command]
    for name, value in pairs:
        _check_line("header name", name)
        _check_line(f"header {name}", value)
        if not name or ":" in name:
            raise ValueError(f"invalid header name {name!r}")
        lines.append(f"{name}: {value}")
    if body is None:
        return ("\n".join(lines) + "\n\n").encode()
    data = body.encode() if isinstance(body, str) else body
    lines.append(f"content-length: {len(data)}")
    return ("\n".join(lines) + "\n\n").encode() + data


# An application argument this long or with line breaks goes in the sendmsg body.
MAX_HEADER_ARG = 1024


def encode_execute(
    app: str,
    arg: str | None = None,
    *,
    uuid: str | None = None,
    event_uuid: str | None = None,
    event_lock: bool = False,
    loops: int | None = None,
) -> bytes:
    """`sendmsg` execute, exactly as in transcripts 04 and 09.

    `event_uuid` comes back as Application-UUID in CHANNEL_EXECUTE(_COMPLETE), which is
    how a completion is matched to the request that started it. An argument that
    starts with a space goes in the body too: mod_event_socket skips the spaces after
    a header's colon, so the application would run without them.
    """
    headers = [("call-command", "execute"), ("execute-app-name", app)]
    in_body = arg is not None and (
        "\n" in arg or "\r" in arg or arg.startswith(" ") or len(arg) > MAX_HEADER_ARG
    )
    if arg is not None and not in_body:
        headers.append(("execute-app-arg", arg))
    if loops is not None:
        headers.append(("loops", str(loops)))
    if event_lock:
        headers.append(("event-lock", "true"))
    if event_uuid:
        headers.append(("Event-UUID", event_uuid))
    command = f"sendmsg {uuid}" if uuid else "sendmsg"
    if in_body:
        headers.append(("content-type", "text/plain"))
        return encode_command(command, headers, arg)
    return encode_command(command, headers)


def encode_hangup(cause: str = "NORMAL_CLEARING", *, uuid: str | None = None) -> bytes:
    command = f"sendmsg {uuid}" if uuid else "sendmsg"
    return encode_command(command, [("call-command", "hangup"), ("hangup-cause", cause)])


_LINE_CACHE: dict[tuple[str, str], str] = {}


def plain_line(pair: tuple[str, str]) -> str:
    line = _LINE_CACHE.get(pair)
    if line is None:
        if len(_LINE_CACHE) > 100_000:
            _LINE_CACHE.clear()
        line = _LINE_CACHE[pair] = f"{pair[0]}: {url_encode(pair[1])}\n"
    return line


def encode_event_plain(items: Iterable[tuple[str, str]], body: str | None = None) -> bytes:
    """A whole text/event-plain frame (the simulator's side of the wire).

    Most header lines repeat from one event of a channel to the next, so encoded lines
    are cached: the simulator must not be the bottleneck of a 1,000-call benchmark.
    """
    return encode_event_plain_text("".join([plain_line(pair) for pair in items]), body)


def encode_event_plain_text(inner: str, body: str | None = None) -> bytes:
    """Frame already-encoded header lines (each ending in a newline) as an event."""
    if body is not None:
        data = body.encode()
        payload = (inner + f"Content-Length: {len(data)}\n\n").encode() + data
    else:
        payload = (inner + "\n").encode()
    return f"Content-Length: {len(payload)}\nContent-Type: {EVENT_PLAIN}\n\n".encode() + payload


def encode_event_json(items: Iterable[tuple[str, str]], body: str | None = None) -> bytes:
    fields = dict(items)
    if body is not None:
        fields["Content-Length"] = str(len(body.encode()))
        fields["_body"] = body
    payload = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
    return f"Content-Length: {len(payload)}\nContent-Type: {EVENT_JSON}\n\n".encode() + payload


def encode_reply(reply_text: str, extra: Iterable[tuple[str, str]] = ()) -> bytes:
    lines = [f"Content-Type: {COMMAND_REPLY}", f"Reply-Text: {reply_text}"]
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\n".join(lines) + "\n\n").encode()


def encode_api_response(text: str) -> bytes:
    data = text.encode()
    return f"Content-Type: {API_RESPONSE}\nContent-Length: {len(data)}\n\n".encode() + data


DISCONNECT_TEXT = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"


def encode_disconnect_notice(
    extra: Iterable[tuple[str, str]] = (), text: str | None = None
) -> bytes:
    """`text/disconnect-notice`: inbound `exit` carries the goodbye text; linger carries headers."""
    data = (DISCONNECT_TEXT if text is None else text).encode()
    lines = [f"Content-Type: {DISCONNECT_NOTICE}", *(f"{k}: {v}" for k, v in extra)]
    lines.append(f"Content-Length: {len(data)}")
    return ("\n".join(lines) + "\n\n").encode() + data


REJECTION_TEXT = "Access Denied, go away.\n"


def encode_rude_rejection() -> bytes:
    """What mod_event_socket sends a client its `apply-inbound-acl` refuses, then closes.

    Byte for byte as `listener_run` writes it (FreeSWITCH 1.10): no auth/request first;
    the rejection, then the usual goodbye disconnect-notice.
    """
    data = REJECTION_TEXT.encode()
    head = f"Content-Type: {RUDE_REJECTION}\nContent-Length: {len(data)}\n\n".encode()
    return head + data + encode_disconnect_notice()
