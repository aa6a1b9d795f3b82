"""The send-hour model and the simple rules it must beat, both over the users' hour habits.

`HourBlend` is LightGBM's 24 hour probabilities mixed with the user's own hour histograms (weekday
or weekend as the planned day is, recent and all-time, raw and smoothed) and the population's. The
mixture's weights are learned per history size (0, 1–2, 3–9, 10+ engagements) on validation days
the trees did not train on, by EM on the likelihood of the hours users engaged in: a user with two
events is trusted a little, one with fifty a lot, in whatever measure the data says. It is one
scikit-learn estimator, logged and served as one MLflow model.

The rules (`RULES`) are what a practitioner would use instead: the population's most frequent hour,
each user's own most frequent hour, and each user's kernel-smoothed histogram shrunk toward the
population's. They are judged exactly as the model is (the hour `choose_hours` picks from their
scores), and served in its place when it loses (training.pipeline, serving.scoring).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from features.columns import hour_matrix, numbers
from pushplan.clock import smooth_hours

# Upper bounds (inclusive) of the history-size buckets, by engagements seen before the planned day.
HISTORY_BUCKETS = (("0", 0), ("1-2", 2), ("3-9", 9), ("10+", np.inf))
RULES = ("population_mode_hour", "user_mode_hour", "shrinkage_blend")
COMPONENTS = (
    "model",
    "day_type_recent",
    "recent",
    "all_time",
    "day_type_recent_smoothed",
    "all_time_smoothed",
    "population",
    "uniform",
)
HABIT_COLUMNS = ("hours_weekday_recent", "hours_weekend_recent", "hours_all_time", "habit_events")
# A bucket with fewer validation rows than this takes the weights fitted on all rows.
MIN_BUCKET_ROWS = 30


def history_bucket(events: np.ndarray) -> np.ndarray:
    """The index in HISTORY_BUCKETS of each row's count of past engagements (missing: none)."""
    counts = np.nan_to_num(np.asarray(events, dtype=float), nan=0.0)
    return np.searchsorted([upper for _, upper in HISTORY_BUCKETS], counts, side="left")


@dataclass(frozen=True)
class Population:
    """The population's shares of engagements by local hour, on weekdays and on weekend days."""

    weekday: np.ndarray
    weekend: np.ndarray
    overall: np.ndarray

    @classmethod
    def fit(cls, hours: np.ndarray, weekend: np.ndarray) -> Population:
        hours, weekend = np.asarray(hours, dtype=int), np.asarray(weekend, dtype=bool)

        def shares(chosen: np.ndarray) -> np.ndarray:
            counts = np.bincount(chosen, minlength=24).astype(float) + 0.5  # no hour exactly impossible
            return counts / counts.sum()

        overall = shares(hours)
        return cls(
            shares(hours[~weekend]) if (~weekend).any() else overall,
            shares(hours[weekend]) if weekend.any() else overall,
            overall,
        )

    @property
    def mode_hour(self) -> int:
        return int(self.overall.argmax())

    def of_day(self, weekend: np.ndarray) -> np.ndarray:
        """(rows × 24): each row's day type's shares."""
        return np.where(np.asarray(weekend, dtype=bool)[:, None], self.weekend, self.weekday)

    def as_dict(self) -> dict[str, list[float]]:
        return {k: np.round(getattr(self, k), 6).tolist() for k in ("weekday", "weekend", "overall")}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Population:
        return cls(*(np.asarray(values[k], dtype=float) for k in ("weekday", "weekend", "overall")))


@dataclass(frozen=True)
class Habits:
    """One frame's hour habits as arrays: counts on the planned day's type, all recent, all time."""

    day_type: np.ndarray
    recent: np.ndarray
    all_time: np.ndarray
    events: np.ndarray
    weekend: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame | Mapping[str, Any]) -> Habits:
        """From a frame or Columns holding the send_hour_v2 habit columns and `is_weekend`."""
        missing = [c for c in (*HABIT_COLUMNS, "is_weekend") if c not in frame]
        if missing:
            raise ValueError(
                f"the send-hour rules need {', '.join(missing)}: read the send_hour_v2 feature service "
                "(run `pushplan features build` and `pushplan features apply` after upgrading)"
            )
        weekday = np.nan_to_num(hour_matrix(frame["hours_weekday_recent"]))
        weekend_hours = np.nan_to_num(hour_matrix(frame["hours_weekend_recent"]))
        weekend = np.nan_to_num(numbers(frame["is_weekend"])) > 0
        return cls(
            np.where(weekend[:, None], weekend_hours, weekday),
            weekday + weekend_hours,
            np.nan_to_num(hour_matrix(frame["hours_all_time"])),
            np.nan_to_num(numbers(frame["habit_events"])),
            weekend,
        )


