"""Labelled examples from the event log, joined point-in-time to their Feast features, split by time.

Two kinds of examples serve the three models:
- sends: every `push_sent` with a known variant, labelled 1 if the user clicked that campaign
  within the label window; its context is the local hour and weekday it was sent at and the
  variant's text and tags;
- engagements: app opens, purchases, push opens and clicks, labelled with their local hour (at
  most two per user and day, so very active users do not dominate).
Each example's features are read as of its own timestamp, so nothing later leaks in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd
from feast import FeatureStore

from features.event_store import EventStore
from features.store import training_set
from features.tables import HABIT
from pushplan.clock import local_clock
from pushplan.domain import EventType
from pushplan.settings import Settings
from training.frames import variant_features
from training.specs import ModelSpec

# The send-hour model's examples are the engagements its habit features count.
ENGAGEMENT = HABIT


class NoExamples(ValueError):
    """A model has nothing (or too little) to learn from; the message says what is missing and how to
    supply it."""


SENDS_MISSING = (
    "the click and variant models need `push_sent` events (with campaign_id and variant_id) and the "
    "`push_clicked` events that followed: import your send log with `pushplan events import`, or send "
    "a campaign through pushplan first"
)
CATALOGUE_MISSING = (
    "the click and variant models need `push_sent` events whose variants the campaign catalogue knows "
    "(their titles and tags): import campaigns.json with `pushplan events import campaigns.json`"
)
ENGAGEMENTS_MISSING = (
    "the send-hour model needs engagement events (app_open, purchase, push_opened or push_clicked) "
    "with their timestamps: import them with `pushplan events import events.csv`"
)


@dataclass
class Split:
    """Examples with their features: train (fit), valid (early stopping, calibration), test (judging)."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    cutoff: pd.Timestamp  # test examples are at or after it
    first: pd.Timestamp
    last: pd.Timestamp
    variants: dict[str, pd.DataFrame]  # each campaign's variants (title, tags), for scoring choices


def zones_of(store: EventStore, settings: Settings, user_ids: pd.Series) -> np.ndarray:
    users = store.read_users()
    zones = dict(zip(users["user_id"], users["timezone"], strict=True)) if not users.empty else {}
    return user_ids.map(zones).fillna(settings.default_timezone).to_numpy(dtype=object)


def send_examples(settings: Settings, window: timedelta) -> pd.DataFrame:
    """push_sent events with their click label, local context and variant features."""
    store = EventStore(settings)
    events = store.read_events(
        ["user_id", "event_type", "timestamp", "campaign_id", "variant_id", "propensity"],
        event_types=[EventType.push_sent.value, EventType.push_clicked.value],
    )
    if not (events["event_type"] == EventType.push_sent.value).any():
        raise NoExamples(SENDS_MISSING)
    sends = events[(events["event_type"] == EventType.push_sent.value) & events["variant_id"].notna()].copy()
    clicks = events[events["event_type"] == EventType.push_clicked.value]
    first_click = clicks.groupby(["user_id", "campaign_id"])["timestamp"].min().rename("clicked_at")
    sends = sends.join(first_click, on=["user_id", "campaign_id"])
    delay = sends["clicked_at"] - sends["timestamp"]
    sends["label"] = ((delay >= pd.Timedelta(0)) & (delay <= window)).astype(int)
    # A send too close to the end of the log has not had its whole window to be clicked.
    sends = sends[sends["timestamp"] <= events["timestamp"].max() - window]

    variants = store.read_variants()
    sends = sends.merge(variants[["variant_id", "title", "tags"]], on="variant_id", how="inner")
    if sends.empty:
        raise NoExamples(CATALOGUE_MISSING)
    hour, weekend = local_clock(
        sends["timestamp"].dt.tz_localize(None).to_numpy(), zones_of(store, settings, sends["user_id"])
    )
    sends["candidate_local_hour"] = hour
    sends["is_weekend"] = weekend.astype(float)
    sends["variant_tags"] = sends["tags"].map(lambda tags: ",".join(map(str, tags)))
    sends["request_time"] = sends["timestamp"]
    sends["window_start"] = sends["timestamp"]
    sends["window_end"] = sends["timestamp"] + window
    text = variant_features(sends["title"].tolist(), sends["tags"].tolist())
    sends = pd.concat([sends.reset_index(drop=True), text], axis=1)
    return sends.rename(columns={"timestamp": "event_timestamp"}).drop(columns=["clicked_at", "event_type"])


