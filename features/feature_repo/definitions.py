"""Feast declarations: entity → sources → feature views → request source → on-demand view → services.

Sources read the tables `pushplan features build` writes. Their paths here are relative to
`<data_dir>/feast`; `features.store.apply` makes them absolute for the data dir it registers,
because Feast's DuckDB offline store reads a parquet path as given, not against the repo path.
The push source sits with the sources because the fatigue view that it feeds names it.
Feature services are versioned contracts: a model is trained and served with one; a change of
features is a new version (`click_v2`), never an edit of `click_v1`.
"""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Bool, Float32, Float64, Int64, String, UnixTimestamp

from pushplan.domain import VARIANT_TAGS

OWNER = "data-science@pushplan"
SNAPSHOT_TTL = timedelta(days=30)

# ---- entity -----------------------------------------------------------------------------------

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A person a campaign can reach.",
)

# ---- sources ----------------------------------------------------------------------------------


def _daily_source(table: str) -> FileSource:
    return FileSource(
        name=f"{table}_source",
        path=f"tables/{table}.parquet",
        timestamp_field="event_timestamp",
        description=f"Daily snapshots of {table} from `pushplan features build`.",
    )


user_profile_source = _daily_source("user_profile")
user_engagement_source = _daily_source("user_engagement")
user_rfm_source = _daily_source("user_rfm")
user_fatigue_source = _daily_source("user_fatigue")
user_tag_affinity_source = _daily_source("user_tag_affinity")
user_hour_habits_source = _daily_source("user_hour_habits")
user_labels_source = _daily_source("user_labels")
TABLE_SOURCES = (
    user_profile_source,
    user_engagement_source,
    user_rfm_source,
    user_fatigue_source,
    user_tag_affinity_source,
    user_hour_habits_source,
    user_labels_source,
)

# Incoming events (sends, clicks) update fatigue online between batch builds.
user_fatigue_push_source = PushSource(name="user_fatigue_push_source", batch_source=user_fatigue_source)

# ---- feature views ----------------------------------------------------------------------------

user_profile_fv = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="timezone", dtype=String, description="IANA time zone; the app default when unknown."),
        Field(name="country", dtype=String, description="Country code from the users file."),
        Field(name="platform", dtype=String, description="ios, android, web, …"),
        Field(name="push_opt_in", dtype=Bool, description="Reachable by push at the snapshot."),
        Field(name="sms_opt_in", dtype=Bool, description="Reachable by SMS at the snapshot."),
        Field(name="email_opt_in", dtype=Bool, description="Reachable by email at the snapshot."),
        Field(name="days_since_signup", dtype=Float32, description="Whole days since signup (NaN: unknown)."),
    ],
    source=user_profile_source,
    online=True,
    owner=OWNER,
    tags={"group": "profile", "cadence": "daily"},
)

user_engagement_fv = FeatureView(
    name="user_engagement",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(
            name="activity_by_hour",
            dtype=Array(Float32),
            description="24 shares of app opens and purchases by local hour over the trailing window, "
            "smoothed toward the population's; sums to 1.",
        ),
        Field(
            name="activity_by_hour_weekend",
            dtype=Array(Float32),
            description="The same on weekend days only.",
        ),
        Field(
            name="push_engagement_by_hour",
            dtype=Array(Float32),
            description="24 shares of push opens and clicks by local hour, smoothed toward the population's.",
        ),
        Field(
            name="weekend_activity_share",
            dtype=Float32,
            description="Share of activity on weekends (NaN: none).",
        ),
        Field(name="activity_events", dtype=Float32, description="Activity events in the trailing window."),
        Field(
            name="push_engagements",
            dtype=Float32,
            description="Push opens and clicks in the trailing window.",
        ),
    ],
    source=user_engagement_source,
    online=True,
    owner=OWNER,
    tags={"group": "engagement", "cadence": "daily"},
)

