"""A triggered campaign run as deployed, on both profiles: events posted through the API, firings
planned by a real `pushplan worker` (started by beat's firing task), sends made by the due-scan to a
webhook receiver that counts every delivery and never dedupes.

One scenario: six users claim a coupon; one claim is too small for the trigger's `where`; the
trigger's user budget (3) skips the last two; one user buys before the reminder is due and is not
sent (`condition_met`); the same claims posted again fire nothing; a second claim within a day is
skipped `frequency`. Exactly the two remaining users get one message each, inside their firing's
own window, which opens the trigger's delay after the claim. The campaign is paused while the
events arrive (a paused trigger fires, its sends wait), so the cancel is in place before any send
whatever the machine's speed; resumed, it sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from dispatch.control import control
from pushplan.db.schema import PlanItemRow
from pushplan.settings import Profile
from serving.app import create_app
from serving.keys import Role, create_key
from tests.dispatch_processes import webhook_deployment
from tests.features_setup import built_store
from tests.receiver import CountingReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("profile", [Profile.local, Profile.production])
def test_a_triggered_campaign_fires_cancels_and_sends_once_with_a_real_worker(
    profile: Profile, tmp_path: Path, sim_dir: Path
) -> None:
    with (
        CountingReceiver(delay_s=0.01) as receiver,
        webhook_deployment(profile, tmp_path, receiver, trigger_scan_seconds="1") as deployment,
    ):
        settings, store = deployment.settings, deployment.store
        built_store(settings, sim_dir)  # Feast online: SQLite locally, the deployment's Redis in production
        users = pd.read_parquet(settings.users_path, columns=["user_id"])["user_id"].tolist()[:7]
        a, b, c, small, e, f, _ = users
        now = datetime.now(UTC)
        # The claims happened a little less than two minutes ago: with a delay of two minutes their
        # windows open 30 seconds from now (or when the firing is planned, if later).
        opens = (pd.Timestamp(now) + pd.Timedelta(seconds=30)).ceil("s")
        claimed = opens - pd.Timedelta(minutes=2)
        campaign = {
            "campaign_id": "coupon-reminder",
            "name": "Coupon reminder",
            "channels": ["webhook"],
            "variants": [{"variant_id": "a", "title": "Your coupon expires soon"}],
            "window": {
                "start": (now - timedelta(hours=1)).isoformat(),
                "end": (now + timedelta(hours=1)).isoformat(),
            },
            "holdout_fraction": 0.0,
            "exploration": 0.0,
            # At the window's start: a best-time slot may be the next hour's, minutes away (the unit
            # tests choose best times; this one is about firing, cancelling and sending once).
            "send": "now",
            "trigger": {
                "on": "coupon_claimed",
                "where": "amount >= 10",
                "delay": "PT2M",
                "send_within": "PT10M",
                "unless": ["purchase"],
                "once_per_user_days": 1,
                "max_users": 3,
            },
        }
        headers = {"X-API-Key": create_key(store, Role.campaign)}
        app_backend = {"X-API-Key": create_key(store, Role.events)}
        deployment.start("worker", "--concurrency", "2", "--loglevel", "warning")
        deployment.start("beat", "--loglevel", "warning")
        with TestClient(create_app(settings)) as client:
            assert client.post("/v1/campaigns", json=campaign, headers=headers).status_code == 201
            # Paused: the trigger fires and plans, its sends wait; so the cancel below comes before any
            # send however slowly this machine starts the worker.
            control(store, "coupon-reminder", "dispatch")
            control(store, "coupon-reminder", "pause")
            claims = [
                {
                    "event_id": f"claim-{user}",
                    "user_id": user,
                    "event_type": "coupon_claimed",
                    "timestamp": (claimed - pd.Timedelta(seconds=6 - i)).isoformat(),
                    "properties": {"coupon": "WELCOME", "amount": 5 if user == small else 20},
                }
                for i, user in enumerate([a, b, c, small, e, f])
            ]
            assert (
                client.post("/v1/events", json={"events": claims}, headers=app_backend).json()["stored"] == 6
            )
            deployment.wait_until(lambda: len(_items(deployment)) == 5, "five firings planned", timeout_s=60)
            fired = _items(deployment)
            assert fired.loc[[a, b, c], "state"].tolist() == ["planned"] * 3
            assert fired.loc[[e, f], "reason"].tolist() == ["budget_spent"] * 2
            assert small not in fired.index  # `where` refused it: no firing at all

            purchase = {
                "event_id": f"buy-{b}",
                "user_id": b,
                "event_type": "purchase",
                "timestamp": now.isoformat(),
            }
            again = {**claims[0], "event_id": f"claim-again-{a}"}
            assert (
                client.post(
                    "/v1/events", json={"events": [purchase, *claims, again]}, headers=app_backend
                ).json()["stored"]
                == 2
            )
            deployment.wait_until(
                lambda: len(_items(deployment)) == 6 and _items(deployment).loc[b, "state"] == "cancelled",
                "the purchase cancels b's reminder and a's second claim is fired",
                timeout_s=30,
            )
            control(store, "coupon-reminder", "resume")
            deployment.wait_until(deployment.all_final, "every item final", timeout_s=180)
            status = client.get("/v1/campaigns/coupon-reminder/trigger", headers=headers).json()

        final = _items(deployment)
        by_user = final.groupby(level=0)["reason"].apply(list).to_dict()
        assert by_user[b] == ["condition_met"] and set(by_user[a]) == {"frequency", None}
        sent = final[final["state"] == "sent"]
        assert sorted(sent.index) == sorted([a, c])
        assert (sent["sent_at"] >= sent["fired_at"] + pd.Timedelta(minutes=2)).all()
        assert (sent["sent_at"] < sent["window_end"]).all()
        delivered = sorted(receiver.users[key] for key in receiver.deliveries)
        assert delivered == sorted([a, c]) and receiver.duplicates() == 0
        assert status["by_outcome"] == {"send": 2, "condition_met": 1, "budget_spent": 2, "frequency": 1}
        assert status["sends"] == 2 and status["users_sent"] == 2 and status["state"] == "live"


def _items(deployment) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    columns = ("user_id", "state", "reason", "sent_at", "fired_at", "window_end")
    with deployment.store.session() as session:
        rows = session.execute(
            sa.select(*(getattr(PlanItemRow, c) for c in columns)).where(
                PlanItemRow.campaign_id == "coupon-reminder"
            )
        ).all()
    frame = pd.DataFrame(rows, columns=list(columns))
    for instant in ("sent_at", "fired_at", "window_end"):
        frame[instant] = pd.to_datetime(frame[instant], utc=True)
    return frame.set_index("user_id")
