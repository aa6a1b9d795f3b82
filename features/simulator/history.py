"""Writes a simulated history in the import format, with the truth that produced it.

    OUT/users.parquet      one row per user (the users contract)
    OUT/events.parquet     app opens, organic purchases, and past pushes with their responses
    OUT/campaigns.json     the past campaigns (Campaign contract), so variants' titles and tags are known
    OUT/truth/             the hidden truth (see features.simulator.population)

Past pushes were sent with uniform exploration: every few days a campaign of three variants reached
half of the push-opted-in users, each at a uniformly random local hour with a uniformly random
variant, so each push_sent logs propensity = 1 / (24 × 3), the probability of its (hour, variant).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import track

from features.simulator.population import (
    COUNTRY_OF_ZONE,
    Population,
    finish_events,
    recent_send_counts,
    tag_matrix,
)
from pushplan.clock import to_utc
from pushplan.domain import Campaign, Channel, EventType, SendWindow, Variant

# Title templates with the tags that describe them; the variant model learns from both.
VARIANT_CATALOGUE = (
    ("Flash sale: 30% off today only ⚡", ("discount", "urgency", "emoji")),
    ("Your weekly picks are here", ("personal",)),
    ("Did you see what's new this week?", ("news", "question")),
    ("Last chance: your cart expires tonight", ("urgency", "reminder")),
    ("Friends are loving this, join them", ("social",)),
    ("New arrivals just dropped 🎉", ("news", "emoji")),
    ("Don't forget: 2 items are waiting for you", ("reminder", "personal")),
    ("Ready for something new?", ("question",)),
    ("Save 15% on your favourites", ("discount", "personal")),
    ("Trending now near you", ("social", "news")),
    ("Only 3 hours left to save 20%", ("urgency", "discount")),
    ("Hey! We picked these for you 👀", ("personal", "emoji")),
)
CAMPAIGN_EVERY_DAYS = 3
VARIANTS_PER_CAMPAIGN = 3
REACH = 0.5
DELIVERY_RATE = 0.97
DEFAULT_START = date(2026, 9, 1)


@dataclass(frozen=True)
class SimulationSummary:
    out: Path
    users: int
    events: int
    by_type: dict[str, int]
    cold_start_users: int
    time_zones: int
    click_rate: float
    best_hour_differs_share: float


def simulate(
    out: Path, users: int, days: int, seed: int, start: date = DEFAULT_START, *, progress: bool = False
) -> SimulationSummary:
    """Draw a population and its history, write them under `out`, and summarise what was written."""
    if users < 1 or days < 1:
        raise ValueError("users and days must be at least 1")
    population = Population.draw(users, seed, start, days)
    rng = np.random.default_rng([seed, 4])

    weekend = np.array([(start + timedelta(days=d)).weekday() >= 5 for d in range(days)])
    activity = population.activity_rate[:, None] * np.where(weekend, 1.2, 1.0)[None, :]
    activity = activity * population.churn_factor(start, days, 0.05)
    app_opens = population.daily_events(rng, EventType.app_open, activity, start)
    purchases = population.organic_purchases(start, start + timedelta(days=days), seed=0)
    pushes, campaigns, unsubscribed = _past_pushes(population, rng, progress)

    events = pd.concat([app_opens, purchases, pushes], ignore_index=True)
    # Cold-start users signed up in the last hours: whatever they did there is not history yet.
    events = events[~events["user_id"].isin(population.user_id[population.cold_start])]
    events = events.sort_values(["timestamp", "event_id"], ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    events.to_parquet(out / "events.parquet", index=False)
    _users_frame(population, unsubscribed).to_parquet(out / "users.parquet", index=False)
    (out / "campaigns.json").write_text(
        json.dumps([c.model_dump(mode="json") for c in campaigns], indent=2, ensure_ascii=False) + "\n"
    )
    population.save(out / "truth")

    counts = events["event_type"].value_counts()
    best = population.best_local_hour
    population_best = int(np.argmax(population.rhythm.mean(axis=(0, 1))))
    delivered = int(counts.get(EventType.push_delivered, 0))
    return SimulationSummary(
        out=out,
        users=users,
        events=len(events),
        by_type={str(k): int(v) for k, v in counts.sort_index().items()},
        cold_start_users=int(population.cold_start.sum()),
        time_zones=len(set(population.timezone)),
        click_rate=float(counts.get(EventType.push_clicked, 0)) / delivered if delivered else 0.0,
        best_hour_differs_share=float(np.mean(_hour_distance(best, population_best) > 2)),
    )


def _past_pushes(
    population: Population, rng: np.random.Generator, progress: bool
) -> tuple[pd.DataFrame, list[Campaign], np.ndarray]:
    """Uniformly explored past campaigns, their deliveries and the users' responses."""
    n = population.user_id.size
    unsubscribed_at = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
    signup = population.signup_at.astype("datetime64[ns]")
    history: list[tuple[np.ndarray, np.ndarray]] = []
    frames: list[pd.DataFrame] = []
    campaigns: list[Campaign] = []
    days = list(range(1, population.days, CAMPAIGN_EVERY_DAYS))
    for number, day_index in enumerate(track(days, description="past campaigns", disable=not progress)):
        day = population.start + timedelta(days=day_index)
        campaign = _campaign(number, day, rng)
        campaigns.append(campaign)
        day_start = np.datetime64(day, "ns")
        still_subscribed = np.isnat(unsubscribed_at) | (unsubscribed_at > day_start)
        eligible = population.push_opt_in & ~population.cold_start & (signup < day_start) & still_subscribed
        idx = np.flatnonzero(eligible & (rng.random(n) < REACH))
        hour = rng.integers(0, 24, idx.size)
        local = np.datetime64(day, "s") + (hour * 3600 + rng.integers(0, 3600, idx.size)).astype(
            "timedelta64[s]"
        )
        when = to_utc(local, population.timezone[idx])
        keep = when >= signup[idx]
        idx, when, hour = idx[keep], when[keep], hour[keep]
        choice = rng.integers(0, VARIANTS_PER_CAMPAIGN, idx.size)
        variants = campaign.variants
        variant_id = np.array([variants[k].variant_id for k in choice], dtype=object)
        tags = tag_matrix([variants[k].tags for k in choice])
        recent = recent_send_counts(idx, when, history) if history else np.zeros(idx.size, dtype=int)
        history.append((idx, when))

        campaign_ids = np.full(idx.size, campaign.campaign_id, dtype=object)
        channels = np.full(idx.size, Channel.push.value, dtype=object)
        delivered = rng.random(idx.size) < DELIVERY_RATE
        delivered_at = when + (rng.uniform(1, 20, idx.size) * 1e9).astype("timedelta64[ns]")
        sent = pd.DataFrame(
            {
                "user_id": population.user_id[idx],
                "event_type": EventType.push_sent.value,
                "timestamp": when,
                "campaign_id": campaign_ids,
                "variant_id": variant_id,
                "channel": channels,
                "value": np.nan,
                "propensity": 1.0 / (24 * VARIANTS_PER_CAMPAIGN),
            }
        )
        delivery = sent[delivered].assign(
            event_type=EventType.push_delivered.value, timestamp=delivered_at[delivered], propensity=np.nan
        )
        frames.append(
            finish_events(pd.concat([sent, delivery], ignore_index=True), f"{campaign.campaign_id}-sends")
        )
        reactions = population.react(
            rng,
            idx[delivered],
            delivered_at[delivered],
            tags[delivered],
            recent[delivered],
            campaign_ids[delivered],
            variant_id[delivered],
            channels[delivered],
        )
        frames.append(reactions)
        quit_ = reactions[reactions["event_type"] == EventType.unsubscribed.value]
        if not quit_.empty:
            positions = population.index_of(quit_["user_id"].to_numpy())
            unsubscribed_at[positions] = quit_["timestamp"].dt.tz_localize(None).to_numpy()
    pushes = pd.concat(frames, ignore_index=True) if frames else finish_events(pd.DataFrame(), "none")
    return pushes, campaigns, ~np.isnat(unsubscribed_at)


