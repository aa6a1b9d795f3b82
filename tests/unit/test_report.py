"""The campaign report end to end without services: a plan made by the real planner, dispatch's outcome
written into the plan store, events imported into the event store, and the report read back."""

from __future__ import annotations

import html
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from features.event_store import EventStore
from pushplan.db.engine import migrate
from pushplan.db.schema import PlanItemRow
from pushplan.db.store import PlanStore
from pushplan.domain import Campaign, NoSuchCampaign
from pushplan.settings import Settings
from reports.campaign_log import planned_channel, planned_local_hour, read_items
from reports.page import render_html
from reports.policy_value import estimates
from reports.report import (
    campaign_report,
    experiment_log_report,
    headline_text,
    parse_shares,
)
from serving.planner import Audience, plan

START = datetime(2026, 11, 2, tzinfo=UTC)
ZONES = ["Europe/Berlin", "America/New_York", "Asia/Tokyo"]
CLICK = {"good": 0.12, "plain": 0.04}  # the true click rate of each variant
ORGANIC, CONVERT = 0.10, 0.5  # organic purchase rate in the span; conversions per click


def _campaign() -> Campaign:
    return Campaign.model_validate(
        {
            "campaign_id": "report-test",
            "name": "Report test",
            "channels": ["sandbox"],
            "variants": [
                {"variant_id": "good", "title": "Good title", "tags": ["discount"]},
                {"variant_id": "plain", "title": "Plain title", "tags": ["news"]},
            ],
            "window": {"start": START.isoformat(), "end": (START + timedelta(days=1)).isoformat()},
            "holdout_fraction": 0.2,
            "exploration": 0.3,
        }
    )


@pytest.fixture
def sent_campaign(settings: Settings, tmp_path: Path) -> dict[str, object]:
    """4,500 users listed to the planner, the campaign's audience those outside Japan (the model prefers
    `good` for most), sends dispatched, answers drawn from CLICK, organic purchases for everyone; 100
    sends suppressed by a cap."""
    rng = np.random.default_rng(5)
    n = 4_500
    users = pd.DataFrame(
        {
            "user_id": [f"u{i:05d}" for i in range(n)],
            "timezone": rng.choice(ZONES, n),
            "push_opt_in": rng.random(n) < 0.9,
            "platform": rng.choice(["ios", "android"], n),
            "country": rng.choice(["DE", "US", "JP"], n),
            "signup_at": pd.Timestamp("2026-01-01", tz="UTC"),
        }
    )
    hour_scores = rng.random((n, 24))
    variant_scores = np.column_stack([rng.uniform(0.05, 0.2, n), rng.uniform(0.01, 0.1, n)])
    campaign = _campaign()
    members = (users["country"] != "JP").to_numpy()
    items = plan(campaign, Audience(users, hour_scores, variant_scores, members=members), START)
    assert (items.loc[~members, "reason"] == "not_in_audience").all()
    migrate(settings)
    store = PlanStore(settings)
    store.save_campaign(campaign)
    store.save_items(items)

    sends = items[items["decision"] == "send"].reset_index(drop=True)
    capped = sends.iloc[:100]
    delivered = sends.iloc[100:].reset_index(drop=True)
    table = PlanItemRow.__table__
    with store.engine.begin() as connection:
        connection.execute(
            sa.update(table)
            .where(table.c.plan_id.in_(list(delivered["plan_id"])))
            .values(state="sent", attempts=1)
        )
        connection.execute(
            sa.update(table)
            .where(table.c.plan_id.in_(list(capped["plan_id"])))
            .values(state="suppressed", reason="capped", detail="per_user_day: 1 a day")
        )

    at = delivered["send_at"]
    clicked = rng.random(len(delivered)) < delivered["variant_id"].map(CLICK).to_numpy()
    converted = clicked & (rng.random(len(delivered)) < CONVERT)
    rows = []

    def event(user: str, kind: str, when: pd.Timestamp, **extra: object) -> None:
        rows.append(
            {"event_id": str(uuid.uuid4()), "user_id": user, "event_type": kind, "timestamp": when, **extra}
        )

    for i, item in delivered.iterrows():
        mine = {"campaign_id": campaign.campaign_id, "variant_id": item["variant_id"], "channel": "sandbox"}
        event(item["user_id"], "push_sent", at[i], propensity=item["propensity"], **mine)
        event(item["user_id"], "push_delivered", at[i] + timedelta(seconds=1), **mine)
        if clicked[i]:
            event(item["user_id"], "push_opened", at[i] + timedelta(minutes=5), **mine)
            event(item["user_id"], "push_clicked", at[i] + timedelta(minutes=6), **mine)
        if converted[i]:
            event(item["user_id"], "converted", at[i] + timedelta(minutes=30), value=40.0, **mine)
            event(item["user_id"], "purchase", at[i] + timedelta(minutes=30), value=40.0)
    for user in users["user_id"][rng.random(n) < ORGANIC]:
        event(user, "purchase", START + timedelta(hours=30), value=20.0)
    event("u00000", "purchase", START - timedelta(days=2), value=999.0)  # before the span: not counted

    users_file, events_file = tmp_path / "users.csv", tmp_path / "events.parquet"
    users.to_csv(users_file, index=False)
    pd.DataFrame(rows).to_parquet(events_file)
    events = EventStore(settings)
    events.import_file(users_file)
    events.import_file(events_file)
    return {
        "items": items,
        "members": int(members.sum()),
        "delivered": delivered,
        "clicked": int(clicked.sum()),
        "converted": int(converted.sum()),
    }


