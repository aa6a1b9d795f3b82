"""Local time for users in their own IANA zones, vectorised over many users at once.

Every decision about "when" in pushplan is in the user's local time (send hour, quiet hours,
engagement by hour), and every stored instant is UTC; these two helpers are the only crossing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def local_clock(when_utc: np.ndarray, zones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local hour (0-23) and whether it is a weekend, for naive-UTC datetime64 values in their zones."""
    hour = np.empty(when_utc.size, dtype=int)
    weekend = np.empty(when_utc.size, dtype=bool)
    for zone in pd.unique(zones):
        members = zones == zone
        local = pd.DatetimeIndex(when_utc[members]).tz_localize("UTC").tz_convert(zone)
        hour[members] = local.hour
        weekend[members] = local.dayofweek >= 5
    return hour, weekend


# Weights of the hours around a candidate (-2 … +2) when choosing a send hour: response curves are
# smooth and each hour's score is a noisy estimate, so the centre of the most engaged few hours
# beats the single best-scored hour (on the simulator, 0.95 against 0.89 of the best; docs/models.md);
# the centre weighs a little more, so a lone peak is chosen over its shoulders.
HOUR_KERNEL = np.array([0.5, 1.0, 1.25, 1.0, 0.5])


def smooth_hours(scores: np.ndarray) -> np.ndarray:
    """(rows × 24) hour scores summed over their neighbours with HOUR_KERNEL, wrapping at midnight."""
    return np.asarray(sum(w * np.roll(scores, 2 - k, axis=1) for k, w in enumerate(HOUR_KERNEL)))


def to_utc(local: np.ndarray, zones: np.ndarray) -> np.ndarray:
    """Naive local datetime64 values in their zones → naive-UTC datetime64[ns].

    Across a daylight-saving change, a repeated hour is read as its first (summer-time) instance
    and a skipped one is moved forward, as a clock shown to the user would be.
    """
    out = np.empty(local.size, dtype="datetime64[ns]")
    for zone in pd.unique(zones):
        members = zones == zone
        stamps = pd.DatetimeIndex(local[members]).tz_localize(
            zone, ambiguous=np.ones(int(members.sum()), dtype=bool), nonexistent="shift_forward"
        )
        out[members] = stamps.tz_convert("UTC").tz_localize(None).to_numpy()
    return out