def engagement_examples(settings: Settings, max_per_user_day: int = 2, seed: int = 0) -> pd.DataFrame:
    """Engagement events labelled with their local hour (the send-hour model's examples)."""
    store = EventStore(settings)
    events = store.read_events(
        ["user_id", "event_type", "timestamp"], event_types=[e.value for e in ENGAGEMENT]
    )
    if events.empty:
        raise NoExamples(ENGAGEMENTS_MISSING)
    events["day"] = events["timestamp"].dt.floor("D")
    rng = np.random.default_rng(seed)
    events["draw"] = rng.random(len(events))
    events = events.sort_values("draw").groupby(["user_id", "day"]).head(max_per_user_day)
    hour, weekend = local_clock(
        events["timestamp"].dt.tz_localize(None).to_numpy(), zones_of(store, settings, events["user_id"])
    )
    out = pd.DataFrame(
        {
            "user_id": events["user_id"].to_numpy(),
            "event_timestamp": events["timestamp"].to_numpy(),
            "label": hour,
            "is_weekend": weekend.astype(float),
            "event_type": events["event_type"].to_numpy(),
        }
    )
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    return out.sort_values("event_timestamp", ignore_index=True)


def build_split(
    spec: ModelSpec, store: FeatureStore, settings: Settings, eval_days: int, seed: int = 0
) -> Split:
    """Examples for `spec` with features, split by time: the last `eval_days` days are the test set."""
    if spec.examples == "sends":
        assert spec.label_window is not None
        examples = send_examples(settings, spec.label_window)
    else:
        examples = engagement_examples(settings, seed=seed)
    if examples.empty:
        raise NoExamples(f"no {spec.examples} examples in the event store to train the {spec.name} model on")
    last = examples["event_timestamp"].max()
    cutoff = last.normalize() - pd.Timedelta(days=eval_days - 1)
    before = examples[examples["event_timestamp"] < cutoff]
    after = examples[examples["event_timestamp"] >= cutoff]
    before = _cap(before, spec.max_rows, seed)
    after = _cap(after, max(spec.max_rows // 3, 1), seed)
    valid_from = before["event_timestamp"].quantile(0.8)
    featured = training_set(
        store, settings, spec.feature_service, pd.concat([before, after], ignore_index=True)
    )
    train = featured[featured["event_timestamp"] < valid_from].reset_index(drop=True)
    valid = featured[(featured["event_timestamp"] >= valid_from) & (featured["event_timestamp"] < cutoff)]
    test = featured[featured["event_timestamp"] >= cutoff].reset_index(drop=True)
    if train.empty or valid.empty or test.empty:
        raise NoExamples(
            f"too little history to split for the {spec.name} model: need examples before and after "
            f"{cutoff:%Y-%m-%d} ({eval_days} evaluation days); import a longer history"
        )
    catalogue = EventStore(settings).read_variants()
    variants = {str(c): part.reset_index(drop=True) for c, part in catalogue.groupby("campaign_id")}
    return Split(
        train, valid.reset_index(drop=True), test, cutoff, examples["event_timestamp"].min(), last, variants
    )


def _cap(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """At most `rows` examples, drawn uniformly, kept in time order."""
    if len(frame) <= rows:
        return frame
    return frame.sample(n=rows, random_state=seed).sort_values("event_timestamp")
