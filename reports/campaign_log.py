"""A pushplan campaign read back as an experiment: one row per randomized user (per firing, for a
triggered campaign), the funnel, and the logged decisions that off-policy estimates need.

Who is in the experiment: the planner (serving/planner.py) draws the holdout among users it could
time, so everyone it skipped *before* that draw (opted out, no slot in the window, only quiet hours)
was never randomized and is left out. Everyone else is compared by assignment, not by what
happened later: a treated user whose send was capped, expired or failed stays in the campaign arm
("intent to treat"), since leaving them out would compare the holdout with a filtered, better-reached
group. Holdout items carry the slot, variant and channel they would have been sent, so breakdowns by
variant, local send hour and channel compare like with like.

A triggered campaign's unit is the firing: its arm is its user's (the holdout is drawn by campaign and
user, so all of a user's firings share an arm), its outcomes are its user's events from the firing to
its own window's end plus the horizon (an event counts for the user's latest firing before it), and
`firing_day` (UTC) breaks results down by the day it fired. Firings the trigger's limits refused
(`frequency`, `budget_spent`) were never planned, in either arm, and are left out like the skips above.

Outcomes per user, counted from the window's start to its end plus a horizon:
- `opened`, `clicked`, `converted`, `unsubscribed`: the campaign's own (attributed) events; a holdout
  has none by construction, so their lift is the campaign's rate itself;
- `purchased` and `revenue`: every purchase, attributed or not, which is what the holdout measures:
  what the users would have bought anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from features.event_store import EventStore
from pushplan.clock import local_clock
from pushplan.db.schema import PlanItemRow
from pushplan.db.store import PlanStore
from pushplan.domain import Campaign, Decision, EventType, NoSuchCampaign, Reason
from pushplan.settings import Settings

CAMPAIGN_ARM, HOLDOUT_ARM = "campaign", "holdout"
DEFAULT_HORIZON = timedelta(days=3)
# Skipped before the holdout draw: never randomized (see the module docstring).
NOT_RANDOMIZED = (
    Reason.not_in_audience.value,
    Reason.opted_out.value,
    Reason.no_window.value,
    Reason.quiet_hours.value,
    # A trigger's limits refuse a firing before it is planned, whatever its arm would have been.
    Reason.frequency.value,
    Reason.budget_spent.value,
)
ATTRIBUTED = {
    "opened": EventType.push_opened,
    "clicked": EventType.push_clicked,
    "converted": EventType.converted,
    "unsubscribed": EventType.unsubscribed,
}
OUTCOMES = (*ATTRIBUTED, "purchased", "revenue")
PLAN_COLUMNS = ("variant_id", "local_send_hour", "channel")
# Stored features read as of the window's start: segments for the report, covariates for uplift models.
FEATURE_REFS = (
    "user_rfm:rfm_segment",
    "user_rfm:rfm_cell",
    "user_rfm:lifecycle_stage",
    "user_rfm:recency_days",
    "user_rfm:frequency_90d",
    "user_rfm:monetary_90d",
    "user_rfm:days_since_active",
    "user_engagement:activity_events",
    "user_engagement:weekend_activity_share",
    "user_profile:days_since_signup",
    "user_fatigue:sends_7d",
    "user_fatigue:clicks_30d",
)
USER_ATTRIBUTES = ("platform", "country", "timezone")
# The built-in labels operators choose audiences by, counted per value in `label_stats`.
LABELS = ("lifecycle_stage", "rfm_cell")
# The operators' custom labels (each user's names) and the segment column each becomes in reports.
CUSTOM_LABELS_REF = "user_labels:labels"
CUSTOM_PREFIX = "label:"
YES_NO = {True: "yes", False: "no"}


class NothingToReport(ValueError):
    """The campaign exists but has no plan items yet."""


@dataclass
class CampaignLog:
    campaign: Campaign
    span: tuple[datetime, datetime]
    items: pd.DataFrame  # every plan item of the campaign
    # Per member item (not `not_in_audience`): user_id, the LABELS and each custom label held
    # (`label:<name>`, yes/no) as of the window's start.
    labels: pd.DataFrame
    # One row per randomized item (a user; a firing of a triggered campaign), keyed by plan_id: arm,
    # outcomes, plan columns, segments, covariates.
    users: pd.DataFrame
    events: pd.DataFrame  # the campaign's attributed events in the span
    revenue_all: float  # every purchase in the span, by anyone: the denominator of "share of revenue"
    segments: list[str]  # columns of `users` worth a breakdown
    covariates: list[str]  # columns of `users` an uplift model may use

    @property
    def headline_outcome(self) -> str:
        """What the campaign changed on its objective: clicks (none happen without a message), or for
        conversions, purchases (attributed conversions would count people who buy anyway)."""
        return "purchased" if self.campaign.objective.value == "conversions" else "clicked"

    @property
    def reward_outcome(self) -> str:
        """The objective per message, as off-policy estimates score a policy's choices."""
        return "converted" if self.campaign.objective.value == "conversions" else "clicked"


