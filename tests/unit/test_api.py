"""The HTTP service through httpx: every route, the auth matrix, validation and size limits."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from dispatch.ledger import Reservation, SqlLedger, Verdict
from features.event_store import EventStore
from pushplan.caps import FrequencyCap
from pushplan.db.store import PlanStore
from pushplan.settings import Settings
from serving.keys import Role
from tests.dispatch_setup import campaign, send_items, store_campaign

pytestmark = pytest.mark.slow

CAMPAIGN = {
    "campaign_id": "bf",
    "name": "Black Friday",
    "channels": ["push"],
    "variants": [
        {"variant_id": "a", "title": "Save 30% today", "tags": ["discount", "urgency"]},
        {"variant_id": "b", "title": "What's new?", "tags": ["question", "news"]},
    ],
    "window": {"start": "2026-10-06T00:00:00Z", "end": "2026-10-08T00:00:00Z"},
    "holdout_fraction": 0.2,
}
NOW = "2026-10-06T00:00:00Z"


def test_health_readiness_and_metrics(served: tuple[TestClient, dict[Role, str], Settings]) -> None:
    client, _, _ = served
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and set(ready["heuristics"]) == {"click", "send-hour", "variant"}
    client.get("/healthz")
    assert "pushplan_http_requests_total" in client.get("/metrics").text
    # Labels are route templates: unknown paths (unauthenticated, random) add one series, not one each.
    lines = len(client.get("/metrics").text.splitlines())
    for i in range(50):
        assert client.get(f"/no/such/{i}").status_code == 401  # no key: refused before routing
    metrics = client.get("/metrics").text
    assert "/no/such/" not in metrics
    assert len(metrics.splitlines()) - lines <= 20  # the "unmatched" series' first buckets, and nothing more


def test_readiness_names_the_failing_store_without_its_error(
    served: tuple[TestClient, dict[Role, str], Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _, _ = served

    def unreachable(campaign_id: str) -> None:
        raise RuntimeError('connection to server at "10.1.2.3", port 5432 failed: password for "ops"')

    monkeypatch.setattr(client.app.state.plan_store, "counts", unreachable)  # type: ignore[attr-defined]
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json() == {"ready": False, "reason": "the plan store does not answer"}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("post", "/v1/campaigns", {Role.campaign, Role.admin}),
        ("get", "/v1/campaigns/bf", {Role.campaign, Role.operator, Role.approver, Role.admin}),
        ("post", "/v1/plans", {Role.campaign, Role.admin}),
        ("get", "/v1/campaigns/bf/plan-items", {Role.campaign, Role.operator, Role.approver, Role.admin}),
        ("post", "/v1/events", {Role.events, Role.admin}),
    ],
)
def test_auth_matrix(
    served: tuple[TestClient, dict[Role, str], Settings], method: str, path: str, allowed: set[Role]
) -> None:
    client, keys, _ = served
    body = {
        "/v1/campaigns": CAMPAIGN,
        "/v1/plans": {"campaign_id": "bf", "user_ids": ["u0000001"], "dry_run": True, "now": NOW},
        "/v1/events": {
            "events": [{"event_id": "auth-1", "user_id": "u1", "event_type": "app_open", "timestamp": NOW}]
        },
    }.get(path)
    client.post("/v1/campaigns", json=CAMPAIGN, headers={"X-API-Key": keys[Role.admin]})
    call = getattr(client, method)
    kwargs = {"json": body} if body is not None else {}
    assert call(path, **kwargs).status_code == 401
    assert call(path, headers={"X-API-Key": "pp_nope_nope"}, **kwargs).status_code == 401
    for role, key in keys.items():
        status = call(path, headers={"X-API-Key": key}, **kwargs).status_code
        assert (status < 400) == (role in allowed), (role, status)
        if role not in allowed:
            assert status == 403


def test_campaigns_plans_and_items(served: tuple[TestClient, dict[Role, str], Settings]) -> None:
    client, keys, settings = served
    headers = {"X-API-Key": keys[Role.campaign]}
    assert client.post("/v1/campaigns", json=CAMPAIGN, headers=headers).status_code == 201
    assert client.get("/v1/campaigns/bf", headers=headers).json()["name"] == "Black Friday"
    catalogue = EventStore(settings).read_variants()  # the features read the variants' tags there
    assert sorted(catalogue.loc[catalogue["campaign_id"] == "bf", "variant_id"]) == sorted(
        v["variant_id"] for v in CAMPAIGN["variants"]
    )
    assert client.get("/v1/campaigns/none", headers=headers).status_code == 404

    users = [f"u{i:07d}" for i in range(300)]
    dry = client.post(
        "/v1/plans",
        json={"campaign_id": "bf", "user_ids": users, "dry_run": True, "now": NOW},
        headers=headers,
    )
    assert dry.status_code == 200
    assert len(dry.json()["items"]) == 300
    assert client.get("/v1/campaigns/bf/plan-items", headers=headers).json()["items"] == []

    stored = client.post(
        "/v1/plans", json={"campaign_id": "bf", "user_ids": users, "now": NOW}, headers=headers
    ).json()
    assert stored["model_versions"] == {
        "click": "heuristic",
        "send-hour": "heuristic",
        "variant": "heuristic",
    }
    assert sum(stored["counts"].values()) == 300
    pages, after = [], None
    while True:
        params = {"limit": 128} | ({"after": after} if after else {})
        page = client.get("/v1/campaigns/bf/plan-items", params=params, headers=headers).json()
        pages += page["items"]
        after = page["next_after"]
        if after is None:
            break
    assert len(pages) == 300
    # The models' own choice comes back from the store as the plan made it.
    choice = {i["plan_id"]: (i["model_variant_id"], i["model_send_at"]) for i in stored["items"]}
    assert {i["plan_id"]: (i["model_variant_id"], i["model_send_at"]) for i in pages} == choice
    assert any(at is not None for _, at in choice.values())
    holdouts = client.get(
        "/v1/campaigns/bf/plan-items", params={"decision": "holdout", "limit": 1000}, headers=headers
    ).json()
    assert len(holdouts["items"]) == stored["counts"].get("holdout", 0)
    assert (
        client.get("/v1/campaigns/bf/plan-items", params={"decision": "maybe"}, headers=headers).status_code
        == 422
    )


def test_reports_are_for_operators(served: tuple[TestClient, dict[Role, str], Settings]) -> None:
    client, keys, _ = served
    headers = {"X-API-Key": keys[Role.campaign]}
    client.post("/v1/campaigns", json=CAMPAIGN, headers=headers)
    users = [f"u{i:07d}" for i in range(200)]
    client.post("/v1/plans", json={"campaign_id": "bf", "user_ids": users, "now": NOW}, headers=headers)
    path = "/v1/reports/campaigns/bf"
    assert client.get(path).status_code == 401
    assert client.get(path, headers=headers).status_code == 403
    operator = {"X-API-Key": keys[Role.operator]}
    report = client.get(path, headers=operator)
    assert report.status_code == 200
    body = report.json()
    # Planned, nothing sent yet: everyone randomized is counted, every outcome is still 0.
    assert set(body["arms"]) == {"campaign", "holdout"} and sum(body["arms"].values()) > 0
    assert body["outcomes"]["clicked"]["arms"]["campaign"]["mean"] == 0.0
    assert body["funnel"]["sent"] == 0 and body["srm"]["p_value"] is not None
    page = client.get("/reports/campaigns/bf", headers=operator)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Black Friday" in page.text
    assert client.get("/v1/reports/campaigns/none", headers=operator).status_code == 404
    unplanned = {**CAMPAIGN, "campaign_id": "bf-later"}
    client.post("/v1/campaigns", json=unplanned, headers=headers)
    refused = client.get("/v1/reports/campaigns/bf-later", headers=operator)
    assert refused.status_code == 409 and "plan it first" in refused.json()["detail"]
    assert client.get(path, params={"horizon_hours": -1}, headers=operator).status_code == 422


def test_invalid_input_is_422_naming_the_field(served: tuple[TestClient, dict[Role, str], Settings]) -> None:
    client, keys, _ = served
    headers = {"X-API-Key": keys[Role.campaign]}
    bad = {**CAMPAIGN, "holdout_fraction": 2}
    response = client.post("/v1/campaigns", json=bad, headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "holdout_fraction"
    too_many = {"campaign_id": "bf", "user_ids": [f"u{i}" for i in range(10_001)]}
    assert client.post("/v1/plans", json=too_many, headers=headers).status_code == 422


def test_events_are_validated_and_stored_whole(served: tuple[TestClient, dict[Role, str], Settings]) -> None:
    client, keys, settings = served
    headers = {"X-API-Key": keys[Role.events]}
    before = EventStore(settings).stats().events
    good = [
        {
            "event_id": "api-1",
            "user_id": "u0000001",
            "event_type": "push_sent",
            "timestamp": NOW,
            "channel": "push",
        },
        {"event_id": "api-2", "user_id": "u0000001", "event_type": "push_clicked", "timestamp": NOW},
    ]
    accepted = client.post("/v1/events", json={"events": good}, headers=headers).json()
    assert accepted == {"received": 2, "stored": 2, "already_stored": 0}
    assert client.post("/v1/events", json={"events": good}, headers=headers).json()["stored"] == 0
    bad = [*good, {"event_id": "api-3", "user_id": "u2", "event_type": "push_teleported", "timestamp": NOW}]
    refused = client.post("/v1/events", json={"events": bad}, headers=headers)
    assert refused.status_code == 422
    assert "row 3, column 'event_type'" in refused.json()["detail"]
    assert EventStore(settings).stats().events == before + 2

    # The app's own events, with a properties object; one that is not flat is refused whole.
    claimed = {"event_id": "api-4", "user_id": "u2", "event_type": "coupon_claimed", "timestamp": NOW}
    nested = {**claimed, "event_id": "api-5", "properties": {"cart": {"items": 2}}}
    refused = client.post("/v1/events", json={"events": [claimed, nested]}, headers=headers)
    assert refused.status_code == 422
    assert "row 2, column 'properties': 'cart' is a dict" in refused.json()["detail"]
    claimed["properties"] = {"code": "WELCOME10", "amount": 10}
    assert client.post("/v1/events", json={"events": [claimed]}, headers=headers).json()["stored"] == 1
    stored = EventStore(settings).read_events(["event_id", "properties"], event_types=["coupon_claimed"])
    assert stored["properties"].tolist() == ['{"amount":10,"code":"WELCOME10"}']


def test_events_with_mixed_timestamp_precision_are_stored_and_opens_reach_their_items(
    served: tuple[TestClient, dict[Role, str], Settings],
) -> None:
    """ISO 8601 with and without fractions of a second in one batch (a 500 once); an open marks the
    campaign's plan item, which fallback re-sends read."""
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from pushplan.db.schema import PlanItemRow
    from pushplan.db.store import PlanStore
    from tests.dispatch_setup import campaign, send_items, store_campaign

    client, keys, settings = served
    store = PlanStore(settings)
    c = campaign("opens-api", datetime(2026, 10, 6, tzinfo=UTC))
    store_campaign(store, c, send_items(c, ["u0000002"], [datetime(2026, 10, 6, 9, tzinfo=UTC)]))
    events = [
        {
            "event_id": "mixed-1",
            "user_id": "u0000002",
            "event_type": "push_sent",
            "timestamp": "2026-10-06T09:00:00+00:00",
        },
        {
            "event_id": "mixed-2",
            "user_id": "u0000002",
            "event_type": "push_opened",
            "timestamp": "2026-10-06T09:12:30.250000+00:00",
            "campaign_id": "opens-api",
        },
    ]
    response = client.post("/v1/events", json={"events": events}, headers={"X-API-Key": keys[Role.events]})
    assert response.status_code == 200, response.text
    with store.session() as session:
        opened = session.scalar(
            sa.select(PlanItemRow.opened_at).where(PlanItemRow.campaign_id == "opens-api")
        )
    assert opened is not None and opened.replace(tzinfo=UTC) == datetime(
        2026, 10, 6, 9, 12, 30, 250000, tzinfo=UTC
    )


