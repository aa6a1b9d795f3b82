"""The API as an attacker meets it, on the local profile (tests/api_security.py has the scenarios; the
production profile's run them too): routes × roles × teams, approvals, the audit trail, keys' lifecycle;
and here the stream's byte limit over a real socket, rate limits, and what /metrics and /docs expose."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from dispatch.channels import verify_signature
from pushplan.db.store import PlanStore
from pushplan.settings import Profile, Settings
from serving.app import create_app
from serving.keys import Role, create_key
from tests import api_security

pytestmark = pytest.mark.slow
ServedApi = tuple[TestClient, dict[Role, str], Settings]


def test_every_route_for_every_role_and_team(served: ServedApi) -> None:
    client, _, settings = served
    api_security.every_route_for_every_role_and_team(client, settings)


def test_cross_team_writes_are_refused(served: ServedApi) -> None:
    client, _, settings = served
    api_security.cross_team_writes_are_refused(client, settings)


def test_approvals_hold(served: ServedApi) -> None:
    client, _, settings = served
    api_security.approvals_hold(client, settings)


def test_audit_records_each_change(served: ServedApi) -> None:
    client, _, settings = served
    api_security.audit_records_each_change(client, settings)


def test_keys_live_and_die(served: ServedApi) -> None:
    client, _, settings = served
    api_security.keys_live_and_die(client, settings)


def test_the_body_limit_holds_for_chunked_uploads_and_the_key_comes_first(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    with api_security.live_server(settings) as url:
        api_security.body_limit_holds(url, settings)


def test_rate_limits_answer_429_with_retry_after_per_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", api_rate_limit="5/minute")
    with TestClient(create_app(settings)) as client:
        store = PlanStore(settings)
        store_keys = {name: create_key(store, Role.operator) for name in ("a", "b")}
        answers = [
            client.get("/v1/audiences/fields", headers={"X-API-Key": store_keys["a"]}) for _ in range(6)
        ]
        assert [a.status_code for a in answers[:5]] == [200] * 5
        assert answers[5].status_code == 429
        assert 1 <= int(answers[5].headers["retry-after"]) <= 60
        assert "5 per 1 minute" in answers[5].json()["detail"]
        # Another key has its own count.
        assert client.get("/v1/audiences/fields", headers={"X-API-Key": store_keys["b"]}).status_code == 200


def test_metrics_and_docs_follow_the_settings(tmp_path: Path) -> None:
    guarded = Settings(data_dir=tmp_path / "data", metrics_access="key", api_docs=False)
    with TestClient(create_app(guarded)) as client:
        store = PlanStore(guarded)
        operator, campaign = create_key(store, Role.operator), create_key(store, Role.campaign)
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": campaign}).status_code == 403
        assert client.get("/metrics", headers={"X-API-Key": operator}).status_code == 200
        bearer = client.get("/metrics", headers={"Authorization": f"Bearer {operator}"})
        assert bearer.status_code == 200 and "pushplan_http_requests_total" in bearer.text
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert client.get(path, headers={"X-API-Key": operator}).status_code == 404
        assert client.get("/healthz").status_code == 200
    off = Settings(data_dir=tmp_path / "off", metrics_access="off")
    with TestClient(create_app(off)) as client:
        operator = create_key(PlanStore(off), Role.operator)
        assert client.get("/metrics", headers={"X-API-Key": operator}).status_code == 404
        assert client.get("/docs").status_code == 200  # the local profile serves its docs
    production_defaults = Settings(
        profile=Profile.production, redis_url="redis://127.0.0.1:1", database_url="postgresql://x@127.0.0.1/x"
    )
    assert production_defaults.metrics_mode == "key" and production_defaults.docs_served is False


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:  # http.server's name for it
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:  # quiet
        pass


def test_approvers_are_notified_by_a_signed_webhook(tmp_path: Path) -> None:
    receiver = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    _Receiver.received = []
    settings = Settings(
        data_dir=tmp_path / "data",
        approval_webhook_url=f"http://127.0.0.1:{receiver.server_port}/approvals",
        webhook_secret=SecretStr("approval-secret"),
    )
    try:
        with TestClient(create_app(settings)) as client:
            headers = {"X-API-Key": create_key(PlanStore(settings), Role.campaign, team="growth")}
            flagged = api_security.spec("notify-me", sensitive=True)
            assert client.post("/v1/campaigns", json=flagged, headers=headers).status_code == 201
            assert client.post("/v1/campaigns", json=flagged, headers=headers).status_code == 201  # a retry
            plain = api_security.spec("no-approval")
            assert client.post("/v1/campaigns", json=plain, headers=headers).status_code == 201
    finally:
        receiver.shutdown()
    assert len(_Receiver.received) == 1  # once per new draft, not per retry, none for what needs none
    sent_headers, body = _Receiver.received[0]
    document = json.loads(body)
    assert document["event"] == "approval_requested" and document["campaign_id"] == "notify-me"
    assert document["team"] == "growth" and document["reasons"] == ["flagged sensitive"]
    assert verify_signature(
        "approval-secret", sent_headers["X-Pushplan-Timestamp"], body, sent_headers["X-Pushplan-Signature"]
    )


def test_an_audience_above_the_size_rule_needs_approval(served: ServedApi) -> None:
    _, keys, settings = served
    sized = TestClient(create_app(settings.model_copy(update={"approval_audience_above": 10})))
    with sized:
        headers = {"X-API-Key": keys[Role.campaign]}
        big = api_security.spec("big-audience", audience='lifecycle_stage in ("active", "sleeping", "new")')
        assert sized.post("/v1/campaigns", json=big, headers=headers).status_code == 201
        state = sized.get("/v1/campaigns/big-audience/approval", headers=headers).json()
    assert state["approval"] == "draft" and "is above 10" in state["reasons"][0], state