def load_campaign_log(
    settings: Settings, campaign_id: str, *, horizon: timedelta = DEFAULT_HORIZON
) -> CampaignLog:
    """Read a campaign's plan items, its events and its users' purchases into a CampaignLog."""
    if horizon < timedelta(0):
        raise ValueError("the horizon must not be negative")
    store = PlanStore(settings)
    campaign = store.get_campaign(campaign_id)
    if campaign is None:
        raise NoSuchCampaign(f"no campaign {campaign_id!r} in the plan store")
    items = read_items(store, campaign_id)
    if items.empty:
        raise NothingToReport(f"campaign {campaign_id!r} has no plan items: plan it first")
    trigger = campaign.trigger
    # A firing's outcomes run to its own window's end plus the horizon; the last firing's window
    # ends at most the delay and the send window after the campaign's.
    reach = trigger.delay + trigger.send_within if trigger is not None else timedelta(0)
    span = (campaign.window.start, campaign.window.end + reach + horizon)
    events = EventStore(settings)
    read = events.read_events(
        ["user_id", "event_type", "timestamp", "campaign_id", "variant_id", "channel", "value", "propensity"],
        start=span[0],
        end=span[1],
    )
    purchases = read[read["event_type"] == EventType.purchase.value]
    attributed = read[read["campaign_id"] == campaign_id]

    randomized = items[~((items["decision"] == Decision.skip.value) & items["reason"].isin(NOT_RANDOMIZED))]
    users = pd.DataFrame(
        {
            "plan_id": randomized["plan_id"].astype(str).to_numpy(),
            "user_id": randomized["user_id"].astype(str).to_numpy(),
            "arm": np.where(randomized["decision"] == Decision.holdout.value, HOLDOUT_ARM, CAMPAIGN_ARM),
            "variant_id": randomized["variant_id"].to_numpy(),
            "local_send_hour": planned_local_hour(randomized).to_numpy(),
            "channel": planned_channel(randomized, campaign).to_numpy(),
        }
    )
    if trigger is None:
        for outcome, kind in ATTRIBUTED.items():
            who = set(attributed.loc[attributed["event_type"] == kind.value, "user_id"].astype(str))
            users[outcome] = users["user_id"].isin(who).astype(int)
        spent = purchases.groupby(purchases["user_id"].astype(str))["value"].agg(["size", "sum"])
        users["purchased"] = (users["user_id"].map(spent["size"]).fillna(0) > 0).astype(int)
        users["revenue"] = users["user_id"].map(spent["sum"]).fillna(0.0).astype(float)
    else:
        firings = randomized.reset_index(drop=True)
        users["firing_day"] = pd.to_datetime(firings["fired_at"], utc=True).dt.strftime("%Y-%m-%d").to_numpy()
        outcomes = _firing_outcomes(firings, pd.concat([attributed, purchases]).drop_duplicates(), horizon)
        users = pd.concat([users, outcomes], axis=1)

    # One read for every audience member; the randomized users (a subset) take their rows of it.
    member_items = items["reason"] != Reason.not_in_audience.value
    members = pd.unique(items.loc[member_items, "user_id"].astype(str))  # a user once, however often fired
    read = _features_at(settings, list(members), campaign.window.start, (*FEATURE_REFS, CUSTOM_LABELS_REF))
    read.index = pd.Index(members)
    held = read.pop("labels") if "labels" in read else pd.Series(None, index=read.index, dtype=object)
    flags = pd.DataFrame(
        {
            f"{CUSTOM_PREFIX}{name}": held.map(lambda names, n=name: _holds(names, n))
            for name in _custom_names(held)
        },
        index=read.index,
        dtype=bool,
    )
    labels = (
        pd.concat([read.reindex(columns=list(LABELS)), flags], axis=1).rename_axis("user_id").reset_index()
    )
    attributes = _user_attributes(events, users["user_id"])
    features = read.reindex(users["user_id"]).reset_index(drop=True)
    # Each custom label the audience held is a yes/no segment, compared like the others.
    aligned = flags.reindex(users["user_id"], fill_value=False).reset_index(drop=True)
    custom = pd.DataFrame({c: column.map(YES_NO) for c, column in aligned.items()}, index=aligned.index)
    users = pd.concat([users, attributes, features, custom], axis=1)
    segments = [c for c in ("rfm_cell", "lifecycle_stage", *USER_ATTRIBUTES, *custom) if c in users]
    covariates = [c for c in users.columns if c in features or c in attributes]
    return CampaignLog(
        campaign=campaign,
        span=span,
        items=items,
        labels=labels,
        users=users,
        events=attributed,
        revenue_all=float(purchases["value"].fillna(0.0).sum()),
        segments=segments,
        covariates=covariates,
    )


