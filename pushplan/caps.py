"""Frequency caps: the one rule for how many messages a user may get, shared by planning and dispatch.

A user's sends are within caps when, in the user's own time zone and across campaigns:
- at most `per_user_day` messages on any local calendar day, all channels together;
- at most `per_channel_day` on one channel on any local day;
- at most `per_channel_week` on one channel in any 7 × 24 hours (a rolling window, so a burst
  across a week boundary is still a burst);
- at least `min_gap` between any two messages;
and a campaign sends at most `campaign_total` messages in all. Defaults come from settings; a
campaign may tighten them, never loosen them.

Planning uses `admits` to keep a new send from exceeding what other campaigns already hold for
the user (the higher-value item wins: docs/planner.md, "Frequency caps across campaigns"); dispatch
re-checks the same rule atomically at send time (docs/dispatch.md, "The life of a send"), because
plans made apart can still collide.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

from pushplan.domain import Campaign, Objective
from pushplan.settings import Settings

WEEK = pd.Timedelta(days=7)
# Columns of a `held` frame (serving.planner.arbitrate_caps): other campaigns' sends for the same users.
HELD_COLUMNS = ("plan_id", "campaign_id", "user_id", "channel", "send_at", "priority", "value", "movable")


def item_value(campaign: Campaign, p_click: np.ndarray | float) -> np.ndarray:
    """What a send is worth for comparing it with other campaigns' sends (after their priority).

    p(click), weighted by the value of a conversion when the campaign optimises conversions; the
    click model is the only response model, so a click stands in for the path to conversion.
    """
    weighted = campaign.objective is Objective.conversions and campaign.value_per_conversion > 0
    return np.asarray(p_click, dtype=float) * (campaign.value_per_conversion if weighted else 1.0)


@dataclass(frozen=True)
class FrequencyCap:
    per_channel_day: int
    per_channel_week: int
    per_user_day: int
    min_gap: timedelta
    campaign_total: int | None = None

    @classmethod
    def of(cls, settings: Settings, campaign: Campaign | None = None) -> FrequencyCap:
        """The settings' defaults, tightened by the campaign's overrides (the smaller value wins)."""
        override = campaign.caps if campaign is not None else None

        def tightest(default: int, name: str) -> int:
            value = getattr(override, name, None) if override is not None else None
            return default if value is None else min(default, value)

        total = override.campaign_total if override is not None else None
        return cls(
            per_channel_day=tightest(settings.cap_per_channel_day, "per_channel_day"),
            per_channel_week=tightest(settings.cap_per_channel_week, "per_channel_week"),
            per_user_day=tightest(settings.cap_per_user_day, "per_user_day"),
            min_gap=timedelta(minutes=tightest(settings.cap_min_gap_minutes, "min_gap_minutes")),
            campaign_total=total,
        )

    @property
    def allows_any(self) -> bool:
        """Whether a user with nothing sent yet may get one message at all."""
        return min(self.per_channel_day, self.per_channel_week, self.per_user_day) >= 1

    def admits(
        self, held: Iterable[tuple[pd.Timestamp, str]], at: pd.Timestamp, channel: str, zone: str
    ) -> bool:
        """Whether one more message at `at` on `channel` keeps a user with `held` sends within caps.

        `held` is the user's other sends as (UTC instant, channel); `zone` is the user's IANA zone,
        which decides what a "day" is. Only the constraints the new message takes part in are checked.
        """
        held = list(held)
        if not self.allows_any:
            return False
        if any(abs(t - at) < self.min_gap for t, _ in held):
            return False
        day = at.tz_convert(zone).date()
        same_day = [c for t, c in held if t.tz_convert(zone).date() == day]
        if len(same_day) + 1 > self.per_user_day or same_day.count(channel) + 1 > self.per_channel_day:
            return False
        times = sorted([t for t, c in held if c == channel] + [at])
        # Every 7-day window that holds `at` ends at `at` or at a later send less than a week after it.
        return all(
            sum(1 for t in times if end - WEEK < t <= end) <= self.per_channel_week
            for end in times
            if at <= end < at + WEEK
        )
