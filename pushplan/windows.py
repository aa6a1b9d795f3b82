"""Local send windows, the rules the planner, dispatch and the reports share: quiet hours in a user's
own zone, and the send slots of a campaign's window in a zone (every `slot_minutes` of local time,
and the window's own start)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from pushplan.clock import to_utc
from pushplan.settings import Settings


@dataclass(frozen=True)
class QuietHours:
    """Local hours when nothing is sent: from `start` (inclusive) to `end` (exclusive), across midnight."""

    # The defaults are the settings' own (PUSHPLAN_QUIET_START_HOUR / _END_HOUR), spelled once there.
    start: int = Settings.model_fields["quiet_start_hour"].default
    end: int = Settings.model_fields["quiet_end_hour"].default

    @classmethod
    def of(cls, settings: Settings) -> QuietHours:
        return cls(settings.quiet_start_hour, settings.quiet_end_hour)

    def mask(self) -> np.ndarray:
        hours = np.arange(24)
        if self.start == self.end:
            return np.zeros(24, dtype=bool)
        if self.start < self.end:
            return (hours >= self.start) & (hours < self.end)
        return (hours >= self.start) | (hours < self.end)


# The settings' own default (PUSHPLAN_SLOT_MINUTES), spelled once there.
SLOT_MINUTES: int = Settings.model_fields["slot_minutes"].default


@dataclass(frozen=True)
class WindowSlots:
    """The send slots of a window in one zone, in time order (one UTC instant each)."""

    send_at: np.ndarray  # int64 nanoseconds since the epoch, UTC, ascending and unique
    hour: np.ndarray  # the local hour of each instant
    local_iso: np.ndarray  # each instant in the zone, ISO 8601 with its offset


@lru_cache(maxsize=4096)
def window_slots(
    start: pd.Timestamp, end: pd.Timestamp, zone: str, minutes: int = SLOT_MINUTES
) -> WindowSlots:
    """The slots of [start, end) in `zone`: every `minutes` of local time from midnight, and the
    window's start itself, so a window that starts at 08:07 sends from 08:07 and one shorter than a
    slot sends at its start. Cached, since every request of a campaign asks again.

    Across a daylight-saving change a repeated local time is one slot (its first instance) and a
    skipped one is none (pushplan.clock.to_utc).
    """
    local_start, local_end = start.tz_convert(zone), end.tz_convert(zone)
    days = pd.date_range(
        local_start.normalize().tz_localize(None), local_end.normalize().tz_localize(None), freq="D"
    )
    offsets = np.arange(0, 24 * 60, minutes).astype("timedelta64[m]")
    local = (days.values[:, None] + offsets[None, :]).ravel()
    utc = to_utc(local, np.full(local.size, zone, dtype=object)).astype("int64")
    utc = np.unique(np.append(utc[(utc >= start.value) & (utc < end.value)], start.value))
    stamps = pd.DatetimeIndex(utc).tz_localize("UTC").tz_convert(zone)
    return WindowSlots(utc, np.asarray(stamps.hour), np.array([t.isoformat() for t in stamps], dtype=object))