def _campaign(number: int, day: date, rng: np.random.Generator) -> Campaign:
    campaign_id = f"hist-{number + 1:03d}"
    picks = rng.choice(len(VARIANT_CATALOGUE), size=VARIANTS_PER_CAMPAIGN, replace=False)
    midnight = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    return Campaign(
        campaign_id=campaign_id,
        name=f"Past campaign {number + 1} ({day.isoformat()})",
        channels=[Channel.push],
        variants=[
            Variant(
                variant_id=f"{campaign_id}-{'abc'[k]}",
                title=VARIANT_CATALOGUE[pick][0],
                tags=list(VARIANT_CATALOGUE[pick][1]),
            )
            for k, pick in enumerate(picks)
        ],
        # Wide enough for the whole local day in every zone (UTC-8 to UTC+11).
        window=SendWindow(start=midnight - timedelta(hours=14), end=midnight + timedelta(hours=38)),
        holdout_fraction=0.0,
        exploration=1.0,
    )


def _users_frame(population: Population, unsubscribed: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": population.user_id,
            "timezone": population.timezone,
            "country": [COUNTRY_OF_ZONE[zone] for zone in population.timezone],
            "platform": population.platform,
            "signup_at": pd.to_datetime(population.signup_at).tz_localize("UTC"),
            "push_opt_in": population.push_opt_in & ~unsubscribed,
            "sms_opt_in": population.sms_opt_in,
            "email_opt_in": population.email_opt_in,
        }
    )


def _hour_distance(a: np.ndarray, b: int) -> np.ndarray:
    gap = np.abs(a - b) % 24
    return np.minimum(gap, 24 - gap)
