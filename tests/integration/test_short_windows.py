"""A campaign whose window is "now to now + 3 minutes", planned by the planner and sent by a real
worker and beat, on both profiles: every opted-in user's message leaves inside the window (before
this, such a window held no whole local hour and every user was `skip / no_window`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from dispatch.control import control
from pushplan.db.schema import PlanItemRow
from pushplan.domain import Campaign
from pushplan.settings import Profile
from pushplan.windows import QuietHours
from serving.planner import Audience, plan
from tests.dispatch_processes import deployed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Australia/Sydney"]


@pytest.mark.parametrize("profile", [Profile.local, Profile.production])
def test_a_three_minute_send_now_campaign_is_sent_within_its_window(profile: Profile, tmp_path: Path) -> None:
    with deployed(profile, tmp_path / "data") as deployment:
        start = datetime.now(UTC)
        campaign = Campaign.model_validate(
            {
                "campaign_id": "flash",
                "name": "Flash sale, three minutes",
                "channels": ["sandbox"],
                "variants": [{"variant_id": "a", "title": "Flash sale: now"}],
                "window": {"start": start.isoformat(), "end": (start + timedelta(minutes=3)).isoformat()},
                "holdout_fraction": 0.1,
                "exploration": 0.0,
                "send": "now",
            }
        )
        n = 200
        rng = np.random.default_rng(4)
        users = pd.DataFrame(
            {
                "user_id": [f"u{i:04d}" for i in range(n)],
                "timezone": [ZONES[i % len(ZONES)] for i in range(n)],
                "push_opt_in": rng.random(n) < 0.9,
            }
        )
        # Quiet hours as the deployment has them (off: the test runs at any hour), planner and sender alike.
        audience = Audience(users, np.full((n, 24), 1 / 24), np.full((n, 1), 0.05))
        items = plan(campaign, audience, start, quiet=QuietHours.of(deployment.settings))
        sends = items[items["decision"] == "send"]
        assert len(sends) == (users["push_opt_in"].sum() - (items["decision"] == "holdout").sum())
        deployment.store.save_campaign(campaign)
        deployment.store.save_items(items)
        control(deployment.store, "flash", "dispatch")
        deployment.start("worker", "--concurrency", "2", "--loglevel", "warning")
        deployment.start("beat", "--loglevel", "warning")
        deployment.wait_until(deployment.all_final, "every item final", timeout_s=240)
        with deployment.store.session() as session:
            sent = session.scalars(
                sa.select(PlanItemRow.sent_at).where(
                    PlanItemRow.state == "sent", PlanItemRow.campaign_id == "flash"
                )
            ).all()
        assert len(sent) == len(sends)
        at = pd.to_datetime(pd.Series(sent), utc=True)
        assert (at >= pd.Timestamp(start)).all() and (at < pd.Timestamp(campaign.window.end)).all()
