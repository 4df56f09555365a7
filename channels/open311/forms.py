"""Reading what Open311 clients send: the POST form and the GET query, validated.

Pure: bytes and strings in, typed values or `Open311Error` out (HTTP status plus
every problem found, so a client fixes its request in one round). The spec's rule
for optional arguments applies throughout: an empty value is the same as none.
"""

from __future__ import annotations

import codecs
import email.parser
import email.policy
import math
import re
import urllib.parse
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

from channels.open311 import const
from channels.open311.definitions import LIST_DATATYPES, AttributeDef
from channels.open311.services import Service
from ticketing.lifecycle import OPEN_STATES, TERMINAL_STATES, Status


class Open311Error(Exception):
    """An answer in the spec's error format: 400 bad input, 403 api_key, 404 unknown."""

    def __init__(self, status: int, *descriptions: str) -> None:
        super().__init__("; ".join(descriptions))
        self.status = status
        self.descriptions = list(descriptions)


Pairs = list[tuple[str, str]]

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_BREAK = re.compile("[\r\n]")
_ATTRIBUTE = re.compile(r"attribute\[([^\[\]]*)\](\[\])?")
# "T" and "Z" in either case: RFC 3339 5.6 (the Internet profile of ISO 8601 the W3C note
# follows) lets them "alternatively be lower case"; clients built on it send "t"/"z"
_W3C = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?)?"
    r"(?:[Zz]|[+-]\d{2}:?\d{2})?"
)
# the W3C note's reduced precisions, YYYY and YYYY-MM: its first formats, valid wherever
# GeoReport v2 says "Must use w3 format"; read as their first day
_W3C_REDUCED = re.compile(r"\d{4}(?:-\d{2})?")
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,253}\.[^@\s.]{1,63}")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_TICKET_NUMBER = re.compile(r"\d{1,20}")
FORM_TYPES = ("application/x-www-form-urlencoded", "")
MULTIPART = "multipart/form-data"  # web clients posting a FormData, apps attaching a photo
# A time whose "+08:00" reached us as " 08:00": clients that build the URL by hand do not
# escape "+", and a query string decodes it as a space (every time in this city has one)
_LOST_PLUS = re.compile(r"(\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?) (\d{2}:?\d{2})$")
# The codec to try when a body labelled with one of these charsets is not UTF-8 (Apache
# HttpClient's UrlEncodedFormEntity says ISO-8859-1 by default; older Chinese software
# sends GBK). Only then: the spec has the server assume UTF-8 whatever the label says.
_LEGACY_CHARSETS = {
    "iso8859-1": "latin-1",
    "cp1252": "cp1252",
    "gbk": "gb18030",
    "gb2312": "gb18030",
    "gb18030": "gb18030",
    "big5": "big5",
}

POST_FIELDS = frozenset(
    {
        "api_key",  # jurisdiction_id is the route's (check_jurisdiction), not the report's
        "service_code",
        "lat",
        "long",
        "address_string",
        "address_id",
        "email",
        "device_id",
        "account_id",
        "first_name",
        "last_name",
        "phone",
        "description",
        "media_url",
        "deviceid",  # FixMyStreet's spelling of device_id (perllib/Open311.pm)
    }
)


def legacy_charset(label: str | None) -> str | None:
    """The codec for a body that is not UTF-8 but says it is `label`, if we know one."""
    if not label:
        return None
    try:
        return _LEGACY_CHARSETS.get(codecs.lookup(label).name)
    except LookupError:
        return None


def parse_pairs(raw: bytes | str, what: str = "form", fallback: str | None = None) -> Pairs:
    """application/x-www-form-urlencoded as strict UTF-8; empty values kept (then dropped).

    `fallback` (from `legacy_charset`) is tried only when the bytes are not UTF-8."""
    try:
        pairs = _split(raw, "utf-8")
    except UnicodeDecodeError:
        if fallback is None:
            raise Open311Error(400, f"the {what} is not valid UTF-8") from None
        try:
            pairs = _split(raw, fallback)
        except UnicodeDecodeError:
            raise Open311Error(400, f"the {what} is neither UTF-8 nor {fallback}") from None
        except ValueError:
            raise Open311Error(400, f"the {what} has more than {const.MAX_FIELDS} fields") from None
    except ValueError:
        raise Open311Error(400, f"the {what} has more than {const.MAX_FIELDS} fields") from None
    return _checked(pairs)


