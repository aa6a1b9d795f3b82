"""Channel adapters against real local servers: outbox file, HTTP stubs on free ports, an aiosmtpd server."""

from __future__ import annotations

import json
import multiprocessing
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email import message_from_bytes
from email import policy as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from dispatch.channels import (
    Message,
    Outcome,
    SandboxChannel,
    adapter_for,
    close_adapters,
    verify_signature,
)
from pushplan.settings import Settings, per_settings

SENT_AT = datetime(2026, 9, 14, 18, 30, tzinfo=UTC)
SECRET = "test-webhook-secret"


def message(n: int, channel: str = "sandbox", recipient: str | None = None) -> Message:
    return Message(
        send_id=f"item-{n:05d}",
        plan_id=f"plan-{n:05d}",
        campaign_id="autumn-sale",
        user_id=f"user-{n}",
        channel=channel,
        variant_id="v-urgency",
        title="Last day: 20 % off 🍂",
        body="Your basket is waiting.",
        sent_at=SENT_AT,
        recipient=recipient,
    )


@pytest.fixture(autouse=True)
def _fresh_adapters() -> Iterator[None]:
    yield
    close_adapters()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- an HTTP stub that records what it received -------------------------------------------------------


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpStub:
    """A real HTTP server on a free port; `answer` decides each response from what was received."""

    answer: Callable[[Received], tuple[int, dict[str, Any]]] = lambda _r: (200, {"id": "ok-1"})
    received: list[Received] = field(default_factory=list)
    url: str = ""

    def serve(self) -> ThreadingHTTPServer:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                arrived = time.time()
                length = int(self.headers.get("Content-Length", "0"))
                request = Received(arrived, self.path, dict(self.headers.items()), self.rfile.read(length))
                stub.received.append(request)
                status, document = stub.answer(request)
                payload = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return server


@pytest.fixture
def http_stub() -> Iterator[HttpStub]:
    stub = HttpStub()
    server = stub.serve()
    yield stub
    server.shutdown()
    server.server_close()


def channel_settings(tmp_path: Path, **values: Any) -> Settings:
    values.setdefault("channel_rate_per_second", {})
    values.setdefault("channel_timeout_seconds", 2.0)
    return Settings(data_dir=tmp_path / "data", **values)


# --- sandbox ------------------------------------------------------------------------------------------


def outbox_lines(settings: Settings) -> list[dict[str, Any]]:
    with (settings.sandbox_dir / "outbox.jsonl").open(encoding="utf-8") as outbox:
        return [json.loads(line) for line in outbox]


def test_sandbox_appends_a_batch_once_and_honours_idempotency_keys(tmp_path: Path) -> None:
    settings = channel_settings(tmp_path)
    sandbox = adapter_for(settings, "sandbox")
    batch = [message(n) for n in range(5)]

    first = sandbox.send(batch)
    again = sandbox.send([*batch[3:], message(5)])

    assert [o.send_id for o in first] == [m.send_id for m in batch] and all(o.ok for o in first)
    assert all(o.ok for o in again)
    lines = outbox_lines(settings)
    assert [line["idempotency_key"] for line in lines] == [f"item-{n:05d}" for n in range(6)]
    assert lines[0] == {
        "idempotency_key": "item-00000",
        "plan_id": "plan-00000",
        "campaign_id": "autumn-sale",
        "user_id": "user-0",
        "channel": "sandbox",
        "variant_id": "v-urgency",
        "title": "Last day: 20 % off 🍂",
        "body": "Your basket is waiting.",
        "sent_at": "2026-09-14T18:30:00Z",
    }
    # A worker that has not seen these keys yet (another process) learns them from the file.
    assert all(o.ok for o in SandboxChannel(settings).send(batch[:2]))
    assert len(outbox_lines(settings)) == 6


def test_sandbox_refuses_a_naive_send_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Message("i", "p", "c", "u", "sandbox", None, "t", "b", datetime(2026, 9, 14, 18, 30))


def _append_from_another_process(data_dir: str, first: int, last: int, start: Any) -> None:
    sandbox = adapter_for(Settings(data_dir=Path(data_dir)), "sandbox")
    start.wait()
    for batch_start in range(first, last, 25):
        outcomes = sandbox.send([message(n) for n in range(batch_start, min(batch_start + 25, last))])
        assert all(outcome.ok for outcome in outcomes)


