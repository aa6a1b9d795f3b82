"""One scenario for audiences over HTTP, run on both profiles (tests/unit/test_api_audiences.py on
`local`, tests/integration/test_api_production.py on `production`): preview, refusals naming the
field and position, and plans that skip listed users outside a campaign's audience."""

from __future__ import annotations

from datetime import datetime

from fastapi.testclient import TestClient

from features.audiences import compile_for, select
from pushplan.settings import Settings

RULE = 'lifecycle_stage in ("active", "sleeping") and platform = "ios"'


def audience_scenario(client: TestClient, headers: dict[str, str], settings: Settings, now: str) -> None:
    moment = datetime.fromisoformat(now.replace("Z", "+00:00"))
    expected = select(settings, compile_for(settings, RULE), moment).frame["user_id"]
    assert 0 < len(expected) < 1500

    shown = client.post(
        "/v1/audiences/preview", json={"rule": RULE, "channels": ["push", "sms"], "now": now}, headers=headers
    )
    assert shown.status_code == 200, shown.text
    preview = shown.json()
    assert preview["count"] == len(expected) and preview["users"] == 1500
    assert 0 < preview["reachable"]["push"] <= preview["reachable"]["any"] <= preview["count"]
    assert sum(preview["by_label"]["lifecycle_stage"].values()) == preview["count"]
    assert set(preview["by_label"]["lifecycle_stage"]) <= {"active", "sleeping"}
    assert len(preview["sample"]) == 10 and {u["platform"] for u in preview["sample"]} == {"ios"}

    bad = client.post("/v1/audiences/preview", json={"rule": 'platfrom = "ios"'}, headers=headers)
    assert bad.status_code == 422
    assert bad.json()["detail"] == "rule: unknown field 'platfrom' (did you mean 'platform'?) (at position 0)"
    fields = {f["field"]: f for f in client.get("/v1/audiences/fields", headers=headers).json()}
    assert "cant_lose" in fields["rfm_cell"]["values"] and fields["monetary_90d"]["kind"] == "number"

    campaign = {
        "campaign_id": "ios-active",
        "name": "iOS, active or sleeping",
        "channels": ["push"],
        "variants": [{"variant_id": "a", "title": "Hello again"}],
        "window": {"start": now, "end": "2026-10-07T00:00:00Z"},
        "holdout_fraction": 0.0,
        "audience": 'lifecycle_stage = "asleep"',
    }
    refused = client.post("/v1/campaigns", json=campaign, headers=headers)
    assert refused.status_code == 422
    assert "audience: field 'lifecycle_stage' has no value 'asleep'" in refused.json()["detail"]
    assert client.get("/v1/campaigns/ios-active", headers=headers).status_code == 404  # nothing stored
    assert (
        client.post("/v1/campaigns", json={**campaign, "audience": RULE}, headers=headers).status_code == 201
    )

    listed = [f"u{i:07d}" for i in range(300)]
    planned = client.post(
        "/v1/plans", json={"campaign_id": "ios-active", "user_ids": listed, "now": now}, headers=headers
    )
    assert planned.status_code == 200, planned.text
    items = {i["user_id"]: i for i in planned.json()["items"]}
    members = set(expected) & set(listed)
    assert len(items) == 300 and members
    for user, item in items.items():
        if user in members:
            assert item["reason"] != "not_in_audience"
        else:
            assert (item["decision"], item["reason"], item["channel"]) == ("skip", "not_in_audience", None)
