"""Built-in labels on hand-built histories: every RFM cell and lifecycle stage reached, point in time;
and audiences selected from them, the users file's own attributes and the event log."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from features.audiences import compile_for, define_label, preview, remove_label, schema, select
from features.event_store import EventStore
from features.store import apply, feature_store, materialize, read_stored
from features.tables import RFM_CELLS, RFM_GRID, build_feature_tables
from pushplan.audience_rules import RuleError, describe
from pushplan.db.engine import migrate
from pushplan.db.labels import label_versions, labels_in_force
from pushplan.db.store import PlanStore
from pushplan.settings import Settings

SNAPSHOT = pd.Timestamp("2026-06-01", tz="UTC")  # the snapshot the checks read


def _import(settings: Settings, tmp_path: Path, users: list[dict], events: list[dict]) -> None:
    store = EventStore(settings)
    users = [{"timezone": "Europe/Berlin", "push_opt_in": "false", **user} for user in users]
    pd.DataFrame(users).to_csv(tmp_path / "users.csv", index=False)
    pd.DataFrame(events).to_csv(tmp_path / "events.csv", index=False)
    store.import_file(tmp_path / "users.csv")
    store.import_file(tmp_path / "events.csv")


@pytest.fixture
def grid_of_buyers(settings: Settings, tmp_path: Path) -> pd.DataFrame:
    """25 buyers, one per (recency score, frequency-and-monetary score): buyer (r, fm) made fm
    purchases of 10 each, the last one more recent the higher r; quintiles among 25 buyers put
    exactly five in each score."""
    users, events = [], []
    for r in range(1, 6):
        for fm in range(1, 6):
            user = f"r{r}fm{fm}"
            users.append({"user_id": user, "signup_at": "2026-01-01T00:00:00Z", "push_opt_in": "true"})
            # Later (fresher) last purchases for higher r; within r, by fm, all distinct.
            last = SNAPSHOT - pd.Timedelta(days=60 - 10 * r, hours=fm)
            for k in range(fm):
                when = last - pd.Timedelta(days=k)
                events.append(
                    {
                        "event_id": f"{user}-{k}",
                        "user_id": user,
                        "event_type": "purchase",
                        "timestamp": when.isoformat(),
                        "value": 10.0,
                    }
                )
    # Someone opens the app on the last day, so the snapshot of SNAPSHOT is built.
    users.append({"user_id": "late", "signup_at": "2026-01-01T00:00:00Z"})
    events.append(
        {
            "event_id": "late",
            "user_id": "late",
            "event_type": "app_open",
            "timestamp": str(SNAPSHOT - pd.Timedelta(hours=1)),
        }
    )
    _import(settings, tmp_path, users, events)
    build_feature_tables(settings)
    rfm = pd.read_parquet(settings.feast_dir / "tables" / "user_rfm.parquet")
    return rfm[(rfm["event_timestamp"] == SNAPSHOT) & (rfm["user_id"] != "late")].set_index("user_id")


def test_every_rfm_cell_is_reached_from_its_scores(grid_of_buyers: pd.DataFrame) -> None:
    for r in range(1, 6):
        for fm in range(1, 6):
            row = grid_of_buyers.loc[f"r{r}fm{fm}"]
            assert (row["r_score"], row["f_score"], row["m_score"]) == (r, fm, fm)
            assert row["rfm_cell"] == RFM_GRID[r - 1][fm - 1]
    assert set(grid_of_buyers["rfm_cell"]) == set(RFM_CELLS) - {"no_purchase"}


def test_lifecycle_stages_and_no_purchase_point_in_time(settings: Settings, tmp_path: Path) -> None:
    day = pd.Timestamp("2026-05-01", tz="UTC")
    users = [
        {"user_id": "fresh", "signup_at": (day + pd.Timedelta(days=25)).isoformat()},  # new on 06-01
        {"user_id": "busy", "signup_at": day.isoformat()},
        {"user_id": "dozing", "signup_at": day.isoformat()},
        {"user_id": "gone", "signup_at": day.isoformat()},
    ]
    opens = {"fresh": 30, "busy": 29, "dozing": 15, "gone": 0}  # days after 05-01 of the last open
    events = [
        {
            "event_id": f"{u}-open",
            "user_id": u,
            "event_type": "app_open",
            "timestamp": str(day + pd.Timedelta(days=d)),
        }
        for u, d in opens.items()
    ]
    # A purchase after the snapshot must not show in it.
    events.append(
        {
            "event_id": "later",
            "user_id": "busy",
            "event_type": "purchase",
            "timestamp": "2026-06-03T10:00:00Z",
        }
    )
    _import(settings, tmp_path, users, events)
    build_feature_tables(settings)
    rfm = pd.read_parquet(settings.feast_dir / "tables" / "user_rfm.parquet")
    on = rfm[rfm["event_timestamp"] == SNAPSHOT].set_index("user_id")
    assert on["lifecycle_stage"].to_dict() == {
        "fresh": "new",
        "busy": "active",
        "dozing": "sleeping",  # 17 days idle: over 7, at most 30
        "gone": "churned",
    }
    assert set(on["rfm_cell"]) == set(on["rfm_segment"]) == {"no_purchase"}
    after = rfm[rfm["event_timestamp"] == pd.Timestamp("2026-06-04", tz="UTC")].set_index("user_id")
    assert after.loc["busy", "rfm_cell"] != "no_purchase"


@pytest.fixture
def shop(settings: Settings, tmp_path: Path) -> Settings:
    """Five users with a custom attribute (`tier`, `spend_limit`), opens and purchases over May."""
    users = [
        {
            "user_id": "u1",
            "country": "DE",
            "push_opt_in": "true",
            "sms_opt_in": "true",
            "tier": "gold",
            "spend_limit": 500,
        },
        {
            "user_id": "u2",
            "country": "DE",
            "push_opt_in": "false",
            "sms_opt_in": "true",
            "tier": "silver",
            "spend_limit": 50,
        },
        {
            "user_id": "u3",
            "country": "FR",
            "push_opt_in": "true",
            "sms_opt_in": "false",
            "tier": "gold",
            "spend_limit": 80,
        },
        {
            "user_id": "u4",
            "country": "FR",
            "push_opt_in": "true",
            "sms_opt_in": "false",
            "tier": "",
            "spend_limit": 0,
        },
        {
            "user_id": "u5",
            "country": "US",
            "push_opt_in": "true",
            "sms_opt_in": "true",
            "tier": "silver",
            "spend_limit": 10,
        },
    ]
    events = []
    for i, (user, kind, when) in enumerate(
        [
            ("u1", "purchase", "2026-05-20T10:00:00Z"),
            ("u2", "purchase", "2026-04-01T10:00:00Z"),
            ("u3", "app_open", "2026-05-30T10:00:00Z"),
            ("u4", "app_open", "2026-04-10T10:00:00Z"),
            ("u5", "app_open", "2026-05-31T10:00:00Z"),
            ("u5", "purchase", "2026-06-02T10:00:00Z"),  # after `now` below: must not count
            ("u4", "coupon_claimed", "2026-05-29T10:00:00Z"),  # an app's own event
        ]
    ):
        events.append(
            {"event_id": f"e{i}", "user_id": user, "event_type": kind, "timestamp": when, "value": 20.0}
        )
    for user in ("u1", "u2", "u3", "u4", "u5"):
        events.append(
            {
                "event_id": f"s-{user}",
                "user_id": user,
                "event_type": "app_open",
                "timestamp": "2026-03-01T10:00:00Z",
            }
        )
    _import(settings, tmp_path, users, events)
    build_feature_tables(settings)
    return settings


NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def ids(settings: Settings, text: str) -> list[str]:
    return sorted(select(settings, compile_for(settings, text), NOW).frame["user_id"])


def test_an_audience_combines_labels_attributes_and_events(shop: Settings) -> None:
    assert ids(shop, 'country = "DE"') == ["u1", "u2"]
    assert ids(shop, 'tier = "gold"') == ["u1", "u3"]
    assert ids(shop, "spend_limit >= 80") == ["u1", "u3"]
    assert ids(shop, "did purchase in last 30 days") == ["u1"]  # u5's purchase is after now
    assert ids(shop, "did not purchase in last 90 days") == ["u3", "u4", "u5"]
    assert ids(shop, 'lifecycle_stage = "churned"') == ["u2", "u4"]
    assert ids(shop, 'lifecycle_stage in ("active", "sleeping") and not did purchase in last 30 days') == [
        "u3",
        "u5",
    ]
    assert ids(shop, "frequency_90d > 0") == ["u1", "u2"]  # features as of the 06-01 snapshot
    assert ids(shop, "did coupon_claimed in last 7 days") == ["u4"]
    with pytest.raises(RuleError, match="coupon_claimd"):
        compile_for(shop, "did coupon_claimd in last 7 days")


def test_a_preview_counts_reach_labels_and_samples(shop: Settings) -> None:
    shown = preview(shop, 'country in ("DE", "US")', NOW, channels=["push", "sms"], sample=2)  # type: ignore[list-item]
    assert shown["users"] == 5 and shown["count"] == 3
    assert shown["reachable"] == {"push": 2, "sms": 3, "any": 3}
    assert shown["by_label"]["lifecycle_stage"] == {"churned": 1, "sleeping": 1, "active": 1}
    assert len(shown["sample"]) == 2 and {row["country"] for row in shown["sample"]} <= {"DE", "US"}
    assert shown["as_of"] == "2026-06-01T00:00:00+00:00"


def test_custom_attributes_are_typed_from_the_users_file(shop: Settings) -> None:
    with pytest.raises(RuleError, match="field 'tier' is a text, compared with a number"):
        compile_for(shop, "tier = 3")
    with pytest.raises(RuleError, match="unknown field 'teir' \\(did you mean 'tier'\\?\\)"):
        compile_for(shop, 'teir = "gold"')


def test_custom_labels_are_versioned_checked_and_refused_whole(shop: Settings) -> None:
    migrate(shop)
    first = define_label(shop, "gold_buyer", 'tier = "gold" and frequency_90d > 0', "ana")
    second = define_label(shop, "gold_buyer", 'tier = "gold"', "bo")
    assert (first.version, first.author, second.version, second.author) == (1, "ana", 2, "bo")
    for name, rule, message in [
        ("Gold", "vip = 1", "label name 'Gold': lower-case letters"),
        ("country", 'tier = "gold"', "label name 'country' is already a field"),
        ("and", 'tier = "gold"', "a word of the rule language"),
        ("big", "monetary_90d >", "the rule ends too early"),
        ("big", "gold_buyer", "unknown field 'gold_buyer'"),  # labels do not build on labels
        ("big", 'teir = "gold"', "unknown field 'teir' (did you mean 'tier'?)"),
    ]:
        with pytest.raises(RuleError, match=re.escape(message)):
            define_label(shop, name, rule, "ana")
    store = PlanStore(shop)
    assert [(v.name, v.version) for v in label_versions(store)] == [("gold_buyer", 1), ("gold_buyer", 2)]
    remove_label(shop, "gold_buyer", "ana")
    assert labels_in_force(store) == [] and len(label_versions(store)) == 3
    with pytest.raises(KeyError):
        remove_label(shop, "gold_buyer", "ana")


def test_custom_labels_are_computed_point_in_time_and_served_by_feast(shop: Settings) -> None:
    migrate(shop)
    define_label(shop, "buyer", "frequency_90d > 0", "ana")
    define_label(shop, "gold_opener", 'tier = "gold" and did app_open in last 3 days', "ana")
    build_feature_tables(shop)
    table = pd.read_parquet(shop.feast_dir / "tables" / "user_labels.parquet")
    held = {
        (row.user_id, row.event_timestamp.date().isoformat()): set(row.labels) for row in table.itertuples()
    }
    # u1 bought on 05-20: a buyer from the snapshot stamped 05-21, not before.
    assert "buyer" not in held[("u1", "2026-05-20")] and "buyer" in held[("u1", "2026-05-21")]
    # u3 (gold) opened the app on 03-01 and 05-30: the label holds on the three snapshots after each.
    gold = sorted(day for (user, day), names in held.items() if user == "u3" and "gold_opener" in names)
    assert gold == ["2026-03-02", "2026-03-03", "2026-03-04", "2026-05-31", "2026-06-01", "2026-06-02"]
    assert not any("gold_opener" in names for (user, _), names in held.items() if user == "u5")  # silver

    # A rule may use a label; it selects what the label's own rule selects on that snapshot.
    assert ids(shop, "buyer") == ids(shop, "frequency_90d > 0") == ["u1", "u2"]
    assert ids(shop, "gold_opener or not buyer") == ["u3", "u4", "u5"]
    fields = {f["field"]: f for f in describe(schema(shop))}
    assert fields["buyer"]["kind"] == "yes/no" and "v1 by ana" in str(fields["buyer"]["about"])

    # Feast serves the labels like any feature: online after materializing, and point in time.
    store = feature_store(shop)
    apply(store, shop)
    materialize(store, shop)
    online = store.get_online_features(["user_labels:labels"], [{"user_id": "u1"}, {"user_id": "u3"}])
    assert [sorted(v or []) for v in online.to_dict()["labels"]] == [["buyer"], []]
    before = read_stored(
        store, ["u1"], ["user_labels:labels"], source="offline", at=datetime(2026, 5, 20, 12, tzinfo=UTC)
    )
    assert list(before["labels"][0]) == []