def test_sandbox_is_exactly_once_across_processes(tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(3)
    # Disjoint ranges at both ends, an overlap of 400 keys in the middle that both try to write.
    ranges = [(0, 1000), (600, 1600)]
    workers = [
        spawn.Process(target=_append_from_another_process, args=(str(tmp_path / "data"), a, b, start))
        for a, b in ranges
    ]
    for worker in workers:
        worker.start()
    start.wait(timeout=30)
    for worker in workers:
        worker.join(timeout=30)
    assert [worker.exitcode for worker in workers] == [0, 0]

    keys = [line["idempotency_key"] for line in outbox_lines(channel_settings(tmp_path))]
    assert sorted(keys) == [f"item-{n:05d}" for n in range(1600)]


# --- webhook ------------------------------------------------------------------------------------------


def test_webhook_posts_signed_json_with_its_idempotency_key(tmp_path: Path, http_stub: HttpStub) -> None:
    settings = channel_settings(tmp_path, webhook_url=f"{http_stub.url}/hooks/push", webhook_secret=SECRET)

    [outcome] = adapter_for(settings, "webhook").send([message(1, "webhook", "ada@example.com")])

    assert outcome == Outcome(send_id="item-00001", ok=True, provider_id="ok-1")
    [request] = http_stub.received
    assert request.path == "/hooks/push"
    assert request.headers["Idempotency-Key"] == "item-00001"
    assert request.json() == {**message(1, "webhook").record(), "recipient": "ada@example.com"}
    timestamp, signature = request.headers["X-Pushplan-Timestamp"], request.headers["X-Pushplan-Signature"]
    assert signature.startswith("sha256=")
    assert verify_signature(SECRET, timestamp, request.body, signature, max_age_seconds=300)
    assert not verify_signature(SECRET, timestamp, request.body.replace(b"20 %", b"90 %"), signature)
    assert not verify_signature("another-secret", timestamp, request.body, signature)
    assert not verify_signature(SECRET, timestamp, request.body, signature, max_age_seconds=300, now=1e10)


@pytest.mark.parametrize(
    ("status", "transient", "unknown", "reason"),
    [
        (503, True, False, "http_503"),
        (429, True, False, "http_429"),
        # An error after the receiver may have acted: never retried on a channel that does not dedupe.
        (500, False, True, "http_500"),
        (502, False, True, "http_502"),
        (504, False, True, "http_504"),
        (400, False, False, "rejected_400"),
        (404, False, False, "rejected_404"),
    ],
)
def test_webhook_classifies_http_answers(
    tmp_path: Path, http_stub: HttpStub, status: int, transient: bool, unknown: bool, reason: str
) -> None:
    http_stub.answer = lambda _r: (status, {"error": "nope"})
    settings = channel_settings(tmp_path, webhook_url=http_stub.url, webhook_secret=SECRET)

    [outcome] = adapter_for(settings, "webhook").send([message(1, "webhook")])

    assert (outcome.ok, outcome.transient, outcome.unknown, outcome.reason) == (
        False,
        transient,
        unknown,
        reason,
    )
    assert outcome.detail and str(status) in outcome.detail and len(outcome.detail) <= 500
    # A receiver that honours Idempotency-Key makes an ambiguous answer safe to retry.
    deduping = channel_settings(
        tmp_path, webhook_url=http_stub.url, webhook_secret=SECRET, webhook_dedupes=True
    )
    [again] = adapter_for(deduping, "webhook").send([message(1, "webhook")])
    assert (again.transient, again.unknown) == (transient or unknown, False)


def test_a_webhook_timeout_after_the_request_was_written_is_unknown(
    tmp_path: Path, http_stub: HttpStub
) -> None:
    def slow(_request: Received) -> tuple[int, dict[str, Any]]:
        time.sleep(0.5)
        return 200, {"id": "late"}

    http_stub.answer = slow
    settings = channel_settings(
        tmp_path, webhook_url=http_stub.url, webhook_secret=SECRET, channel_timeout_seconds=0.1
    )

    [outcome] = adapter_for(settings, "webhook").send([message(1, "webhook")])

    assert (outcome.ok, outcome.transient, outcome.unknown, outcome.reason) == (False, False, True, "timeout")
    assert "not retried" in (outcome.detail or "")


def test_webhook_to_an_unreachable_port_is_transient(tmp_path: Path) -> None:
    settings = channel_settings(
        tmp_path, webhook_url=f"http://127.0.0.1:{free_port()}/", webhook_secret=SECRET
    )

    outcomes = adapter_for(settings, "webhook").send([message(1, "webhook"), message(2, "webhook")])

    assert [(o.ok, o.transient, o.reason) for o in outcomes] == [(False, True, "connection_error")] * 2


def test_webhook_calls_stay_within_the_channel_rate(tmp_path: Path, http_stub: HttpStub) -> None:
    settings = channel_settings(
        tmp_path,
        webhook_url=http_stub.url,
        webhook_secret=SECRET,
        channel_rate_per_second={"webhook": 20},
    )

    outcomes = adapter_for(settings, "webhook").send([message(n, "webhook") for n in range(30)])

    assert all(o.ok for o in outcomes)
    arrivals = sorted(request.at for request in http_stub.received)
    assert len(arrivals) == 30
    # Arrival times carry a little network jitter that the sender's clock did not see; a window a
    # few milliseconds short of a second absorbs it while 30 unthrottled calls would still fail.
    busiest = max(sum(1 for t in arrivals if start <= t < start + 0.97) for start in arrivals)
    assert busiest <= 20


# --- push (FCM HTTP v1) ---------------------------------------------------------------------------------


def fcm_answer(request: Received) -> tuple[int, dict[str, Any]]:
    if request.path != "/v1/projects/demo-project/messages:send":
        return 404, {"error": {"code": 404, "status": "NOT_FOUND", "message": "no such path"}}
    if request.headers.get("Authorization") != "Bearer fcm-token" or "Idempotency-Key" not in request.headers:
        return 401, {"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "bad credentials"}}
    token = request.json()["message"]["token"]
    if token == "gone-token":
        return 404, {
            "error": {
                "code": 404,
                "status": "NOT_FOUND",
                "message": "Requested entity was not found.",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                        "errorCode": "UNREGISTERED",
                    }
                ],
            }
        }
    if token == "busy-token":
        return 429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "QUOTA_EXCEEDED"}}
    return 200, {"name": "projects/demo-project/messages/123"}


