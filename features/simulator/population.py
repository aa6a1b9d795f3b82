"""A simulated population with hidden truth: who is active when, what they click, how they tire.

The truth is what real data never shows: each user's time zone, daily rhythm over local hours
(weekday and weekend), `best_local_hour`, tastes over variant tags, base responsiveness, fatigue and
organic purchase behaviour. Evaluation code asks it `oracle_click_probability(...)`; the demo asks
it to `respond(...)` to sends, which closes the loop from dispatch back to the event store.

The response model, for a send at UTC time t of a variant with tags T to user u on channel c:

    p_click = base_click[u] * rhythm[u, day type, local hour of t]     (rhythm peaks at 1)
              * exp(mean over T of taste[u, tag])
              * exp(-fatigue_click[u] * sends to u in the 7 days before t)
              * channel_factor[c]                                       (capped at 0.95)

An open precedes every click (p_open = OPENS_PER_CLICK * p_click, capped); a click converts with
probability conv_rate[u]; every delivered message risks an unsubscribe that grows with fatigue.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from pushplan.clock import local_clock, to_utc
from pushplan.domain import VARIANT_TAGS, Channel, EventType

TAGS = VARIANT_TAGS
ZONE_SHARES = {
    "America/New_York": 0.22,
    "America/Los_Angeles": 0.11,
    "America/Sao_Paulo": 0.08,
    "Europe/London": 0.14,
    "Europe/Berlin": 0.16,
    "Asia/Kolkata": 0.12,
    "Asia/Tokyo": 0.10,
    "Australia/Sydney": 0.07,
}
COUNTRY_OF_ZONE = {
    "America/New_York": "US",
    "America/Los_Angeles": "US",
    "America/Sao_Paulo": "BR",
    "Europe/London": "GB",
    "Europe/Berlin": "DE",
    "Asia/Kolkata": "IN",
    "Asia/Tokyo": "JP",
    "Australia/Sydney": "AU",
}
# Rhythm types: peaks (local hour, weight). Each user's peaks are jittered around these.
RHYTHM_PEAKS = {
    "morning": ((7.5, 1.0),),
    "midday": ((12.5, 1.0),),
    "evening": ((20.0, 1.0),),
    "bimodal": ((8.0, 0.9), (20.5, 1.0)),
    "night": ((22.5, 1.0),),
}
RHYTHM_SHARES = {"morning": 0.22, "midday": 0.14, "evening": 0.34, "bimodal": 0.20, "night": 0.10}
CHANNEL_FACTOR: dict[str, float] = {
    Channel.push: 1.0,
    Channel.sandbox: 1.0,
    Channel.webhook: 1.0,
    Channel.sms: 0.7,
    Channel.email: 0.4,
}
# How much each tag moves everyone's click odds (log scale): some words work for most people. A
# user's taste is this plus a personal part, so a title choice can be learnt from pooled clicks.
TAG_EFFECTS = {
    "discount": 0.35,
    "urgency": 0.2,
    "news": -0.15,
    "personal": 0.25,
    "question": -0.3,
    "emoji": 0.0,
    "social": -0.1,
    "reminder": 0.1,
}
PERSONAL_TASTE_SD = 0.3
OPENS_PER_CLICK = 2.5
MAX_CLICK = 0.95
FATIGUE_WINDOW = timedelta(days=7)
COLD_START_SHARE = 0.03
NEVER = 1_000_000  # a churn day no simulation reaches
_EVENT_NAMESPACE = uuid.UUID("5b0d7e58-3f63-4d0c-9a8e-6f1f3c2b9e11")
_NS_PER_S = 1_000_000_000


@dataclass
class Population:
    """Hidden truth for N users, as arrays indexed by user position (see module docstring)."""

    seed: int
    start: date
    days: int
    user_id: np.ndarray
    timezone: np.ndarray
    rhythm_type: np.ndarray
    rhythm: np.ndarray  # (users, 2, 24): [weekday, weekend] × local hour, each peaking at 1
    taste: np.ndarray  # (users, len(TAGS))
    base_click: np.ndarray
    fatigue_click: np.ndarray
    unsub_base: np.ndarray
    fatigue_unsub: np.ndarray
    conv_rate: np.ndarray
    mean_value: np.ndarray
    organic_rate: np.ndarray  # purchases per day without any push
    activity_rate: np.ndarray  # app opens per day
    signup_at: np.ndarray  # datetime64[s], UTC
    churn_day: np.ndarray  # day index after which activity nearly stops (NEVER for most users)
    cold_start: np.ndarray  # bool: signed up in the last hours, no history yet
    push_opt_in: np.ndarray
    sms_opt_in: np.ndarray
    email_opt_in: np.ndarray
    platform: np.ndarray

    # ---- drawing the truth ------------------------------------------------------------------

    @classmethod
    def draw(cls, users: int, seed: int, start: date, days: int) -> Population:
        rng = np.random.default_rng([seed, 1])
        zones = np.array(list(ZONE_SHARES))
        timezone = rng.choice(zones, size=users, p=_shares(ZONE_SHARES))
        kinds = np.array(list(RHYTHM_SHARES))
        rhythm_type = rng.choice(kinds, size=users, p=_shares(RHYTHM_SHARES))
        rhythm = np.empty((users, 2, 24))
        hours = np.arange(24) + 0.5
        weekend_shift = rng.uniform(0.5, 1.5, size=users)
        for kind, peaks in RHYTHM_PEAKS.items():
            members = np.flatnonzero(rhythm_type == kind)
            n = members.size
            curve_wd = np.full((n, 24), 0.03)
            curve_we = np.full((n, 24), 0.03)
            for centre, weight in peaks:
                mu = centre + rng.normal(0.0, 1.0, size=n)
                kappa = rng.uniform(2.5, 5.0, size=n)
                w = weight * rng.uniform(0.6, 1.0, size=n)
                curve_wd += _von_mises(hours, mu, kappa) * w[:, None]
                curve_we += _von_mises(hours, mu + weekend_shift[members], kappa) * w[:, None]
            rhythm[members, 0] = curve_wd / curve_wd.max(axis=1, keepdims=True)
            rhythm[members, 1] = curve_we / curve_we.max(axis=1, keepdims=True)

        start_s = np.datetime64(datetime.combine(start, datetime.min.time()), "s")
        span_s = days * 86_400
        cold_start = rng.random(users) < COLD_START_SHARE
        joined_during = ~cold_start & (rng.random(users) < 0.17)
        signup_offset = np.where(
            cold_start,
            span_s - rng.integers(60, 6 * 3600, size=users),
            np.where(
                joined_during,
                rng.integers(0, max(span_s - 86_400, 1), size=users),
                -rng.integers(86_400, 730 * 86_400, size=users),
            ),
        )
        churns = rng.random(users) < 0.15
        return cls(
            seed=seed,
            start=start,
            days=days,
            user_id=np.array([f"u{i:07d}" for i in range(users)]),
            timezone=timezone,
            rhythm_type=rhythm_type,
            rhythm=rhythm,
            taste=np.array([TAG_EFFECTS[tag] for tag in TAGS])
            + rng.normal(0.0, PERSONAL_TASTE_SD, (users, len(TAGS))),
            base_click=np.clip(rng.lognormal(np.log(0.08), 0.6, size=users), 0.005, 0.4),
            fatigue_click=rng.uniform(0.05, 0.3, size=users),
            unsub_base=np.clip(rng.lognormal(np.log(0.002), 0.7, size=users), 0.0, 0.05),
            fatigue_unsub=rng.uniform(0.2, 1.0, size=users),
            conv_rate=rng.beta(2.0, 14.0, size=users),
            mean_value=rng.lognormal(np.log(30.0), 0.5, size=users),
            organic_rate=rng.gamma(1.2, 0.03 / 1.2, size=users),
            activity_rate=rng.gamma(2.0, 2.5 / 2.0, size=users),
            signup_at=start_s + signup_offset.astype("timedelta64[s]"),
            churn_day=np.where(churns, rng.integers(0, max(days, 1), size=users), NEVER),
            cold_start=cold_start,
            push_opt_in=rng.random(users) < 0.85,
            sms_opt_in=rng.random(users) < 0.4,
            email_opt_in=rng.random(users) < 0.6,
            platform=rng.choice(np.array(["android", "ios"]), size=users, p=[0.55, 0.45]),
        )

    @property
    def best_local_hour(self) -> np.ndarray:
        """The argmax over local hours of push response, weekdays and weekends weighted 5:2."""
        return np.argmax(5 * self.rhythm[:, 0] + 2 * self.rhythm[:, 1], axis=1)

    def index_of(self, user_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Positions of the given user ids; an unknown id is an error, not a silent default."""
        lookup = pd.Index(self.user_id)
        positions = lookup.get_indexer(np.asarray(user_ids, dtype=object))
        if (positions < 0).any():
            missing = np.asarray(user_ids)[positions < 0][:5]
            raise KeyError(f"users not in the simulated population: {', '.join(map(str, missing))}")
        return positions

    # ---- the oracle --------------------------------------------------------------------------

    def oracle_click_probability(
        self,
        user: str,
        send_time_utc: datetime,
        variant_tags: Sequence[str],
        recent_sends: int = 0,
        channel: str = Channel.push,
    ) -> float:
        """The true probability that `user` clicks a message sent at `send_time_utc`.

        `recent_sends` is the number of messages the user received in the 7 days before.
        """
        if send_time_utc.tzinfo is None:
            raise ValueError("send_time_utc must be timezone-aware")
        idx = self.index_of([user])
        when = np.array([pd.Timestamp(send_time_utc).tz_convert("UTC").tz_localize(None).to_datetime64()])
        return float(
            self.click_probability(
                idx, when, tag_matrix([list(variant_tags)]), np.array([recent_sends]), [channel]
            )[0]
        )

    def click_probability(
        self,
        idx: np.ndarray,
        when_utc: np.ndarray,
        tags: np.ndarray,
        recent_sends: np.ndarray,
        channels: Sequence[str],
    ) -> np.ndarray:
        """Vectorised oracle: users `idx`, naive-UTC datetime64 `when_utc`, tag matrix (n × TAGS)."""
        hour, weekend = local_clock(when_utc, self.timezone[idx])
        rhythm = self.rhythm[idx, weekend.astype(int), hour]
        counts = tags.sum(axis=1)
        taste = np.where(counts > 0, (self.taste[idx] * tags).sum(axis=1) / np.maximum(counts, 1), 0.0)
        fatigue = np.exp(-self.fatigue_click[idx] * recent_sends)
        factor = np.array([CHANNEL_FACTOR.get(c, 1.0) for c in channels])
        return np.minimum(self.base_click[idx] * rhythm * np.exp(taste) * fatigue * factor, MAX_CLICK)

    # ---- playing the population forward ----------------------------------------------------

    def respond(
        self,
        sends: pd.DataFrame,
        prior_sends: pd.DataFrame | None = None,
        seed: int = 0,
    ) -> pd.DataFrame:
        """The reactions the truth implies to delivered sends, as events in the import format.

        `sends` has columns user_id, timestamp (UTC), campaign_id, variant_id, channel and
        variant_tags (a list per row); `prior_sends` (user_id, timestamp) are earlier messages that
        count toward fatigue. Returns push_opened, push_clicked, app_open, converted, purchase and
        unsubscribed events; the same sends and seed give the same events.
        """
        if sends.empty:
            return _empty_events()
        idx = self.index_of(sends["user_id"].to_numpy())
        when = _naive_utc(sends["timestamp"])
        history = [(idx, when)]
        if prior_sends is not None and not prior_sends.empty:
            history.append(
                (self.index_of(prior_sends["user_id"].to_numpy()), _naive_utc(prior_sends["timestamp"]))
            )
        recent = recent_send_counts(idx, when, history)
        rng = np.random.default_rng([self.seed, 2, seed])
        return self.react(
            rng,
            idx,
            when,
            tag_matrix(sends["variant_tags"].tolist()),
            recent,
            sends["campaign_id"].astype(object).to_numpy(),
            sends["variant_id"].astype(object).to_numpy(),
            sends["channel"].astype(object).to_numpy(),
        )

    def react(
        self,
        rng: np.random.Generator,
        idx: np.ndarray,
        when: np.ndarray,
        tags: np.ndarray,
        recent: np.ndarray,
        campaign_id: np.ndarray,
        variant_id: np.ndarray,
        channel: np.ndarray,
    ) -> pd.DataFrame:
        """Draw opens, clicks, conversions and unsubscribes for delivered messages (vectorised)."""
        n = idx.size
        p_click = self.click_probability(idx, when, tags, recent, list(channel))
        p_open = np.minimum(OPENS_PER_CLICK * p_click, MAX_CLICK)
        opened = rng.random(n) < p_open
        clicked = opened & (rng.random(n) < p_click / np.maximum(p_open, 1e-12))
        converted = clicked & (rng.random(n) < self.conv_rate[idx])
        p_unsub = np.minimum(self.unsub_base[idx] * (1 + self.fatigue_unsub[idx] * recent), 0.5)
        unsubscribed = rng.random(n) < p_unsub
        open_at = when + _seconds(np.minimum(rng.exponential(25 * 60, n), 6 * 3600))
        click_at = open_at + _seconds(rng.uniform(2, 30, n))
        convert_at = click_at + _seconds(rng.exponential(40 * 60, n))
        unsub_at = when + _seconds(rng.exponential(3 * 3600, n))
        value = np.round(rng.lognormal(np.log(self.mean_value[idx]) - 0.125, 0.5), 2)
        parts = [
            (opened, EventType.push_opened, open_at, True, None),
            (clicked, EventType.push_clicked, click_at, True, None),
            (clicked, EventType.app_open, click_at + np.timedelta64(1, "s"), False, None),
            (converted, EventType.converted, convert_at, True, value),
            (converted, EventType.purchase, convert_at, False, value),
            (unsubscribed, EventType.unsubscribed, unsub_at, True, None),
        ]
        frames = []
        for mask, kind, at, attributed, amount in parts:
            frames.append(
                pd.DataFrame(
                    {
                        "user_id": self.user_id[idx[mask]],
                        "event_type": kind.value,
                        "timestamp": at[mask],
                        "campaign_id": campaign_id[mask] if attributed else None,
                        "variant_id": variant_id[mask] if attributed else None,
                        "channel": channel[mask] if attributed else None,
                        "value": amount[mask] if amount is not None else np.nan,
                        "propensity": np.nan,
                    }
                )
            )
        return finish_events(
            pd.concat(frames, ignore_index=True), salt=f"react-{self.seed}-{rng.integers(1 << 62)}"
        )

    def daily_events(
        self,
        rng: np.random.Generator,
        kind: EventType,
        rate: np.ndarray,
        first_day: date,
    ) -> pd.DataFrame:
        """Poisson-many events per user and local day at hours drawn from the user's rhythm.

        `rate` is (users × days): expected events on each local day from `first_day`. Purchases
        carry a value.
        """
        counts = rng.poisson(rate)
        user_idx, day_idx = np.nonzero(counts)
        repeats = counts[user_idx, day_idx]
        user_idx, day_idx = np.repeat(user_idx, repeats), np.repeat(day_idx, repeats)
        days = np.datetime64(first_day, "D") + day_idx.astype("timedelta64[D]")
        weekend = ((days.astype("datetime64[D]").view("int64") + 3) % 7) >= 5  # 1970-01-01 was a Thursday
        cdf = np.cumsum(self.rhythm[user_idx, weekend.astype(int)], axis=1)
        hour = (rng.random(user_idx.size)[:, None] * cdf[:, -1:] > cdf).sum(axis=1)
        local = days.astype("datetime64[s]") + (hour * 3600 + rng.integers(0, 3600, user_idx.size)).astype(
            "timedelta64[s]"
        )
        when = to_utc(local, self.timezone[user_idx])
        signed_up = when >= self.signup_at[user_idx].astype("datetime64[ns]")
        user_idx, when = user_idx[signed_up], when[signed_up]
        value = (
            np.round(rng.lognormal(np.log(self.mean_value[user_idx]) - 0.125, 0.5), 2)
            if kind is EventType.purchase
            else np.nan
        )
        frame = pd.DataFrame(
            {
                "user_id": self.user_id[user_idx],
                "event_type": kind.value,
                "timestamp": when,
                "campaign_id": None,
                "variant_id": None,
                "channel": None,
                "value": value,
                "propensity": np.nan,
            }
        )
        return finish_events(frame, salt=f"{kind}-{self.seed}-{rng.integers(1 << 62)}")

    def organic_purchases(self, start: date, end: date, seed: int = 0) -> pd.DataFrame:
        """Purchases users make without any message, on local days start..end-1 (for every user,
        so a randomized holdout shows what a campaign added on top)."""
        span = (end - start).days
        rng = np.random.default_rng([self.seed, 3, seed])
        rate = np.repeat(self.organic_rate[:, None], span, axis=1) * self.churn_factor(start, span, 0.1)
        return self.daily_events(rng, EventType.purchase, rate, start)

    def churn_factor(self, first_day: date, span: int, floor: float) -> np.ndarray:
        day = (first_day - self.start).days + np.arange(span)
        return np.where(day[None, :] > self.churn_day[:, None], floor, 1.0)

    # ---- persistence -------------------------------------------------------------------------

    def save(self, truth_dir: Path) -> None:
        truth_dir.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(
            {
                "user_id": self.user_id,
                "timezone": self.timezone,
                "rhythm_type": self.rhythm_type,
                "best_local_hour": self.best_local_hour,
                "base_click": self.base_click,
                "fatigue_click": self.fatigue_click,
                "unsub_base": self.unsub_base,
                "fatigue_unsub": self.fatigue_unsub,
                "conv_rate": self.conv_rate,
                "mean_value": self.mean_value,
                "organic_rate": self.organic_rate,
                "activity_rate": self.activity_rate,
                "signup_at": pd.to_datetime(self.signup_at).tz_localize("UTC"),
                "churn_day": self.churn_day,
                "cold_start": self.cold_start,
                "push_opt_in": self.push_opt_in,
                "sms_opt_in": self.sms_opt_in,
                "email_opt_in": self.email_opt_in,
                "platform": self.platform,
                "rhythm_weekday": list(self.rhythm[:, 0]),
                "rhythm_weekend": list(self.rhythm[:, 1]),
                **{f"taste_{tag}": self.taste[:, k] for k, tag in enumerate(TAGS)},
            }
        )
        frame.to_parquet(truth_dir / "users.parquet", index=False)
        meta = {
            "seed": self.seed,
            "start": self.start.isoformat(),
            "days": self.days,
            "tags": list(TAGS),
            "opens_per_click": OPENS_PER_CLICK,
            "fatigue_window_days": FATIGUE_WINDOW.days,
            "channel_factor": {str(k): v for k, v in CHANNEL_FACTOR.items()},
            "tag_effects": TAG_EFFECTS,
            "personal_taste_sd": PERSONAL_TASTE_SD,
        }
        (truth_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, sim_dir: Path) -> Population:
        """Load the truth written by `pushplan simulate --out sim_dir` (from sim_dir/truth/)."""
        truth_dir = Path(sim_dir) / "truth"
        meta = json.loads((truth_dir / "meta.json").read_text())
        frame = pd.read_parquet(truth_dir / "users.parquet")
        rhythm = np.stack(
            [np.stack(frame["rhythm_weekday"].to_numpy()), np.stack(frame["rhythm_weekend"].to_numpy())],
            axis=1,
        )
        return cls(
            seed=meta["seed"],
            start=date.fromisoformat(meta["start"]),
            days=meta["days"],
            user_id=frame["user_id"].to_numpy(dtype=object),
            timezone=frame["timezone"].to_numpy(dtype=object),
            rhythm_type=frame["rhythm_type"].to_numpy(dtype=object),
            rhythm=rhythm,
            taste=np.stack([frame[f"taste_{tag}"].to_numpy() for tag in TAGS], axis=1),
            signup_at=frame["signup_at"]
            .dt.tz_convert("UTC")
            .dt.tz_localize(None)
            .to_numpy()
            .astype("datetime64[s]"),
            **{
                name: frame[name].to_numpy()
                for name in (
                    "base_click",
                    "fatigue_click",
                    "unsub_base",
                    "fatigue_unsub",
                    "conv_rate",
                    "mean_value",
                    "organic_rate",
                    "activity_rate",
                    "churn_day",
                    "cold_start",
                    "push_opt_in",
                    "sms_opt_in",
                    "email_opt_in",
                    "platform",
                )
            },
        )