def test_a_body_past_the_limit_is_413(served: tuple[TestClient, dict[Role, str], Settings]) -> None:
    client, keys, _ = served
    huge = b"x" * (9 << 20)
    response = client.post(
        "/v1/events",
        content=huge,
        headers={"X-API-Key": keys[Role.events], "Content-Type": "application/json"},
    )
    assert response.status_code == 413


def test_campaign_control_over_http(served: tuple[TestClient, dict[Role, str], Settings]) -> None:
    """Start, pause, resume, cancel: each answers the state and the items by state; a cancelled
    campaign refuses to go on (409), an unknown one is 404, and an operator key may only read."""
    from datetime import UTC, datetime

    from pushplan.db.store import PlanStore
    from tests.dispatch_setup import campaign, send_items, store_campaign

    client, keys, settings = served
    headers = {"X-API-Key": keys[Role.campaign]}
    c = campaign("control-api", datetime(2026, 10, 6, tzinfo=UTC))
    at = datetime(2026, 10, 6, 9, tzinfo=UTC)
    store_campaign(PlanStore(settings), c, send_items(c, ["u1", "u2"], [at, at]))
    base = "/v1/campaigns/control-api"
    for action, state in (("dispatch", "running"), ("pause", "paused"), ("resume", "running")):
        answer = client.post(f"{base}/{action}", headers=headers)
        assert answer.status_code == 200 and answer.json()["dispatch_state"] == state, answer.text
    operator = {"X-API-Key": keys[Role.operator]}
    assert client.post(f"{base}/pause", headers=operator).status_code == 403
    cancelled = client.post(f"{base}/cancel", headers=headers).json()
    assert cancelled["cancelled_items"] == 2
    assert cancelled["items"] == [
        {"decision": "send", "state": "cancelled", "reason": "cancelled", "items": 2}
    ]
    refused = client.post(f"{base}/resume", headers=headers)
    assert refused.status_code == 409 and "cancelled" in refused.json()["detail"]
    status = client.get(f"{base}/dispatch-status", headers=operator).json()
    assert status["dispatch_state"] == "cancelled"
    assert client.post("/v1/campaigns/nope/dispatch", headers=headers).status_code == 404


