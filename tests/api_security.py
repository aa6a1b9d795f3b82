"""The API as an attacker and as operators meet it, run by the local and the production profile's tests:
every route for every role of two teams, approvals, the audit trail, the keys' lifecycle, and the
body limit over a real socket.

Two teams, `growth` and `retail`, each with a key of every role but admin; one admin key. Each team
owns a campaign. A key must reach its own team's campaign (anything but 401/403/404), get 404 for
the other team's (as for a campaign that does not exist) and 403 for a route its role may not use.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
import uvicorn
from fastapi.testclient import TestClient

from pushplan.db.schema import ApiKeyRow
from pushplan.db.store import PlanStore
from pushplan.settings import Settings
from serving.app import create_app
from serving.guard import MAX_BODY_BYTES
from serving.keys import Role, create_key

NOW = "2026-10-06T00:00:00Z"
TEAMS = ("growth", "retail")
TEAM_ROLES = (Role.campaign, Role.events, Role.operator, Role.approver)
READERS = {Role.campaign, Role.operator, Role.approver}

# Route template -> (method, roles allowed besides admin, team-scoped, body). {c} is the campaign.
ROUTES: dict[tuple[str, str], tuple[set[Role], bool, Any]] = {
    ("POST", "/v1/campaigns"): ({Role.campaign}, False, "spec"),
    ("GET", "/v1/campaigns/{campaign_id}"): (READERS, True, None),
    ("GET", "/v1/campaigns/{campaign_id}/trigger"): (READERS, True, None),
    ("GET", "/v1/campaigns/{campaign_id}/approval"): (READERS, True, None),
    ("POST", "/v1/campaigns/{campaign_id}/approve"): ({Role.approver}, True, {"comment": "fine"}),
    ("POST", "/v1/campaigns/{campaign_id}/reject"): ({Role.approver}, True, {"comment": "no"}),
    ("GET", "/v1/campaigns/{campaign_id}/dispatch-status"): (READERS, True, None),
    ("POST", "/v1/campaigns/{campaign_id}/dispatch"): ({Role.campaign}, True, None),
    ("POST", "/v1/campaigns/{campaign_id}/pause"): ({Role.campaign}, True, None),
    ("POST", "/v1/campaigns/{campaign_id}/resume"): ({Role.campaign}, True, None),
    ("POST", "/v1/campaigns/{campaign_id}/cancel"): ({Role.campaign}, True, None),
    ("POST", "/v1/campaigns/{campaign_id}/plan-jobs"): ({Role.campaign}, True, {"now": NOW}),
    ("GET", "/v1/plan-jobs/{job_id}"): (READERS, True, None),
    ("POST", "/v1/plans"): ({Role.campaign}, True, "plan"),
    ("GET", "/v1/campaigns/{campaign_id}/plan-items"): (READERS, True, None),
    ("POST", "/v1/audiences/preview"): (READERS, False, {"rule": 'lifecycle_stage = "active"', "now": NOW}),
    ("GET", "/v1/audiences/fields"): (READERS, False, None),
    ("POST", "/v1/events"): ({Role.events}, False, "events"),
    ("POST", "/v1/channels/{channel}/feedback"): ({Role.events}, False, "feedback"),
    ("GET", "/v1/reports/campaigns/{campaign_id}"): ({Role.operator, Role.approver}, True, None),
    ("GET", "/reports/campaigns/{campaign_id}"): ({Role.operator, Role.approver}, True, None),
    ("GET", "/v1/keys"): (set(), False, None),
    ("POST", "/v1/keys"): (set(), False, {"role": "operator", "team": "growth"}),
    ("POST", "/v1/keys/{key_id}/rotate"): (set(), False, None),
    ("POST", "/v1/keys/{key_id}/revoke"): (set(), False, None),
    ("GET", "/v1/audit"): (set(), False, None),
}
OPEN = {"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}


def spec(campaign_id: str, **more: Any) -> dict[str, Any]:
    return {
        "campaign_id": campaign_id,
        "name": f"Campaign {campaign_id}",
        "channels": ["push"],
        "variants": [
            {"variant_id": "a", "title": "Save 30% today", "tags": ["discount"]},
            {"variant_id": "b", "title": "What's new?", "tags": ["news"]},
        ],
        "window": {"start": NOW, "end": "2026-10-07T00:00:00Z"},
        "holdout_fraction": 0.2,
        **more,
    }


class Keys:
    """Every role's key for both teams, and an admin key."""

    def __init__(self, settings: Settings) -> None:
        store = PlanStore(settings)
        self.of = {(team, role): create_key(store, role, team=team) for team in TEAMS for role in TEAM_ROLES}
        self.admin = create_key(store, Role.admin, team="platform")

    def headers(self, team: str, role: Role) -> dict[str, str]:
        return {"X-API-Key": self.admin if role is Role.admin else self.of[(team, role)]}


