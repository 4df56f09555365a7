"""The multipart report: bounded reading, and photos typed by their bytes.

A phone says what it likes in a part's Content-Type and file name; neither is
believed. The type is read from the content's signature (JPEG, PNG, WebP, HEIC),
and anything else (an HTML page named cat.jpg) is refused. Reading stops at the
first part over a limit, so a hostile upload costs at most the limits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from urllib.parse import unquote

from aiohttp import BodyPartReader, web

PHOTO_FIELDS = frozenset({"photo", "photos", "photo[]", "photos[]"})
TEXT_FIELDS = frozenset({"description", "text", "kind", "category", "lat", "lon", "address"})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})


class FormError(Exception):
    """`slug` is the problem type (validation-error, payload-too-large, ...)."""

    def __init__(self, slug: str, detail: str, field: str = "(body)") -> None:
        super().__init__(detail)
        self.slug = slug
        self.detail = detail
        self.field = field


@dataclass(frozen=True)
class Photo:
    data: bytes
    content_type: str  # sniffed from the bytes
    sha256: str
    filename: str

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class ReportForm:
    fields: dict[str, str] = field(default_factory=dict)
    photos: list[Photo] = field(default_factory=list)


def sniff(data: bytes) -> str | None:
    """The image type the bytes are, by signature; None when they are none we take."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "image/heic"
    return None


_EXT = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/heic": "heic"}


def _safe_name(given: str | None, ctype: str, index: int) -> str:
    """A plain file name for the attachment list (the extension follows the bytes)."""
    given = unquote(given or "")  # some clients percent-encode the name
    stem = given.rsplit("/", 1)[-1].rsplit("\\", 1)[-1].rsplit(".", 1)[0]
    stem = "".join(ch for ch in stem if ch.isalnum() or ch in "-_ ")[:60].strip()
    return f"{stem or f'photo-{index}'}.{_EXT[ctype]}"


async def _read_limited(part: BodyPartReader, limit: int) -> bytes | None:
    """The part's bytes, or None as soon as it passes `limit`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await part.read_chunk(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


async def read_report_form(
    request: web.Request,
    *,
    max_photos: int,
    photo_max_bytes: int,
    photo_types: frozenset[str],
    max_field_bytes: int,
) -> ReportForm:
    if request.content_type != "multipart/form-data":
        raise FormError(
            "unsupported-media-type", f"send multipart/form-data, not {request.content_type}"
        )
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise FormError("malformed-body", f"unreadable multipart body: {exc}") from None
    form = ReportForm()
    try:
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise FormError("malformed-body", "nested multipart is not accepted")
            name = part.name or ""
            if name in PHOTO_FIELDS:
                await _photo(form, part, max_photos, photo_max_bytes, photo_types)
            elif name in TEXT_FIELDS:
                if name in form.fields or (name in ("text", "description") and _has_text(form)):
                    raise FormError("validation-error", "given twice", name)
                raw = await _read_limited(part, max_field_bytes)
                if raw is None:
                    raise FormError("validation-error", f"at most {max_field_bytes} bytes", name)
                try:
                    form.fields[name] = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise FormError("validation-error", "not UTF-8 text", name) from None
            else:
                raise FormError("validation-error", "unknown field", name or "(unnamed part)")
    except (ValueError, AssertionError, UnicodeDecodeError) as exc:  # a broken multipart
        raise FormError("malformed-body", f"unreadable multipart body: {exc}") from None
    if "text" in form.fields:
        form.fields["description"] = form.fields.pop("text")
    return form


def _has_text(form: ReportForm) -> bool:
    return "text" in form.fields or "description" in form.fields


async def _photo(
    form: ReportForm, part: BodyPartReader, max_photos: int, max_bytes: int, types: frozenset[str]
) -> None:
    if len(form.photos) >= max_photos:
        raise FormError("validation-error", f"at most {max_photos} photos", "photos")
    index = len(form.photos) + 1
    data = await _read_limited(part, max_bytes)
    if data is None:
        raise FormError("payload-too-large", f"photo {index} is larger than {max_bytes} bytes")
    if not data:
        raise FormError("validation-error", f"photo {index} is empty", "photos")
    ctype = sniff(data)
    if ctype is None or ctype not in types:
        raise FormError(
            "unsupported-media-type",
            f"photo {index} is not an image we accept ({', '.join(sorted(types))}); "
            "the type is read from the content, not the file name",
        )
    form.photos.append(
        Photo(
            data, ctype, hashlib.sha256(data).hexdigest(), _safe_name(part.filename, ctype, index)
        )
    )
