"""The service's outer layer, before any route runs: the caller's key, its rate limit and the request
body's size are settled here, so an unknown key is refused before a byte of the body is read, and a
body is refused once it passes the limit whatever its transfer encoding (a chunked upload has no
Content-Length to check). Every state-changing call leaves an audit row, and every answer, the
guard's own included, is counted in the request metrics by its route's template.

A pure ASGI middleware rather than FastAPI dependencies: FastAPI reads and parses the body before
it resolves any dependency, so a key checked there is checked too late.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from anyio import to_thread
from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from prometheus_client import Counter, Histogram

from pushplan.db.audit import append
from pushplan.db.store import PlanStore
from pushplan.settings import Settings
from serving.keys import Caller, Role, authenticate

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 8 << 20
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
OPEN_PATHS = ("/healthz", "/readyz")
READ_METHODS = {"GET", "HEAD", "OPTIONS"}
# The path parameters that name what a call acts on, for the audit row's target.
TARGET_PARAMS = ("campaign_id", "key_id", "job_id", "channel")

REQUESTS = Counter("pushplan_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("pushplan_http_request_seconds", "HTTP request latency", ["route"])
_log = logging.getLogger(__name__)


class Limits:
    """Per-key rate limits: each request takes one from every window of PUSHPLAN_API_RATE_LIMIT."""

    def __init__(self, settings: Settings) -> None:
        self.items: list[RateLimitItem] = parse_many(settings.api_rate_limit)
        self.limiter = MovingWindowRateLimiter(storage_from_string(settings.limits_storage_uri))

    def retry_after(self, key_id: str) -> int | None:
        """None when the request is admitted; else the seconds until the fullest window frees a slot."""
        for item in self.items:
            if not self.limiter.hit(item, "pushplan-api", key_id):
                reset_at, _ = self.limiter.get_window_stats(item, "pushplan-api", key_id)
                return max(1, math.ceil(reset_at - time.time()))
        return None


@dataclass
class _Admission:
    caller: Caller | None = None
    status: int = 200
    detail: str = ""
    retry_after: int | None = None


def _admit(store: PlanStore, limits: Limits, presented: str | None, roles: set[Role] | None) -> _Admission:
    if not presented:
        return _Admission(status=401, detail="missing X-API-Key header")
    caller = authenticate(store, presented, datetime.now(UTC))
    if caller is None:
        return _Admission(status=401, detail="unknown, revoked or expired API key")
    if roles is not None and caller.role not in roles:
        return _Admission(caller, status=403, detail=f"a {caller.role} key cannot do this")
    wait = limits.retry_after(caller.key_id)
    if wait is not None:
        return _Admission(caller, 429, f"rate limit of {limits_text(limits)} per key reached", wait)
    return _Admission(caller)


def limits_text(limits: Limits) -> str:
    return ", ".join(str(item) for item in limits.items)


class Guard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: list[int] = []

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                await self._audit(scope, message["status"])
            await send(message)

        try:
            await self._guarded(scope, receive, counted)
        finally:
            # Labelled by the route's template once routing has matched it (never the raw path: a
            # client requesting random paths would otherwise grow /metrics without bound).
            template = getattr(scope.get("route"), "path", "unmatched")
            LATENCY.labels(template).observe(time.perf_counter() - started)
            REQUESTS.labels(scope["method"], template, str(status[0] if status else 500)).inc()

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        app_state = scope["app"].state
        settings: Settings = app_state.settings
        path: str = scope["path"]
        if path in OPEN_PATHS or (path in DOCS_PATHS and settings.docs_served):
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        presented = headers.get("x-api-key")
        roles = None
        if path == "/metrics":
            if settings.metrics_mode == "open":
                await self.app(scope, receive, send)
                return
            bearer = headers.get("authorization", "")
            presented = presented or (bearer[7:] if bearer.lower().startswith("bearer ") else None)
            roles = {Role.operator, Role.admin}
        admission = await to_thread.run_sync(_admit, app_state.plan_store, app_state.limits, presented, roles)
        scope.setdefault("state", {})["caller"] = admission.caller
        if admission.status != 200:
            extra = {"retry-after": str(admission.retry_after)} if admission.retry_after else {}
            await _answer(send, admission.status, admission.detail, extra)
            return
        body = await _read_body(receive, headers.get("content-length"))
        if body is TOO_LARGE:
            await _answer(send, 413, f"request body over {MAX_BODY_BYTES} bytes")
            return
        if body is GONE:  # the client left mid-body: nobody to answer, nothing to act on
            return
        assert isinstance(body, bytes)
        await self.app(scope, _replay(body, receive), send)

    async def _audit(self, scope: Scope, status: int) -> None:
        """One row per state-changing call that named a valid key, written before its answer leaves."""
        state = scope.get("state", {})
        caller: Caller | None = state.get("caller")
        if scope["method"] in READ_METHODS or caller is None or state.get("audit_skip"):
            return
        template = getattr(scope.get("route"), "path", scope["path"])
        params = scope.get("path_params", {})
        target = state.get("audit_target") or next(
            (str(params[name]) for name in TARGET_PARAMS if name in params), None
        )
        client = scope.get("client")
        actor = caller.actor(source=client[0] if client else None)
        detail = state.get("audit_detail")
        try:
            await to_thread.run_sync(
                lambda: append(
                    scope["app"].state.plan_store,
                    actor,
                    f"{scope['method']} {template}",
                    target=target,
                    outcome=str(status),
                    detail=detail,
                )
            )
        except Exception:  # the change is made; its row is lost and the log says so, loudly
            _log.exception("audit: could not record %s %s by %s", scope["method"], template, actor.actor)


TOO_LARGE, GONE = object(), object()


async def _read_body(receive: Receive, content_length: str | None) -> bytes | object:
    """The whole body; TOO_LARGE once it passes MAX_BODY_BYTES (declared, or as it streams in,
    without reading further); GONE if the client disconnected first."""
    if content_length is not None and content_length.isdigit() and int(content_length) > MAX_BODY_BYTES:
        return TOO_LARGE
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return GONE
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return TOO_LARGE
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then disconnects, as the server reports them

    return replayed


async def _answer(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
