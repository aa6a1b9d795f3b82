"""Domain types shared by features, training, serving and dispatch: event types, channels, campaigns.

These are the contracts of docs/planner.md and docs/event-store.md; the column-level schema of the
event and user files lives beside their validation in `features.schema`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pushplan.audience_rules import MAX_RULE_CHARS
from pushplan.audience_rules import parse as parse_rule

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


# An app's own event name (`signup`, `coupon_claimed`): a word a rule can say (`did signup in last 7
# days`) and a trigger can listen to. Names beginning `push_` or `opt_` are pushplan's own: one that is
# not built in is a typo of one (`push_click`), refused rather than stored as an event nobody counts.
# Ids that name campaigns and variants: they travel in URLs, file names (reports) and provider
# payloads, so nothing that could climb a path or break a header.
IDENTIFIER = re.compile(r"[A-Za-z0-9._-]{1,128}")
IDENTIFIER_RULE = "1 to 128 of the characters A-Z a-z 0-9 . _ -"


def identifier_problem(value: str) -> str | None:
    if IDENTIFIER.fullmatch(value) and value.strip(".") != "":
        return None
    return f"{value[:40]!r} is not an id: use {IDENTIFIER_RULE}, not only dots"


APP_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
RESERVED_EVENT_PREFIXES = ("push_", "opt_")
BUILT_IN_EVENTS = frozenset(e.value for e in EventType)


def event_name_problem(name: str) -> str | None:
    """Why `name` cannot be an event's type, in words; None for a built-in or a valid app event name."""
    if name in BUILT_IN_EVENTS:
        return None
    if APP_EVENT_NAME.match(name) and name.startswith(RESERVED_EVENT_PREFIXES):
        built_in = ", ".join(sorted(n for n in BUILT_IN_EVENTS if n.startswith(RESERVED_EVENT_PREFIXES)))
        return (
            f"{name!r} is not one of pushplan's own events ({built_in}); "
            "app events may not begin push_ or opt_"
        )
    if not APP_EVENT_NAME.match(name):
        return (
            f"{name!r} is neither a built-in event nor an app event name (lower-case letters, "
            "digits and _, a letter first, at most 64)"
        )
    return None


# `properties`: at most this many bytes of JSON, keys that rules can name, values a rule can compare.
MAX_PROPERTIES_BYTES = 2_048
PROPERTY_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def properties_problem(value: object) -> tuple[str | None, str | None]:
    """(the properties as compact JSON with sorted keys, None) or (None, what is wrong with them).

    A flat object: rules compare its values (`amount > 10`, `plan = "gold"`), so each is a string,
    a finite number, true/false or null, under a key a rule can name."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            return None, f"is not JSON ({exc.msg} at character {exc.pos})"
    if not isinstance(value, dict):
        return None, f"must be a JSON object, not {type(value).__name__}"
    for key, item in value.items():
        if not PROPERTY_KEY.match(str(key)):
            return None, f"key {key!r} is not a name (letters, digits and _, not a digit first, at most 64)"
        if isinstance(item, float) and not math.isfinite(item):
            return None, f"{key!r} is not finite"
        if not isinstance(item, str | int | float | bool) and item is not None:
            return None, f"{key!r} is a {type(item).__name__}: values are text, numbers, true/false or null"
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if len(text.encode()) > MAX_PROPERTIES_BYTES:
        return None, f"is {len(text.encode())} bytes as JSON, more than {MAX_PROPERTIES_BYTES}"
    return text, None


class Channel(StrEnum):
    """Where a message goes. `sandbox` appends to a file: the demo's stand-in for push."""

    push = "push"
    sms = "sms"
    email = "email"
    webhook = "webhook"
    sandbox = "sandbox"


# The users' column that says a channel may reach them (the planner's eligibility, an audience's
# reach); a channel missing here (a webhook) reaches everyone.
OPT_IN_OF_CHANNEL = {
    Channel.push: "push_opt_in",
    Channel.sandbox: "push_opt_in",  # the demo's stand-in for push
    Channel.sms: "sms_opt_in",
    Channel.email: "email_opt_in",
}