def _split(raw: bytes | str, encoding: str) -> Pairs:
    text = raw.decode(encoding) if isinstance(raw, bytes) else raw
    return urllib.parse.parse_qsl(
        text,
        keep_blank_values=True,
        encoding=encoding,
        errors="strict",
        max_num_fields=const.MAX_FIELDS,
    )


def _checked(pairs: Pairs) -> Pairs:
    bad = sorted({k for k, v in pairs if _CONTROL.search(k) or _CONTROL.search(v)})
    if bad:
        raise Open311Error(400, *(f"{k} contains control characters" for k in bad))
    return [(k, v) for k, v in pairs]


def parse_multipart(raw: bytes, content_type: str, fallback: str | None = None) -> Pairs:
    """multipart/form-data text fields as pairs, read like a urlencoded form.

    A file part is refused rather than dropped: the report would be filed without the
    photo its sender believes we have (send media_url instead)."""
    head = b"Content-Type: " + content_type.encode("utf-8", "surrogateescape") + b"\r\n\r\n"
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    if not msg.is_multipart() or not msg.get_boundary():
        raise Open311Error(400, "the multipart form has no boundary")
    pairs: Pairs = []
    files: list[str] = []
    for part in msg.iter_parts():
        if len(pairs) + len(files) >= const.MAX_FIELDS:
            raise Open311Error(400, f"the form has more than {const.MAX_FIELDS} fields")
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or part.is_multipart():
            raise Open311Error(400, "every multipart part needs a form-data name")
        if part.get_filename() is not None:
            files.append(name)
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        charset = legacy_charset(part.get_content_charset()) or fallback
        pairs.append((name, _part_text(name, data, charset)))
    if files:
        raise Open311Error(
            400,
            *(
                f"{n}: files cannot be uploaded here; send media_url, a link to the file"
                for n in dict.fromkeys(files)
            ),
        )
    return _checked(pairs)


def _part_text(name: str, data: bytes, fallback: str | None) -> str:
    """A part's value as UTF-8, or in its own (or the body's) legacy charset if not."""
    for encoding in ("utf-8", fallback):
        if encoding is None:
            continue
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            pass
    raise Open311Error(400, f"{name} is not valid UTF-8")


def single_values(pairs: Iterable[tuple[str, str]], names: Iterable[str]) -> dict[str, str]:
    """The non-empty value of each named field; a field given twice is refused."""
    wanted = frozenset(names)
    out: dict[str, str] = {}
    twice: set[str] = set()
    for k, v in pairs:
        if k not in wanted:
            continue
        v = v.strip()
        if not v:
            continue
        if k in out and out[k] != v:
            twice.add(k)
        out[k] = v
    if twice:
        raise Open311Error(400, *(f"{k} was given more than once" for k in sorted(twice)))
    return out


def with_query_fields(form: Pairs, query: Pairs) -> Pairs:
    """The POST's fields: the body's, plus those the query string has and the body lacks.

    The spec's example sends everything in the urlencoded body, but clients generated
    from Swagger descriptions of Open311 servers, and hand-built ones, put fields in the
    query string of the POST. A field name the body gives a value for takes the body's
    value(s) and the query's are ignored, as the servers those clients were written
    against merge them (PHP's $_REQUEST, Rails' params: the body wins); an empty body
    value is no value (the spec's rule for optional arguments)."""
    in_body = {k for k, v in form if v.strip()}
    return form + [(k, v) for k, v in query if k not in in_body]


def check_jurisdiction(ours: str, *sources: Iterable[tuple[str, str]]) -> None:
    """Accept no jurisdiction_id or ours; refuse any other with the spec's 404.

    GeoReport v2: an implementation serving one jurisdiction "can ignore this parameter
    and treat it as an Optional Argument", so absent (or empty) is fine. But a client
    configured for another city must not have its report filed here as if it were
    ours: every method lists "404 - jurisdiction_id provided was not found". The id is
    a domain name, so it compares case-insensitively. `sources`: the query string and,
    for POST, the form (clients put it in either); every value given must be ours."""
    for pairs in sources:
        for k, v in pairs:
            if k != "jurisdiction_id":
                continue
            v = v.strip()
            if v and v.casefold() != ours.casefold():
                shown = v if len(v) <= const.MAX_SHORT else v[: const.MAX_SHORT] + "..."
                raise Open311Error(
                    404, f"jurisdiction_id {shown!r} was not found; this endpoint serves {ours}"
                )


