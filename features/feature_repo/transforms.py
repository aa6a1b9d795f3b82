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


def _at_hour(vectors: pd.Series, hours: np.ndarray, offset: int = 0) -> np.ndarray:
    out = np.full(len(vectors), np.nan)
    for row, (vector, hour) in enumerate(zip(vectors, hours, strict=True)):
        if vector is not None and len(vector) == 24 and not np.isnan(hour):
            out[row] = float(vector[(int(hour) + offset) % 24])
    return out


def _hour_rank(vectors: pd.Series, hours: np.ndarray) -> np.ndarray:
    """0 for the user's most active hour, 23 for the least."""
    out = np.full(len(vectors), np.nan)
    for row, (vector, hour) in enumerate(zip(vectors, hours, strict=True)):
        if vector is not None and len(vector) == 24 and not np.isnan(hour):
            values = np.asarray(vector, dtype=float)
            out[row] = float((values > values[int(hour) % 24]).sum())
    return out


def tag_match_features(inputs: pd.DataFrame) -> pd.DataFrame:
    """How much the user likes the variant's tags: mean and max of their tag affinities, and the count."""
    affinity = np.stack([inputs[f"affinity_{tag}"].to_numpy(dtype=float) for tag in VARIANT_TAGS], axis=1)
    chosen = np.zeros_like(affinity)
    for row, tags in enumerate(inputs["variant_tags"].fillna("")):
        for tag in str(tags).split(","):
            if tag.strip() in VARIANT_TAGS:
                chosen[row, VARIANT_TAGS.index(tag.strip())] = 1.0
    counts = chosen.sum(axis=1)
    out = pd.DataFrame(index=inputs.index)
    with np.errstate(invalid="ignore"):
        out["tag_affinity_mean"] = np.where(counts > 0, (affinity * chosen).sum(axis=1) / counts, np.nan)
        out["tag_affinity_max"] = np.where(
            counts > 0, np.where(chosen > 0, affinity, -np.inf).max(axis=1), np.nan
        )
    out["variant_tag_count"] = counts
    return out


def request_context_features(inputs: pd.DataFrame) -> pd.DataFrame:
    """Features of (user, request): engagement at the candidate hour, tag match, recency, window."""
    hours = pd.to_numeric(inputs["candidate_local_hour"], errors="coerce").to_numpy(dtype=float)
    now = epoch_seconds(inputs["request_time"])
    out = pd.DataFrame(index=inputs.index)
    out["engagement_at_hour"] = _at_hour(inputs["activity_by_hour"], hours)
    out["engagement_near_hour"] = (
        out["engagement_at_hour"]
        + _at_hour(inputs["activity_by_hour"], hours, -1)
        + _at_hour(inputs["activity_by_hour"], hours, +1)
    )
    out["push_engagement_at_hour"] = _at_hour(inputs["push_engagement_by_hour"], hours)
    out["hour_rank"] = _hour_rank(inputs["activity_by_hour"], hours)

    out = pd.concat([out, tag_match_features(inputs)], axis=1)
    out["hours_since_last_push"] = (now - inputs["last_push_epoch_s"].to_numpy(dtype=float)) / 3600
    out["hours_since_last_click"] = (now - inputs["last_click_epoch_s"].to_numpy(dtype=float)) / 3600
    start, end = epoch_seconds(inputs["window_start"]), epoch_seconds(inputs["window_end"])
    out["window_hours"] = (end - start) / 3600
    out["hours_to_window_end"] = (end - now) / 3600
    return out.astype("float64")