# ---- helpers shared by the population and the history generator -----------------------------


def recent_send_counts(
    idx: np.ndarray, when: np.ndarray, history: list[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """For each (user, time), how many sends in `history` went to that user in the 7 days before."""
    users = np.concatenate([h[0] for h in history])
    times = np.concatenate([h[1] for h in history]).astype("datetime64[s]").view("int64")
    # One sorted key per send: user first, time second; then two binary searches per query.
    offset = times.min() if times.size else 0
    span = int(times.max() - offset + 1) if times.size else 1
    keys = np.sort(users.astype(np.int64) * span + (times - offset))
    query = idx.astype(np.int64) * span + (when.astype("datetime64[s]").view("int64") - offset)
    window = int(FATIGUE_WINDOW.total_seconds())
    lower = np.maximum(query - window, idx.astype(np.int64) * span)
    return np.searchsorted(keys, query, side="left") - np.searchsorted(keys, lower, side="left")


def finish_events(frame: pd.DataFrame, salt: str) -> pd.DataFrame:
    """Give events deterministic, globally unique ids and UTC-aware timestamps, in time order."""
    frame = frame.sort_values(["timestamp", "user_id", "event_type"], kind="stable", ignore_index=True)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"]).dt.tz_localize("UTC")
    frame.insert(0, "event_id", [str(uuid.uuid5(_EVENT_NAMESPACE, f"{salt}-{i}")) for i in range(len(frame))])
    return frame


def _empty_events() -> pd.DataFrame:
    return finish_events(
        pd.DataFrame(
            {
                "user_id": pd.Series(dtype=object),
                "event_type": pd.Series(dtype=object),
                "timestamp": pd.Series(dtype="datetime64[ns]"),
                "campaign_id": pd.Series(dtype=object),
                "variant_id": pd.Series(dtype=object),
                "channel": pd.Series(dtype=object),
                "value": pd.Series(dtype=float),
                "propensity": pd.Series(dtype=float),
            }
        ),
        salt="empty",
    )


def tag_matrix(tag_lists: Sequence[Sequence[str]]) -> np.ndarray:
    position = {tag: k for k, tag in enumerate(TAGS)}
    matrix = np.zeros((len(tag_lists), len(TAGS)))
    for row, tags in enumerate(tag_lists):
        for tag in tags or ():
            if tag in position:
                matrix[row, position[tag]] = 1.0
    return matrix


def _naive_utc(values: pd.Series) -> np.ndarray:
    return pd.to_datetime(values, utc=True).dt.tz_localize(None).to_numpy().astype("datetime64[ns]")


def _seconds(values: np.ndarray) -> np.ndarray:
    return (values * _NS_PER_S).astype("timedelta64[ns]")


def _von_mises(hours: np.ndarray, mu: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    return np.exp(kappa[:, None] * (np.cos(2 * np.pi * (hours[None, :] - mu[:, None]) / 24) - 1))


def _shares(shares: dict[str, float]) -> np.ndarray:
    weights = np.array(list(shares.values()))
    return weights / weights.sum()
