"""`pushplan.redact.scrub` on what providers really say, and dispatch storing only scrubbed details."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from dispatch import sending
from dispatch.channels import Message, Outcome, adapter_for, close_adapters
from dispatch.control import control
from dispatch.sending import scan_due, send_chunk
from pushplan.db.engine import migrate
from pushplan.db.schema import PlanItemRow
from pushplan.db.store import PlanStore
from pushplan.redact import scrub
from tests.dispatch_setup import campaign, send_items, store_campaign
from tests.unit.test_channels import SECRET, HttpStub, Received, channel_settings, message

FCM_TOKEN = "fOq3x1ZbTQ6mW0vLk9pR2s:APA91bH" + "Zx8Kq2Lm5Np7Rt9Vw1Yb3Dc6Fg8Hj0-_" * 4
START = datetime(2026, 11, 20, 9, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _fresh_adapters() -> Iterator[None]:
    yield
    close_adapters()


@pytest.fixture
def provider() -> Iterator[HttpStub]:
    stub = HttpStub()
    server = stub.serve()
    yield stub
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("said", "scrubbed"),
    [
        (
            "smtp_550: SMTP server answered 550: 5.1.1 <jane.doe@example.com>: Recipient address "
            "rejected: User unknown in virtual mailbox table",
            "smtp_550: SMTP server answered 550: 5.1.1 <email>: Recipient address rejected: User "
            "unknown in virtual mailbox table",
        ),
        (
            "rejected_400: sms.example.net answered 400: invalid number +44 7700 900123",
            "rejected_400: sms.example.net answered 400: invalid number <phone>",
        ),
        (
            "rejected_400: fcm.googleapis.com answered 400: INVALID_ARGUMENT: The registration token is "
            f"not a valid FCM registration token ({FCM_TOKEN})",
            "rejected_400: fcm.googleapis.com answered 400: INVALID_ARGUMENT: The registration token is "
            "not a valid FCM registration token (<token>)",
        ),
        (
            "connection_error: webhook call failed: "
            + repr(httpx.ConnectError("connect failed: https://hooks.example.com/in?key=AIzaSyB1x&to=ada")),
            "connection_error: webhook call failed: ConnectError('connect failed: "
            "https://hooks.example.com/in?<query>')",
        ),
        (
            "sms gateway: number 07700 900123 (national), +1 (415) 555-0100 and 415-555-0100 unreachable",
            "sms gateway: number <phone> (national), <phone> and <phone> unreachable",
        ),
        (
            "rejected_401: Authorization: Bearer ya29.a0AfH6SMBx3v-kQ was refused for "
            "https://svc:hunter2@api.example.com/v1/send#access_token=abc",
            "rejected_401: Authorization: Bearer <token> was refused for "
            "https://<userinfo>@api.example.com/v1/send#<fragment>",
        ),
        (
            'rejected_422: sms.example.net answered 422: {"error": "bad key", "api_key": "k-123"} token=abc',
            'rejected_422: sms.example.net answered 422: {"error": "bad key", "api_key": "<secret>"} '
            "token=<secret>",
        ),
        ("checksum d41d8cd98f00b204e9800998ecf8427e failed", "checksum <token> failed"),
    ],
)
def test_provider_messages_lose_addresses_and_secrets(said: str, scrubbed: str) -> None:
    assert scrub(said) == scrubbed
    assert scrub(scrubbed) == scrubbed  # scrubbing twice changes nothing more


@pytest.mark.parametrize(
    "said",
    [
        "HTTP 503",
        "attempt 3 of 5",
        "http_503: fcm.googleapis.com answered 503: Service Unavailable",
        "rejected_404: fcm.googleapis.com answered 404: UNREGISTERED: Requested entity was not found.",
        "cap min_gap",
        "22:30 local in Asia/Kolkata",
        "window ended 2026-11-20T09:00:00+00:00 (1763629200), retry in 30.0 s, 1500 users",
        "could not reach 127.0.0.1:8025: ConnectionRefusedError(111, 'Connection refused')",
        "user u0000042 has no push address; send plan-00001:1, item-000123456",
        "request 123e4567-e89b-12d3-a456-426614174000 at /v1/projects/demo-project/messages:send",
        "Basic auth failed",
    ],
)
def test_what_names_nobody_is_left_as_it_is(said: str) -> None:
    assert scrub(said) == said


def test_nothing_to_scrub_stays_nothing() -> None:
    assert scrub(None) is None
    assert scrub("") == ""


def test_a_channel_outcome_carries_the_provider_error_scrubbed(tmp_path: Path, provider: HttpStub) -> None:
    provider.answer = lambda _r: (
        400,
        {"error": "invalid number +44 7700 900123 (account owner jane.doe@example.com)"},
    )
    settings = channel_settings(tmp_path, sms_url=f"{provider.url}/sms", sms_token="sms-token")

    [outcome] = adapter_for(settings, "sms").send([message(1, "sms", "+447700900123")])

    assert outcome.reason == "rejected_400" and outcome.detail
    assert "<phone>" in outcome.detail and "<email>" in outcome.detail
    assert "7700" not in outcome.detail and "jane.doe" not in outcome.detail


def test_dispatch_stores_provider_errors_scrubbed(tmp_path: Path, provider: HttpStub) -> None:
    def receiver(request: Received) -> tuple[int, dict[str, Any]]:
        if request.json()["user_id"] == "refused":
            return 400, {"error": "jane.doe@example.com unsubscribed", "token": FCM_TOKEN}
        return 503, {"error": "call +44 7700 900123 later"}

    provider.answer = receiver
    settings = channel_settings(tmp_path, webhook_url=provider.url, webhook_secret=SECRET)
    migrate(settings)
    store = PlanStore(settings)
    c = campaign("c1", START, channels=["webhook"])
    store_campaign(store, c, send_items(c, ["refused", "later"], [START, START]))
    control(store, "c1", "dispatch")

    counts: Counter[str] = Counter()
    for chunk in scan_due(store, settings, as_of=START):
        counts.update(send_chunk(store, settings, chunk.plan_ids, chunk.claim, START).counts)

    assert counts == Counter({"failed:rejected_400": 1, "retry": 1})
    with store.session() as session:
        rows = session.execute(sa.select(PlanItemRow.user_id, PlanItemRow.detail))
        details = {row.user_id: row.detail for row in rows}
    assert "<email>" in details["refused"] and "<secret>" in details["refused"]  # failed for good
    assert "<phone>" in details["later"]  # waiting to retry
    stored = " ".join(details.values())
    assert "jane.doe" not in stored and "7700" not in stored and "APA91b" not in stored


class Leaky:
    """An adapter that raises with the recipient in its message: dispatch quotes what it raised."""

    name = "webhook"
    dedupes = False

    def send(self, messages: list[Message]) -> list[Outcome]:
        raise RuntimeError(f"no route for jane.doe@example.com via device {FCM_TOKEN}")


def test_dispatch_stores_what_an_adapter_raised_scrubbed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sending, "adapter_for", lambda _settings, _channel: Leaky())
    settings = channel_settings(tmp_path)
    migrate(settings)
    store = PlanStore(settings)
    c = campaign("c1", START, channels=["webhook"])
    store_campaign(store, c, send_items(c, ["u1"], [START]))
    control(store, "c1", "dispatch")

    [chunk] = scan_due(store, settings, as_of=START)
    assert send_chunk(store, settings, chunk.plan_ids, chunk.claim, START).counts == {"failed:error": 1}
    with store.session() as session:
        detail = session.scalar(sa.select(PlanItemRow.detail))
    assert detail == "error: RuntimeError: no route for <email> via device <token>"