# ---------------------------------------------------------------- POST requests


@dataclass(frozen=True)
class NewRequest:
    service: Service
    lat: float | None
    lon: float | None
    address_string: str | None
    address_id: str | None
    email: str | None
    device_id: str | None
    account_id: str | None
    first_name: str | None
    last_name: str | None
    phone: str | None
    description: str | None
    media_url: str | None
    # code -> value (text), or sorted list of keys for a multivaluelist
    attributes: dict[str, str | list[str]] = field(default_factory=dict)
    # attribute[code] answers for codes the service definition does not ask (FixMyStreet's
    # fixmystreet_id, easting, northing, title, ...): code -> value(s) as sent, unchecked
    extra_attributes: dict[str, str | list[str]] = field(default_factory=dict)

    @property
    def contact_name(self) -> str | None:
        first, last = self.first_name or "", self.last_name or ""
        if not (first or last):
            return None
        if _is_cjk(first + last):
            return f"{last}{first}"  # 王 + 小明: family name first, no space
        return f"{first} {last}".strip()


def _is_cjk(text: str) -> bool:
    return any("\u3400" <= ch <= "\u9fff" for ch in text)


def parse_new_request(pairs: Pairs, services: dict[str, Service], tz: ZoneInfo) -> NewRequest:
    # fields the spec does not name are ignored (clients add their own), but a misspelt
    # required field still fails below
    errors: list[str] = []
    # media_url may come more than once (FixMyStreet's photo sets post one per photo):
    # the first is the request's media_url, the others are kept beside it for the agent
    media = list(dict.fromkeys(v.strip() for k, v in pairs if k == "media_url" and v.strip()))
    f = single_values([(k, v) for k, v in pairs if k != "media_url"], POST_FIELDS)
    if media:
        f["media_url"] = media[0]
    code = f.get("service_code")
    if not code:
        raise Open311Error(400, "service_code was not provided")
    service = services.get(code)
    if service is None:
        raise Open311Error(404, f"service_code {code!r} was not found")

    # The spec's location is "One of lat & long or address_string or address_id". Half
    # a coordinate places nothing, so alone it is refused ("lat & long both need to be
    # sent"); next to an address_string or address_id the request already carries a full
    # location parameter, and the half is ignored rather than losing a resident's report
    # to a client's GPS glitch (its fix would only be to drop the half and resend).
    lat = lon = None
    has_address = "address_string" in f or "address_id" in f
    if "lat" in f and "long" in f:
        lat = _coordinate(f["lat"], "lat", 90.0, errors)
        lon = _coordinate(f["long"], "long", 180.0, errors)
    elif ("lat" in f or "long" in f) and not has_address:
        errors.append("lat and long must be sent together")
    if not (has_address or "lat" in f or "long" in f):
        errors.append("a location is required: lat and long, address_string or address_id")

    def text(name: str, limit: int, *, multiline: bool = False) -> str | None:
        value = f.get(name)
        if value is None:
            return None
        if len(value) > limit:
            errors.append(f"{name} is longer than {limit} characters")
        if not multiline and _LINE_BREAK.search(value):
            errors.append(f"{name} must be one line")
        return value

    address_string = text("address_string", const.MAX_ADDRESS)
    address_id = text("address_id", const.MAX_SHORT)
    if "device_id" not in f and "deviceid" in f:
        f["device_id"] = f["deviceid"]
    device_id = text("device_id", const.MAX_SHORT)
    account_id = text("account_id", const.MAX_SHORT)
    first_name = text("first_name", const.MAX_SHORT)
    last_name = text("last_name", const.MAX_SHORT)
    phone = text("phone", const.MAX_PHONE)
    description = text("description", const.MAX_DESCRIPTION, multiline=True)
    email = text("email", const.MAX_EMAIL)
    if email is not None and not _EMAIL.fullmatch(email):
        errors.append("email is not an email address")
    media_url = text("media_url", const.MAX_URL)
    if len(media) > const.MAX_MEDIA_URLS:
        errors.append(f"at most {const.MAX_MEDIA_URLS} media_url values")
    for url in media:
        parts = urllib.parse.urlsplit(url)
        if len(url) > const.MAX_URL:
            errors.append(f"media_url is longer than {const.MAX_URL} characters")
        elif parts.scheme not in ("http", "https") or not parts.netloc or " " in url:
            errors.append("media_url must be an http or https URL")
    attributes, extra = _attributes(pairs, service, errors)
    if len(media) > 1:
        extra = {**extra, "more media_url": media[1:]}  # a space: never an attribute code
    if errors:
        raise Open311Error(400, *errors)
    return NewRequest(
        service=service,
        lat=lat,
        lon=lon,
        address_string=address_string,
        address_id=address_id,
        email=email,
        device_id=device_id,
        account_id=account_id,
        first_name=first_name,
        last_name=last_name,
        phone=phone,
        description=description,
        media_url=media_url,
        attributes=attributes,
        extra_attributes=extra,
    )