def read_items(store: PlanStore, campaign_id: str) -> pd.DataFrame:
    """All of a campaign's plan items as a frame (timestamps UTC), in one query."""
    table = PlanItemRow.__table__
    query = sa.select(table).where(table.c.campaign_id == campaign_id).order_by(table.c.plan_id)
    with store.engine.connect() as connection:
        frame = pd.DataFrame(connection.execute(query).mappings().all())
    if frame.empty:
        return pd.DataFrame(columns=[c.name for c in table.columns])
    for column in ("send_at", "sent_at", "model_send_at", "fired_at", "window_end"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def funnel(log: CampaignLog) -> dict[str, object]:
    """The push-industry funnel of the campaign arm, and the suppressions by reason.

    Rates follow the industry's denominators: display (delivered / sent), open, click and order
    rates per delivered message; value per delivered message counts attributed conversions' value.
    """
    items, events = log.items, log.events
    kinds = events["event_type"]
    sent = int((kinds == EventType.push_sent.value).sum())
    delivered = int((kinds == EventType.push_delivered.value).sum())
    opened = int((kinds == EventType.push_opened.value).sum())
    clicked = int((kinds == EventType.push_clicked.value).sum())
    converted = int((kinds == EventType.converted.value).sum())
    value = float(events.loc[kinds == EventType.converted.value, "value"].fillna(0.0).sum())
    # Listed users outside the campaign's audience were never its users (plan jobs plan members only).
    members = items["reason"] != Reason.not_in_audience.value
    reachable = int((members & (items["reason"] != Reason.opted_out.value)).sum())
    planned = int((items["decision"] == Decision.send.value).sum())

    def per(numerator: float, denominator: int) -> float | None:
        return numerator / denominator if denominator else None

    # Randomized items that did not go out: dispatch's suppressions (capped, quiet hours at the send
    # instant, expired, cancelled), failures and the planner's own skips after the draw (low_value).
    not_sent = items[
        (items["decision"].isin([Decision.send.value, Decision.skip.value]))
        & ~items["state"].isin(["sent", "planned", "queued"])
        & ~((items["decision"] == Decision.skip.value) & items["reason"].isin(NOT_RANDOMIZED))
    ]
    by_reason = (
        not_sent.assign(reason=not_sent["reason"].fillna("(none)"), detail=not_sent["detail"].fillna(""))
        .groupby(["state", "reason"], dropna=False)
        .agg(items=("plan_id", "size"), example=("detail", "first"))
        .reset_index()
        .sort_values("items", ascending=False)
    )
    return {
        "users": int(members.sum()),
        "reachable": reachable,
        "holdout": int((items["decision"] == Decision.holdout.value).sum()),
        "planned_sends": planned,
        "sent": sent,
        "delivered": delivered,
        "opened": opened,
        "clicked": clicked,
        "converted": converted,
        "unsubscribed": int((kinds == EventType.unsubscribed.value).sum()),
        "display_rate": per(delivered, sent),
        "open_rate": per(opened, delivered),
        "click_rate": per(clicked, delivered),
        "order_rate": per(converted, delivered),
        "attributed_revenue": value,
        "value_per_delivered": per(value, delivered),
        "revenue_all": log.revenue_all,
        "revenue_share": value / log.revenue_all if log.revenue_all else None,
        "not_sent": [
            {"state": r.state, "reason": r.reason, "items": int(r.items), "example": r.example or None}
            for r in by_reason.itertuples(index=False)
        ],
    }


def _firing_outcomes(firings: pd.DataFrame, events: pd.DataFrame, horizon: timedelta) -> pd.DataFrame:
    """Per firing of a triggered campaign (rows of `firings`, in order): its outcomes, from the events
    of its user after it and before its window's end plus the horizon. An event belongs to the user's
    latest firing at or before it, so a user who fires twice has no event counted twice."""
    out = pd.DataFrame(0, index=range(len(firings)), columns=[*ATTRIBUTED, "purchased"])
    out["revenue"] = 0.0
    if firings.empty or events.empty:
        return out
    keyed = pd.DataFrame(
        {
            "row": np.arange(len(firings)),
            "user_id": firings["user_id"].astype(str).to_numpy(),
            "fired_at": pd.to_datetime(firings["fired_at"], utc=True).to_numpy(),
            "until": (pd.to_datetime(firings["window_end"], utc=True) + horizon).to_numpy(),
        }
    ).sort_values("fired_at")
    done = events.assign(
        user_id=events["user_id"].astype(str), timestamp=pd.to_datetime(events["timestamp"], utc=True)
    ).sort_values("timestamp")
    done["timestamp"] = done["timestamp"].to_numpy()  # both sides as the same naive-UTC resolution
    matched = pd.merge_asof(
        done, keyed, left_on="timestamp", right_on="fired_at", by="user_id", direction="backward"
    )
    matched = matched[matched["row"].notna() & (matched["timestamp"] < matched["until"])]
    rows = matched["row"].astype(int)
    for outcome, kind in ATTRIBUTED.items():
        hit = rows[(matched["event_type"] == kind.value).to_numpy()].unique()
        out.loc[hit, outcome] = 1
    bought = matched["event_type"] == EventType.purchase.value
    out.loc[rows[bought.to_numpy()].unique(), "purchased"] = 1
    revenue = matched.loc[bought, "value"].fillna(0.0).groupby(rows[bought.to_numpy()].to_numpy()).sum()
    out.loc[revenue.index, "revenue"] = revenue.to_numpy(dtype=float)
    return out


def planned_channel(items: pd.DataFrame, campaign: Campaign) -> pd.Series:
    """The channel each item was planned on: a fallback re-send (fallback_step n) moved a campaign item
    n channels down the campaign's list, which its holdout twin never is, so breaking results down by
    the channel it ended on would compare non-openers with everyone."""
    order = [channel.value for channel in campaign.channels]
    steps = items["fallback_step"].fillna(0).astype(int) if "fallback_step" in items else 0
    position = items["channel"].map({c: i for i, c in enumerate(order)})
    planned = (position - steps).where(position.notna())
    return planned.map(lambda i: order[int(i)] if pd.notna(i) and 0 <= i < len(order) else None).where(
        position.notna(), items["channel"]
    )


def planned_local_hour(items: pd.DataFrame) -> pd.Series:
    """The local hour each item was planned for. A send the caps deferred was moved after the holdout
    draw (holdouts are never deferred), so its hour is the models' choice (`model_send_at`) in its zone,
    not the slot it was moved to."""
    hours = _local_hour(items["local_send_at"])
    if "model_send_at" not in items:
        return hours
    deferred = (items["reason"] == Reason.deferred.value) & items["model_send_at"].notna()
    if deferred.any():
        moved = items[deferred]
        naive_utc = pd.to_datetime(moved["model_send_at"], utc=True).dt.tz_localize(None).to_numpy()
        hours[deferred.to_numpy()] = local_clock(naive_utc, moved["timezone"].astype(str).to_numpy())[0]
    return hours


def _local_hour(local_send_at: pd.Series) -> pd.Series:
    """The local hour of an ISO 8601 local time with offset ("2026-11-01T19:00:00+01:00" → 19)."""
    text = local_send_at.astype("string")
    return pd.to_numeric(text.str.slice(11, 13), errors="coerce").astype("Int64")


def _user_attributes(events: EventStore, user_ids: pd.Series) -> pd.DataFrame:
    users = events.read_users()
    wanted = [c for c in USER_ATTRIBUTES if c in users]
    by_id = users.assign(user_id=users["user_id"].astype(str)).drop_duplicates("user_id").set_index("user_id")
    return by_id.reindex(user_ids.to_numpy())[wanted].reset_index(drop=True)


def _custom_names(lists: pd.Series) -> list[str]:
    """The custom labels anyone in `lists` (each a user's label names, or missing) holds, sorted."""
    return sorted({str(name) for names in lists.dropna() for name in names})


def _holds(names: Any, name: str) -> bool:
    return names is not None and not (isinstance(names, float) and np.isnan(names)) and name in list(names)


def _features_at(
    settings: Settings, user_ids: list[str], at: datetime, wanted: Sequence[str] = FEATURE_REFS
) -> pd.DataFrame:
    """`wanted` features as of `at` from Feast's offline store; none when no feature repo is applied."""
    if not (settings.feast_dir / "registry.db").exists() or not user_ids:
        return pd.DataFrame(index=range(len(user_ids)))
    from features.store import feature_store, read_stored

    store = feature_store(settings)
    known = {f"{view.name}:{field.name}" for view in store.list_feature_views() for field in view.features}
    refs = [ref for ref in wanted if ref in known]
    if not refs:
        return pd.DataFrame(index=range(len(user_ids)))
    return read_stored(store, user_ids, refs, source="offline", at=at).reset_index(drop=True)


def label_stats(log: CampaignLog, segments: dict[str, Any], outcome: str) -> dict[str, list[dict[str, Any]]]:
    """Per built-in label value (operators' "how many were reached under each rule, and with what
    effect"): audience members, planned sends, sent, clicked and converted users, and the lift on
    `outcome` over the holdout where the report's segment comparison has one."""
    items = log.items.assign(user_id=log.items["user_id"].astype(str))
    kinds = log.events.assign(user_id=log.events["user_id"].astype(str))
    clicked = set(kinds.loc[kinds["event_type"] == EventType.push_clicked.value, "user_id"])
    converted = set(kinds.loc[kinds["event_type"] == EventType.converted.value, "user_id"])
    planned = set(items.loc[items["decision"] == Decision.send.value, "user_id"])
    sent = set(items.loc[items["state"] == "sent", "user_id"])

    def row(value: str, who: set[str], segment: str, segment_value: str) -> dict[str, Any]:
        compared = segments.get(segment, {}).get(segment_value, {}).get("outcomes", {}).get(outcome, {})
        arm = compared.get("arms", {}).get(CAMPAIGN_ARM, {}) if compared else {}
        return {
            "value": value,
            "audience": len(who),
            "planned": len(who & planned),
            "sent": len(who & sent),
            "clicked": len(who & clicked),
            "converted": len(who & converted),
            "lift_abs": None if arm.get("skipped") else arm.get("lift_abs"),
            "lift_abs_ci": None if arm.get("skipped") else arm.get("lift_abs_ci"),
        }

    out: dict[str, list[dict[str, Any]]] = {}
    for label in LABELS:
        values = log.labels[label].fillna("(none)").astype(str)
        rows = [row(v, set(who), label, v) for v, who in log.labels["user_id"].groupby(values)]
        out[label] = sorted(rows, key=lambda r: -r["audience"])
    custom = [c for c in log.labels.columns if c.startswith(CUSTOM_PREFIX)]
    if custom:
        out["custom labels"] = [
            row(c.removeprefix(CUSTOM_PREFIX), set(log.labels.loc[log.labels[c], "user_id"]), c, "yes")
            for c in custom
        ]
    return out