def _request(route: tuple[str, str], campaign_id: str, job_id: str, key_id: str) -> tuple[str, str, Any]:
    method, template = route
    body = ROUTES[route][2]
    if template.endswith("/trigger"):  # a triggered campaign of the same team
        campaign_id = campaign_id.replace("-matrix", "-trigger")
    path = template.format(campaign_id=campaign_id, job_id=job_id, key_id=key_id, channel="sms")
    if body == "spec":
        body = spec(campaign_id)
    elif body == "plan":
        body = {"campaign_id": campaign_id, "user_ids": ["u0000001"], "dry_run": True, "now": NOW}
    elif body == "events":
        body = {
            "events": [
                {"event_id": f"sec-{key_id}", "user_id": "u1", "event_type": "app_open", "timestamp": NOW}
            ]
        }
    elif body == "feedback":
        body = {"feedback": [{"kind": "bounce", "user_id": "u1", "at": NOW}]}
    return method, path, body


def every_route_for_every_role_and_team(client: TestClient, settings: Settings) -> None:
    keys = Keys(settings)
    admin = {"X-API-Key": keys.admin}
    owned = {}
    for team in TEAMS:
        campaign_id = f"{team}-matrix"
        created = client.post(
            "/v1/campaigns", json=spec(campaign_id), headers=keys.headers(team, Role.campaign)
        )
        assert created.status_code == 201, created.text
        job = client.post(
            f"/v1/campaigns/{campaign_id}/plan-jobs",
            json={"now": NOW},
            headers=keys.headers(team, Role.campaign),
        )
        assert job.status_code == 202, job.text
        owned[team] = (campaign_id, job.json()["job_id"])
        triggered = spec(f"{team}-trigger", trigger={"on": "signup"})
        assert (
            client.post(
                "/v1/campaigns", json=triggered, headers=keys.headers(team, Role.campaign)
            ).status_code
            == 201
        )
    spare = client.post("/v1/keys", json={"role": "operator", "team": "growth"}, headers=admin).json()
    spare_id = spare["info"]["key_id"]

    served = {
        (method.upper(), path)
        for path, operations in client.app.openapi()["paths"].items()  # type: ignore[attr-defined]
        if path not in OPEN
        for method in operations
    }
    assert served == set(ROUTES), f"routes without a row in ROUTES: {served ^ set(ROUTES)}"

    for route, (allowed, scoped, _) in ROUTES.items():
        for caller_team in TEAMS:
            for role in (*TEAM_ROLES, Role.admin):
                for owner in TEAMS:
                    campaign_id, job_id = owned[owner]
                    if route == ("POST", "/v1/campaigns"):
                        campaign_id = f"{caller_team}-made-{role}"  # a new one, in the caller's team
                    method, path, body = _request(route, campaign_id, job_id, spare_id)
                    answer = client.request(method, path, json=body, headers=keys.headers(caller_team, role))
                    where = (
                        f"{method} {path}, {caller_team}'s {role}: {answer.status_code} {answer.text[:200]}"
                    )
                    assert answer.status_code < 500, where
                    if role is not Role.admin and role not in allowed:
                        assert answer.status_code == 403, where
                    elif scoped and owner != caller_team and role is not Role.admin:
                        assert answer.status_code == 404, where
                    else:
                        assert answer.status_code not in (401, 403, 404), where
                    if route[1].endswith("/rotate") and answer.status_code == 200:
                        spare_id = answer.json()["info"]["key_id"]  # the same id: rotation keeps it
        # Without a key, every route is refused before it runs.
        method, path, body = _request(route, owned["growth"][0], owned["growth"][1], spare_id)
        assert client.request(method, path, json=body).status_code == 401


