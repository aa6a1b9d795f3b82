"""Domain types shared by features, training, serving and dispatch: event types, channels, campaigns.

These are the contracts of ../shared/DESIGN.md ("Data contracts"); the column-level schema of the
event and user files lives beside their validation in `features.schema`.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, Field, model_validator

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
    model_versions: dict[str, str] = Field(default_factory=dict)
    state: ItemState = ItemState.planned


class Objective(StrEnum):
    clicks = "clicks"
    conversions = "conversions"


class Variant(BaseModel):
    """One title a campaign may send; the variant model scores it from its tags and its text."""

    variant_id: str = Field(min_length=1)
    title: str = Field(min_length=1)
    body: str = ""
    tags: list[str] = Field(default_factory=list)


class SendWindow(BaseModel):
    start: AwareDatetime
    end: AwareDatetime

    @model_validator(mode="after")
    def _ordered(self) -> SendWindow:
        if self.end <= self.start:
            raise ValueError("window.end must be after window.start")
        return self


class CapOverrides(BaseModel):
    """A campaign may tighten the default frequency caps (never loosen them: dispatch takes the minimum)."""

    per_channel_day: int | None = Field(default=None, ge=0)
    per_channel_week: int | None = Field(default=None, ge=0)
    per_user_day: int | None = Field(default=None, ge=0)
    min_gap_minutes: int | None = Field(default=None, ge=0)
    campaign_total: int | None = Field(default=None, ge=0)


class Campaign(BaseModel):
    campaign_id: str = Field(min_length=1)
    name: str
    channels: list[Channel] = Field(min_length=1, description="Ordered by preference.")
    variants: list[Variant] = Field(min_length=1)
    window: SendWindow
    objective: Objective = Objective.clicks
    holdout_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    exploration: float = Field(default=0.1, ge=0.0, le=1.0)
    priority: int = 0
    value_per_conversion: float = Field(default=0.0, ge=0.0)
    caps: CapOverrides | None = None
    fallback_after: timedelta | None = None

    @model_validator(mode="after")
    def _unique_variants(self) -> Campaign:
        ids = [v.variant_id for v in self.variants]
        if len(set(ids)) != len(ids):
            raise ValueError("variant_id values must be unique within a campaign")
        return self