def test_push_speaks_fcm_http_v1(tmp_path: Path, http_stub: HttpStub) -> None:
    http_stub.answer = fcm_answer
    settings = channel_settings(
        tmp_path, fcm_url=f"{http_stub.url}/", fcm_project="demo-project", fcm_token="fcm-token"
    )

    outcomes = adapter_for(settings, "push").send(
        [
            message(1, "push", "device-token"),
            message(2, "push", "gone-token"),
            message(3, "push", "busy-token"),
            message(4, "push", None),
        ]
    )

    assert outcomes[0] == Outcome(
        send_id="item-00001", ok=True, provider_id="projects/demo-project/messages/123"
    )
    assert (outcomes[1].transient, outcomes[1].reason) == (False, "rejected_404")
    assert outcomes[1].detail and "UNREGISTERED" in outcomes[1].detail
    assert (outcomes[2].ok, outcomes[2].transient, outcomes[2].reason) == (False, True, "http_429")
    assert (outcomes[3].ok, outcomes[3].transient, outcomes[3].reason) == (False, False, "no_recipient")
    assert len(http_stub.received) == 3  # no call without a recipient
    assert http_stub.received[0].json() == {
        "message": {
            "token": "device-token",
            "notification": {"title": "Last day: 20 % off 🍂", "body": "Your basket is waiting."},
            "data": {"plan_id": "plan-00001", "campaign_id": "autumn-sale", "variant_id": "v-urgency"},
        }
    }
    assert http_stub.received[0].headers["Idempotency-Key"] == "item-00001"


# --- sms ----------------------------------------------------------------------------------------------


def test_sms_posts_text_with_reference_and_bearer_token(tmp_path: Path, http_stub: HttpStub) -> None:
    http_stub.answer = lambda _r: (202, {"message_id": "sms-77"})
    settings = channel_settings(tmp_path, sms_url=f"{http_stub.url}/sms", sms_token="sms-token")

    outcomes = adapter_for(settings, "sms").send(
        [message(1, "sms", "+4915112345678"), message(2, "sms", None)]
    )

    assert outcomes[0] == Outcome(send_id="item-00001", ok=True, provider_id="sms-77")
    assert outcomes[1].reason == "no_recipient" and not outcomes[1].transient
    [request] = http_stub.received
    assert request.path == "/sms"
    assert request.json() == {
        "to": "+4915112345678",
        "text": "Last day: 20 % off 🍂\nYour basket is waiting.",
        "reference": "item-00001",
    }
    assert request.headers["Authorization"] == "Bearer sms-token"
    assert request.headers["Idempotency-Key"] == "item-00001"


# --- email --------------------------------------------------------------------------------------------


