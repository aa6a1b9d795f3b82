"""The FastAPI application: builds the app, its state and its routers; nothing else happens here."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram

from pushplan.db.engine import migrate
from pushplan.db.store import PlanStore
from pushplan.settings import Settings, get_settings
from serving.deps import AUTH_RESPONSES, BODY_RESPONSES, Problem
from serving.routes import audiences, campaigns, dispatch, events, health, plans, reports
from serving.scoring import ModelSet

MAX_BODY_BYTES = 8 << 20
REQUESTS = Counter("pushplan_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("pushplan_http_request_seconds", "HTTP request latency", ["route"])


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        chosen = settings or get_settings()
        migrate(chosen)
        app.state.settings = chosen
        app.state.plan_store = PlanStore(chosen)
        app.state.models = ModelSet.load(chosen)
        yield
        app.state.plan_store.engine.dispose()

    app = FastAPI(
        title="pushplan",
        version="0.1.0",
        summary="Personalised push plans: who gets which variant, when, on which channel, or why not.",
        lifespan=lifespan,
    )

    @app.middleware("http")
    async def limit_and_measure(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        started = time.perf_counter()
        response = await call_next(request)
        # Labelled by the route's template once routing has matched it (never the raw path: a client
        # requesting random paths would otherwise grow /metrics without bound).
        template = getattr(request.scope.get("route"), "path", "unmatched")
        LATENCY.labels(template).observe(time.perf_counter() - started)
        REQUESTS.labels(request.method, template, str(response.status_code)).inc()
        return response

    app.include_router(health.router)
    for router in (campaigns.router, audiences.router, events.router, dispatch.router, reports.router):
        app.include_router(router, responses=AUTH_RESPONSES)
    # Both plan routes answer 404 when the campaign they name does not exist; POST /v1/plans has a body.
    unknown_campaign: dict[int | str, dict[str, Any]] = {
        404: {"model": Problem, "description": "No campaign with this campaign_id."}
    }
    app.include_router(plans.router, responses=AUTH_RESPONSES | BODY_RESPONSES | unknown_campaign)
    return app
