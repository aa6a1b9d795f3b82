"""Channel adapters: how dispatch hands a batch of messages to sandbox, webhook, push, SMS or email.

Every adapter has one method, `send(messages) -> outcomes`: one `Outcome` per `Message`, in the same
order, and it never raises for a single message's failure (the dispatcher still treats anything
raised as that message's failure). The dispatcher calls it with one message at a time, settling each
outcome durably before the next call. An outcome is ok, transient (worth trying again later: the
request never reached the provider, or the provider said "not now": connection refused, connect
timeouts, HTTP 408/425/429/503, SMTP 4xx), unknown (the request was written and no answer came back,
or the provider answered 500/502/504: it may have delivered) or permanent (any other 4xx, SMTP 5xx, a
missing recipient). Adapters never retry themselves: the dispatcher retries a transient outcome later
with backoff, under its own attempt cap, so that one slow provider never holds a worker in a sleep
loop and every attempt is recorded. The one exception is a 401 from FCM with renewable credentials:
the push channel mints a new access token and calls once more at once (a refused call delivered
nothing), and a second 401 is the outcome.

An outcome's `detail` is what went wrong in words, often the provider's own: it passes through
`pushplan.redact.scrub` where it is composed, so addresses, device tokens, bearer tokens and URL
query strings never reach the plan store.

Each message carries `send_id`, its idempotency key (the plan item id, or "<plan_id>:<n>" for the
n-th fallback re-send). Adapters pass it to the provider (`Idempotency-Key` header, SMS `reference`,
email `X-Idempotency-Key` and `Message-ID`). Only an adapter whose `dedupes` is true promises that a
second call with the same key delivers nothing more: the sandbox (it checks its outbox) and a webhook
receiver declared to honour the key (`PUSHPLAN_WEBHOOK_DEDUPES`). On the others, an ambiguous call is
`unknown` and never made again: at most once beats at least once for marketing messages. On a channel
that dedupes, an ambiguous call is transient: calling again with the same key is safe.

Per-channel rate limits (`PUSHPLAN_CHANNEL_RATE_PER_SECOND`) hold across all worker processes: a
moving window in Redis in the production profile, in process memory in the local one. A channel
missing from the setting is unlimited; the sandbox never is limited.

Webhook signatures
------------------
Each webhook POST carries

    Idempotency-Key: <send_id>
    X-Pushplan-Timestamp: <unix seconds when signed>
    X-Pushplan-Signature: sha256=<hex HMAC-SHA256(key=PUSHPLAN_WEBHOOK_SECRET,
                                                  msg=f"{timestamp}.{raw request body}")>

A receiver recomputes the HMAC over the header timestamp, a dot and the body bytes exactly as
received (before any JSON parsing), compares in constant time, and should refuse timestamps older
than a few minutes so that a captured request cannot be replayed later; `verify_signature` does
all of that. The body is the message as JSON: idempotency_key, plan_id, campaign_id, user_id,
channel, variant_id, title, body, sent_at (ISO 8601, UTC) and recipient.

FCM credentials
---------------
FCM's HTTP v1 API takes an OAuth access token, and Google's expire within the hour. With
PUSHPLAN_FCM_CREDENTIALS_FILE (a service-account JSON file) the push channel mints its tokens with
google-auth (a JWT grant at the file's token_uri, scope firebase.messaging), shares one among its
threads, mints the next before the last expires (google-auth counts a token expired a few minutes
early) and at once when FCM answers 401. A static PUSHPLAN_FCM_TOKEN is used as it is, for tests and
short runs: nothing can renew it, so a 401 is a failure like any other 4xx.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import smtplib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import google.auth.transport
import httpx
from google.auth import exceptions as auth_errors
from google.oauth2 import service_account
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from pydantic import SecretStr

from pushplan.domain import Channel
from pushplan.redact import scrub
from pushplan.settings import Settings

OUTBOX_FILE = "outbox.jsonl"
DETAIL_MAX_CHARS = 500
# How much of an error body is scrubbed before 200 characters of it are kept: bounds the work on a
# provider that answers with a page of HTML.
PROVIDER_BODY_SCAN_CHARS = 4_000
# HTTP answers that say "not now, and nothing was done": timeout, too early, too many requests,
# unavailable. Other 5xx (500, 502, 504: an error, or a gateway that lost the upstream's answer) may
# come after the provider delivered: ambiguous.
TRANSIENT_HTTP_STATUSES = frozenset({408, 425, 429, 503})
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


@dataclass(frozen=True)
class Message:
    """One send as the dispatcher hands it to a channel."""

    send_id: str
    plan_id: str
    campaign_id: str
    user_id: str
    channel: str
    variant_id: str | None
    title: str
    body: str
    sent_at: datetime
    recipient: str | None = None

    def __post_init__(self) -> None:
        # A naive instant would be written as local time by one worker and UTC by another; refusing
        # it where the message is built points at the caller instead of at a wrong outbox line.
        if self.sent_at.tzinfo is None or self.sent_at.utcoffset() is None:
            raise ValueError(f"sent_at of send {self.send_id!r} must be timezone-aware (UTC)")

    def record(self) -> dict[str, Any]:
        """The message as the outbox line and the webhook body carry it (idempotency key first)."""
        return {
            "idempotency_key": self.send_id,
            "plan_id": self.plan_id,
            "campaign_id": self.campaign_id,
            "user_id": self.user_id,
            "channel": self.channel,
            "variant_id": self.variant_id,
            "title": self.title,
            "body": self.body,
            "sent_at": self.sent_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }


@dataclass(frozen=True)
class Outcome:
    """What one channel call did for one message; `transient`, `unknown` and `reason` only matter when
    not ok. `unknown`: the call may have delivered (never retried)."""

    send_id: str
    ok: bool
    transient: bool = False
    unknown: bool = False
    reason: str | None = None
    detail: str | None = None
    provider_id: str | None = None


class ChannelAdapter(Protocol):
    name: str
    dedupes: bool  # a second call with the same send_id delivers nothing more

    def send(self, messages: list[Message]) -> list[Outcome]: ...


def _failure(send_id: str, reason: str, detail: str, *, transient: bool) -> Outcome:
    # Scrubbed before it is cut: a cut could leave part of a token too short to be recognised.
    return Outcome(
        send_id=send_id, ok=False, transient=transient, reason=reason, detail=scrub(detail)[:DETAIL_MAX_CHARS]
    )


def _ambiguous(send_id: str, reason: str, detail: str, *, dedupes: bool) -> Outcome:
    """The request may have reached the provider: retried only where a second call cannot deliver twice."""
    if dedupes:
        return _failure(send_id, reason, detail, transient=True)
    return Outcome(
        send_id=send_id,
        ok=False,
        unknown=True,
        reason=reason,
        detail=f"{scrub(detail)[: DETAIL_MAX_CHARS - 60]} (may have been delivered; not retried)",
    )


def _no_recipient(message: Message) -> Outcome:
    return _failure(
        message.send_id,
        "no_recipient",
        f"user {message.user_id} has no {message.channel} address to send to",
        transient=False,
    )


# --- rate limits ------------------------------------------------------------------------------------


def _rate_item(rate_per_second: float) -> RateLimitItem:
    """The moving-window item closest to a per-second rate without exceeding it.

    `limits` counts whole calls, so 2.5/s becomes 2/s and 0.2/s becomes 1 per 5 s.
    """
    if rate_per_second >= 1:
        return RateLimitItemPerSecond(int(rate_per_second))
    return RateLimitItemPerSecond(1, multiples=max(1, round(1 / rate_per_second)))


class ChannelRateGate:
    """Blocks until the channel's limiter admits one more call, shared by every worker process."""

    # Waiting in short steps re-tests often enough to use freed slots while not spinning on Redis.
    MAX_STEP_SECONDS = 0.05

    def __init__(self, settings: Settings, channel: str, rate_per_second: float) -> None:
        if rate_per_second <= 0:
            raise ValueError(
                f"PUSHPLAN_CHANNEL_RATE_PER_SECOND for {channel!r} must be positive, got {rate_per_second}"
            )
        self.channel = channel
        self.item = _rate_item(rate_per_second)
        self.limiter = MovingWindowRateLimiter(storage_from_string(settings.limits_storage_uri))

    def wait(self) -> None:
        while not self.limiter.hit(self.item, "pushplan", "channel", self.channel):
            reset_at, _remaining = self.limiter.get_window_stats(
                self.item, "pushplan", "channel", self.channel
            )
            time.sleep(min(max(reset_at - time.time(), 0.001), self.MAX_STEP_SECONDS))