def _coordinate(raw: str, name: str, bound: float, errors: list[str]) -> float | None:
    if not _NUMBER.fullmatch(raw):
        errors.append(f"{name} is not a number")
        return None
    value = float(raw)
    if not math.isfinite(value) or not -bound <= value <= bound:
        errors.append(f"{name} must be between -{bound:g} and {bound:g} (WGS84 degrees)")
        return None
    return value


def _attributes(
    pairs: Pairs, service: Service, errors: list[str]
) -> tuple[dict[str, str | list[str]], dict[str, str | list[str]]]:
    """The definition's answers, checked, and every other attribute[code] as extra data.

    GeoReport v2 asks only that attributes be "based on Service Definitions"; clients
    send their own besides (FixMyStreet posts an attribute[...] for each of its extra
    fields: fixmystreet_id, title, description, easting, northing, report_url,
    closest_address, ...), and refusing them would refuse every report such a client
    sends. So a code the definition does not ask (not listed, or variable false) is kept
    apart, for the agent to read as the client's unverified data: it never fills,
    replaces or fails a definition answer. Bounded: MAX_EXTRA_ATTRIBUTES codes (more is
    refused), MAX_EXTRA_CODE characters a code, MAX_EXTRA_VALUE characters a value
    (longer is cut, marked)."""
    given: dict[str, list[str]] = {}
    for k, v in pairs:
        if not k.startswith("attribute["):
            continue
        m = _ATTRIBUTE.fullmatch(k)
        if m is None or not m.group(1).strip():
            errors.append(f"{k} is not of the form attribute[code] or attribute[code][]")
            continue
        v = v.strip()
        if v:
            given.setdefault(m.group(1), []).append(v)
    out: dict[str, str | list[str]] = {}
    extra: dict[str, str | list[str]] = {}
    for code, values in given.items():
        attr = service.attribute(code)
        if attr is None or not attr.variable:
            extra[code] = _extra_value(values)
            continue
        checked = _attribute_value(attr, values, errors)
        if checked is not None:
            out[code] = checked
    for attr in service.attributes:
        if attr.required and attr.variable and attr.code not in given:
            errors.append(f"attribute[{attr.code}] ({attr.description}) is required")
    if len(extra) > const.MAX_EXTRA_ATTRIBUTES:
        errors.append(
            f"at most {const.MAX_EXTRA_ATTRIBUTES} attributes outside the service definition"
            f" of {service.code} are kept; {len(extra)} were sent"
        )
    long_codes = [c for c in extra if len(c) > const.MAX_EXTRA_CODE or _LINE_BREAK.search(c)]
    for code in long_codes[:5]:
        shown = code if len(code) <= const.MAX_EXTRA_CODE else code[: const.MAX_EXTRA_CODE] + "..."
        errors.append(
            f"attribute[{shown!r}]: an attribute code is one line"
            f" of at most {const.MAX_EXTRA_CODE} characters"
        )
    return out, extra