def cross_team_writes_are_refused(client: TestClient, settings: Settings) -> None:
    """An events key cannot mark another team's items opened, nor report on its sends."""
    keys = Keys(settings)
    retail = keys.headers("retail", Role.campaign)
    assert client.post("/v1/campaigns", json=spec("retail-owned"), headers=retail).status_code == 201
    opened = {
        "events": [
            {
                "event_id": "cross-1",
                "user_id": "u0000001",
                "event_type": "push_opened",
                "timestamp": NOW,
                "campaign_id": "retail-owned",
            }
        ]
    }
    refused = client.post("/v1/events", json=opened, headers=keys.headers("growth", Role.events))
    assert refused.status_code == 422 and "row 0" in refused.json()["detail"], refused.text
    assert (
        client.post("/v1/events", json=opened, headers=keys.headers("retail", Role.events)).status_code == 200
    )
    # Taken ids: another team cannot replace a campaign by naming it.
    taken = client.post(
        "/v1/campaigns", json=spec("retail-owned"), headers=keys.headers("growth", Role.campaign)
    )
    assert taken.status_code == 409
    retail_view = client.get("/v1/campaigns/retail-owned", headers=retail).json()
    assert retail_view["name"] == "Campaign retail-owned"
    # An admin may replace it; it stays retail's.
    renamed = spec("retail-owned", name="Renamed by an admin")
    assert client.post("/v1/campaigns", json=renamed, headers={"X-API-Key": keys.admin}).status_code == 201
    assert client.get("/v1/campaigns/retail-owned", headers=retail).json()["name"] == "Renamed by an admin"
    assert client.get("/v1/campaigns/retail-owned/approval", headers=retail).json()["team"] == "retail"
    # A team's ceiling on priority; admins are not held to it.
    high = spec("growth-loud", priority=settings.priority_ceiling + 1)
    ceiling = client.post("/v1/campaigns", json=high, headers=keys.headers("growth", Role.campaign))
    assert ceiling.status_code == 403 and "ceiling" in ceiling.json()["detail"]
    assert client.post("/v1/campaigns", json=high, headers={"X-API-Key": keys.admin}).status_code == 201
    # Ids that could climb a path are refused.
    assert client.post("/v1/campaigns", json=spec("../etc"), headers=retail).status_code == 422


def approvals_hold(client: TestClient, settings: Settings) -> None:
    """SMS makes a campaign a draft; dispatch waits for another key's yes; a change sends it back."""
    keys = Keys(settings)
    author = keys.headers("growth", Role.campaign)
    approver = keys.headers("growth", Role.approver)
    sms = spec("growth-sms", channels=["sms"])
    assert client.post("/v1/campaigns", json=sms, headers=author).status_code == 201
    state = client.get("/v1/campaigns/growth-sms/approval", headers=author).json()
    assert state["approval"] == "draft" and state["reasons"] == ["sends on sms"], state
    refused = client.post("/v1/campaigns/growth-sms/dispatch", headers=author)
    assert refused.status_code == 409 and "approver" in refused.json()["detail"]
    # The other team's approver sees nothing; a comment is required.
    other = keys.headers("retail", Role.approver)
    assert (
        client.post("/v1/campaigns/growth-sms/approve", json={"comment": "ok"}, headers=other).status_code
        == 404
    )
    assert client.post("/v1/campaigns/growth-sms/approve", json={}, headers=approver).status_code == 422
    rejected = client.post(
        "/v1/campaigns/growth-sms/reject", json={"comment": "wrong audience"}, headers=approver
    )
    assert rejected.status_code == 200 and rejected.json()["approval"] == "rejected"
    refused = client.post("/v1/campaigns/growth-sms/dispatch", headers=author)
    assert refused.status_code == 409 and "wrong audience" in refused.json()["detail"]
    # A new spec is a new draft; approved, it may dispatch; a decided campaign is not decided again.
    sms["name"] = "SMS, second try"
    assert client.post("/v1/campaigns", json=sms, headers=author).status_code == 201
    assert client.get("/v1/campaigns/growth-sms/approval", headers=author).json()["approval"] == "draft"
    approved = client.post("/v1/campaigns/growth-sms/approve", json={"comment": "fine now"}, headers=approver)
    assert approved.status_code == 200, approved.text
    assert approved.json()["decided_by"].startswith("key:") and approved.json()["comment"] == "fine now"
    again = client.post("/v1/campaigns/growth-sms/approve", json={"comment": "twice"}, headers=approver)
    assert again.status_code == 409
    # Changing an approved campaign sends it back to draft.
    sms["name"] = "SMS, third"
    assert client.post("/v1/campaigns", json=sms, headers=author).status_code == 201
    assert client.get("/v1/campaigns/growth-sms/approval", headers=author).json()["approval"] == "draft"
    assert client.post("/v1/campaigns/growth-sms/dispatch", headers=author).status_code == 409
    assert (
        client.post("/v1/campaigns/growth-sms/approve", json={"comment": "ok"}, headers=approver).status_code
        == 200
    )
    assert (
        client.post("/v1/campaigns/growth-sms/dispatch", headers=author).json()["dispatch_state"] == "running"
    )
    # Nobody approves their own send: an admin who wrote a sensitive campaign cannot approve it.
    admin = {"X-API-Key": keys.admin}
    flagged = spec("admin-flagged", sensitive=True)
    assert client.post("/v1/campaigns", json=flagged, headers=admin).status_code == 201
    own = client.post("/v1/campaigns/admin-flagged/approve", json={"comment": "mine"}, headers=admin)
    assert own.status_code == 409 and "another approver" in own.json()["detail"]