def _rate_gate(settings: Settings, channel: str) -> ChannelRateGate | None:
    rate = settings.channel_rate_per_second.get(channel)
    return None if rate is None else ChannelRateGate(settings, channel, rate)


# --- sandbox ----------------------------------------------------------------------------------------

_KEY_PREFIX = '{"idempotency_key":'
_json_decoder = json.JSONDecoder()


def _outbox_key(line: bytes) -> str | None:
    """The idempotency key of one outbox line, or None for a line that is not one of ours."""
    text = line.decode("utf-8", errors="replace")
    try:
        if text.startswith(_KEY_PREFIX):
            # Decoding only the key's string keeps re-reading another worker's tail cheap.
            key, _end = _json_decoder.raw_decode(text, len(_KEY_PREFIX))
        else:
            key = json.loads(text).get("idempotency_key")
    except (ValueError, AttributeError):
        return None  # a torn line left by a writer killed mid-write: that send never completed
    return key if isinstance(key, str) else None


class SandboxChannel:
    """Appends messages to `<data_dir>/sandbox/outbox.jsonl`: the demo's and the benchmark's channel.

    Safe across processes (an exclusive `flock` around read-tail-then-append) and idempotent like a
    provider that honours an Idempotency-Key. Each process remembers the keys it has seen and how far
    it has read, so under the lock it reads only what other workers appended since; a batch is one
    lock and one write. Lines are not fsynced: the outbox has to survive a killed worker (the page
    cache keeps the write), not a lost machine, and an fsync per batch would bound the benchmark by
    the disk.
    """

    name = Channel.sandbox.value
    dedupes = True

    def __init__(self, settings: Settings) -> None:
        self.path = settings.sandbox_dir / OUTBOX_FILE
        self._seen: set[str] = set()
        self._offset = 0
        self._file_id: tuple[int, int] | None = None
        self._thread_lock = threading.Lock()  # flock does not order threads sharing the state below

    def send(self, messages: list[Message]) -> list[Outcome]:
        if not messages:
            return []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._thread_lock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                return self._append_new(fd, messages)
            finally:
                os.close(fd)  # closing releases the flock

    def _append_new(self, fd: int, messages: list[Message]) -> list[Outcome]:
        torn_tail = self._read_tail(fd)
        outcomes: list[Outcome] = []
        lines: list[bytes] = []
        batch_keys: set[str] = set()
        for message in messages:
            if message.send_id in self._seen or message.send_id in batch_keys:
                outcomes.append(
                    Outcome(
                        send_id=message.send_id,
                        ok=True,
                        provider_id=message.send_id,
                        detail="already in the outbox; not written again",
                    )
                )
                continue
            batch_keys.add(message.send_id)
            lines.append(json.dumps(message.record(), ensure_ascii=False, separators=(",", ":")).encode())
            outcomes.append(Outcome(send_id=message.send_id, ok=True, provider_id=message.send_id))
        if lines:
            # A writer killed mid-line left a fragment without its newline; start on a line of our own.
            payload = (b"\n" if torn_tail else b"") + b"\n".join(lines) + b"\n"
            size_before = os.fstat(fd).st_size
            _write_all(fd, payload)
            self._offset = size_before + len(payload)
            self._seen |= batch_keys
        return outcomes

    def _read_tail(self, fd: int) -> bool:
        """Learn the keys other workers appended since our last read; True if the file ends mid-line."""
        stat = os.fstat(fd)
        file_id = (stat.st_dev, stat.st_ino)
        if file_id != self._file_id or stat.st_size < self._offset:
            # The outbox was removed or truncated (a demo reset): what we remembered is gone with it.
            self._seen.clear()
            self._offset = 0
            self._file_id = file_id
        if stat.st_size == self._offset:
            return False
        tail = os.pread(fd, stat.st_size - self._offset, self._offset)
        complete = tail.rfind(b"\n") + 1
        for line in tail[:complete].splitlines():
            key = _outbox_key(line)
            if key is not None:
                self._seen.add(key)
        self._offset += complete
        return complete < len(tail)


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# --- HTTP channels ----------------------------------------------------------------------------------


