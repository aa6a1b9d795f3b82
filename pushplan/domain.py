"""Domain types shared by features, training, serving and dispatch: event types, channels, campaigns.

These are the contracts of ../shared/DESIGN.md ("Data contracts"); the column-level schema of the
event and user files lives beside their validation in `features.schema`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

# The tag vocabulary the feature repo knows (per-tag affinity features, variant scoring). A tag outside
# it still travels with its variant but has no affinity feature; growing it is a new feature service version.
VARIANT_TAGS = ("discount", "urgency", "news", "personal", "question", "emoji", "social", "reminder")


class EventType(StrEnum):
    app_open = "app_open"
    purchase = "purchase"
    push_sent = "push_sent"
    push_delivered = "push_delivered"
    push_opened = "push_opened"
    push_clicked = "push_clicked"
    converted = "converted"
    unsubscribed = "unsubscribed"
    opt_out = "opt_out"
    opt_in = "opt_in"
    push_failed = "push_failed"  # dispatch gave up on a send: the channel refused it or kept failing


class Channel(StrEnum):
    """Where a message goes. `sandbox` appends to a file: the demo's stand-in for push."""

    push = "push"
    sms = "sms"
    email = "email"
    webhook = "webhook"
    sandbox = "sandbox"


class Decision(StrEnum):
    send = "send"
    skip = "skip"
    holdout = "holdout"


class Reason(StrEnum):
    """Why an item is not a plain send; `None` on a send the model chose, `exploration` when explored."""

    holdout = "holdout"
    opted_out = "opted_out"
    capped = "capped"
    quiet_hours = "quiet_hours"
    low_value = "low_value"
    no_window = "no_window"
    exploration = "exploration"
    deferred = "deferred"  # a send moved off its best slot so that it stays within the caps
    # Set by dispatch, on items that were planned to be sent:
    cancelled = "cancelled"  # the campaign was cancelled before the item was handed to its channel
    expired = "expired"  # its window had ended before dispatch reached it (paused, or a backlog)
    send_failed = "send_failed"  # the channel refused it, or failed transiently too many times


class ItemState(StrEnum):
    planned = "planned"
    queued = "queued"
    sent = "sent"
    suppressed = "suppressed"
    failed = "failed"
    cancelled = "cancelled"


class PlanItem(BaseModel):
    """The contract between serving and dispatch (DESIGN.md, "Plan item")."""

    plan_id: str
    campaign_id: str
    user_id: str
    decision: Decision
    reason: Reason | None = None
    channel: Channel | None = None
    variant_id: str | None = None
    send_at: AwareDatetime | None = None
    local_send_at: str | None = Field(default=None, description="ISO 8601 in the user's zone, with offset.")
    p_click: float | None = Field(default=None, ge=0.0, le=1.0)
    expected_uplift: float | None = None
    propensity: float | None = Field(default=None, gt=0.0, le=1.0)
    # The models' own choice, kept beside what the item carries: an off-policy estimate of "always
    # the models' choice" needs it on every item, explored and deferred ones included.
    model_variant_id: str | None = Field(
        default=None,
        description="The variant the models rank first, before exploration. Null on items skipped "
        "before timing (opted_out, no_window, quiet_hours).",
    )
    model_send_at: AwareDatetime | None = Field(
        default=None,
        description="The instant (UTC) of the slot of the models' best hour, before exploration and "
        "before any deferral under the caps. Null on items skipped before timing.",
    )
    model_versions: dict[str, str] = Field(default_factory=dict)
    state: ItemState = ItemState.planned
    timezone: str | None = Field(default=None, description="The user's IANA zone the plan was made in.")
    # What dispatch did: channel calls made, when it was sent, and why it was suppressed or failed.
    attempts: int = 0
    fallback_step: int = Field(default=0, description="0: the first channel; n: the n-th fallback re-send.")
    sent_at: AwareDatetime | None = None
    detail: str | None = Field(default=None, description="Which cap, or the channel's error, in words.")


class Objective(StrEnum):
    clicks = "clicks"
    conversions = "conversions"


class Variant(BaseModel):
    """One title a campaign may send; the variant model scores it from its tags and its text."""

    variant_id: str = Field(min_length=1, max_length=200)
    title: str = Field(min_length=1)
    body: str = ""
    tags: list[str] = Field(default_factory=list)


