"""Request bodies of the ticket API: strict (unknown fields refused), bounded."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ticketing.deadlines import Urgency
from ticketing.lifecycle import Kind, Satisfaction

Channel = Literal["phone", "wechat", "telegram", "app", "web", "open311", "email", "walk_in"]
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
TicketNumber = Annotated[str, Field(pattern=r"^[0-9]{13,16}$")]
Text = Annotated[str, Field(min_length=1, max_length=5000)]
DurationText = Annotated[str, Field(pattern=r"^[1-9][0-9]{0,3}(h|wd)$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ContactIn(Strict):
    name: Annotated[str, Field(max_length=100)] | None = None
    phone: Annotated[str, Field(max_length=32)] | None = None
    channel_ids: Annotated[
        dict[Annotated[str, Field(max_length=32)], Annotated[str, Field(max_length=128)]],
        Field(max_length=10),
    ] = Field(default_factory=dict)  # a factory: a `{}` default is deep-copied per parse


class LocationIn(Strict):
    address: Annotated[str, Field(max_length=300)] | None = None
    district: Annotated[str, Field(max_length=64)] | None = None
    lat: Annotated[float, Field(ge=-90, le=90)] | None = None
    lon: Annotated[float, Field(ge=-180, le=180)] | None = None


class TicketIn(Strict):
    kind: Kind
    title: Annotated[str, Field(min_length=1, max_length=200)]
    description: Annotated[str, Field(min_length=1, max_length=20000)]
    channel: Channel
    category: Code | None = None
    urgency: Urgency | None = None
    contact: ContactIn | None = None
    location: LocationIn | None = None


class AnswerIn(Strict):
    answer: Text


class DispatchIn(Strict):
    department: Code | None = None
    assist: Annotated[list[Code], Field(max_length=10)] = Field(default_factory=list)
    note: Text | None = None


class NoteIn(Strict):
    note: Text | None = None


class ReasonIn(Strict):
    reason: Text


class ExtendIn(Strict):
    extra: DurationText = Field(description="e.g. '5wd' (working days) or '24h'")
    reason: Text


class GrantExtensionIn(Strict):
    extra: DurationText | None = Field(None, description="defaults to what was requested")
    note: Text | None = None


class ReplyIn(Strict):
    reply: Text


class FollowUpIn(Strict):
    satisfaction: Satisfaction
    note: Text | None = None


class MergeIn(Strict):
    into: TicketNumber


class SuperviseIn(Strict):
    note: Text


class RevealIn(Strict):
    reason: Text


class DepartmentIn(Strict):
    code: Code
    name: Annotated[str, Field(min_length=1, max_length=200)]
    parent_code: Code | None = None
    level: Literal["city", "district", "street", "grid", "agency"]
    district: Annotated[str, Field(max_length=64)] | None = None
    is_fallback: bool = False
    active: bool = True


class DepartmentPatch(Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    parent_code: Code | None = None
    district: Annotated[str, Field(max_length=64)] | None = None
    is_fallback: bool | None = None
    active: bool | None = None


class CategoryIn(Strict):
    code: Code
    name: Annotated[str, Field(min_length=1, max_length=200)]
    parent_code: Code | None = None
    default_department: Code | None = None
    urgency: Urgency = Urgency.NORMAL
    dispatch_limit: DurationText | None = None
    feedback_limit: DurationText | None = None
    active: bool = True


class CategoryPatch(Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    default_department: Code | None = None
    urgency: Urgency | None = None
    dispatch_limit: DurationText | None = None
    feedback_limit: DurationText | None = None
    active: bool | None = None