def _json_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def _http_failure(
    send_id: str, response: httpx.Response, provider_error: str | None, *, dedupes: bool
) -> Outcome:
    status = response.status_code
    said = provider_error or scrub(response.text.strip()[:PROVIDER_BODY_SCAN_CHARS])[:200]
    said = said or response.reason_phrase
    detail = f"{response.request.url.host} answered {status}: {said}"
    if status in TRANSIENT_HTTP_STATUSES:
        return _failure(send_id, f"http_{status}", detail, transient=True)
    if status >= 500:
        return _ambiguous(send_id, f"http_{status}", detail, dedupes=dedupes)
    return _failure(send_id, f"rejected_{status}", detail, transient=False)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


class HttpChannel:
    """One POST per message through one keep-alive `httpx.Client`, classified the same way for all."""

    name: str
    dedupes = False  # FCM and SMS gateways do not promise to honour Idempotency-Key

    def __init__(self, settings: Settings, channel: str) -> None:
        self.name = channel
        self.client = httpx.Client(timeout=settings.channel_timeout_seconds)
        self.rate_gate = _rate_gate(settings, channel)

    def send(self, messages: list[Message]) -> list[Outcome]:
        return [self._send_one(message) for message in messages]

    def close(self) -> None:
        self.client.close()

    def _needs_recipient(self) -> bool:
        return True

    def _request(self, message: Message) -> tuple[str, bytes, dict[str, str]]:
        """URL, body and headers of the call for one message."""
        raise NotImplementedError

    def _provider_id(self, document: Any) -> str | None:
        if isinstance(document, dict):
            for key in ("id", "message_id", "messageId", "name"):
                if isinstance(document.get(key), str | int):
                    return str(document[key])
        return None

    def _provider_error(self, document: Any) -> str | None:
        """The provider's own words for a refusal, when its error body has a known shape."""
        return None

    def _credentials_refused(self, response: httpx.Response) -> bool:
        """The provider answered 401 to the credentials `response`'s request carried: True if new ones
        are ready for one more call (static credentials have nothing to renew)."""
        return False

    def _send_one(self, message: Message) -> Outcome:
        if self._needs_recipient() and not message.recipient:
            return _no_recipient(message)
        response = self._post(message)
        if (
            isinstance(response, httpx.Response)
            and response.status_code == 401
            and self._credentials_refused(response)
        ):
            # A refused call delivered nothing, so one more with new credentials cannot deliver
            # twice; its answer is the outcome, whatever it is (no loop on a second 401).
            response = self._post(message)
        if isinstance(response, Outcome):
            return response
        if response.is_success:
            return Outcome(
                send_id=message.send_id, ok=True, provider_id=self._provider_id(_json_or_none(response))
            )
        return _http_failure(
            message.send_id, response, self._provider_error(_json_or_none(response)), dedupes=self.dedupes
        )

    def _post(self, message: Message) -> httpx.Response | Outcome:
        """One call for `message`: the provider's answer, or the outcome of a call that got none."""
        try:
            url, body, headers = self._request(message)
        except CredentialsError as exc:  # before any call: nothing was sent
            return _failure(
                message.send_id,
                "credentials_error",
                f"{self.name} credentials: {exc}",
                transient=exc.transient,
            )
        headers = {"Content-Type": "application/json", "Idempotency-Key": message.send_id, **headers}
        if self.rate_gate is not None:
            self.rate_gate.wait()
        try:
            return self.client.post(url, content=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # No connection, so no request: nothing can have been delivered.
            return _failure(
                message.send_id, "connection_error", f"{self.name} call failed: {exc!r}", transient=True
            )
        except httpx.TimeoutException as exc:  # read or write timeout: the request may be in
            return _ambiguous(
                message.send_id, "timeout", f"{self.name} call timed out: {exc!r}", dedupes=self.dedupes
            )
        except httpx.TransportError as exc:  # connection lost mid-exchange
            return _ambiguous(
                message.send_id, "connection_lost", f"{self.name} call failed: {exc!r}", dedupes=self.dedupes
            )


def sign_webhook(secret: str, timestamp: int | str, body: bytes) -> str:
    """The X-Pushplan-Signature value for a body sent at `timestamp` (see the module docstring)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def signature_headers(secret: str, body: bytes) -> dict[str, str]:
    """X-Pushplan-Timestamp and X-Pushplan-Signature for `body` sent now."""
    timestamp = int(time.time())
    return {
        "X-Pushplan-Timestamp": str(timestamp),
        "X-Pushplan-Signature": sign_webhook(secret, timestamp, body),
    }


def verify_signature(
    secret: str,
    timestamp: int | str,
    body: bytes | str,
    signature: str,
    *,
    max_age_seconds: float | None = None,
    now: float | None = None,
) -> bool:
    """True if `signature` (the X-Pushplan-Signature header) signs `body` at `timestamp` with `secret`.

    Receivers should pass `max_age_seconds` (300 is usual) so that a replayed old request fails.
    """
    raw = body.encode() if isinstance(body, str) else body
    if max_age_seconds is not None:
        try:
            age = (time.time() if now is None else now) - int(timestamp)
        except ValueError:
            return False
        if abs(age) > max_age_seconds:
            return False
    return hmac.compare_digest(sign_webhook(secret, timestamp, raw), signature.strip())


class WebhookChannel(HttpChannel):
    """POSTs each message as signed JSON to PUSHPLAN_WEBHOOK_URL."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, Channel.webhook.value)
        assert settings.webhook_url and settings.webhook_secret  # adapter_for checked both
        # Only the operator knows whether their receiver drops a repeated Idempotency-Key.
        self.dedupes = settings.webhook_dedupes
        self.url = settings.webhook_url
        self.secret = settings.webhook_secret.get_secret_value()

    def _needs_recipient(self) -> bool:
        return False  # the receiver knows its users; a recipient travels along when there is one

    def _request(self, message: Message) -> tuple[str, bytes, dict[str, str]]:
        body = _json_bytes({**message.record(), "recipient": message.recipient})
        return self.url, body, signature_headers(self.secret, body)


class CredentialsError(Exception):
    """A channel could not get credentials for a call, so made none; `transient`: worth trying later."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class _HttpxResponse(google.auth.transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class _HttpxRequest(google.auth.transport.Request):
    """google-auth's transport over the channel's httpx client. google-auth ships transports for
    requests and urllib3 only as extras it does not install (requests is here only as another
    package's dependency); httpx is ours already, with the channel's timeout and connection pool."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _HttpxResponse:
        try:
            response = self.client.request(
                method,
                url,
                content=body,
                headers=headers,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
        except httpx.HTTPError as exc:
            raise auth_errors.TransportError(f"{type(exc).__name__}: {exc}") from exc
        return _HttpxResponse(response)


def _service_account(settings: Settings) -> service_account.Credentials | None:
    """The service account of PUSHPLAN_FCM_CREDENTIALS_FILE (None when unset), as a ValueError when
    the file cannot be one: adapter_for's way of saying that a channel is not configured."""
    path = settings.fcm_credentials_file
    if path is None:
        return None
    try:
        return service_account.Credentials.from_service_account_file(str(path), scopes=[FCM_SCOPE])
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"the push channel is not configured: PUSHPLAN_FCM_CREDENTIALS_FILE {path} is not a "
            f"readable service-account file ({type(exc).__name__}: {exc})"
        ) from exc


class FcmCredentials:
    """The bearer token of FCM calls, one for all of the push channel's threads: minted from a
    service account and renewed before it expires or once refused, or a static token as it is."""

    def __init__(self, source: service_account.Credentials | str, client: httpx.Client) -> None:
        self._source = source
        self._transport = _HttpxRequest(client)
        # One mint at a time: threads that find the token expired together wait for one new token.
        self._lock = threading.Lock()

    def token(self) -> str:
        """A token good for a call now; CredentialsError when none can be minted."""
        account = self._source
        if isinstance(account, str):
            return account
        with self._lock:
            if not account.valid:
                # google-auth itself tries a failing token endpoint three times within a few seconds.
                try:
                    account.refresh(self._transport)
                except auth_errors.TransportError as exc:
                    raise CredentialsError(f"token endpoint unreachable: {exc}", transient=True) from exc
                except auth_errors.RefreshError as exc:
                    raise CredentialsError(f"no access token: {exc}", transient=exc.retryable) from exc
            return str(account.token)

    def refused(self, token: str) -> bool:
        """FCM answered 401 to `token`: drop it so that the next `token()` mints another. False for a
        static token, which nothing can renew."""
        account = self._source
        if isinstance(account, str):
            return False
        with self._lock:
            # Threads refused together renew once: whoever comes second finds a new token already.
            if account.token == token:
                account.token = None
        return True


class PushChannel(HttpChannel):
    """Firebase Cloud Messaging, HTTP v1 API: one `messages:send` call per device token."""

    def __init__(self, settings: Settings) -> None:
        account = _service_account(settings)
        project = settings.fcm_project or (account.project_id if account is not None else None)
        if not project:  # adapter_for checked it, but for a service-account file without project_id
            raise ValueError(
                "the push channel is not configured: set PUSHPLAN_FCM_PROJECT "
                f"({settings.fcm_credentials_file} names no project_id)"
            )
        super().__init__(settings, Channel.push.value)
        self.url = f"{settings.fcm_url.rstrip('/')}/v1/projects/{project}/messages:send"
        if account is None:
            assert settings.fcm_token  # adapter_for checked it
            self.credentials = FcmCredentials(settings.fcm_token.get_secret_value(), self.client)
        else:
            self.credentials = FcmCredentials(account, self.client)

    def _request(self, message: Message) -> tuple[str, bytes, dict[str, str]]:
        body = _json_bytes(
            {
                "message": {
                    "token": message.recipient,
                    "notification": {"title": message.title, "body": message.body},
                    # FCM data values must be strings.
                    "data": {
                        "plan_id": message.plan_id,
                        "campaign_id": message.campaign_id,
                        "variant_id": message.variant_id or "",
                    },
                }
            }
        )
        return self.url, body, {"Authorization": f"Bearer {self.credentials.token()}"}

    def _credentials_refused(self, response: httpx.Response) -> bool:
        refused = response.request.headers.get("Authorization", "").removeprefix("Bearer ")
        return self.credentials.refused(refused)

    def _provider_id(self, document: Any) -> str | None:
        name = document.get("name") if isinstance(document, dict) else None
        return name if isinstance(name, str) else None

    def _provider_error(self, document: Any) -> str | None:
        # {"error": {"code": 404, "status": "NOT_FOUND", "message": "...",
        #            "details": [{"@type": "...FcmError", "errorCode": "UNREGISTERED"}]}}
        error = document.get("error") if isinstance(document, dict) else None
        if not isinstance(error, dict):
            return None
        codes = [
            str(detail["errorCode"])
            for detail in error.get("details") or []
            if isinstance(detail, dict) and "errorCode" in detail
        ]
        code = codes[0] if codes else error.get("status")
        return f"{code}: {error.get('message', '')}".strip(": ")


class SmsChannel(HttpChannel):
    """A provider-neutral SMS gateway: POST {"to", "text", "reference"} with a bearer token."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, Channel.sms.value)
        assert settings.sms_url and settings.sms_token  # adapter_for checked both
        self.url = settings.sms_url
        self.token = settings.sms_token.get_secret_value()

    def _request(self, message: Message) -> tuple[str, bytes, dict[str, str]]:
        body = _json_bytes(
            {
                "to": message.recipient,
                "text": f"{message.title}\n{message.body}",
                "reference": message.send_id,
            }
        )
        return self.url, body, {"Authorization": f"Bearer {self.token}"}


# --- email ------------------------------------------------------------------------------------------


class EmailChannel:
    """SMTP to PUSHPLAN_SMTP_HOST:PORT over one connection kept across calls (the dispatcher calls one
    message at a time); 4xx replies transient, 5xx permanent, a connection lost mid-message unknown."""

    name = Channel.email.value
    dedupes = False  # a Message-ID lets mail clients hide a repeat; SMTP servers still deliver it

    def __init__(self, settings: Settings) -> None:
        self.host = settings.smtp_host
        self.port = settings.smtp_port
        self.sender = settings.smtp_sender
        self.timeout = settings.channel_timeout_seconds
        self.domain = settings.smtp_sender.rpartition("@")[2] or "pushplan.invalid"
        self.rate_gate = _rate_gate(settings, self.name)
        self._connection: smtplib.SMTP | None = None
        self._used_at = 0.0

    # A connection idle this long is probed (NOOP) before use: servers drop idle clients, and a send
    # on a dropped connection would look like one lost mid-message (unknown) although nothing went.
    IDLE_PROBE_SECONDS = 5.0

    def message_id(self, send_id: str) -> str:
        # Percent-encoding keeps ":" of fallback re-sends (and anything else) inside RFC 5322 atext,
        # and the same send_id always gives the same Message-ID, which lets receivers drop repeats.
        return f"<{quote(send_id, safe='')}.pushplan@{self.domain}>"

    def email_for(self, message: Message) -> EmailMessage:
        email = EmailMessage()
        email["From"] = self.sender
        email["To"] = message.recipient
        email["Subject"] = message.title
        email["Message-ID"] = self.message_id(message.send_id)
        email["X-Idempotency-Key"] = message.send_id
        email.set_content(message.body)
        return email

    def send(self, messages: list[Message]) -> list[Outcome]:
        return [self._send_one(message) for message in messages]

    def _send_one(self, message: Message) -> Outcome:
        if not message.recipient:
            return _no_recipient(message)
        try:
            email = self.email_for(message)  # a header with CR/LF (an address, say) is refused here
        except ValueError as exc:
            return _failure(message.send_id, "bad_message", f"not sendable as email: {exc}", transient=False)
        if self._connection is not None and time.monotonic() - self._used_at > self.IDLE_PROBE_SECONDS:
            try:
                self._connection.noop()
            except (OSError, smtplib.SMTPException):
                self.close()
        if self._connection is None:
            try:
                self._connection = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            except (OSError, smtplib.SMTPException) as exc:
                reason, detail = _smtp_lost(exc, f"could not reach {self.host}:{self.port}")
                return _failure(message.send_id, reason, detail, transient=True)
        if self.rate_gate is not None:
            self.rate_gate.wait()
        self._used_at = time.monotonic()
        try:
            self._connection.send_message(email, from_addr=self.sender, to_addrs=[message.recipient])
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return _smtp_refusal(message.send_id, code, text)
        except smtplib.SMTPResponseException as exc:  # sender refused, data refused, ...
            return _smtp_refusal(message.send_id, exc.smtp_code, exc.smtp_error)
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            # Lost mid-message: the server may have queued it before the line dropped.
            self.close()
            reason, detail = _smtp_lost(exc, f"connection to {self.host}:{self.port} lost")
            return _ambiguous(message.send_id, reason, detail, dedupes=self.dedupes)
        return Outcome(send_id=message.send_id, ok=True, provider_id=self.message_id(message.send_id))

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.quit()
            except (OSError, smtplib.SMTPException):
                connection.close()


def _smtp_refusal(send_id: str, code: int, text: bytes | str) -> Outcome:
    said = text.decode(errors="replace") if isinstance(text, bytes) else text
    return _failure(
        send_id, f"smtp_{code}", f"SMTP server answered {code}: {said}", transient=400 <= code < 500
    )


def _smtp_lost(exc: BaseException, what: str) -> tuple[str, str]:
    reason = "timeout" if isinstance(exc, TimeoutError) else "connection_error"
    return reason, f"{what}: {exc!r}"


# --- choosing an adapter ----------------------------------------------------------------------------

# The settings fields each channel cannot work without (PUSHPLAN_<FIELD> in the environment): one
# tuple per way to configure it, any one of which will do.
REQUIRED_SETTINGS: dict[str, Sequence[tuple[str, ...]]] = {
    Channel.sandbox: [()],
    Channel.webhook: [("webhook_url", "webhook_secret")],
    # A service-account file names its project; a static token needs the project said.
    Channel.push: [("fcm_credentials_file",), ("fcm_project", "fcm_token")],
    Channel.sms: [("sms_url", "sms_token")],
    Channel.email: [("smtp_host",)],
}

ADAPTER_CLASSES: dict[str, Callable[[Settings], ChannelAdapter]] = {
    Channel.sandbox: SandboxChannel,
    Channel.webhook: WebhookChannel,
    Channel.push: PushChannel,
    Channel.sms: SmsChannel,
    Channel.email: EmailChannel,
}

_adapters: dict[tuple[Any, ...], ChannelAdapter] = {}
_adapters_lock = threading.Lock()


def _cache_key(settings: Settings, channel: str) -> tuple[Any, ...]:
    # The process id keeps a forked worker from reusing its parent's open connections; the settings
    # that shape an adapter keep tests (and a reloaded configuration) from getting a stale one.
    # Secrets by value: a SecretStr compares by its value too, but that is not what it reads as.
    return (
        os.getpid(),
        channel,
        settings.profile,
        settings.redis_url,
        str(Path(settings.sandbox_dir).absolute()),
        settings.webhook_url,
        _revealed(settings.webhook_secret),
        settings.webhook_dedupes,
        settings.smtp_host,
        settings.smtp_port,
        settings.smtp_sender,
        settings.fcm_url,
        settings.fcm_project,
        settings.fcm_credentials_file,
        _revealed(settings.fcm_token),
        settings.sms_url,
        _revealed(settings.sms_token),
        settings.channel_timeout_seconds,
        settings.channel_rate_per_second.get(channel),
    )


def _revealed(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


def _not_configured(settings: Settings, channel: str) -> str | None:
    """What to set for `channel`, or None when one of its ways to configure it is complete."""
    missing = [
        [f"PUSHPLAN_{field.upper()}" for field in way if not getattr(settings, field)]
        for way in REQUIRED_SETTINGS[channel]
    ]
    if any(not names for names in missing):
        return None
    return f"the {channel} channel is not configured: set " + ", or ".join(" and ".join(n) for n in missing)


def adapter_for(settings: Settings, channel: str) -> ChannelAdapter:
    """The process's adapter for `channel`, built on first use and kept (with its connections).

    Raises ValueError for an unknown channel, or one whose required settings are not set.
    """
    if channel not in ADAPTER_CLASSES:
        raise ValueError(f"unknown channel {channel!r}; known: {', '.join(ADAPTER_CLASSES)}")
    key = _cache_key(settings, channel)
    with _adapters_lock:
        adapter = _adapters.get(key)
        if adapter is None:
            needed = _not_configured(settings, channel)
            if needed is not None:
                raise ValueError(needed)
            adapter = _adapters[key] = ADAPTER_CLASSES[channel](settings)
        return adapter


def close_adapters() -> None:
    """Close and forget this process's adapters (worker shutdown, tests)."""
    with _adapters_lock:
        for adapter in _adapters.values():
            close = getattr(adapter, "close", None)
            if close is not None:
                close()
        _adapters.clear()
