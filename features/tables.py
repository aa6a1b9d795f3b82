"""Feature jobs: the event store turned into per-user feature tables, one snapshot per user and UTC day.

A snapshot for day D is stamped D+1 00:00 UTC and sees only events before that instant, so a Feast
point-in-time join for any moment on D+1 reads what was knowable then, never later events. Each
table is a parquet file under `<data_dir>/feast/tables/` that a feature view's FileSource reads.

The work is done on dense (users × days × bins) arrays: every rolling window is a difference of
cumulative sums, so a build is a few vectorised passes over the log, not a loop per user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from rich.progress import Progress

from features.attributes import as_kind, attributes_of
from features.event_store import EventStore
from pushplan.audience_rules import RuleError, evaluate, parse
from pushplan.clock import local_clock
from pushplan.db.labels import LabelVersion, labels_in_force
from pushplan.db.store import PlanStore
from pushplan.domain import VARIANT_TAGS, EventType
from pushplan.files import write_parquet
from pushplan.settings import Settings

ACTIVITY = (EventType.app_open, EventType.purchase)
PUSH_ENGAGEMENT = (EventType.push_opened, EventType.push_clicked)
ACTIVE = (*ACTIVITY, *PUSH_ENGAGEMENT, EventType.converted)
RFM_WINDOW_DAYS = 90
# Engagements: the hours a user engages in, the send-hour model's examples and habits.
HABIT = (*ACTIVITY, *PUSH_ENGAGEMENT)
TABLES = (
    "user_profile",
    "user_engagement",
    "user_rfm",
    "user_fatigue",
    "user_tag_affinity",
    "user_hour_habits",
    "user_labels",
)
NS_PER_DAY = 86_400 * 10**9
HABIT_VECTORS = (
    "hours_weekday_recent",
    "hours_weekend_recent",
    "hours_purchase_recent",
    "hours_push_recent",
    "hours_all_time",
)


@dataclass(frozen=True)
class BuildSummary:
    users: int
    days: int
    rows: int
    first_snapshot: pd.Timestamp | None
    last_snapshot: pd.Timestamp | None
    tables: dict[str, Path]


def table_path(settings: Settings, name: str) -> Path:
    return settings.feast_dir / "tables" / f"{name}.parquet"


def build_feature_tables(settings: Settings, *, progress: bool = False) -> BuildSummary:
    """Compute every feature table from the event store and write them (replacing earlier builds)."""
    store = EventStore(settings)
    events = store.read_events(["user_id", "event_type", "timestamp", "variant_id", "channel", "value"])
    users = store.read_users()
    tags_of = _variant_tags(store.read_variants())
    steps: list[tuple[str, Callable[[_Grid], pd.DataFrame]]] = [
        ("user_profile", lambda g: _profile(g, settings)),
        ("user_engagement", lambda g: _engagement(g, settings)),
        ("user_rfm", lambda g: _rfm(g, settings)),
        ("user_fatigue", _fatigue),
        ("user_tag_affinity", lambda g: _tag_affinity(g, settings, tags_of)),
        ("user_hour_habits", lambda g: _hour_habits(g, settings)),
    ]
    if events.empty:
        raise ValueError("the event store holds no events: import some first (pushplan events import)")
    grid = _Grid.from_log(events, users, settings.default_timezone)
    plans = PlanStore(settings)
    definitions = labels_in_force(plans)
    plans.engine.dispose()
    written: dict[str, Path] = {}
    built: dict[str, pd.DataFrame] = {}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("building feature tables", total=len(steps) + 1)
        for name, compute in steps:
            frame = grid.rows(compute(grid))
            built[name] = frame
            written[name] = write_parquet(
                pa.Table.from_pandas(frame, preserve_index=False), table_path(settings, name)
            )
            bar.advance(task)
        labels = _custom_labels(grid, built, definitions)
        written["user_labels"] = write_parquet(labels, table_path(settings, "user_labels"))
        bar.advance(task)
    stamps = grid.as_of
    return BuildSummary(
        users=grid.n_users,
        days=grid.n_days,
        rows=int(grid.present.sum()),
        first_snapshot=pd.Timestamp(stamps[0], tz="UTC"),
        last_snapshot=pd.Timestamp(stamps[-1], tz="UTC"),
        tables=written,
    )


@dataclass
class _Grid:
    """Events placed on a (user, UTC day) grid, with each event's local hour in its user's zone."""

    user_ids: np.ndarray
    users: pd.DataFrame  # one row per user position, profile columns, default zone filled in
    day0: np.datetime64
    n_days: int
    events: pd.DataFrame  # + columns u (user position), d (day index), hour, weekend, ns
    present: np.ndarray  # (users × days) bool: the user exists on that day (signed up or seen)

    @property
    def n_users(self) -> int:
        return int(self.user_ids.size)

    @property
    def as_of(self) -> np.ndarray:
        """The instant each day's snapshot stands for: the end of that UTC day."""
        return self.day0 + np.arange(1, self.n_days + 1).astype("timedelta64[D]")

    @classmethod
    def from_log(cls, events: pd.DataFrame, users: pd.DataFrame, default_zone: str) -> _Grid:
        ids = pd.Index(pd.unique(pd.concat([users["user_id"], events["user_id"]], ignore_index=True)))
        profile = pd.DataFrame({"user_id": ids})
        if not users.empty:
            profile = profile.merge(users, on="user_id", how="left")
        profile["timezone"] = (
            profile["timezone"].fillna(default_zone) if "timezone" in profile else default_zone
        )
        for column in ("country", "platform"):
            if column not in profile:
                profile[column] = None
        for column in ("push_opt_in", "sms_opt_in", "email_opt_in"):
            profile[column] = profile[column].fillna(False).astype(bool) if column in profile else False
        if "signup_at" not in profile:
            profile["signup_at"] = pd.NaT

        when = events["timestamp"].dt.tz_convert("UTC")
        day0 = when.min().floor("D").tz_localize(None).to_datetime64().astype("datetime64[D]")
        ns = when.dt.tz_localize(None).to_numpy().astype("datetime64[ns]").view("int64")
        placed = events.assign(
            u=ids.get_indexer(events["user_id"]),
            d=((ns - day0.astype("datetime64[ns]").view("int64")) // NS_PER_DAY).astype(int),
            ns=ns,
        )
        placed["hour"], placed["weekend"] = local_clock(
            ns.astype("datetime64[ns]"), profile["timezone"].to_numpy(dtype=object)[placed["u"].to_numpy()]
        )
        n_days = int(placed["d"].max()) + 1

        first_seen = np.full(ids.size, n_days, dtype=int)
        np.minimum.at(first_seen, placed["u"].to_numpy(), placed["d"].to_numpy())
        signup = pd.to_datetime(profile["signup_at"], utc=True).dt.tz_localize(None).to_numpy()
        signup_day = (signup.astype("datetime64[D]") - day0).astype("timedelta64[D]").astype("float64")
        signup_day = np.where(np.isnat(signup), n_days, np.clip(signup_day, 0, n_days))
        start = np.minimum(first_seen, signup_day.astype(int))
        present = np.arange(n_days)[None, :] >= start[:, None]
        return cls(ids.to_numpy(dtype=object), profile, day0, n_days, placed, present)

    def of(self, kinds: tuple[str, ...]) -> pd.DataFrame:
        return self.events[self.events["event_type"].isin([str(k) for k in kinds])]

    def daily(
        self,
        kinds: tuple[str, ...],
        bins: str | None = None,
        width: int = 1,
        weekend: bool | None = None,
    ) -> np.ndarray:
        """Event counts per (user, day[, bin]); of weekend days or of weekdays only if `weekend` says."""
        chosen = self.of(kinds)
        if weekend is not None:
            chosen = chosen[chosen["weekend"] == weekend]
        shape = (self.n_users, self.n_days) if bins is None else (self.n_users, self.n_days, width)
        counts = np.zeros(shape, dtype=np.float32)
        index: tuple[np.ndarray, ...] = (chosen["u"].to_numpy(), chosen["d"].to_numpy())
        if bins is not None:
            index = (*index, chosen[bins].to_numpy())
        np.add.at(counts, index, 1.0)
        return counts

    def last_at(self, kinds: tuple[str, ...]) -> np.ndarray:
        """Per (user, day): the latest event time (ns since epoch) up to that day's end, or -1."""
        chosen = self.of(kinds)
        latest = np.full((self.n_users, self.n_days), -1, dtype=np.int64)
        np.maximum.at(latest, (chosen["u"].to_numpy(), chosen["d"].to_numpy()), chosen["ns"].to_numpy())
        return np.maximum.accumulate(latest, axis=1)

    def row_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """The (user, day) of each table row, day by day: parquet's row-group statistics then let a
        read of one day's snapshot (an audience's, features.audiences) skip every other day."""
        d, u = np.nonzero(self.present.T)
        return u, d

    def rows(self, columns: dict[str, np.ndarray | list]) -> pd.DataFrame:
        """Flatten (users × days[ × k]) arrays into one row per present (user, day), in row_positions."""
        u, d = self.row_positions()
        frame = pd.DataFrame(
            {
                "user_id": self.user_ids[u],
                "event_timestamp": pd.to_datetime(self.as_of[d]).tz_localize("UTC"),
            }
        )
        for name, values in columns.items():
            array = np.asarray(values)
            picked = array[u, d]
            frame[name] = list(picked.astype(np.float32)) if picked.ndim == 2 else picked
        return frame


def trailing(daily: np.ndarray, window: int) -> np.ndarray:
    """Sums over the last `window` days including the current one; days are axis 1."""
    total = np.cumsum(daily, axis=1, dtype=np.float64)
    shifted = np.zeros_like(total)
    shifted[:, window:] = total[:, :-window]
    return (total - shifted).astype(np.float32)


def decayed(daily: np.ndarray, half_life_days: float) -> np.ndarray:
    """Sums over all days up to and including the current one, each day weighing half as much every
    `half_life_days` days back: a habit fades rather than falling out of a window, so a rider back
    after a winter's closure still has last summer's hours. Days are axis 1."""
    keep = 0.5 ** (1.0 / half_life_days)
    out = np.empty_like(daily, dtype=np.float32)
    running = np.zeros_like(daily[:, 0], dtype=np.float64)
    for day in range(daily.shape[1]):
        running = running * keep + daily[:, day]
        out[:, day] = running
    return out


def smoothed_shares(counts: np.ndarray, prior_events: float) -> np.ndarray:
    """Each user's share of events per bin, shrunk toward that day's population shares.

    `counts` is (users × days × bins); a user with no events gets exactly the population's shares.
    """
    population = counts.sum(axis=0, keepdims=True)
    population_share = population / np.maximum(population.sum(axis=2, keepdims=True), 1e-9)
    flat = np.full(counts.shape[2], 1.0 / counts.shape[2], dtype=np.float32)
    population_share = np.where(population.sum(axis=2, keepdims=True) > 0, population_share, flat)
    totals = counts.sum(axis=2, keepdims=True)
    return ((counts + prior_events * population_share) / (totals + prior_events + 1e-9)).astype(np.float32)


def _profile(grid: _Grid, settings: Settings) -> dict[str, np.ndarray]:
    profile = grid.users
    age = _profile_age(grid)
    opt_ins = {channel: _opt_in_by_day(grid, channel) for channel in ("push", "sms", "email")}
    return {
        "timezone": np.repeat(profile["timezone"].to_numpy(dtype=object)[:, None], grid.n_days, axis=1),
        "country": np.repeat(profile["country"].to_numpy(dtype=object)[:, None], grid.n_days, axis=1),
        "platform": np.repeat(profile["platform"].to_numpy(dtype=object)[:, None], grid.n_days, axis=1),
        "push_opt_in": opt_ins["push"],
        "sms_opt_in": opt_ins["sms"],
        "email_opt_in": opt_ins["email"],
        "days_since_signup": np.where(np.isnan(age), np.nan, np.floor(age)).astype(np.float32),
    }


def _opt_in_by_day(grid: _Grid, channel: str) -> np.ndarray:
    """Whether the user could be reached on `channel` at each day's end.

    The users file holds today's state; opt_in / opt_out / unsubscribed events (channel missing
    means push) say when it changed, so a user who unsubscribed on day 40 was reachable on day 20.
    """
    changes = grid.events[
        grid.events["event_type"].isin(["opt_in", "opt_out", "unsubscribed"])
        & (grid.events["channel"].fillna("push").replace({"sandbox": "push"}) == channel)
    ].sort_values("ns")
    now = grid.users[f"{channel}_opt_in"].to_numpy(dtype=bool)
    state = np.repeat(now[:, None], grid.n_days, axis=1)
    if changes.empty:
        return state
    # Before a user's first change they were in the opposite of what that change set.
    firsts = changes.drop_duplicates("u", keep="first")
    before = firsts["event_type"].to_numpy() != "opt_in"
    state[firsts["u"].to_numpy(), :] = before[:, None]
    for u, d, kind in changes[["u", "d", "event_type"]].itertuples(index=False):
        state[u, d:] = kind == "opt_in"
    return state


def _engagement(grid: _Grid, settings: Settings) -> dict[str, np.ndarray]:
    window, prior = settings.engagement_window_days, settings.engagement_prior_events
    activity = trailing(grid.daily(ACTIVITY, "hour", 24), window)
    weekend_only = trailing(grid.daily(ACTIVITY, "hour", 24, weekend=True), window)
    push = trailing(grid.daily(PUSH_ENGAGEMENT, "hour", 24), window)
    totals = activity.sum(axis=2)
    return {
        "activity_by_hour": smoothed_shares(activity, prior),
        "activity_by_hour_weekend": smoothed_shares(weekend_only, prior),
        "push_engagement_by_hour": smoothed_shares(push, prior),
        "weekend_activity_share": np.where(
            totals > 0, weekend_only.sum(axis=2) / np.maximum(totals, 1), np.nan
        ),
        "activity_events": totals,
        "push_engagements": push.sum(axis=2),
    }


def _hour_habits(grid: _Grid, settings: Settings) -> dict[str, np.ndarray]:
    """Each user's engagement by local hour as counts (not shares), so a model sees how much history
    stands behind a habit: recency-weighted on weekdays and on weekend days, by kind, and all time."""
    half_life = settings.habit_half_life_days
    weekdays = grid.daily(HABIT, "hour", 24, weekend=False)
    weekends = grid.daily(HABIT, "hour", 24, weekend=True)
    all_time = np.cumsum(weekdays + weekends, axis=1, dtype=np.float32)
    return {
        "hours_weekday_recent": decayed(weekdays, half_life),
        "hours_weekend_recent": decayed(weekends, half_life),
        "hours_purchase_recent": decayed(grid.daily((EventType.purchase,), "hour", 24), half_life),
        "hours_push_recent": decayed(grid.daily(PUSH_ENGAGEMENT, "hour", 24), half_life),
        "hours_all_time": all_time,
        "habit_events": all_time.sum(axis=2),
    }


def _rfm(grid: _Grid, settings: Settings) -> dict[str, np.ndarray]:
    purchases = grid.of((EventType.purchase,))
    spend = np.zeros((grid.n_users, grid.n_days), dtype=np.float64)
    np.add.at(
        spend,
        (purchases["u"].to_numpy(), purchases["d"].to_numpy()),
        purchases["value"].fillna(0.0).to_numpy(),
    )
    frequency = trailing(grid.daily((EventType.purchase,)), RFM_WINDOW_DAYS)
    monetary = trailing(spend, RFM_WINDOW_DAYS)
    as_of_ns = grid.as_of.astype("datetime64[ns]").view("int64")[None, :]
    last_purchase = grid.last_at((EventType.purchase,))
    recency = np.where(last_purchase >= 0, (as_of_ns - last_purchase) / NS_PER_DAY, np.nan).astype(np.float32)
    last_active = grid.last_at(ACTIVE)
    inactive_days = np.where(last_active >= 0, (as_of_ns - last_active) / NS_PER_DAY, np.nan).astype(
        np.float32
    )

    buyers = frequency > 0
    r_score = _quintile_score(-np.nan_to_num(recency, nan=np.inf), buyers)
    f_score = _quintile_score(frequency, buyers)
    m_score = _quintile_score(monetary, buyers)
    return {
        "recency_days": recency,
        "frequency_90d": frequency,
        "monetary_90d": monetary,
        "r_score": r_score,
        "f_score": f_score,
        "m_score": m_score,
        "rfm_segment": _rfm_segment(r_score, f_score, buyers),
        "rfm_cell": _rfm_cell(r_score, f_score, m_score, buyers),
        "days_since_active": inactive_days,
        "lifecycle_stage": _lifecycle(_profile_age(grid), inactive_days, settings),
    }


def _profile_age(grid: _Grid) -> np.ndarray:
    """Days since signup at each snapshot (NaN where the signup is unknown)."""
    signup = (
        pd.to_datetime(grid.users["signup_at"], utc=True)
        .dt.tz_localize(None)
        .to_numpy()
        .astype("datetime64[ns]")
    )
    return (grid.as_of.astype("datetime64[ns]")[None, :] - signup[:, None]) / np.timedelta64(1, "D")


def _quintile_score(values: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """1-5 by quintile of `values` among the eligible users of each day; 0 for the others."""
    scores = np.zeros(values.shape, dtype=np.int64)
    for day in range(values.shape[1]):
        members = np.flatnonzero(eligible[:, day])
        if members.size == 0:
            continue
        ranks = pd.Series(values[members, day]).rank(pct=True, method="average").to_numpy()
        scores[members, day] = np.clip(np.ceil(ranks * 5), 1, 5).astype(np.int64)
    return scores


# The models' coarse RFM group (`rfm_segment`), from recency and frequency scores: part of the
# click and variant feature services' contracts since v1, so its values never change meaning.
RFM_SEGMENTS = ("champions", "loyal", "promising", "at_risk", "hibernating", "needs_attention", "no_purchase")

# The named RFM cells operators choose audiences by (`rfm_cell`), by recency score (rows, 5 = bought
# most recently) and the mean of the frequency and monetary scores (columns, rounded half up), as
# marketing teams draw the grid. Scores are quintiles among the users who bought in the last
# RFM_WINDOW_DAYS, so every cell is relative to this app's own customers that day. Users who did
# not buy in the window are `no_purchase`. (A new column, not new values of `rfm_segment`: on the
# demo's history the variant model learns less from eleven cells than from the five groups.)
RFM_GRID = (
    # FM:  1                 2                 3                 4            5
    ("lost", "hibernating", "at_risk", "cant_lose", "cant_lose"),  # R = 1
    ("hibernating", "about_to_sleep", "at_risk", "at_risk", "cant_lose"),  # R = 2
    ("about_to_sleep", "need_attention", "need_attention", "loyal", "loyal"),  # R = 3
    ("promising", "potential", "potential", "loyal", "champions"),  # R = 4
    ("new", "potential", "potential", "champions", "champions"),  # R = 5
)
RFM_CELLS = (
    "champions",
    "loyal",
    "potential",
    "new",
    "promising",
    "need_attention",
    "about_to_sleep",
    "at_risk",
    "cant_lose",
    "hibernating",
    "lost",
    "no_purchase",
)
LIFECYCLE_STAGES = ("new", "active", "sleeping", "churned")


def _rfm_segment(r: np.ndarray, f: np.ndarray, buyers: np.ndarray) -> np.ndarray:
    """The models' coarse RFM group from recency and frequency scores (RFM_SEGMENTS)."""
    segment = np.full(r.shape, "no_purchase", dtype=object)
    rules = [
        ((r >= 4) & (f >= 4), "champions"),
        ((r >= 3) & (f >= 3), "loyal"),
        ((r >= 4) & (f <= 2), "promising"),
        ((r <= 2) & (f >= 3), "at_risk"),
        ((r <= 2) & (f <= 2), "hibernating"),
    ]
    segment[buyers] = "needs_attention"
    for mask, name in reversed(rules):
        segment[buyers & mask] = name
    return segment


def _rfm_cell(r: np.ndarray, f: np.ndarray, m: np.ndarray, buyers: np.ndarray) -> np.ndarray:
    """Each buyer's named cell of RFM_GRID; `no_purchase` for the others."""
    grid = np.array(RFM_GRID, dtype=object)
    fm = np.floor((f + m) / 2 + 0.5).astype(int)
    cells = grid[np.clip(r, 1, 5) - 1, np.clip(fm, 1, 5) - 1]
    return np.where(buyers, cells, "no_purchase").astype(object)


def _lifecycle(age_days: np.ndarray, inactive_days: np.ndarray, settings: Settings) -> np.ndarray:
    stage = np.full(inactive_days.shape, "churned", dtype=object)
    stage[inactive_days <= settings.lifecycle_churned_days] = "sleeping"
    stage[inactive_days <= settings.lifecycle_active_days] = "active"
    stage[age_days < settings.lifecycle_new_days] = "new"
    return stage


class LabelFailed(ValueError):
    """A custom label whose rule cannot be evaluated on the tables (a field no longer there)."""


def _custom_labels(grid: _Grid, built: dict[str, pd.DataFrame], definitions: list[LabelVersion]) -> pa.Table:
    """The `user_labels` table: per (user, day) row, the names of the custom labels whose rule holds
    on that day's snapshot, over every other table's columns, the users file's attributes and the
    event log up to the snapshot (`did X in last N days` counts whole UTC days: the snapshot's day
    and the N - 1 before it)."""
    first = next(iter(built.values()))
    held = np.zeros((len(first), len(definitions)), dtype=bool)
    columns = _GridColumns(grid, built)
    for k, label in enumerate(definitions):
        try:
            held[:, k] = evaluate(parse(label.rule or ""), columns)
        except (KeyError, RuleError) as exc:
            raise LabelFailed(f"custom label {label.name!r} (v{label.version}): {exc}") from None
    names = np.array([label.name for label in definitions], dtype=object)
    offsets = np.concatenate([[0], np.cumsum(held.sum(axis=1))]).astype(np.int32)
    values = pa.array(names[np.nonzero(held)[1]].tolist(), type=pa.string())
    return pa.table(
        {
            "user_id": pa.array(first["user_id"].to_numpy(), type=pa.string()),
            "event_timestamp": pa.array(first["event_timestamp"]),
            "labels": pa.ListArray.from_arrays(pa.array(offsets), values),
        }
    )


class _GridColumns:
    """`pushplan.audience_rules.Columns` over every (user, day) row of the built tables."""

    def __init__(self, grid: _Grid, built: dict[str, pd.DataFrame]) -> None:
        self.grid = grid
        self.frames = built
        self.u, self.d = grid.row_positions()

    def column(self, name: str) -> pd.Series:
        for frame in self.frames.values():
            if name in frame:
                return frame[name]
        kinds = attributes_of(self.grid.users)
        if name in kinds:
            return as_kind(self.grid.users[name], kinds[name]).iloc[self.u].reset_index(drop=True)
        raise KeyError(f"no column {name!r} in the feature tables or the users file")

    def did(self, event: str, days: int) -> np.ndarray:
        # Any event name the rule was checked against: built-in or the app's own (`coupon_claimed`).
        counts = trailing(self.grid.daily((event,)), days)
        return np.asarray(counts[self.u, self.d] > 0)


def _fatigue(grid: _Grid) -> dict[str, np.ndarray]:
    sends = grid.daily((EventType.push_sent,))
    clicks = grid.daily((EventType.push_clicked,))
    last_push, last_click = grid.last_at((EventType.push_sent,)), grid.last_at((EventType.push_clicked,))
    return {
        "sends_1d": sends,
        "sends_7d": trailing(sends, 7),
        "sends_30d": trailing(sends, 30),
        "clicks_1d": clicks,
        "clicks_7d": trailing(clicks, 7),
        "clicks_30d": trailing(clicks, 30),
        "last_push_epoch_s": _epoch_seconds(last_push),
        "last_click_epoch_s": _epoch_seconds(last_click),
    }


def _epoch_seconds(ns: np.ndarray) -> np.ndarray:
    """Instants as float seconds since 1970, NaN for never: a number every online store keeps as is."""
    return np.where(ns >= 0, ns / 1e9, np.nan)


def _tag_affinity(grid: _Grid, settings: Settings, tags_of: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Smoothed click rate per tag over each user's whole history (variants' tags from the catalogue)."""
    width = len(VARIANT_TAGS)
    sends = np.zeros((grid.n_users, grid.n_days, width), dtype=np.float32)
    clicks = np.zeros_like(sends)
    for kind, target in ((EventType.push_sent, sends), (EventType.push_clicked, clicks)):
        chosen = grid.of((kind,))
        tags = (
            np.stack([tags_of.get(v, np.zeros(width, dtype=np.float32)) for v in chosen["variant_id"]])
            if len(chosen)
            else np.zeros((0, width), dtype=np.float32)
        )
        np.add.at(target, (chosen["u"].to_numpy(), chosen["d"].to_numpy()), tags)
    sends, clicks = np.cumsum(sends, axis=1), np.cumsum(clicks, axis=1)
    population = clicks.sum(axis=0) / np.maximum(sends.sum(axis=0), 1.0)  # (days × tags)
    # The prior is a number of clicks, turned into sends at each day's overall click rate, so the
    # shrinkage means the same whatever the app's click rate is.
    overall = clicks.sum(axis=(0, 2)) / np.maximum(sends.sum(axis=(0, 2)), 1.0)  # (days,)
    prior = settings.affinity_prior_clicks / np.maximum(overall, 1e-3)
    affinity = (clicks + prior[None, :, None] * population[None]) / (sends + prior[None, :, None])
    columns: dict[str, np.ndarray] = {
        f"affinity_{tag}": affinity[:, :, k] for k, tag in enumerate(VARIANT_TAGS)
    }
    columns["tagged_sends"] = sends.max(axis=2)
    return columns


def _variant_tags(variants: pd.DataFrame) -> dict[str, np.ndarray]:
    position = {tag: k for k, tag in enumerate(VARIANT_TAGS)}
    out: dict[str, np.ndarray] = {}
    for variant_id, tags in zip(variants["variant_id"], variants["tags"], strict=True):
        vector = np.zeros(len(VARIANT_TAGS), dtype=np.float32)
        for tag in tags:
            if tag in position:
                vector[position[tag]] = 1.0
        out[variant_id] = vector
    return out