def _extra_value(values: list[str]) -> str | list[str]:
    """One value as a string, several as a list; each cut to MAX_EXTRA_VALUE characters
    and the cut marked, so an agent never takes a shortened text for the whole."""
    cut = [
        v if len(v) <= const.MAX_EXTRA_VALUE else v[: const.MAX_EXTRA_VALUE] + "…[已截断]"
        for v in values
    ]
    return cut[0] if len(cut) == 1 else cut


def _attribute_value(
    attr: AttributeDef, values: list[str], errors: list[str]
) -> str | list[str] | None:
    name = f"attribute[{attr.code}]"
    if attr.datatype == "multivaluelist":
        unknown = [v for v in values if v not in attr.value_keys()]
        if unknown:
            errors.append(f"{name}: {', '.join(unknown)} not among {_keys(attr)}")
            return None
        return sorted(set(values), key=[v.key for v in attr.values].index)
    if len(values) > 1:
        errors.append(f"{name} takes one value")
        return None
    value = values[0]
    if attr.datatype == "singlevaluelist":
        if value not in attr.value_keys():
            errors.append(f"{name}: {value!r} is not among {_keys(attr)}")
            return None
    elif attr.datatype == "number":
        if not _NUMBER.fullmatch(value) or not math.isfinite(float(value)):
            errors.append(f"{name} must be a number")
            return None
    elif attr.datatype == "datetime":
        try:
            parse_datetime(value, UTC)
        except ValueError as exc:
            errors.append(f"{name}: {exc}")
            return None
    elif attr.datatype == "string":
        if len(value) > const.MAX_STRING_ATTRIBUTE or _LINE_BREAK.search(value):
            errors.append(f"{name}: one line of at most {const.MAX_STRING_ATTRIBUTE} characters")
            return None
    elif len(value) > const.MAX_DESCRIPTION:  # text
        errors.append(f"{name} is longer than {const.MAX_DESCRIPTION} characters")
        return None
    return value


def _keys(attr: AttributeDef) -> str:
    return ", ".join(v.key for v in attr.values)


def attribute_lines(service: Service, attributes: dict[str, str | list[str]]) -> list[str]:
    """'Label：answer' lines for the ticket an agent reads, in the definition's order."""
    lines = []
    for attr in service.attributes:
        value = attributes.get(attr.code)
        if value is None:
            continue
        if attr.datatype in LIST_DATATYPES:
            keys = value if isinstance(value, list) else [value]
            shown = "、".join(attr.value_name(k) for k in keys)
        else:
            shown = str(value)
        lines.append(f"{attr.description}：{shown}")
    return lines


def extra_attribute_lines(extra: dict[str, str | list[str]]) -> list[str]:
    """'code：value' lines for the client's own attributes, as sent, in the order sent."""
    return [
        f"{code}：{'、'.join(value) if isinstance(value, list) else value}"
        for code, value in extra.items()
    ]


# ---------------------------------------------------------------- dates


def parse_datetime(raw: str, tz: tzinfo) -> datetime:
    """W3C-profile ISO 8601; a time without offset or a bare date is in the city's zone.

    A bare year or year-month (W3C "Year" and "Year and month") is its first day."""
    raw = raw.strip()
    if _W3C_REDUCED.fullmatch(raw):
        raw += "-01-01" if len(raw) == 4 else "-01"
    if not _W3C.fullmatch(raw):
        raise ValueError(f"{raw!r} is not an ISO 8601 date-time such as 2010-01-01T00:00:00Z")
    try:
        # past the pattern only digits, separators and t/z remain: upper() is safe, and
        # fromisoformat knows only the upper-case letters
        value = datetime.fromisoformat(raw.replace(",", ".").upper())
    except ValueError:
        raise ValueError(f"{raw!r} is not a valid date-time") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{raw!r} is out of range") from None


# ---------------------------------------------------------------- GET requests


