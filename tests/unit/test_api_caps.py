"""Caps across campaigns through the service: a higher-priority campaign displaces a weaker one's items."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from pushplan.settings import Settings
from serving.keys import Role

pytestmark = pytest.mark.slow

NOW = "2026-10-06T00:00:00Z"


def campaign(campaign_id: str, priority: int, caps: dict[str, int] | None = None) -> dict[str, object]:
    return {
        "campaign_id": campaign_id,
        "name": campaign_id,
        "channels": ["push"],
        "variants": [{"variant_id": "a", "title": "Save 30% today", "tags": ["discount"]}],
        "window": {"start": NOW, "end": "2026-10-07T00:00:00Z"},  # one day: no room to defer
        "holdout_fraction": 0.0,
        "exploration": 0.0,
        "priority": priority,
        "caps": caps,
    }


def items(client: TestClient, headers: dict[str, str], campaign_id: str) -> dict[str, dict[str, object]]:
    page = client.get(f"/v1/campaigns/{campaign_id}/plan-items", params={"limit": 1000}, headers=headers)
    return {item["user_id"]: item for item in page.json()["items"]}


def test_a_higher_priority_campaign_takes_the_day_and_the_weaker_items_say_capped(
    served: tuple[TestClient, dict[Role, str], Settings],
) -> None:
    client, keys, _ = served
    headers = {"X-API-Key": keys[Role.campaign]}
    users = [f"u{i:07d}" for i in range(60)]
    one_a_day = {"per_user_day": 1}
    for body in (campaign("weekly", 0, one_a_day), campaign("flash", 5, one_a_day)):
        assert client.post("/v1/campaigns", json=body, headers=headers).status_code == 201

    def plan(campaign_id: str, dry_run: bool = False) -> dict[str, object]:
        body = {"campaign_id": campaign_id, "user_ids": users, "now": NOW, "dry_run": dry_run}
        response = client.post("/v1/plans", json=body, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()

    weekly = plan("weekly")
    sent_before = {i["user_id"]: i["plan_id"] for i in weekly["items"] if i["decision"] == "send"}
    assert sent_before and weekly["displaced"] == []

    preview = plan("flash", dry_run=True)
    assert sorted(preview["displaced"]) == sorted(sent_before.values())
    stored = items(client, headers, "weekly")
    assert {stored[user]["decision"] for user in sent_before} == {"send"}  # a dry run changes nothing

    flash = plan("flash")
    assert sorted(flash["displaced"]) == sorted(sent_before.values())
    after = items(client, headers, "weekly")
    for user in sent_before:
        assert (after[user]["decision"], after[user]["reason"], after[user]["state"]) == (
            "skip",
            "capped",
            "suppressed",
        )
    flash_sends = {i["user_id"] for i in flash["items"] if i["decision"] == "send"}
    assert flash_sends == set(sent_before)

    # Re-planning the weaker campaign finds the flash sale's local day taken: its items move to the
    # user's other local day inside the window (zones east or west of UTC have two), or stay capped.
    again = plan("weekly")
    assert again["displaced"] == []
    flash_day = {i["user_id"]: i["local_send_at"][:10] for i in flash["items"] if i["decision"] == "send"}
    reasons = set()
    for item in again["items"]:
        if item["user_id"] in sent_before:
            reasons.add(item["reason"])
            if item["reason"] == "deferred":
                assert item["local_send_at"][:10] != flash_day[item["user_id"]]
    assert "capped" in reasons and reasons <= {"capped", "deferred"}
    assert len(items(client, headers, "weekly")) == len(users)