def audit_records_each_change(client: TestClient, settings: Settings) -> None:
    """Every state-changing call with a valid key leaves one row, refused ones included; reads and
    dry runs leave none; only admins read it, and nothing in the API changes it."""
    keys = Keys(settings)
    author = keys.headers("growth", Role.campaign)
    admin = {"X-API-Key": keys.admin}
    key_id = keys.of[("growth", Role.campaign)].split("_")[1]
    assert (
        client.post("/v1/campaigns", json=spec("audited", channels=["email"]), headers=author).status_code
        == 201
    )
    assert client.get("/v1/campaigns/audited", headers=author).status_code == 200
    plan = {"campaign_id": "audited", "user_ids": ["u0000001"], "dry_run": True, "now": NOW}
    assert client.post("/v1/plans", json=plan, headers=author).status_code == 200
    assert client.post("/v1/campaigns/audited/dispatch", headers=author).status_code == 409
    approver = keys.headers("growth", Role.approver)
    decided = client.post(
        "/v1/campaigns/audited/approve", json={"comment": "checked the list"}, headers=approver
    )
    assert decided.status_code == 200
    assert (
        client.post("/v1/campaigns/audited/cancel", headers=keys.headers("growth", Role.operator)).status_code
        == 403
    )

    page = client.get("/v1/audit", params={"target": "audited"}, headers=admin)
    assert page.status_code == 200, page.text
    rows = [(e["actor"], e["action"], e["outcome"]) for e in page.json()["entries"]]
    operator_id = keys.of[("growth", Role.operator)].split("_")[1]
    approver_id = keys.of[("growth", Role.approver)].split("_")[1]
    assert rows == [
        (f"key:{key_id}", "POST /v1/campaigns", "201"),
        (f"key:{key_id}", "POST /v1/campaigns/{campaign_id}/dispatch", "409"),
        (f"key:{approver_id}", "POST /v1/campaigns/{campaign_id}/approve", "200"),
        (f"key:{operator_id}", "POST /v1/campaigns/{campaign_id}/cancel", "403"),
    ], rows
    entries = page.json()["entries"]
    assert entries[0]["team"] == "growth" and entries[0]["detail"]["approval"] == "draft"
    assert entries[2]["detail"] == {"comment": "checked the list"} and entries[2]["role"] == "approver"
    assert entries[0]["source"]  # the client's address
    assert client.get("/v1/audit", headers=author).status_code == 403
    for method in ("PUT", "PATCH", "DELETE"):
        assert client.request(method, "/v1/audit", headers=admin).status_code == 405