@dataclass(frozen=True)
class RequestQuery:
    ids: tuple[str, ...] = ()  # when given, every other filter is ignored (spec)
    service_codes: tuple[str, ...] = ()
    statuses: tuple[Status, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    limit: int = const.MAX_RECORDS
    offset: int = 0


def _comma_list(raw: str | None) -> list[str]:
    return [p.strip() for p in (raw or "").split(",") if p.strip()]


def parse_request_query(
    pairs: Pairs, known_codes: Collection[str], tz: ZoneInfo, now: datetime
) -> RequestQuery:
    """`known_codes`: every category code, offered or not, so the requests of a service
    switched off since can still be asked for by the code they are listed with."""
    names = ("service_request_id", "service_code", "start_date", "end_date", "status")
    # these may be repeated ("can be declared multiple times, comma delimited")
    joined: dict[str, str] = {}
    for k, v in pairs:
        if k in names and v.strip():
            joined[k] = f"{joined[k]},{v}" if k in joined else v
    ids = _comma_list(joined.get("service_request_id"))
    errors: list[str] = []
    if ids:
        bad = [i for i in ids if not _TICKET_NUMBER.fullmatch(i)]
        if bad:
            errors.append(f"service_request_id {', '.join(bad[:5])} is not a request id")
        if len(ids) > const.MAX_IDS:
            errors.append(f"at most {const.MAX_IDS} service_request_id values at once")
        if errors:
            raise Open311Error(400, *errors)
        return RequestQuery(ids=tuple(dict.fromkeys(ids)))

    codes = _comma_list(joined.get("service_code"))
    unknown = [c for c in codes if c not in known_codes]
    if unknown:
        errors.append(f"unknown service_code {', '.join(unknown[:5])}")
    statuses: list[Status] = []
    for s in _comma_list(joined.get("status")):
        if s.lower() == "open":
            statuses.extend(sorted(OPEN_STATES))
        elif s.lower() == "closed":
            statuses.extend(sorted(TERMINAL_STATES))
        else:
            errors.append(f"status {s!r} is neither open nor closed")
    start = end = None
    for name in ("start_date", "end_date"):
        raw = joined.get(name)
        if raw is None:
            continue
        if "," in raw:
            errors.append(f"{name} was given more than once")
            continue
        try:
            value = parse_datetime(_LOST_PLUS.sub(r"\1+\2", raw.strip()), tz)
        except ValueError as exc:
            errors.append(f"{name}: {exc}")
            continue
        if name == "start_date":
            start = value
        else:
            end = value
    page, page_size = _paging(pairs, errors)
    if errors:
        raise Open311Error(400, *errors)
    # GeoReport v2 on start_date and end_date alike: "When not specified, the range
    # defaults to most recent 90 days", and only a range given "with end_date" / "with
    # start_date" "may not span more than 90 days". So start_date alone means from then
    # up to now (what a client polling "everything since my last look" expects; the
    # 1000-record pages bound the answer), not start_date plus 90 days, which would hide
    # the newest requests from a client whose last look is more than 90 days old. A
    # start_date still in the future is an empty answer, not an error about an
    # end_date the client never sent.
    if start is None and end is None:
        end, start = now, now - const.DEFAULT_WINDOW
    elif end is None:
        assert start is not None
        end = max(start, now)
    else:
        if start is None:
            try:  # the default window reaches past year 1 for a date near it
                start = end - const.DEFAULT_WINDOW
            except OverflowError:
                raise Open311Error(400, "end_date is out of range") from None
        if start > end:
            raise Open311Error(400, "start_date is after end_date")
        if end - start > const.MAX_WINDOW:
            raise Open311Error(400, "start_date to end_date may not span more than 90 days")
    return RequestQuery(
        service_codes=tuple(dict.fromkeys(codes)),
        statuses=tuple(dict.fromkeys(statuses)),
        start=start,
        end=end,
        limit=page_size,
        offset=(page - 1) * page_size,
    )


def _paging(pairs: Pairs, errors: list[str]) -> tuple[int, int]:
    """The widely implemented page/page_size extension; defaults give the spec's answer."""
    values = single_values(pairs, ("page", "page_size"))
    out = []
    for name, default, top in (("page", 1, 100_000), ("page_size", const.MAX_RECORDS, None)):
        raw = values.get(name)
        if raw is None:
            out.append(default)
            continue
        top = top or const.MAX_RECORDS
        # the length first: int() refuses more than 4300 digits (ValueError)
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 7 and 1 <= int(raw) <= top):
            errors.append(f"{name} must be a whole number from 1 to {top}")
            out.append(default)
        else:
            out.append(int(raw))
    return out[0], out[1]