def shares(counts: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Rows of counts as shares; a row without any count takes the fallback's row."""
    total = counts.sum(axis=1, keepdims=True)
    return np.where(total > 0, counts / np.maximum(total, 1e-12), fallback)


def full_hours(proba: np.ndarray, classes: Any) -> np.ndarray:
    """A classifier's (rows × its classes) probabilities as (rows × 24): hours never seen get 0."""
    full = np.zeros((len(proba), 24))
    full[:, np.asarray(classes, dtype=int)] = proba
    return full


def fitted_rule_scores(
    rule: str, params: dict[str, Any], frame: pd.DataFrame | Mapping[str, Any]
) -> np.ndarray:
    """`rule_scores` with the parameters a training run fitted and stored (training.baselines)."""
    population = Population.from_dict(params["population"])
    return rule_scores(rule, Habits.of(frame), population, float(params["prior_events"]))


def rule_scores(rule: str, habits: Habits, population: Population, prior_events: float) -> np.ndarray:
    """(rows × 24) hour scores of a simple rule; `choose_hours` picks its hour as it does the model's."""
    n = len(habits.events)
    if rule == "population_mode_hour":
        return np.tile(np.eye(24)[population.mode_hour], (n, 1))
    if rule == "user_mode_hour":
        # Each user's most frequent hour; without history, the population's.
        best = np.where(habits.all_time.sum(axis=1) > 0, habits.all_time.argmax(axis=1), population.mode_hour)
        return np.eye(24)[best]
    if rule == "shrinkage_blend":
        # choose_hours smooths the scores over neighbouring hours: a smoothed histogram, shrunk.
        return habits.all_time + prior_events * population.overall
    raise ValueError(f"unknown send-hour rule {rule!r}; expected one of {', '.join(RULES)}")


class HourBlend(ClassifierMixin, BaseEstimator):
    """LightGBM's hour probabilities and the user's habits, mixed by weights per history size."""

    def __init__(self, model: Any = None, population: Population | None = None, weights: Any = None) -> None:
        self.model = model  # the FeatureFrame → LGBMClassifier pipeline
        self.population = population
        self.weights = weights  # (buckets × components)

    @property
    def classes_(self) -> np.ndarray:
        return np.arange(24)

    def components(self, model_proba: np.ndarray, habits: Habits) -> np.ndarray:
        """(components × rows × 24), every row of every component a distribution over the hours."""
        assert self.population is not None
        base = self.population.of_day(habits.weekend)
        n = len(habits.events)
        return np.stack(
            [
                model_proba,
                shares(habits.day_type, base),
                shares(habits.recent, base),
                shares(habits.all_time, base),
                shares(smooth_hours(habits.day_type), base),
                shares(smooth_hours(habits.all_time), base),
                base,
                np.full((n, 24), 1 / 24),
            ]
        )

    def fit_weights(self, model_proba: np.ndarray, frame: pd.DataFrame, hours: np.ndarray) -> HourBlend:
        """EM for the mixture weights of each history bucket, on rows the trees did not train on."""
        habits = Habits.of(frame)
        parts = self.components(model_proba, habits)
        likelihood = parts[:, np.arange(len(frame)), np.asarray(hours, dtype=int)].T  # rows × components
        bucket = history_bucket(habits.events)
        overall = _em(likelihood)
        weights = np.tile(overall, (len(HISTORY_BUCKETS), 1))
        for b in range(len(HISTORY_BUCKETS)):
            members = bucket == b
            if members.sum() >= MIN_BUCKET_ROWS:
                weights[b] = _em(likelihood[members])
        self.weights = weights
        return self

    def combine(self, model_proba: np.ndarray, frame: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """The blend's (rows × 24) probabilities from the trees' and the frame's habits."""
        habits = Habits.of(frame)
        weights = np.asarray(self.weights)[history_bucket(habits.events)]  # rows × components
        return np.einsum("rk,krh->rh", weights, self.components(model_proba, habits))

    def model_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return full_hours(self.model.predict_proba(frame), self.model.classes_)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.combine(self.model_proba(frame), frame)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_proba(frame).argmax(axis=1)

    def weights_table(self) -> dict[str, dict[str, float]]:
        """{bucket: {component: weight}}, for the run's report."""
        return {
            name: {c: round(float(w), 4) for c, w in zip(COMPONENTS, row, strict=True)}
            for (name, _), row in zip(HISTORY_BUCKETS, np.asarray(self.weights), strict=True)
        }


def _em(likelihood: np.ndarray, iterations: int = 300) -> np.ndarray:
    """Maximum-likelihood weights of a mixture whose components' likelihoods are given (rows × k)."""
    k = likelihood.shape[1]
    weights = np.full(k, 1.0 / k)
    if len(likelihood) == 0:
        return weights
    for _ in range(iterations):
        joint = likelihood * weights
        joint /= np.maximum(joint.sum(axis=1, keepdims=True), 1e-300)
        weights = joint.mean(axis=0)
    return weights