def keys_live_and_die(client: TestClient, settings: Settings) -> None:
    """Created, used (last use recorded), rotated (old secret dead at once), expired, revoked."""
    admin = {"X-API-Key": create_key(PlanStore(settings), Role.admin)}
    made = client.post("/v1/keys", json={"role": "operator", "team": "retail", "name": "dash"}, headers=admin)
    assert made.status_code == 201, made.text
    key, key_id = made.json()["key"], made.json()["info"]["key_id"]
    assert client.get("/v1/audiences/fields", headers={"X-API-Key": key}).status_code == 200
    listed = {k["key_id"]: k for k in client.get("/v1/keys", params={"team": "retail"}, headers=admin).json()}
    assert listed[key_id]["last_used_at"] is not None and listed[key_id]["usable"] is True
    assert "secret" not in str(listed[key_id]) and key.split("_", 2)[2] not in str(listed)

    rotated = client.post(f"/v1/keys/{key_id}/rotate", headers=admin).json()
    assert rotated["info"]["key_id"] == key_id and rotated["key"] != key
    assert client.get("/v1/audiences/fields", headers={"X-API-Key": key}).status_code == 401
    key = rotated["key"]
    assert client.get("/v1/audiences/fields", headers={"X-API-Key": key}).status_code == 200

    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert (
        client.post("/v1/keys", json={"role": "operator", "expires_at": past}, headers=admin).status_code
        == 422
    )
    store = PlanStore(settings)
    with store.session() as session:  # as if its expiry had passed
        session.execute(
            sa.update(ApiKeyRow).where(ApiKeyRow.key_id == key_id).values(expires_at=datetime.now(UTC))
        )
    expired = client.get("/v1/audiences/fields", headers={"X-API-Key": key})
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]
    with store.session() as session:
        session.execute(sa.update(ApiKeyRow).where(ApiKeyRow.key_id == key_id).values(expires_at=None))
    assert client.get("/v1/audiences/fields", headers={"X-API-Key": key}).status_code == 200

    revoked = client.post(f"/v1/keys/{key_id}/revoke", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["usable"] is False
    assert client.get("/v1/audiences/fields", headers={"X-API-Key": key}).status_code == 401
    assert client.post(f"/v1/keys/{key_id}/rotate", headers=admin).status_code == 404
    assert client.post("/v1/keys/0123456789abcdef/revoke", headers=admin).status_code == 404
    # Each change to the key is in the audit trail, and no secret is.
    trail = client.get("/v1/audit", params={"target": key_id}, headers=admin).json()["entries"]
    assert [(e["action"], e["outcome"]) for e in trail] == [
        ("POST /v1/keys", "201"),
        ("POST /v1/keys/{key_id}/rotate", "200"),
        ("POST /v1/keys/{key_id}/revoke", "200"),
        ("POST /v1/keys/{key_id}/rotate", "404"),
    ]
    assert trail[0]["detail"] == {"role": "operator", "team": "retail"}
    assert not any(secret.split("_", 2)[2] in json.dumps(trail) for secret in (made.json()["key"], key))


@contextmanager
def live_server(settings: Settings) -> Iterator[str]:
    """The app in a real uvicorn server on a free port (chunked uploads need a real socket): its URL."""
    from cli.demo import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                threading.Event().wait(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def body_limit_holds(url: str, settings: Settings) -> None:
    """A chunked body (no Content-Length) with a bad key is refused before it is read; with a good key
    it is cut off at the limit; a declared length over it is refused unread; under it, a chunked body
    reaches the route whole."""
    events_key = create_key(PlanStore(settings), Role.events)

    def chunks(total: int) -> Iterator[bytes]:
        for _ in range(total >> 16):
            yield b" " * (1 << 16)

    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=url, timeout=30) as client:
        bad = client.post("/v1/events", content=chunks(12 << 20), headers=headers | {"X-API-Key": "pp_0_x"})
        assert bad.status_code == 401  # FastAPI alone reads all 12 MiB first and answers 422
        good = headers | {"X-API-Key": events_key}
        big = client.post("/v1/events", content=chunks(12 << 20), headers=good)
        assert big.status_code == 413 and str(MAX_BODY_BYTES) in big.json()["detail"]
        declared = client.post("/v1/events", content=b" " * (MAX_BODY_BYTES + 1), headers=good)
        assert declared.status_code == 413
        event = {"event_id": "chunked-1", "user_id": "u1", "event_type": "app_open", "timestamp": NOW}
        body = json.dumps({"events": [event]}).encode()
        small = client.post("/v1/events", content=iter([body[:10], body[10:]]), headers=good)
        assert small.status_code == 200 and small.json()["stored"] == 1, small.text
