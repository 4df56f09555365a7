"""Request bodies of the app API: strict (unknown fields refused) and bounded."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from ticketing.lifecycle import Kind
from ticketing.schemas import Code, Strict

Phone = Annotated[str, Field(min_length=3, max_length=32, examples=["13812345678"])]


class CodeIn(Strict):
    """Ask for a sign-in code by text message."""

    phone: Phone


class TokenIn(Strict):
    """Exchange the code for a bearer token."""

    phone: Phone
    code: Annotated[str, Field(pattern=r"^[0-9]{6}$")]


class ReportFields(Strict):
    """The text parts of the multipart report (`text` is accepted for `description`)."""

    description: Annotated[str, Field(min_length=5, max_length=4000)]
    kind: Kind
    category: Code | None = None
    address: Annotated[str, Field(max_length=300)] | None = None
    lat: Annotated[float, Field(ge=-90, le=90)] | None = None
    lon: Annotated[float, Field(ge=-180, le=180)] | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> ReportFields:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("give lat and lon together")
        return self


class RatingIn(Strict):
    """1 unsatisfied (不满意), 2 basically satisfied (基本满意), 3 satisfied (满意)."""

    rating: Annotated[int, Field(ge=1, le=3)]
    comment: Annotated[str, Field(max_length=500)] | None = None


class MessageIn(Strict):
    """A follow-up message about one of the resident's tickets."""

    text: Annotated[str, Field(min_length=1, max_length=2000)]
