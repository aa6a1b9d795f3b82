"""Request-time features: pure pandas functions behind the on-demand feature view, tested like any function.

Inputs are the user's stored features plus the request: `request_time`, `candidate_local_hour`
(0-23, the hour being scored, in the user's zone), `window_start` / `window_end` (the campaign's
send window) and `variant_tags` (comma-separated tags of the variant being scored).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pushplan.domain import VARIANT_TAGS


def epoch_seconds(values: pd.Series) -> np.ndarray:
    """Seconds since 1970 of timestamps, whatever their unit (Feast's paths hand over ns or µs)."""
    stamps = pd.to_datetime(values, utc=True)
    return ((stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)


def _hour_values(vectors: pd.Series, hours: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows × 24) float matrix of the vectors, which rows have a 24-vector and an hour, and the hours
    as whole numbers (truncated, as int() does): the rows then index the matrix without a loop."""
    values = vectors.to_numpy()
    has = np.fromiter((v is not None and len(v) == 24 for v in values), dtype=bool, count=len(values))
    valid = has & ~np.isnan(hours)
    matrix = np.zeros((len(values), 24))
    if has.all() and len(values):
        matrix = np.asarray(np.stack(values), dtype=float).reshape(len(values), 24)
    else:
        for row in np.flatnonzero(has):
            matrix[row] = np.asarray(values[row], dtype=float)
    whole = np.where(valid, np.trunc(np.where(valid, hours, 0.0)), 0.0).astype(np.int64)
    return matrix, valid, whole


def _at_hour(vectors: pd.Series, hours: np.ndarray, offset: int = 0) -> np.ndarray:
    return _pick(_hour_values(vectors, hours), offset)


def _pick(values: tuple[np.ndarray, np.ndarray, np.ndarray], offset: int = 0) -> np.ndarray:
    matrix, valid, whole = values
    picked = matrix[np.arange(len(matrix)), (whole + offset) % 24]
    return np.where(valid, picked, np.nan)


def _hour_rank(vectors: pd.Series, hours: np.ndarray) -> np.ndarray:
    """0 for the user's most active hour, 23 for the least."""
    return _rank(_hour_values(vectors, hours))


def _rank(values: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    matrix, valid, whole = values
    at = matrix[np.arange(len(matrix)), whole % 24]
    ranks = (matrix > at[:, None]).sum(axis=1).astype(float)
    return np.where(valid, ranks, np.nan)


def _tag_arrays(inputs: pd.DataFrame) -> dict[str, np.ndarray]:
    affinity = inputs[[f"affinity_{tag}" for tag in VARIANT_TAGS]].to_numpy(dtype=float)
    # Few distinct tag lists for many rows: each list is parsed once.
    which, lists = pd.factorize(inputs["variant_tags"].fillna("").astype(str))
    masks = np.zeros((len(lists) + 1, len(VARIANT_TAGS)))
    for k, tags in enumerate(lists):
        for tag in str(tags).split(","):
            if tag.strip() in VARIANT_TAGS:
                masks[k, VARIANT_TAGS.index(tag.strip())] = 1.0
    chosen = masks[which]
    counts = chosen.sum(axis=1)
    with np.errstate(invalid="ignore"):
        mean = np.where(counts > 0, (affinity * chosen).sum(axis=1) / counts, np.nan)
        top = np.where(counts > 0, np.where(chosen > 0, affinity, -np.inf).max(axis=1), np.nan)
    return {"tag_affinity_mean": mean, "tag_affinity_max": top, "variant_tag_count": counts}


def tag_match_features(inputs: pd.DataFrame) -> pd.DataFrame:
    """How much the user likes the variant's tags: mean and max of their tag affinities, and the count."""
    return pd.DataFrame(_tag_arrays(inputs), index=inputs.index)


def request_context_features(inputs: pd.DataFrame) -> pd.DataFrame:
    """Features of (user, request): engagement at the candidate hour, tag match, recency, window.

    Computed as whole arrays and put in one frame at the end: the same numbers for one user or a
    million, without a pandas operation per row or per column.
    """
    hours = pd.to_numeric(inputs["candidate_local_hour"], errors="coerce").to_numpy(dtype=float)
    now = epoch_seconds(inputs["request_time"])
    activity = _hour_values(inputs["activity_by_hour"], hours)
    at_hour = _pick(activity)
    start, end = epoch_seconds(inputs["window_start"]), epoch_seconds(inputs["window_end"])
    out = {
        "engagement_at_hour": at_hour,
        "engagement_near_hour": at_hour + _pick(activity, -1) + _pick(activity, +1),
        "push_engagement_at_hour": _at_hour(inputs["push_engagement_by_hour"], hours),
        "hour_rank": _rank(activity),
        **_tag_arrays(inputs),
        "hours_since_last_push": (now - inputs["last_push_epoch_s"].to_numpy(dtype=float)) / 3600,
        "hours_since_last_click": (now - inputs["last_click_epoch_s"].to_numpy(dtype=float)) / 3600,
        "window_hours": (end - start) / 3600,
        "hours_to_window_end": (end - now) / 3600,
    }
    return pd.DataFrame(out, index=inputs.index).astype("float64")
