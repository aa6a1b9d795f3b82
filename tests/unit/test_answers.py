"""The simulated population answers the sandbox outbox: deterministic, attributed, importable, postable."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from cli.demo import demo_campaign
from features.event_store import EventStore
from features.simulator import Population
from features.simulator.answers import OUTBOX_COLUMNS, answer_sends, post_events, read_outbox
from pushplan.domain import Campaign
from pushplan.settings import Settings

HISTORY_START = date(2026, 9, 1)
HISTORY_DAYS = 5
CAMPAIGN_START = datetime(2026, 9, 6, tzinfo=UTC)  # the day after the history, as in the demo
HORIZON = timedelta(days=3)
ATTRIBUTED = ["push_opened", "push_clicked", "converted", "unsubscribed"]


@pytest.fixture(scope="module")
def population() -> Population:
    return Population.draw(users=4_000, seed=1, start=HISTORY_START, days=HISTORY_DAYS)


@pytest.fixture(scope="module")
def campaign() -> Campaign:
    return demo_campaign(CAMPAIGN_START)


def message(key: str, campaign_id: str, user_id: str, variant_id: str, sent_at: datetime) -> dict:
    """One outbox line as the sandbox channel writes it."""
    return {
        "idempotency_key": key,
        "plan_id": key,
        "campaign_id": campaign_id,
        "user_id": user_id,
        "channel": "sandbox",
        "variant_id": variant_id,
        "title": f"title of {variant_id}",
        "body": "",
        "sent_at": sent_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }


def write_outbox(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
    return path


def assignment(population: Population, campaign: Campaign, users: int) -> tuple[pd.DataFrame, list[str]]:
    """The first `users` users: one in ten held out, two in ten skipped, the rest sent once in the window."""
    rng = np.random.default_rng(5)
    ids = population.user_id[:users]
    role = np.arange(users) % 10
    sent_ids = ids[role >= 3]
    offsets = rng.integers(0, 86_400, sent_ids.size)
    variants = [v.variant_id for v in campaign.variants]
    records = [
        message(
            f"plan-{user}",
            campaign.campaign_id,
            str(user),
            variants[int(rng.integers(len(variants)))],
            CAMPAIGN_START + timedelta(seconds=int(offset)),
        )
        for user, offset in zip(sent_ids, offsets, strict=True)
    ]
    sent = pd.DataFrame.from_records(records).assign(sent_at=lambda f: pd.to_datetime(f["sent_at"], utc=True))
    return sent, [str(user) for user in ids[role == 0]]


def test_read_outbox_keeps_the_first_line_per_key_and_filters_by_campaign(tmp_path: Path) -> None:
    nine = datetime(2026, 9, 6, 9, tzinfo=UTC)
    first = message("k1", "c-a", "u0000001", "discount", nine)
    again = message("k1", "c-a", "u0000001", "discount", nine + timedelta(minutes=5))
    lines = [
        json.dumps(first) + "\n",
        json.dumps(message("k2", "c-b", "u0000002", "news", nine)) + "\n",
        json.dumps(again) + "\n",
        '{"idempotency_key":"k3","plan_id":"k3","camp' + "\n",  # torn by a killed worker
        json.dumps(message("k4", "c-a", "u0000004", "news", nine + timedelta(hours=1))) + "\n",
        json.dumps(message("k5", "c-a", "u0000005", "news", nine))[:40],  # still being written
    ]
    path = write_outbox(tmp_path / "sandbox" / "outbox.jsonl", lines)

    every = read_outbox(path)
    assert every["idempotency_key"].tolist() == ["k1", "k2", "k4"]
    assert list(every.columns[: len(OUTBOX_COLUMNS)]) == list(OUTBOX_COLUMNS)
    assert str(every["sent_at"].dt.tz) == "UTC"
    assert every.loc[0, "sent_at"] == pd.Timestamp(nine)  # the first line of k1, not the repeat

    one = read_outbox(path, campaign_id="c-a")
    assert one["idempotency_key"].tolist() == ["k1", "k4"]
    assert one["campaign_id"].eq("c-a").all()
    assert read_outbox(path, campaign_id="nobody's").empty

    no_user = {key: value for key, value in first.items() if key != "user_id"}
    bad = write_outbox(tmp_path / "bad.jsonl", [json.dumps(first) + "\n", json.dumps(no_user) + "\n"])
    with pytest.raises(ValueError, match="line 2: no user_id"):
        read_outbox(bad)


def test_answers_are_deterministic_attributed_and_only_for_the_experiment(
    population: Population, campaign: Campaign
) -> None:
    sent, holdout = assignment(population, campaign, users=600)
    events = answer_sends(population, campaign, sent, holdout, seed=3, horizon=HORIZON)

    # The same inputs give the same events and ids, whatever order the workers wrote the outbox in.
    shuffled = sent.sample(frac=1.0, random_state=1)
    pd.testing.assert_frame_equal(
        events, answer_sends(population, campaign, shuffled, holdout[::-1], seed=3, horizon=HORIZON)
    )
    assert not events.equals(answer_sends(population, campaign, sent, holdout, seed=4, horizon=HORIZON))
    assert events["event_id"].is_unique

    assert set(events["user_id"]) <= set(sent["user_id"]) | set(holdout)
    span_end = pd.Timestamp(campaign.window.end + HORIZON)
    assert events["timestamp"].between(pd.Timestamp(campaign.window.start), span_end, inclusive="left").all()

    attributed = events[events["event_type"].isin(ATTRIBUTED)]
    assert not attributed.empty
    as_sent = attributed.merge(sent[["user_id", "variant_id"]], on="user_id", suffixes=("", "_sent"))
    assert len(as_sent) == len(attributed)  # every attributed event answers a message that was sent
    assert as_sent["campaign_id"].eq(campaign.campaign_id).all()
    assert (as_sent["variant_id"] == as_sent["variant_id_sent"]).all()
    assert as_sent["channel"].eq("sandbox").all()
    assert not events.loc[~events["event_type"].isin(ATTRIBUTED), "campaign_id"].notna().any()

    held = events[events["user_id"].isin(holdout)]
    assert held["event_type"].eq("purchase").all()  # no opens, no clicks: they were never sent
    assert not held.empty  # their organic purchases are there to compare with


def test_two_campaigns_answered_alike_get_their_own_event_ids(
    population: Population, campaign: Campaign
) -> None:
    sent, holdout = assignment(population, campaign, users=1_000)
    later = campaign.model_copy(update={"campaign_id": "next-week"})
    first = answer_sends(population, campaign, sent, holdout)
    second = answer_sends(population, later, sent.assign(campaign_id="next-week"), holdout)
    reactions = ~second["event_type"].eq("purchase") | second["campaign_id"].notna()
    assert not set(second.loc[reactions, "event_id"]) & set(first["event_id"])
    # Organic purchases are the users' own, not the campaign's: over the same days, the same events.
    held = first[first["user_id"].isin(holdout)].reset_index(drop=True)
    assert not held.empty
    pd.testing.assert_frame_equal(held, second[second["user_id"].isin(holdout)].reset_index(drop=True))


def test_enough_sends_are_opened_and_nobody_clicks_more_than_they_open(
    population: Population, campaign: Campaign
) -> None:
    sent, holdout = assignment(population, campaign, users=4_000)
    events = answer_sends(population, campaign, sent, holdout, seed=0, horizon=HORIZON)
    counts = events.groupby(["user_id", "event_type"]).size().unstack(fill_value=0)
    for kind in ("push_opened", "push_clicked", "converted", "purchase"):
        if kind not in counts:
            counts[kind] = 0

    open_rate = counts["push_opened"].sum() / len(sent)
    assert 0.0 < open_rate < 1.0
    assert counts["push_clicked"].sum() > 0
    assert (counts["push_clicked"] <= counts["push_opened"]).all()
    assert (counts["converted"] <= counts["push_clicked"]).all()

    # Each conversion comes with its purchase; the other purchases are organic, sent or held out.
    converted = events[events["event_type"] == "converted"]
    purchases = events[events["event_type"] == "purchase"]
    assert not converted.empty
    matched = converted.merge(purchases, on=["user_id", "timestamp", "value"])
    assert len(matched) == len(converted)
    assert len(purchases) > len(converted)
    assert purchases["value"].gt(0).all()


def test_fatigue_from_earlier_sends_lowers_the_clicks(population: Population, campaign: Campaign) -> None:
    sent, holdout = assignment(population, campaign, users=4_000)
    fresh = answer_sends(population, campaign, sent, holdout, seed=0)
    earlier = pd.concat([sent.assign(sent_at=sent["sent_at"] - timedelta(days=d)) for d in range(1, 6)])
    # The sends themselves among the earlier ones are not counted twice.
    tired = answer_sends(population, campaign, sent, holdout, prior_sends=pd.concat([earlier, sent]), seed=0)
    assert (tired["event_type"] == "push_clicked").sum() < (fresh["event_type"] == "push_clicked").sum()
    pd.testing.assert_frame_equal(
        answer_sends(population, campaign, sent, holdout, prior_sends=sent, seed=0), fresh
    )


def test_an_empty_outbox_still_answers_the_holdout(
    population: Population, campaign: Campaign, tmp_path: Path
) -> None:
    empty = read_outbox(write_outbox(tmp_path / "outbox.jsonl", []))
    assert empty.empty and list(empty.columns) == list(OUTBOX_COLUMNS)
    assert answer_sends(population, campaign, empty, []).empty
    held = answer_sends(population, campaign, empty, list(population.user_id[:1_000]))
    assert not held.empty and held["event_type"].eq("purchase").all()


def test_answers_refuse_what_contradicts_the_plan(population: Population, campaign: Campaign) -> None:
    sent, holdout = assignment(population, campaign, users=100)
    with pytest.raises(ValueError, match="held-out user"):
        answer_sends(population, campaign, sent, [*holdout, sent["user_id"].iloc[0]])
    with pytest.raises(ValueError, match="other campaigns"):
        answer_sends(population, campaign, sent.assign(campaign_id="elsewhere"), holdout)
    with pytest.raises(ValueError, match="not in campaign"):
        answer_sends(population, campaign, sent.assign(variant_id="zzz"), holdout)
    with pytest.raises(KeyError, match="nobody"):
        answer_sends(population, campaign, sent, ["nobody"])


def test_answers_import_cleanly_on_top_of_the_history(sim_dir: Path, tmp_path: Path) -> None:
    """Through the store's own validation (the API's path), next to the history they follow."""
    store = EventStore(Settings(data_dir=tmp_path / "data"))
    store.import_file(sim_dir / "events.parquet")
    population = Population.load(sim_dir)
    last = store.stats().last
    assert last is not None
    campaign = demo_campaign(datetime.combine(last.date() + timedelta(days=1), datetime.min.time(), UTC))
    history = store.read_events(["user_id", "timestamp"], event_types=["push_sent"])
    outbox = tmp_path / "sandbox" / "outbox.jsonl"
    variants = [v.variant_id for v in campaign.variants]
    users = population.user_id[~population.cold_start]
    write_outbox(
        outbox,
        [
            json.dumps(
                message(
                    f"p-{user}",
                    campaign.campaign_id,
                    str(user),
                    variants[k % len(variants)],
                    campaign.window.start + timedelta(minutes=k),
                )
            )
            + "\n"
            for k, user in enumerate(users[100:])
        ],
    )

    events = answer_sends(
        population,
        campaign,
        read_outbox(outbox, campaign.campaign_id),
        [str(user) for user in users[:100]],
        prior_sends=history,
    )
    path = tmp_path / "answers.parquet"
    events.to_parquet(path, index=False)
    assert store.import_file(path).stored == len(events)  # no id is one of the history's
    assert store.import_file(path).stored == 0  # and answering again is idempotent
    stored = store.read_events(start=campaign.window.start)
    assert set(stored["event_type"]) >= {"push_opened", "push_clicked", "purchase"}


def test_post_events_posts_json_batches_and_sums_the_counts(
    population: Population, campaign: Campaign, tmp_path: Path
) -> None:
    sent, holdout = assignment(population, campaign, users=300)
    events = answer_sends(population, campaign, sent, holdout)
    assert events["value"].isna().any()  # so the test sees missing values left out
    store = EventStore(Settings(data_dir=tmp_path / "data"))
    sizes: list[int] = []

    def service(request: httpx.Request) -> httpx.Response:
        """POST /v1/events as the route does it: the batch through a file import."""
        assert (request.method, request.url.path) == ("POST", "/v1/events")
        rows = json.loads(request.content)["events"]
        sizes.append(len(rows))
        assert all(value is not None for row in rows for value in row.values())
        assert all(row["timestamp"].endswith("+00:00") for row in rows)
        frame = pd.DataFrame(rows).astype(object).where(lambda f: f.notna(), None)
        path = tmp_path / f"batch-{len(sizes)}.parquet"
        frame.astype({c: "string" for c in frame.columns}).to_parquet(path, index=False)
        result = store.import_file(path)
        counts = {"received": result.rows, "stored": result.stored, "already_stored": result.already_stored}
        return httpx.Response(200, json=counts)

    with httpx.Client(transport=httpx.MockTransport(service), base_url="http://pushplan") as client:
        assert post_events(client, events, batch=40) == {
            "received": len(events),
            "stored": len(events),
            "already_stored": 0,
        }
        assert sizes[:-1] == [40] * (len(sizes) - 1) and 0 < sizes[-1] <= 40
        assert sum(sizes) == len(events)
        again = post_events(client, events, batch=1_000)
    assert again == {"received": len(events), "stored": 0, "already_stored": len(events)}
    stored = store.read_events().set_index("event_id").loc[events["event_id"]]
    assert (stored["timestamp"].to_numpy() == events["timestamp"].to_numpy()).all()


def test_post_events_raises_with_the_services_detail(population: Population, campaign: Campaign) -> None:
    sent, holdout = assignment(population, campaign, users=100)
    events = answer_sends(population, campaign, sent, holdout)
    detail = "events: row 3, column 'timestamp': '2026' has no UTC offset (write Z or +HH:MM)"

    def refusing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"detail": detail})

    with httpx.Client(transport=httpx.MockTransport(refusing), base_url="http://pushplan") as client:
        with pytest.raises(httpx.HTTPStatusError, match="row 3, column 'timestamp'") as refused:
            post_events(client, events, batch=10)
        assert refused.value.response.status_code == 422
        assert "events 1-10 of" in str(refused.value)
        with pytest.raises(ValueError, match="batch"):
            post_events(client, events, batch=0)
        assert post_events(client, events.iloc[:0]) == {"received": 0, "stored": 0, "already_stored": 0}