user_rfm_fv = FeatureView(
    name="user_rfm",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="recency_days", dtype=Float32, description="Days since the last purchase (NaN: never)."),
        Field(name="frequency_90d", dtype=Float32, description="Purchases in the last 90 days."),
        Field(name="monetary_90d", dtype=Float32, description="Revenue in the last 90 days."),
        Field(
            name="r_score",
            dtype=Int64,
            description="Recency quintile among buyers, 5 = most recent; 0 = none.",
        ),
        Field(name="f_score", dtype=Int64, description="Frequency quintile among buyers; 0 = none."),
        Field(name="m_score", dtype=Int64, description="Monetary quintile among buyers; 0 = none."),
        Field(
            name="rfm_segment",
            dtype=String,
            description="The models' coarse RFM group: champions, loyal, promising, at_risk, hibernating, "
            "needs_attention or no_purchase.",
        ),
        Field(
            name="rfm_cell",
            dtype=String,
            description="The named RFM cell operators choose audiences by (docs/audiences.md); no_purchase.",
        ),
        Field(name="days_since_active", dtype=Float32, description="Days since any activity (NaN: never)."),
        Field(
            name="lifecycle_stage",
            dtype=String,
            description="new, active, sleeping or churned (thresholds in settings).",
        ),
    ],
    source=user_rfm_source,
    online=True,
    owner=OWNER,
    tags={"group": "value", "cadence": "daily"},
)

user_fatigue_fv = FeatureView(
    name="user_fatigue",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="sends_1d", dtype=Float32, description="Pushes sent on the snapshot's UTC day."),
        Field(name="sends_7d", dtype=Float32, description="Pushes sent in the last 7 days."),
        Field(name="sends_30d", dtype=Float32, description="Pushes sent in the last 30 days."),
        Field(name="clicks_1d", dtype=Float32, description="Push clicks on the snapshot's UTC day."),
        Field(name="clicks_7d", dtype=Float32, description="Push clicks in the last 7 days."),
        Field(name="clicks_30d", dtype=Float32, description="Push clicks in the last 30 days."),
        Field(
            name="last_push_epoch_s", dtype=Float64, description="When the last push was sent (NaN: never)."
        ),
        Field(
            name="last_click_epoch_s", dtype=Float64, description="When the last push click was (NaN: never)."
        ),
    ],
    source=user_fatigue_push_source,
    online=True,
    owner=OWNER,
    tags={"group": "fatigue", "cadence": "daily+push"},
)

user_tag_affinity_fv = FeatureView(
    name="user_tag_affinity",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        *[
            Field(
                name=f"affinity_{tag}",
                dtype=Float32,
                description=f"Click rate on '{tag}' variants, smoothed toward the population's.",
            )
            for tag in VARIANT_TAGS
        ],
        Field(name="tagged_sends", dtype=Float32, description="Most sends behind any one tag's rate."),
    ],
    source=user_tag_affinity_source,
    online=True,
    owner=OWNER,
    tags={"group": "tastes", "cadence": "daily"},
)

user_hour_habits_fv = FeatureView(
    name="user_hour_habits",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(
            name="hours_weekday_recent",
            dtype=Array(Float32),
            description="24 counts of engagements (opens, purchases, push opens and clicks) by local hour "
            "on weekdays, each weighted by recency (half-life PUSHPLAN_HABIT_HALF_LIFE_DAYS).",
        ),
        Field(
            name="hours_weekend_recent",
            dtype=Array(Float32),
            description="The same on weekend days (Saturday and Sunday in the user's zone).",
        ),
        Field(
            name="hours_purchase_recent",
            dtype=Array(Float32),
            description="24 recency-weighted counts of purchases by local hour.",
        ),
        Field(
            name="hours_push_recent",
            dtype=Array(Float32),
            description="24 recency-weighted counts of push opens and clicks by local hour.",
        ),
        Field(
            name="hours_all_time",
            dtype=Array(Float32),
            description="24 counts of every engagement by local hour since the first, unweighted.",
        ),
        Field(
            name="habit_events",
            dtype=Float32,
            description="Engagements since the first: how much history stands behind the habit.",
        ),
    ],
    source=user_hour_habits_source,
    online=True,
    owner=OWNER,
    tags={"group": "engagement", "cadence": "daily"},
)

user_labels_fv = FeatureView(
    name="user_labels",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(
            name="labels",
            dtype=Array(String),
            description="The operators' custom labels the user had that day (`pushplan labels define`): "
            "each a rule over the other features, recomputed with every build (docs/audiences.md).",
        ),
    ],
    source=user_labels_source,
    online=True,
    owner=OWNER,
    tags={"group": "labels", "cadence": "daily"},
)

# ---- request source ---------------------------------------------------------------------------

campaign_request = RequestSource(
    name="campaign_request",
    schema=[
        Field(name="request_time", dtype=UnixTimestamp, description="When the decision is made."),
        Field(name="candidate_local_hour", dtype=Int64, description="The local hour being scored (0-23)."),
        Field(name="window_start", dtype=UnixTimestamp, description="Campaign send window start."),
        Field(name="window_end", dtype=UnixTimestamp, description="Campaign send window end."),
        Field(name="variant_tags", dtype=String, description="Comma-separated tags of the variant scored."),
    ],
)