class MailSink:
    """An aiosmtpd handler that keeps what it accepts and refuses two well-known test addresses."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if address.startswith("bounce@"):
            return "550 5.1.1 no such mailbox"
        if address.startswith("later@"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 Message accepted"


@pytest.fixture
def mail_sink() -> Iterator[tuple[MailSink, int]]:
    sink, port = MailSink(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink, port
    controller.stop()


def test_email_sends_over_smtp_and_classifies_replies(
    tmp_path: Path, mail_sink: tuple[MailSink, int]
) -> None:
    sink, port = mail_sink
    settings = channel_settings(
        tmp_path, smtp_host="127.0.0.1", smtp_port=port, smtp_sender="news@shop.example"
    )
    fallback = replace(message(1, "email", "ada@example.com"), send_id="plan-00001:1")

    outcomes = adapter_for(settings, "email").send(
        [
            fallback,
            message(2, "email", None),
            message(3, "email", "bounce@example.com"),
            message(4, "email", "later@example.com"),
        ]
    )

    assert outcomes[0].ok and outcomes[0].provider_id == "<plan-00001%3A1.pushplan@shop.example>"
    assert (outcomes[1].reason, outcomes[1].transient) == ("no_recipient", False)
    assert (outcomes[2].reason, outcomes[2].transient) == ("smtp_550", False)
    assert (outcomes[3].reason, outcomes[3].transient) == ("smtp_451", True)
    [(recipients, raw)] = sink.messages
    mail = message_from_bytes(raw, policy=email_policy.default)
    assert recipients == ["ada@example.com"]
    assert mail["To"] == "ada@example.com" and mail["From"] == "news@shop.example"
    assert mail["Subject"] == "Last day: 20 % off 🍂"
    assert mail["X-Idempotency-Key"] == "plan-00001:1"
    assert mail["Message-ID"] == outcomes[0].provider_id


def test_an_email_address_with_a_line_break_fails_that_message_only(
    tmp_path: Path, mail_sink: tuple[MailSink, int]
) -> None:
    sink, port = mail_sink
    settings = channel_settings(tmp_path, smtp_host="127.0.0.1", smtp_port=port)
    adapter = adapter_for(settings, "email")

    outcomes = [
        *adapter.send([message(1, "email", "eve@example.com\r\nBcc: all@example.com")]),
        *adapter.send([message(2, "email", "ada@example.com")]),
    ]

    assert [(o.ok, o.transient, o.reason) for o in outcomes] == [
        (False, False, "bad_message"),
        (True, False, None),
    ]
    assert [recipients for recipients, _raw in sink.messages] == [["ada@example.com"]]


def test_email_without_a_server_is_transient(tmp_path: Path) -> None:
    settings = channel_settings(tmp_path, smtp_host="127.0.0.1", smtp_port=free_port())

    outcomes = adapter_for(settings, "email").send([message(1, "email", "ada@example.com")])

    assert [(o.ok, o.transient, o.reason) for o in outcomes] == [(False, True, "connection_error")]


# --- adapter_for --------------------------------------------------------------------------------------


def test_adapter_for_names_the_missing_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"webhook channel .*PUSHPLAN_WEBHOOK_URL"):
        adapter_for(channel_settings(tmp_path), "webhook")
    with pytest.raises(
        ValueError, match="set PUSHPLAN_FCM_CREDENTIALS_FILE, or PUSHPLAN_FCM_PROJECT and PUSHPLAN_FCM_TOKEN"
    ):
        adapter_for(channel_settings(tmp_path), "push")
    with pytest.raises(ValueError, match=r"set PUSHPLAN_FCM_CREDENTIALS_FILE, or PUSHPLAN_FCM_PROJECT$"):
        adapter_for(channel_settings(tmp_path, fcm_token="fcm-token"), "push")
    with pytest.raises(ValueError, match="unknown channel 'pigeon'"):
        adapter_for(channel_settings(tmp_path), "pigeon")


def test_adapter_for_keeps_one_adapter_per_channel(tmp_path: Path) -> None:
    settings = channel_settings(tmp_path)
    assert adapter_for(settings, "sandbox") is adapter_for(settings, "sandbox")
    assert adapter_for(settings, "email") is not adapter_for(settings, "sandbox")


def test_channel_secrets_are_hidden_in_settings_but_tell_adapters_apart(tmp_path: Path) -> None:
    settings = channel_settings(tmp_path, webhook_url="http://127.0.0.1:9/", webhook_secret=SECRET)
    other = channel_settings(tmp_path, webhook_url="http://127.0.0.1:9/", webhook_secret="another-secret")

    assert SECRET not in repr(settings) and SECRET not in settings.model_dump_json()
    assert adapter_for(settings, "webhook") is not adapter_for(other, "webhook")

    @per_settings
    def secret_of(settings: Settings) -> str | None:
        return settings.webhook_secret.get_secret_value() if settings.webhook_secret else None

    # Both dump to the same JSON ("**********"): the cache must still build one client each.
    assert settings.model_dump_json() == other.model_dump_json()
    assert (secret_of(settings), secret_of(other)) == (SECRET, "another-secret")