def test_a_campaign_report_counts_by_assignment_and_agrees_with_what_happened(
    settings: Settings, sent_campaign: dict
) -> None:
    items: pd.DataFrame = sent_campaign["items"]
    report = campaign_report(settings, "report-test")
    json.dumps(report, allow_nan=False)

    # By assignment: every randomized user, the capped sends included in the campaign arm.
    randomized = items[items["decision"].isin(["send", "holdout"]) | (items["reason"] == "low_value")]
    holdouts = int((items["decision"] == "holdout").sum())
    assert report["arms"] == {"campaign": len(randomized) - holdouts, "holdout": holdouts}
    assert report["srm"]["expected_share"] == {"campaign": 0.8, "holdout": 0.2}
    assert report["srm"]["mismatch"] is False

    clicked = report["outcomes"]["clicked"]
    assert clicked["control"]["mean"] == 0.0
    assert clicked["arms"]["campaign"]["mean"] == pytest.approx(
        sent_campaign["clicked"] / report["arms"]["campaign"]
    )
    assert clicked["arms"]["campaign"]["lift_rel"] is None  # nothing to be relative to
    purchases = report["outcomes"]["revenue"]["arms"]["campaign"]
    assert purchases["lift_abs"] > 0  # converted buyers spent 40 on top of organic purchases

    funnel = report["funnel"]
    assert funnel["users"] == sent_campaign["members"]  # the audience, not everyone listed
    assert funnel["reachable"] == sent_campaign["members"] - (items["reason"] == "opted_out").sum()
    assert funnel["sent"] == funnel["delivered"] == len(sent_campaign["delivered"])
    assert funnel["clicked"] == sent_campaign["clicked"]
    assert funnel["converted"] == sent_campaign["converted"]
    assert funnel["attributed_revenue"] == pytest.approx(40.0 * sent_campaign["converted"])
    assert funnel["revenue_share"] < 1
    assert {"state": "suppressed", "reason": "capped", "items": 100, "example": "per_user_day: 1 a day"} in (
        funnel["not_sent"]
    )

    # Per label: no feature tables here, so every member is "(none)", counted as the funnel counts.
    assert report["labels"]["lifecycle_stage"] == [
        {
            "value": "(none)",
            "audience": sent_campaign["members"],
            "planned": int((items["decision"] == "send").sum()),
            "sent": len(sent_campaign["delivered"]),
            "clicked": sent_campaign["clicked"],
            "converted": sent_campaign["converted"],
            "lift_abs": None,
            "lift_abs_ci": None,
        }
    ]

    by_variant = report["segments"]["variant_id"]
    good = by_variant["good"]["outcomes"]["clicked"]["arms"]["campaign"]["mean"]
    plain = by_variant["plain"]["outcomes"]["clicked"]["arms"]["campaign"]["mean"]
    assert good > plain
    assert set(report["segments"]) >= {"local_send_hour", "channel", "platform", "timezone"}

    policy = report["policy"]
    delivered = sent_campaign["delivered"]
    vs = policy["model_vs_exploration"]  # among the sent: exploration's draws against the models' choices
    assert vs["control"]["n"] == (delivered["reason"] == "exploration").sum()
    assert vs["arm"]["n"] == (delivered["reason"] != "exploration").sum()
    model, uniform = policy["policies"]["model"], policy["policies"]["uniform"]
    # The models prefer `good` for most users, so "always the model" beats "uniformly random",
    # and each estimate is near the true value of its policy.
    truth_model = float(
        np.mean(np.where(items.loc[items["decision"] == "send", "model_variant_id"] == "good", 0.12, 0.04))
    )
    for estimate in ("ips", "snips", "dr"):
        assert model[estimate]["ci"][0] <= truth_model <= model[estimate]["ci"][1]
        assert uniform[estimate]["ci"][0] <= 0.08 <= uniform[estimate]["ci"][1]
    assert model["dr"]["ci"][0] > uniform["dr"]["ci"][1]

    page = render_html(report)
    assert html.escape(headline_text(report), quote=False) in page and page.count("<svg") >= 4
    assert "<script" not in page  # self-contained and static