# Instants the service accepts: well inside what the planner's and the feature store's nanosecond
# timestamps can hold (1677-2262), with room for time-zone shifts and the margins around a window.
EARLIEST_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_INSTANT = datetime(2200, 1, 1, tzinfo=UTC)
# The planner walks every local hour of the window, so its length bounds a plan's work.
MAX_WINDOW = timedelta(days=366)


def _iso_text(value: object) -> object:
    if not isinstance(value, str | datetime):  # pydantic would read a number as epoch seconds
        raise ValueError("must be an ISO 8601 date-time with an offset, e.g. 2026-10-06T00:00:00Z")
    return value


def _representable(value: datetime) -> datetime:
    try:
        inside = EARLIEST_INSTANT <= value.astimezone(UTC) < LATEST_INSTANT
    except OverflowError:  # e.g. 9999-12-31T23:00-05:00 is past year 9999 in UTC
        inside = False
    if not inside:
        raise ValueError(
            f"must be from {EARLIEST_INSTANT:%Y-%m-%d} to before {LATEST_INSTANT:%Y-%m-%d} (UTC)"
        )
    return value


# An instant with a UTC offset, given as ISO 8601 text (or a datetime in Python), in the range above.
Instant = Annotated[AwareDatetime, BeforeValidator(_iso_text), AfterValidator(_representable)]


class SendWindow(BaseModel):
    start: Instant = Field(description="From 1970-01-01 to before 2200-01-01 (UTC).")
    end: Instant = Field(description="After start, and at most 366 days after it.")

    @model_validator(mode="after")
    def _ordered(self) -> SendWindow:
        if self.end <= self.start:
            raise ValueError("window.end must be after window.start")
        if self.end - self.start > MAX_WINDOW:
            raise ValueError(f"window is longer than {MAX_WINDOW.days} days")
        return self


class CapOverrides(BaseModel):
    """A campaign may tighten the default frequency caps (never loosen them: dispatch takes the minimum)."""

    per_channel_day: int | None = Field(default=None, ge=0, strict=True)
    per_channel_week: int | None = Field(default=None, ge=0, strict=True)
    per_user_day: int | None = Field(default=None, ge=0, strict=True)
    min_gap_minutes: int | None = Field(default=None, ge=0, strict=True)
    campaign_total: int | None = Field(default=None, ge=0, strict=True)


class Campaign(BaseModel):
    # The lengths are those of the plan store's columns.
    campaign_id: str = Field(min_length=1, max_length=200)
    name: str = Field(max_length=500)
    channels: list[Channel] = Field(min_length=1, description="Ordered by preference.")
    variants: list[Variant] = Field(min_length=1)
    window: SendWindow
    objective: Objective = Objective.clicks
    # Numbers are strict: JSON `true` or "0.2" is refused, not read as 1 or 0.2.
    holdout_fraction: float = Field(default=0.1, ge=0.0, lt=1.0, strict=True)
    exploration: float = Field(default=0.1, ge=0.0, le=1.0, strict=True)
    priority: int = Field(default=0, strict=True)
    value_per_conversion: float = Field(default=0.0, ge=0.0, strict=True)
    caps: CapOverrides | None = None
    fallback_after: timedelta | None = None

    @field_validator("fallback_after", mode="before")
    @classmethod
    def _iso_duration(cls, value: object) -> object:
        if value is not None and not isinstance(value, str | timedelta):  # not seconds, not `false`
            raise ValueError("must be an ISO 8601 duration, e.g. PT2H")
        return value

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "campaign_id": "black-friday",
                    "name": "Black Friday",
                    "channels": ["push"],
                    "variants": [
                        {"variant_id": "a", "title": "Save 30% today", "tags": ["discount", "urgency"]},
                        {"variant_id": "b", "title": "What's new?", "tags": ["question", "news"]},
                    ],
                    "window": {"start": "2026-10-06T00:00:00Z", "end": "2026-10-08T00:00:00Z"},
                    "holdout_fraction": 0.2,
                }
            ]
        }
    }

    @model_validator(mode="after")
    def _unique_variants(self) -> Campaign:
        ids = [v.variant_id for v in self.variants]
        if len(set(ids)) != len(ids):
            raise ValueError("variant_id values must be unique within a campaign")
        return self