def test_opt_outs_and_provider_feedback_reach_the_suppression_list(
    served: tuple[TestClient, dict[Role, str], Settings],
) -> None:
    client, keys, settings = served
    headers = {"X-API-Key": keys[Role.events]}
    store = PlanStore(settings)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    c = campaign("feedback", start, channels=["sms"])
    store_campaign(store, c, send_items(c, ["fa", "fb", "fc"], [start] * 3))
    plan_ids = {row.user_id: row.plan_id for row in store.list_items("feedback")}
    posted = client.post(
        "/v1/events",
        json={
            "events": [
                {
                    "event_id": "oo-1",
                    "user_id": "fa",
                    "event_type": "opt_out",
                    "timestamp": "2026-11-30T00:00:00Z",
                }
            ]
        },
        headers=headers,
    )
    assert posted.status_code == 200, posted.text
    feedback = {
        "feedback": [
            {"kind": "bounce", "send_id": plan_ids["fb"], "at": "2026-11-30T01:00:00Z"},
            {"kind": "unsubscribe", "user_id": "fc", "at": "2026-11-30T02:00:00Z"},
        ]
    }
    answered = client.post("/v1/channels/sms/feedback", json=feedback, headers=headers)
    assert answered.status_code == 200, answered.text
    assert answered.json() == {"received": 2, "suppressed": 2, "events_stored": 1}
    ledger = SqlLedger(store)
    asks = [
        Reservation(f"{user}-{channel}", user, "other", channel, start, "UTC", FrequencyCap.of(settings))
        for user in ("fa", "fb", "fc")
        for channel in ("sms", "email")
    ]
    # fa opted out of everything; fb's and fc's reports were about SMS only.
    assert ledger.reserve(asks) == [Verdict.opted_out] * 3 + [
        Verdict.reserved,
        Verdict.opted_out,
        Verdict.reserved,
    ]
    unknown = {"feedback": [{"kind": "bounce", "send_id": "no-such-send", "at": "2026-11-30T01:00:00Z"}]}
    refused = client.post("/v1/channels/sms/feedback", json=unknown, headers=headers)
    assert refused.status_code == 422 and "feedback[0]" in refused.json()["detail"]
    assert (
        client.post(
            "/v1/channels/sms/feedback", json=feedback, headers={"X-API-Key": keys[Role.operator]}
        ).status_code
        == 403
    )