def test_an_unknown_or_unplanned_campaign_is_a_clear_error(settings: Settings) -> None:
    migrate(settings)
    with pytest.raises(NoSuchCampaign, match="no campaign 'nope'"):
        campaign_report(settings, "nope")
    PlanStore(settings).save_campaign(_campaign())
    with pytest.raises(ValueError, match="no plan items: plan it first"):
        campaign_report(settings, "report-test")
    assert read_items(PlanStore(settings), "report-test").empty


def test_an_experiment_log_report_recovers_a_known_lift(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 8_000
    arm = rng.choice(["control", "new_onboarding"], n, p=[0.5, 0.5])
    segment = rng.choice(["web", "app"], n)
    converted = rng.random(n) < np.where(arm == "control", 0.10, np.where(segment == "app", 0.16, 0.10))
    log = tmp_path / "log.csv"
    pd.DataFrame({"arm": arm, "platform": segment, "converted": converted.astype(int)}).to_csv(
        log, index=False
    )

    report = experiment_log_report(log, "arm", "control", ["converted"], segments=["platform"])
    json.dumps(report, allow_nan=False)
    numbers = report["outcomes"]["converted"]["arms"]["new_onboarding"]
    lo, hi = numbers["lift_abs_ci"]
    assert lo <= 0.03 <= hi and lo > 0  # half the users +6 pp: +3 pp overall
    app = report["segments"]["platform"]["app"]["outcomes"]["converted"]["arms"]["new_onboarding"]
    web = report["segments"]["platform"]["web"]["outcomes"]["converted"]["arms"]["new_onboarding"]
    assert app["lift_abs_ci"][0] > 0 and web["lift_abs_ci"][0] < 0 < web["lift_abs_ci"][1]
    moved = {s["value"]: s["verdict"] for s in report["uplift"]["new_onboarding"]["segments"]["platform"]}
    assert moved["app"].startswith("moved") and not moved["web"].startswith("moved")
    assert report["srm"]["expected_share"] == {"control": 0.5, "new_onboarding": 0.5}


def test_bad_experiment_log_input_names_what_is_wrong(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    pd.DataFrame({"arm": ["a", "b"] * 50, "y": [0, 1] * 50}).to_csv(log, index=False)
    with pytest.raises(ValueError, match=r"no column.*clicks.*the columns are arm, y"):
        experiment_log_report(log, "arm", "a", ["clicks"])
    with pytest.raises(
        ValueError, match=r"control arm 'control' is not a value of column 'arm'; arms present: \['a', 'b'\]"
    ):
        experiment_log_report(log, "arm", "control", ["y"])
    with pytest.raises(ValueError, match=r"no expected share for arm\(s\) b: give one for every arm"):
        experiment_log_report(log, "arm", "a", ["y"], expected_share={"a": 0.5, "c": 0.5})
    # An arm meant to get a share but absent from the data is a sample ratio mismatch, not an error.
    missing_arm = experiment_log_report(log, "arm", "a", ["y"], expected_share={"a": 0.4, "b": 0.4, "c": 0.2})
    assert missing_arm["arms"]["c"] == 0 and missing_arm["srm"]["mismatch"] is True
    with pytest.raises(ValueError, match=r"outcome 'y' has 1 infinite value"):
        pd.DataFrame({"arm": ["a", "b"] * 50, "y": [0.0, 1.0] * 49 + [np.inf, 1.0]}).to_csv(log, index=False)
        experiment_log_report(log, "arm", "a", ["y"])
    with pytest.raises(ValueError, match=r"'a=lots'"):
        parse_shares(["a=lots"])
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        experiment_log_report(tmp_path / "missing.csv", "arm", "a", ["y"])
    (tmp_path / "log.json").write_text("{}")
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        experiment_log_report(tmp_path / "log.json", "arm", "a", ["y"])


def test_a_campaign_without_holdout_still_reports_its_funnel(settings: Settings) -> None:
    campaign = Campaign.model_validate({**_campaign().model_dump(), "holdout_fraction": 0.0})
    n = 200
    users = pd.DataFrame({"user_id": [f"u{i:03d}" for i in range(n)], "timezone": "UTC", "push_opt_in": True})
    audience = Audience(users, np.ones((n, 24)), np.full((n, 2), 0.1))
    migrate(settings)
    store = PlanStore(settings)
    store.save_campaign(campaign)
    store.save_items(plan(campaign, audience, START))
    report = campaign_report(settings, "report-test")
    assert report["arms"] == {"campaign": n, "holdout": 0} and report["headline"] is None
    assert "no holdout" in report["note"] and report["funnel"]["planned_sends"] == n
    assert "no holdout" in render_html(report)


def test_breakdowns_use_the_planned_channel_and_slot() -> None:
    """A fallback re-send and a deferred send are broken down where they were planned, as their holdout
    twins are: not by the channel or hour they ended on."""
    campaign = Campaign.model_validate({**_campaign().model_dump(), "channels": ["push", "sms", "email"]})
    items = pd.DataFrame(
        {
            "channel": ["push", "sms", "email", "push"],
            "fallback_step": [0, 1, 2, 0],
            "reason": [None, None, None, "deferred"],
            "local_send_at": [
                "2026-11-02T09:00:00+01:00",
                "2026-11-02T10:00:00+01:00",
                "2026-11-02T11:00:00+01:00",
                "2026-11-02T21:00:00+01:00",
            ],
            "model_send_at": pd.to_datetime(["2026-11-02T08:00Z"] * 3 + ["2026-11-02T18:00Z"], utc=True),
            "timezone": "Europe/Berlin",
        }
    )
    assert list(planned_channel(items, campaign)) == ["push", "push", "push", "push"]
    assert list(planned_local_hour(items)) == [9, 10, 11, 19]  # the deferred one: its planned 18:00 UTC


def test_off_policy_estimates_by_hand() -> None:
    reward = np.array([1.0, 0.0, 1.0, 0.0])
    logged = np.array([0.5, 0.5, 0.25, 0.25])
    target = np.array([1.0, 0.0, 1.0, 1.0])
    direct_target = np.array([0.6, 0.2, 0.5, 0.4])
    direct_logged = np.array([0.6, 0.3, 0.5, 0.1])
    got = estimates(reward, logged, target, direct_target, direct_logged)
    weights = np.array([2.0, 0.0, 4.0, 4.0])
    assert got["ips"]["value"] == pytest.approx((2 + 4) / 4)
    assert got["snips"]["value"] == pytest.approx(6 / 10)
    dr_terms = direct_target + weights * (reward - direct_logged)  # 1.4, 0.2, 2.5, 0.0
    assert got["dr"]["value"] == pytest.approx(dr_terms.mean()) == pytest.approx(1.025)
    half = 1.959964 * dr_terms.std(ddof=1) / 2
    assert got["dr"]["ci"] == pytest.approx([1.025 - half, 1.025 + half], rel=1e-5)
    assert got["effective_rows"] == pytest.approx(10**2 / (4 + 16 + 16))