@dataclass(frozen=True)
class TextLimit:
    """The longest title and body a channel takes, in characters (code points); `combined` bounds
    the one text a channel sends when it joins them with a line break between them."""

    title: int
    body: int
    combined: int | None = None
    utf8_bytes: int | None = None  # title and body together, encoded: what a byte-limited payload holds

    def refusal(self, title: str, body: str, channel: Channel) -> str | None:
        """Why `title` and `body` do not fit this channel, in words; None if they fit."""
        name = f"the {channel.value} channel's"
        if len(title) > self.title:
            return f"title is {len(title)} characters, longer than {name} {self.title}"
        if len(body) > self.body:
            return f"body is {len(body)} characters, longer than {name} {self.body}"
        if self.utf8_bytes is not None:
            encoded = len(title.encode()) + len(body.encode())
            if encoded > self.utf8_bytes:
                return (
                    f"title and body are {encoded} bytes in UTF-8, more than {name} {self.utf8_bytes} "
                    "(emoji and most non-Latin letters take 3 to 4 bytes each)"
                )
        joined = len(title) + 1 + len(body)
        if self.combined is not None and joined > self.combined:
            return (
                f"title and body are {joined} characters as one text (title, line break, body), "
                f"longer than {name} {self.combined}"
            )
        return None


# What each channel accepts, checked when a campaign is created against every channel it may use
# (fallbacks too), so that no message is refused at send time for its text.
CHANNEL_TEXT_LIMITS: dict[Channel, TextLimit] = {
    # FCM refuses a message whose whole payload passes 4,096 bytes: title and body may take 3,500 of
    # them in UTF-8, leaving room for the token and the data fields; no device shows more anyway.
    Channel.push: TextLimit(title=200, body=2000, utf8_bytes=3500),
    # The SMS adapter sends title + "\n" + body as one text; 1600 characters is 10 concatenated
    # segments, where providers stop (Twilio refuses longer bodies).
    Channel.sms: TextLimit(title=1600, body=1600, combined=1600),
    # The title is the Subject header: RFC 5322 caps a header line at 998 characters. The body
    # bound is ours: a marketing mail longer than 100,000 characters is a mistake, not a message.
    Channel.email: TextLimit(title=998, body=100_000),
    # Receivers are ours or our customers'; the bounds keep one request small and predictable.
    Channel.webhook: TextLimit(title=1000, body=10_000),
    # The demo's stand-in for push behaves like push, so a campaign that passes there passes on push.
    Channel.sandbox: TextLimit(title=200, body=2000, utf8_bytes=3500),
}

# Characters no title, body or variant id may hold: C0 and C1 controls and DEL (a CR or LF in a title
# breaks the email Subject header; the others have no business in a message). A body keeps its line
# breaks ("\n"); a title or id is one line, so it may not hold the Unicode line and paragraph
# separators either. (Lone surrogates, which no channel could encode, pydantic refuses itself.)
_CONTROL = "\x00-\x1f\x7f-\x9f"
_FORBIDDEN = {
    "variant_id": re.compile(f"[{_CONTROL}\u2028\u2029]"),
    "title": re.compile(f"[{_CONTROL}\u2028\u2029]"),
    "body": re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]"),
}
_CHARACTER_KIND = {"\u2028": "a line separator", "\u2029": "a paragraph separator"}


def _forbidden_character(field: str, text: str) -> str | None:
    """What is wrong with `text` as the variant's `field`, in words (positions count from 0)."""
    found = _FORBIDDEN[field].search(text)
    if found is None:
        return None
    char = found.group()
    kind = _CHARACTER_KIND.get(char, "a control character")
    return f"{field} has {kind} (U+{ord(char):04X}) at position {found.start()}"


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
    not_in_audience = "not_in_audience"  # a listed user the campaign's audience rule does not select
    # A trigger's firing that its limits keep from sending (docs/triggers.md):
    frequency = "frequency"  # the user had a firing of this trigger within `once_per_user_days`
    budget_spent = "budget_spent"  # the trigger's `max_sends` or `max_users` is reached
    condition_met = "condition_met"  # an `unless` event came after the firing, before the send
    # Set by dispatch, on items that were planned to be sent:
    cancelled = "cancelled"  # the campaign was cancelled before the item was handed to its channel
    expired = "expired"  # its window had ended before dispatch reached it (paused, or a backlog)
    send_failed = "send_failed"  # the channel refused it, or failed transiently too many times
    # The channel call may or may not have delivered (a timeout after the request was written, or a
    # worker that died during the call) on a channel that does not dedupe: never called again.
    outcome_unknown = "outcome_unknown"


class ItemState(StrEnum):
    planned = "planned"
    queued = "queued"
    sent = "sent"
    suppressed = "suppressed"
    failed = "failed"
    unknown = "unknown"  # maybe delivered, never retried: at most once beats at least once
    cancelled = "cancelled"


