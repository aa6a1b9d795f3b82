"""Request-time features: pure functions behind the on-demand feature view, tested like any function.

Inputs are the user's stored features plus the request: `request_time`, `candidate_local_hour`
(0-23, the hour being scored, in the user's zone), `window_start` / `window_end` (the campaign's
send window) and `variant_tags` (comma-separated tags of the variant being scored). They come as a
pandas frame (Feast's on-demand view, training) or as `features.columns.Columns` (serving's reads):
`request_context_arrays` is the one computation, on arrays, for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from features.columns import hour_matrix, numbers
from pushplan.domain import VARIANT_TAGS


def epoch_seconds(values: Any) -> np.ndarray:
    """Seconds since 1970 of timestamps, whatever their unit (Feast's paths hand over ns or µs)."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "M":  # Columns: UTC datetime64
        return values.astype("datetime64[ns]").astype(np.int64) / 1e9
    stamps = pd.to_datetime(values, utc=True)
    return np.asarray((stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1), dtype=float)


def _hour_values(vectors: Any, hours: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows × 24) float matrix of the vectors (0 where a row has none), which rows have a 24-vector
    and an hour, and the hours as whole numbers (truncated, as int() does): the rows then index the
    matrix without a loop."""
    matrix = hour_matrix(vectors)
    has = ~np.isnan(matrix).any(axis=1)
    if not has.all():
        matrix = np.where(has[:, None], matrix, 0.0)
    valid = has & ~np.isnan(hours)
    whole = np.where(valid, np.trunc(np.where(valid, hours, 0.0)), 0.0).astype(np.int64)
    return matrix, valid, whole


def _at_hour(vectors: Any, hours: np.ndarray, offset: int = 0) -> np.ndarray:
    return _pick(_hour_values(vectors, hours), offset)


def _pick(values: tuple[np.ndarray, np.ndarray, np.ndarray], offset: int = 0) -> np.ndarray:
    matrix, valid, whole = values
    picked = matrix[np.arange(len(matrix)), (whole + offset) % 24]
    return np.where(valid, picked, np.nan)


def _hour_rank(vectors: Any, hours: np.ndarray) -> np.ndarray:
    """0 for the user's most active hour, 23 for the least."""
    return _rank(_hour_values(vectors, hours))


def _rank(values: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    matrix, valid, whole = values
    at = matrix[np.arange(len(matrix)), whole % 24]
    ranks = (matrix > at[:, None]).sum(axis=1).astype(float)
    return np.where(valid, ranks, np.nan)


def affinities(inputs: Mapping[str, Any]) -> np.ndarray:
    """(rows × VARIANT_TAGS) of the users' tag affinities, as floats (a frame or Columns)."""
    return np.column_stack([numbers(inputs[f"affinity_{tag}"]) for tag in VARIANT_TAGS])


def tag_mask(tags: str) -> np.ndarray:
    """1.0 at each of VARIANT_TAGS a comma-separated tag list names (unknown tags are ignored)."""
    mask = np.zeros(len(VARIANT_TAGS))
    for tag in tags.split(","):
        if tag.strip() in VARIANT_TAGS:
            mask[VARIANT_TAGS.index(tag.strip())] = 1.0
    return mask


def tag_match(affinity: np.ndarray, chosen: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and max of each row's affinities over its chosen tags, and how many it chose."""
    counts = chosen.sum(axis=1)
    with np.errstate(invalid="ignore"):
        mean = np.where(counts > 0, (affinity * chosen).sum(axis=1) / counts, np.nan)
        top = np.where(counts > 0, np.where(chosen > 0, affinity, -np.inf).max(axis=1), np.nan)
    return {"tag_affinity_mean": mean, "tag_affinity_max": top, "variant_tag_count": counts}


def _tag_arrays(inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    # Few distinct tag lists for many rows: each list is parsed once.
    tags = inputs["variant_tags"]
    tags = tags.to_numpy(dtype=object) if isinstance(tags, pd.Series) else np.asarray(tags, dtype=object)
    which, lists = pd.factorize(np.array(["" if t is None or t != t else str(t) for t in tags], dtype=object))
    masks = np.zeros((len(lists) + 1, len(VARIANT_TAGS)))
    for k, listed in enumerate(lists):
        masks[k] = tag_mask(str(listed))
    return tag_match(affinities(inputs), masks[which])


def tag_match_features(inputs: pd.DataFrame) -> pd.DataFrame:
    """How much the user likes the variant's tags: mean and max of their tag affinities, and the count."""
    return pd.DataFrame(_tag_arrays(inputs), index=inputs.index)


def request_context_features(inputs: pd.DataFrame) -> pd.DataFrame:
    """Features of (user, request): engagement at the candidate hour, tag match, recency, window."""
    return pd.DataFrame(request_context_arrays(inputs), index=inputs.index)


def request_context_arrays(inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """`request_context_features` as float64 arrays, from a frame or Columns: the same numbers for
    one user or a million, without a pandas operation per row or per column.
    """
    hours = numbers(inputs["candidate_local_hour"])
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
        "hours_since_last_push": (now - numbers(inputs["last_push_epoch_s"])) / 3600,
        "hours_since_last_click": (now - numbers(inputs["last_click_epoch_s"])) / 3600,
        "window_hours": (end - start) / 3600,
        "hours_to_window_end": (end - now) / 3600,
    }
    return {name: np.asarray(values, dtype=np.float64) for name, values in out.items()}