# ---- on-demand view ---------------------------------------------------------------------------


@on_demand_feature_view(
    sources=[user_engagement_fv, user_fatigue_fv, user_tag_affinity_fv, campaign_request],
    schema=[
        Field(name="engagement_at_hour", dtype=Float64),
        Field(name="engagement_near_hour", dtype=Float64),
        Field(name="push_engagement_at_hour", dtype=Float64),
        Field(name="hour_rank", dtype=Float64),
        Field(name="tag_affinity_mean", dtype=Float64),
        Field(name="tag_affinity_max", dtype=Float64),
        Field(name="variant_tag_count", dtype=Float64),
        Field(name="hours_since_last_push", dtype=Float64),
        Field(name="hours_since_last_click", dtype=Float64),
        Field(name="window_hours", dtype=Float64),
        Field(name="hours_to_window_end", dtype=Float64),
    ],
    mode="pandas",
    description="Request-time context: the candidate hour, the variant's tags, recency and the window.",
    owner=OWNER,
    tags={"group": "context"},
)
def request_context(inputs: pd.DataFrame) -> pd.DataFrame:
    # Feast rebuilds this function from its source when it reads the registry: the import must
    # be inside, or the name is missing at serving time.
    from features.feature_repo.transforms import request_context_features

    return request_context_features(inputs)


# ---- feature services -------------------------------------------------------------------------

click_v1 = FeatureService(
    name="click_v1",
    features=[
        user_profile_fv[["platform", "push_opt_in", "days_since_signup"]],
        user_engagement_fv[["weekend_activity_share", "activity_events", "push_engagements"]],
        user_rfm_fv[
            ["recency_days", "frequency_90d", "monetary_90d", "days_since_active", "lifecycle_stage"]
        ],
        user_fatigue_fv[["sends_1d", "sends_7d", "sends_30d", "clicks_7d", "clicks_30d"]],
        user_tag_affinity_fv,
        request_context,
    ],
    description="p(click | user, variant, local hour): the click model's contract.",
    owner=OWNER,
    tags={"model": "click"},
)

send_hour_v1 = FeatureService(
    name="send_hour_v1",
    features=[
        user_profile_fv[["timezone", "platform", "days_since_signup"]],
        user_engagement_fv,
        user_rfm_fv[["days_since_active", "lifecycle_stage", "frequency_90d"]],
        user_fatigue_fv[["sends_30d", "clicks_30d"]],
    ],
    description="The send-hour model's contract: by-hour engagement (activity alone serves a push-less app).",
    owner=OWNER,
    tags={"model": "send_hour"},
)

send_hour_v2 = FeatureService(
    name="send_hour_v2",
    features=[
        user_profile_fv[["timezone", "platform", "days_since_signup"]],
        user_engagement_fv,
        user_rfm_fv[["days_since_active", "lifecycle_stage", "frequency_90d"]],
        user_fatigue_fv[["sends_30d", "clicks_30d"]],
        user_hour_habits_fv,
    ],
    description="send_hour_v1 and the hour habits as counts (weekday / weekend, by kind, all time), "
    "so the model can weigh a user's own history by how much of it there is.",
    owner=OWNER,
    tags={"model": "send_hour"},
)

variant_v1 = FeatureService(
    name="variant_v1",
    features=[
        user_profile_fv[["platform", "days_since_signup"]],
        user_rfm_fv[["lifecycle_stage", "rfm_segment"]],
        user_fatigue_fv[["sends_7d", "clicks_30d"]],
        user_tag_affinity_fv,
        request_context[["tag_affinity_mean", "tag_affinity_max", "variant_tag_count", "engagement_at_hour"]],
    ],
    description="p(click | user, variant features): the variant model's contract.",
    owner=OWNER,
    tags={"model": "variant"},
)

FEATURE_SERVICES = (click_v1, send_hour_v1, send_hour_v2, variant_v1)

# Everything `pushplan features apply` registers, in declaration order.
REPO_OBJECTS = [
    user,
    user_profile_source,
    user_engagement_source,
    user_rfm_source,
    user_fatigue_source,
    user_tag_affinity_source,
    user_hour_habits_source,
    user_labels_source,
    user_fatigue_push_source,
    user_profile_fv,
    user_engagement_fv,
    user_rfm_fv,
    user_fatigue_fv,
    user_tag_affinity_fv,
    user_hour_habits_fv,
    user_labels_fv,
    campaign_request,
    request_context,
    *FEATURE_SERVICES,
]