class DispatchState(StrEnum):
    """A campaign's sending: `idle` until started, then `running`; `paused` holds its sends back, and
    `cancelled` is final (its unsent items become `cancelled`)."""

    idle = "idle"
    running = "running"
    paused = "paused"
    cancelled = "cancelled"


class PlannedByTrigger(ValueError):
    """A triggered campaign is planned one firing at a time by its trigger, never as a whole."""

    def __init__(self, campaign_id: str) -> None:
        super().__init__(
            f"campaign {campaign_id!r} is triggered: its items are planned by its trigger's firings "
            "(start it with dispatch and post its events; docs/triggers.md), not by a plan"
        )


class NoSuchCampaign(LookupError):
    """No campaign with the id asked for."""


class PlanItem(BaseModel):
    """The contract between serving and dispatch (docs/planner.md)."""

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
    # A triggered campaign's item: the event that fired it, when, and the end of its own send window.
    firing_id: str = Field(default="", description="The firing event's id; empty on a scheduled campaign.")
    fired_at: AwareDatetime | None = None
    window_end: AwareDatetime | None = Field(
        default=None, description="The end of a firing's send window; null: the campaign's window."
    )


class Objective(StrEnum):
    clicks = "clicks"
    conversions = "conversions"


class Variant(BaseModel):
    """One title a campaign may send; the variant model scores it from its tags and its text."""

    variant_id: str = Field(
        min_length=1,
        max_length=200,
        description=f"An id: {IDENTIFIER_RULE}.",
        json_schema_extra={"pattern": IDENTIFIER.pattern},
    )
    title: str = Field(
        min_length=1,
        description="One line, no control characters; at most what each of the campaign's channels "
        "takes (push and sandbox 200, email 998, webhook 1000; sms 1600 with the body).",
    )
    body: str = Field(
        default="",
        description="Line breaks (\\n) allowed, no other control characters; at most what each of "
        "the campaign's channels takes (push and sandbox 2000, webhook 10000, email 100000; sms "
        "1600 with the title).",
    )
    tags: list[str] = Field(default_factory=list)

    @field_validator("variant_id", "title", "body")
    @classmethod
    def _no_control_characters(cls, value: str, info: ValidationInfo) -> str:
        assert info.field_name is not None
        if _stored(info):
            return value
        problem = _forbidden_character(info.field_name, value)
        if problem is None and info.field_name == "variant_id":
            problem = identifier_problem(value)
        if problem is not None:
            variant_id = value if info.field_name == "variant_id" else info.data.get("variant_id", "?")
            raise ValueError(f"variant {variant_id!r}: {problem}")
        return value


# Instants the service accepts: well inside what the planner's and the feature store's nanosecond
# timestamps can hold (1677-2262), with room for time-zone shifts and the margins around a window.
EARLIEST_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_INSTANT = datetime(2200, 1, 1, tzinfo=UTC)
# The planner walks every local hour of the window, so its length bounds a plan's work.
MAX_WINDOW = timedelta(days=366)


def _iso_text(value: object) -> object:
    # pydantic would read a number as epoch seconds, and so a numeric string (a query parameter's).
    if not isinstance(value, str | datetime) or (isinstance(value, str) and not ISO_DATE.match(value)):
        raise ValueError("must be an ISO 8601 date-time with an offset, e.g. 2026-10-06T00:00:00Z")
    return value


ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


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


MAX_TRIGGER_DELAY = timedelta(days=30)
MAX_FIRING_WINDOW = timedelta(days=7)


def _event_name(value: str) -> str:
    problem = event_name_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


EventName = Annotated[str, AfterValidator(_event_name)]


