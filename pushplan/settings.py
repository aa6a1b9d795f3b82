"""pushplan's one settings class: profiles, paths and service URLs, read from PUSHPLAN_* variables.

Nothing here runs at import time: call `get_settings()` (cached) where settings are needed, so
importing any module never reads the environment or touches the disk.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from enum import StrEnum
from functools import lru_cache, wraps
from pathlib import Path
from typing import Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

T = TypeVar("T")


class Profile(StrEnum):
    """Which kind of backing services one code path runs on (README.md, "Profiles")."""

    local = "local"
    production = "production"


class Settings(BaseSettings):
    """Everything configurable, with the defaults a laptop needs (`local` profile)."""

    model_config = SettingsConfigDict(env_prefix="PUSHPLAN_", env_file=None, extra="ignore")

    profile: Profile = Profile.local
    data_dir: Path = Field(
        default=Path(".pushplan"),
        description="Root of everything pushplan stores on disk: the event store (parquet), "
        "and in the local profile the SQLite files too.",
    )
    redis_url: str | None = Field(
        default=None, description="Redis for the production profile (online features, caps, broker)."
    )
    database_url: str | None = Field(
        default=None,
        description="PostgreSQL for the production profile, as a SQLAlchemy URL "
        "(postgresql+psycopg://user@host:5432/db).",
    )
    default_timezone: str = Field(
        default="UTC", description="Time zone of users whose own zone is missing from their profile."
    )
    import_chunk_rows: int = Field(
        default=250_000,
        ge=1_000,
        description="Rows validated and staged at a time by `events import`; bounds its memory.",
    )

    event_compact_fanout: int = Field(
        default=16,
        ge=2,
        le=1_000,
        description="A day of the event store whose live files of one level reach this many has them "
        "merged into one (docs/event-store.md): bounds the files a read opens under streaming intake.",
    )
    event_compact_grace_seconds: float = Field(
        default=300.0,
        ge=0,
        description="Files merged by compaction stay this long for readers that listed them before.",
    )
    cap_per_channel_day: int = Field(
        default=2, ge=0, description="Messages a user may get on one channel per local day."
    )
    cap_per_channel_week: int = Field(
        default=6, ge=0, description="Messages a user may get on one channel in any 7 days."
    )
    cap_per_user_day: int = Field(
        default=3, ge=0, description="Messages a user may get per local day, all channels together."
    )
    cap_min_gap_minutes: int = Field(
        default=120, ge=0, description="Least time between two messages to the same user."
    )

    dispatch_chunk: int = Field(
        default=500, ge=1, le=10_000, description="Plan items per send task: one claim, one cap pipeline."
    )
    dispatch_scan_seconds: float = Field(
        default=5.0, gt=0, description="How often beat's due-scan moves due plan items to `queued`."
    )
    dispatch_lease_seconds: float = Field(
        default=300.0,
        gt=0,
        description="A queued item not finished within this is queued again by the due-scan (a worker "
        "died, or the broker lost the message); the plan item id keeps it from being sent twice.",
    )
    dispatch_max_in_flight: int = Field(
        default=50_000,
        ge=1,
        description="Most items queued at once: the due-scan tops the queue up to this. Keep it below "
        "what the workers send within a lease, or waiting items lapse and are handed out again.",
    )
    dispatch_max_attempts: int = Field(
        default=5, ge=1, description="Channel calls per send before a transient error becomes `failed`."
    )
    dispatch_recheck_every: int = Field(
        default=20,
        ge=1,
        le=20,
        description="A send step re-reads its campaigns' state (pause, cancel) at least every this many "
        "messages: the most a step sends after a cancel returns.",
    )
    dispatch_retry_seconds: float = Field(
        default=30.0, gt=0, description="First retry delay after a transient error; doubles each attempt."
    )
    trigger_scan_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often beat runs the firing task over the trigger inbox (each batch of events "
        "posted also starts one at once).",
    )
    trigger_batch: int = Field(
        default=5_000, ge=1, le=100_000, description="Inbox events one firing task claims and plans."
    )
    plan_job_partition_users: int = Field(
        default=50_000, ge=1, description="Users per task of a whole-audience plan job."
    )
    quiet_start_hour: int = Field(default=22, ge=0, le=23, description="Quiet hours start (user's local).")
    quiet_end_hour: int = Field(default=8, ge=0, le=23, description="Quiet hours end (exclusive).")
    slot_minutes: Literal[5, 10, 15, 20, 30, 60] = Field(
        default=15,
        description="The granularity of send slots in a user's local time (a divisor of 60); the "
        "send-hour model scores hours and each slot takes its hour's score.",
    )

    api_rate_limit: str = Field(
        default="1000/second;30000/minute",
        description="Requests each API key may make, in the `limits` library's notation (`;` between "
        "windows); over it the service answers 429 with Retry-After. Counted in Redis in production, so "
        "all service processes share one count.",
    )
    api_docs: bool | None = Field(
        default=None,
        description="Serve /docs, /redoc and /openapi.json; by default on in the local profile and off in "
        "production.",
    )
    metrics_access: Literal["open", "key", "off"] | None = Field(
        default=None,
        description="Who may read /metrics: `open`, `key` (an operator or admin key, in X-API-Key or as "
        "`Authorization: Bearer`) or `off`; by default open locally and `key` in production.",
    )
    priority_ceiling: int = Field(
        default=10, description="Highest campaign priority a team's keys may set, unless listed below."
    )
    team_priority_ceilings: dict[str, int] = Field(
        default_factory=dict, description='Per team, its own priority ceiling (JSON: {"growth": 20}).'
    )
    approval_audience_above: int | None = Field(
        default=None,
        ge=0,
        description="A campaign whose audience selects more users than this needs an approver's yes before "
        "it may dispatch (besides campaigns flagged `sensitive` and those on sms or email); unset: no "
        "size rule.",
    )
    approval_webhook_url: str | None = Field(
        default=None, description="Where approvers are told that a campaign waits for approval (a POST)."
    )

    webhook_url: str | None = Field(default=None, description="Where the `webhook` channel POSTs.")
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key that signs webhook bodies (X-Pushplan-Signature)."
    )
    webhook_dedupes: bool = Field(
        default=False,
        description="The webhook receiver drops a repeated Idempotency-Key, so a call whose outcome is "
        "unknown (a timeout, a worker killed mid-call) may be made again instead of recorded `unknown`.",
    )
    smtp_host: str = Field(default="127.0.0.1", description="SMTP server of the `email` channel.")
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_sender: str = Field(default="pushplan@localhost", description="From: address of emails.")
    fcm_url: str = Field(
        default="https://fcm.googleapis.com",
        description="Base URL of the FCM HTTP v1 API (a stub's in tests).",
    )
    fcm_project: str | None = Field(default=None, description="Firebase project id of the `push` channel.")
    fcm_credentials_file: Path | None = Field(
        default=None,
        description="Google service-account JSON file of the `push` channel: OAuth access tokens are "
        "minted from it and renewed before they expire (and once on a 401); its project_id is the "
        "default of fcm_project. Takes precedence over fcm_token.",
    )
    fcm_token: SecretStr | None = Field(
        default=None,
        description="A static OAuth bearer token for FCM instead of fcm_credentials_file: Google's expire "
        "within an hour and cannot be renewed here, so for tests and short runs.",
    )
    sms_url: str | None = Field(default=None, description="Where the `sms` channel POSTs.")
    sms_token: SecretStr | None = Field(default=None, description="Bearer token of the SMS provider.")
    channel_timeout_seconds: float = Field(default=10.0, gt=0, description="Per channel call.")
    channel_rate_per_second: dict[str, float] = Field(
        default_factory=lambda: {"push": 500.0, "sms": 20.0, "email": 50.0, "webhook": 200.0},
        description="Most calls per second per channel, across all workers (JSON; a missing channel "
        "is unlimited).",
    )

    feast_project: str = Field(
        default="pushplan",
        pattern=r"^[a-z][a-z0-9_]*$",
        description="Feast project name; keys in a shared Redis online store are scoped by it.",
    )
    engagement_window_days: int = Field(
        default=56, ge=1, description="Trailing days behind the by-hour engagement features."
    )
    engagement_prior_events: float = Field(
        default=5.0,
        ge=0.0,
        description="How many events' worth of the population's by-hour shares a user's own shares are "
        "smoothed toward: a user with little history looks like the population.",
    )
    habit_half_life_days: float = Field(
        default=30.0,
        gt=0.0,
        description="Half-life of the recency weighting behind the hour-habit features: an event this "
        "many days old counts half as much as today's.",
    )
    affinity_prior_clicks: float = Field(
        default=10.0,
        ge=0.0,
        description="Clicks' worth of the population's click rate behind each tag affinity. Clicks are "
        "rare, so one lucky click must not make a taste: at a 2.5 % click rate, 10 clicks are 400 sends.",
    )
    lifecycle_new_days: int = Field(
        default=14, ge=0, description="Signed up fewer days ago: lifecycle 'new'."
    )
    lifecycle_active_days: int = Field(
        default=7, ge=1, description="Last activity at most this many days ago: 'active'."
    )
    lifecycle_churned_days: int = Field(
        default=30,
        ge=1,
        description="No activity for more than this many days: 'churned' (between: 'sleeping').",
    )

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone name") from exc
        return value

    @model_validator(mode="after")
    def _lifecycle_ordered(self) -> Settings:
        if self.lifecycle_active_days >= self.lifecycle_churned_days:
            raise ValueError(
                "PUSHPLAN_LIFECYCLE_ACTIVE_DAYS must be below PUSHPLAN_LIFECYCLE_CHURNED_DAYS "
                f"(got {self.lifecycle_active_days} and {self.lifecycle_churned_days})"
            )
        return self

    @model_validator(mode="after")
    def _production_needs_services(self) -> Settings:
        # Defaulting production to localhost would hide a missing configuration until the first
        # request; refusing at start-up names the variable to set instead.
        if self.profile is Profile.production:
            missing = [
                f"PUSHPLAN_{name.upper()}"
                for name in ("redis_url", "database_url")
                if not getattr(self, name)
            ]
            if missing:
                raise ValueError(f"the production profile needs {' and '.join(missing)} to be set")
        return self

    @field_validator("api_rate_limit")
    @classmethod
    def _rate_limit_parses(cls, value: str) -> str:
        from limits import parse_many  # at validation only: importing settings stays light

        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a rate limit such as '1000/second;30000/minute'") from exc
        return value

    @property
    def limits_storage_uri(self) -> str:
        """Where rate limits (the `limits` library's) count: Redis in production, shared by every
        process; memory locally, where one process serves."""
        if self.profile is Profile.production:
            assert self.redis_url  # the production validator guarantees it
            return self.redis_url
        return "memory://"

    @property
    def docs_served(self) -> bool:
        """Whether /docs, /redoc and /openapi.json are served (api_docs, or the profile's default)."""
        return self.api_docs if self.api_docs is not None else self.profile is Profile.local

    @property
    def metrics_mode(self) -> Literal["open", "key", "off"]:
        """Who may read /metrics (metrics_access, or the profile's default)."""
        if self.metrics_access is not None:
            return self.metrics_access
        return "open" if self.profile is Profile.local else "key"

    def priority_ceiling_of(self, team: str) -> int:
        return self.team_priority_ceilings.get(team, self.priority_ceiling)

    def sql_url(self, local_file: str) -> str:
        """Where a SQL store lives: PostgreSQL in production, a SQLite file under the data dir locally."""
        if self.profile is Profile.production:
            assert self.database_url  # the production validator guarantees it
            return self.database_url
        return f"sqlite:///{(self.data_dir / local_file).resolve()}"

    @property
    def sandbox_dir(self) -> Path:
        """Where the `sandbox` channel appends its messages (outbox.jsonl): the demo's push."""
        return self.data_dir / "sandbox"

    @property
    def feast_dir(self) -> Path:
        """Feast's registry, the local online store and the feature tables it reads offline."""
        return self.data_dir / "feast"

    @property
    def catalogue_path(self) -> Path:
        """Campaigns and their variants (titles, tags) as imported; features look up variant tags here."""
        return self.data_dir / "catalogue" / "variants.parquet"

    @property
    def event_names_path(self) -> Path:
        """The app's own event names seen by imports (rules and triggers may name them)."""
        return self.data_dir / "catalogue" / "event_names.json"

    @property
    def events_dir(self) -> Path:
        """Events as parquet, hive-partitioned by UTC event date (`event_date=YYYY-MM-DD/`)."""
        return self.data_dir / "events"

    @property
    def users_path(self) -> Path:
        return self.data_dir / "users" / "users.parquet"

    @property
    def staging_dir(self) -> Path:
        """Imports write here first, so a refused file leaves nothing in the store."""
        return self.data_dir / "staging"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()


def per_settings(build: Callable[[Settings], T]) -> Callable[[Settings], T]:
    """Cache `build(settings)` per configuration and process: settings are not hashable (a pydantic
    model), so they are keyed by their JSON; for the stores, ledgers and clients a worker reuses."""
    built: dict[tuple[str, ...], T] = {}
    lock = threading.Lock()

    @wraps(build)
    def cached(settings: Settings) -> T:
        # The JSON shows every secret as "**********": their values join the key, or two settings
        # differing only in a secret would share one client.
        secrets = (
            value.get_secret_value() for value in dict(settings).values() if isinstance(value, SecretStr)
        )
        key = (settings.model_dump_json(), *secrets)
        with lock:
            if key not in built:
                built[key] = build(settings)
            return built[key]

    return cached
