"""The simulated population's answers to what dispatch sent: the demo's loop from the outbox back to events.

Dispatch's `sandbox` channel appends every message it sends to `<data_dir>/sandbox/outbox.jsonl`.
Here the population's hidden truth decides what the users did next (opens, clicks, conversions with
their purchases, unsubscribes) and what everyone in the experiment bought without any message, so
that a report can compare the sent users with the holdout. The answers are events in the import
format, posted back through `POST /v1/events` as a campaign system would post them.

Answer a campaign's sends once, all together: the population draws its reactions over the whole set
of sends, so answering a part of them again draws afresh, under other event ids.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from features.schema import EVENT_SCHEMA
from features.simulator.population import Population
from pushplan.domain import Campaign

OUTBOX_COLUMNS = (
    "idempotency_key",
    "plan_id",
    "campaign_id",
    "user_id",
    "channel",
    "variant_id",
    "title",
    "body",
    "sent_at",
)
_OUTBOX_REQUIRED = ("idempotency_key", "campaign_id", "user_id", "channel", "sent_at")
EVENT_COLUMNS = tuple(n for n in EVENT_SCHEMA.names if n != "properties")  # none on built-in events
MAX_EVENTS_PER_POST = 50_000  # what POST /v1/events accepts in one batch
_ANSWER_NAMESPACE = uuid.UUID("e007ef36-f3a0-4c8f-a57d-5dad779633e6")


def read_outbox(path: Path, campaign_id: str | None = None) -> pd.DataFrame:
    """The sandbox outbox as a frame (OUTBOX_COLUMNS, `sent_at` UTC), one row per idempotency_key.

    The first line of a key is kept: a repeated key is the same message written again, and the user
    got it once. A line that is not JSON is a write torn by a killed worker (the sandbox starts the
    next write on a line of its own, and the torn send is retried), or the last line still being
    written: either way not a message, and skipped, as the sandbox itself skips it. A line that is
    JSON but not a message with idempotency_key, campaign_id, user_id, channel and sent_at is an
    error naming the line. With `campaign_id`, only that campaign's messages are returned.
    """
    path = Path(path)
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn or still being written (see above)
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {number}: not a JSON object")
        missing = [key for key in _OUTBOX_REQUIRED if row.get(key) in (None, "")]
        if missing:
            raise ValueError(f"{path}, line {number}: no {', '.join(missing)}")
        rows.append(row)

    frame = pd.DataFrame.from_records(rows)
    for column in OUTBOX_COLUMNS:
        if column not in frame:
            frame[column] = pd.Series(dtype=object)
    frame = frame[[*OUTBOX_COLUMNS, *(c for c in frame.columns if c not in OUTBOX_COLUMNS)]]
    try:
        frame["sent_at"] = pd.to_datetime(frame["sent_at"], utc=True, format="ISO8601")
    except ValueError as exc:
        raise ValueError(f"{path}: a sent_at is not an ISO 8601 timestamp ({exc})") from exc
    frame = frame.drop_duplicates("idempotency_key", keep="first")
    if campaign_id is not None:
        frame = frame[frame["campaign_id"] == campaign_id]
    return frame.reset_index(drop=True)


def answer_sends(
    population: Population,
    campaign: Campaign,
    sent: pd.DataFrame,
    holdout_user_ids: Sequence[str],
    *,
    prior_sends: pd.DataFrame | None = None,
    seed: int = 0,
    horizon: timedelta = timedelta(days=3),
) -> pd.DataFrame:
    """The events the population's truth implies for one campaign, in the import format.

    `sent` holds the campaign's messages as `read_outbox` returns them (user_id, variant_id,
    channel, sent_at; campaign_id and idempotency_key where present); `holdout_user_ids` are the
    users the plan held out, never sent. `prior_sends` (user_id and timestamp or sent_at) are
    earlier messages to the same users, which tire them (a message also in `sent` is not counted
    twice). Returned, within window.start .. window.end + horizon:

    - the reactions to every message (Population.respond): push_opened, push_clicked, app_open,
      converted with its purchase, unsubscribed; the attributed ones carry the campaign, the
      variant and the channel as sent;
    - the organic purchases of the sent and the held-out users over the same span, so that
      purchases by assignment show what the campaign added.

    The same inputs and seed give the same events under the same ids, whatever the order of `sent`.
    """
    if horizon < timedelta(0):
        raise ValueError("horizon must not be negative")
    span_start = pd.Timestamp(campaign.window.start).tz_convert("UTC")
    span_end = pd.Timestamp(campaign.window.end + horizon).tz_convert("UTC")
    sends = _campaign_sends(campaign, sent)
    holdout = pd.unique(np.asarray(list(holdout_user_ids), dtype=object))
    population.index_of(holdout)  # an unknown user is an error, as it is for the sends
    both = sorted(set(holdout) & set(sends["user_id"]))
    if both:
        raise ValueError(
            f"{len(both)} held-out user(s) were also sent a message, e.g. {', '.join(both[:3])}: "
            "a holdout is never sent"
        )

    reactions = population.respond(sends, prior_sends=_prior_sends(prior_sends, sends), seed=seed)
    reactions = _with_ids(reactions, scope=f"answer|{population.seed}|{campaign.campaign_id}|{seed}")
    users = np.concatenate([sends["user_id"].unique(), holdout])
    organic = _organic_purchases(population, users, span_start, span_end, seed)

    events = pd.concat([frame for frame in (reactions, organic) if not frame.empty] or [reactions])
    inside = (events["timestamp"] >= span_start) & (events["timestamp"] < span_end)
    events = events[inside].sort_values(["timestamp", "event_id"], ignore_index=True)
    return events[list(EVENT_COLUMNS)]


def post_events(client: httpx.Client, events: pd.DataFrame, batch: int = 5_000) -> dict[str, int]:
    """POST the events to /v1/events in batches; the service's totals of received, stored, already_stored.

    Timestamps go as ISO 8601 with their offset; missing values (NaN, None) are left out of a row.
    A refused batch raises httpx.HTTPStatusError with the service's detail, whose row numbers count
    from that batch's first event. The batches before it are stored; posting everything again is
    safe, since the store keeps each event_id once.
    """
    if not 1 <= batch <= MAX_EVENTS_PER_POST:
        raise ValueError(f"batch must be from 1 to {MAX_EVENTS_PER_POST:,} events")
    totals = {"received": 0, "stored": 0, "already_stored": 0}
    rows = _json_rows(events)
    for first in range(0, len(rows), batch):
        chunk = rows[first : first + batch]
        response = client.post("/v1/events", json={"events": chunk})
        if not response.is_success:
            raise httpx.HTTPStatusError(
                f"POST /v1/events answered {response.status_code} to events {first + 1}-"
                f"{first + len(chunk)} of {len(rows)}: {_detail(response)}",
                request=response.request,
                response=response,
            )
        counts = response.json()
        for key in totals:
            totals[key] += int(counts[key])
    return totals


# ---- helpers --------------------------------------------------------------------------------------


def _campaign_sends(campaign: Campaign, sent: pd.DataFrame) -> pd.DataFrame:
    """`sent` as Population.respond wants it, checked against the campaign and in a fixed order."""
    missing = [c for c in ("user_id", "variant_id", "channel", "sent_at") if c not in sent]
    if missing:
        raise ValueError(f"sent has no column(s) {', '.join(missing)}")
    if "campaign_id" in sent:
        others = sorted(set(sent["campaign_id"].dropna()) - {campaign.campaign_id})
        if others:
            raise ValueError(
                f"sent holds messages of other campaigns ({', '.join(map(str, others[:3]))}); "
                f"read_outbox(path, {campaign.campaign_id!r}) keeps this one's"
            )
    tags = {variant.variant_id: list(variant.tags) for variant in campaign.variants}
    unknown = sorted(set(sent["variant_id"].dropna()) - set(tags))
    if unknown:
        raise ValueError(
            f"variant(s) {', '.join(map(str, unknown[:3]))} are not in campaign {campaign.campaign_id!r}"
        )
    sends = sent
    if "idempotency_key" in sends:
        sends = sends.drop_duplicates("idempotency_key", keep="first")
    sends = pd.DataFrame(
        {
            "user_id": sends["user_id"].astype(str).to_numpy(dtype=object),
            "timestamp": pd.to_datetime(sends["sent_at"], utc=True).array,
            "campaign_id": campaign.campaign_id,
            "variant_id": sends["variant_id"]
            .astype(object)
            .where(sends["variant_id"].notna(), None)
            .to_numpy(),
            # Kept as sent, `sandbox` included: the population answers a sandbox message exactly as a
            # push (CHANNEL_FACTOR holds 1.0 for both), so no mapping to `push` is needed here, and
            # the events name the channel dispatch used (the feature tables read sandbox as push).
            "channel": sends["channel"].astype(str).to_numpy(dtype=object),
        }
    )
    # The population draws over the sends in row order; the outbox's order depends on which worker
    # wrote first, so a fixed order is what makes the answers a function of the sends alone.
    sends = sends.sort_values(
        ["timestamp", "user_id", "variant_id", "channel"], kind="stable", ignore_index=True
    )
    sends["variant_tags"] = [tags.get(variant, []) for variant in sends["variant_id"]]  # no variant: no tags
    return sends


def _prior_sends(prior: pd.DataFrame | None, sends: pd.DataFrame) -> pd.DataFrame | None:
    """Earlier messages to the sent users, as (user_id, timestamp), without the sends themselves."""
    if prior is None or prior.empty:
        return None
    when = "timestamp" if "timestamp" in prior else "sent_at"
    earlier = pd.DataFrame(
        {"user_id": prior["user_id"].astype(str), "timestamp": pd.to_datetime(prior[when], utc=True)}
    )
    earlier = earlier[earlier["user_id"].isin(sends["user_id"])]
    # A message given both as sent and as prior would count toward its own fatigue.
    same = pd.MultiIndex.from_frame(earlier).isin(pd.MultiIndex.from_frame(sends[["user_id", "timestamp"]]))
    return earlier[~same]


def _organic_purchases(
    population: Population, user_ids: np.ndarray, start: pd.Timestamp, end: pd.Timestamp, seed: int
) -> pd.DataFrame:
    """The users' purchases without any message, on every local day that meets [start, end).

    Each day is drawn on its own, from a seed of (seed, day): campaigns whose spans overlap then get
    the same purchases on the shared days, under the same ids, and the store keeps them once. (The
    history drew its days with seed 0 in one call; a per-day seed also keeps its stream from being
    replayed into the campaign's days.)
    """
    wanted = set(user_ids)
    # A local day lies within a day of the UTC day of the same date, in every zone.
    first: date = (start - timedelta(days=1)).date()
    last: date = (end + timedelta(days=1)).date()
    frames = []
    day = first
    while day <= last:
        drawn = population.organic_purchases(day, day + timedelta(days=1), seed=_day_seed(seed, day))
        frames.append(drawn[drawn["user_id"].isin(wanted)])
        day += timedelta(days=1)
    purchases = pd.concat([f for f in frames if not f.empty] or frames[:1], ignore_index=True)
    return _with_ids(purchases, scope=f"organic|{population.seed}|{seed}")


def _day_seed(seed: int, day: date) -> int:
    digest = hashlib.sha256(f"organic|{seed}|{day.isoformat()}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _with_ids(events: pd.DataFrame, scope: str) -> pd.DataFrame:
    """Event ids from what each event is (scope, user, type, instant, campaign), not from its position.

    The population's own ids number events within one draw, salted by the draw's random state, which
    depends only on the seed and how many sends there were: two campaigns answered with the same seed
    and as many sends get the same ids, and the store would drop the second's events as already
    stored. The instant is floored to the store's microseconds first, so the frame holds what the
    store will hold.
    """
    events = events.assign(timestamp=events["timestamp"].dt.floor("us"))
    key = (
        scope
        + "|"
        + events["user_id"].astype(str)
        + "|"
        + events["event_type"].astype(str)
        + "|"
        + events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
        + "|"
        + events["campaign_id"].fillna("").astype(str)
    )
    occurrence = key.groupby(key).cumcount().astype(str)
    ids = [str(uuid.uuid5(_ANSWER_NAMESPACE, f"{k}|{n}")) for k, n in zip(key, occurrence, strict=True)]
    return events.assign(event_id=pd.Series(ids, index=events.index, dtype=object))


def _json_rows(events: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: ISO timestamps with offset, missing values left out."""
    frame = events.copy()
    if "timestamp" in frame:
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).map(
            lambda t: t.isoformat(), na_action="ignore"
        )
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [{str(k): v for k, v in row.items() if v is not None} for row in records]


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        return response.text[:1_000]
    return detail if isinstance(detail, str) else json.dumps(detail)[:1_000]