class Trigger(BaseModel):
    """What makes a triggered campaign send (docs/triggers.md): a user's `on` event (of `on_campaign`
    only, if given: a journey's next step), whose properties pass `where`, planned `delay` after it
    within `send_within` at the user's best time, unless an `unless` event comes first; at most once
    per user per `once_per_user_days`, and no more than `max_sends` sends or `max_users` users."""

    on: EventName = Field(examples=["coupon_claimed"])
    on_campaign: str | None = Field(
        default=None,
        max_length=200,
        description="Only `on` events of this campaign (e.g. push_clicked of trigger A's campaign).",
    )
    where: str | None = Field(
        default=None,
        max_length=MAX_RULE_CHARS,
        description='A rule over the event\'s properties (`amount >= 20 and plan = "gold"`).',
    )
    delay: timedelta = Field(default=timedelta(0), description="ISO 8601 duration, 0 to P30D.")
    send_within: timedelta = Field(
        default=timedelta(hours=6), description="The send window after the delay: PT1M to P7D."
    )
    unless: list[EventName] = Field(default_factory=list, max_length=10, examples=[["purchase"]])
    once_per_user_days: int | None = Field(default=None, ge=1, le=3650, strict=True)
    max_sends: int | None = Field(default=None, ge=1, strict=True)
    max_users: int | None = Field(default=None, ge=1, strict=True)

    @field_validator("delay", "send_within", mode="before")
    @classmethod
    def _iso_duration(cls, value: object) -> object:
        if not isinstance(value, str | timedelta):
            raise ValueError("must be an ISO 8601 duration, e.g. PT24H")
        return value

    @field_validator("where")
    @classmethod
    def _where_parses(cls, value: str | None) -> str | None:
        if value is not None and parse_rule(value).events:  # parse raises RuleError, a ValueError
            raise ValueError("`where` compares the event's properties; `did …` belongs in the audience")
        return value

    @model_validator(mode="after")
    def _bounded(self) -> Trigger:
        if not timedelta(0) <= self.delay <= MAX_TRIGGER_DELAY:
            raise ValueError("delay must be from 0 to 30 days (P30D)")
        if not timedelta(minutes=1) <= self.send_within <= MAX_FIRING_WINDOW:
            raise ValueError("send_within must be from one minute (PT1M) to 7 days (P7D)")
        return self

    def listens(self) -> list[str]:
        """The event names this trigger reads: its `on` and its `unless`."""
        return list(dict.fromkeys([self.on, *self.unless]))


class Campaign(BaseModel):
    # The lengths are those of the plan store's columns; new ids are held to IDENTIFIER (older stored
    # ones still load).
    campaign_id: str = Field(
        min_length=1,
        max_length=200,
        description=f"An id: {IDENTIFIER_RULE}.",
        json_schema_extra={"pattern": IDENTIFIER.pattern},
    )
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
    # Who the campaign is for: a rule over labels, features and user attributes (docs/audiences.md);
    # none means every user. Its grammar is checked here; its fields where they are known (the
    # service and the CLI check them against the deployment's, features.audiences.compile_for).
    audience: str | None = Field(
        default=None, max_length=MAX_RULE_CHARS, examples=['lifecycle_stage in ("active", "sleeping")']
    )
    # "now": every user at the first open slot of the window (after quiet hours, if it holds one),
    # not at their best hour; none: at each user's best hour in the window.
    send: Literal["now"] | None = None
    # A triggered campaign plans one item per firing of its trigger, while its window is open (the
    # window is when it listens); it is never planned whole (docs/triggers.md).
    trigger: Trigger | None = None
    # Needs an approver's yes before dispatch, whatever its channels and size (pushplan.approvals).
    sensitive: bool = Field(default=False, strict=True)

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

    @field_validator("audience")
    @classmethod
    def _audience_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rule(value)  # RuleError is a ValueError: pydantic reports it on `audience`
        return value

    @field_validator("campaign_id")
    @classmethod
    def _campaign_id_is_an_id(cls, value: str, info: ValidationInfo) -> str:
        problem = None if _stored(info) else identifier_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _unique_variants(self) -> Campaign:
        ids = [v.variant_id for v in self.variants]
        if len(set(ids)) != len(ids):
            raise ValueError("variant_id values must be unique within a campaign")
        return self

    @model_validator(mode="after")
    def _texts_fit_the_channels(self, info: ValidationInfo) -> Campaign:
        """Every variant fits every channel the campaign may send on, fallbacks included: a text a
        channel would refuse is refused here, never at send time."""
        if _stored(info):
            return self
        for variant in self.variants:
            for channel in dict.fromkeys(self.channels):
                problem = CHANNEL_TEXT_LIMITS[channel].refusal(variant.title, variant.body, channel)
                if problem is not None:
                    raise ValueError(f"variant {variant.variant_id!r}: {problem}")
        return self

    @classmethod
    def stored(cls, spec: dict[str, object]) -> Campaign:
        """A campaign as the plan store keeps it: checked when it was created, so the rules for new
        text (control characters, channel limits) are not applied again. A campaign stored before a
        rule existed must still load, or one old campaign would stop every due-scan."""
        return cls.model_validate(spec, context=STORED)


# The validation context of specs read back from the plan store (Campaign.stored).
STORED = {"stored": True}


def _stored(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("stored"))
