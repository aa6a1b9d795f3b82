"""The FastAPI application: builds the app, its state and its routers; nothing else happens here."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

from features.store import feature_store
from pushplan.db.engine import migrate
from pushplan.db.store import PlanStore
from pushplan.settings import Settings, get_settings
from serving.deps import AUTH_RESPONSES, BODY_RESPONSES, Problem
from serving.guard import Guard, Limits
from serving.routes import (
    approvals,
    audiences,
    audit,
    campaigns,
    dispatch,
    events,
    health,
    keys,
    plans,
    reports,
)
from serving.scoring import ModelSet


def _operations(app: FastAPI) -> list[tuple[re.Pattern[str], list[str]]]:
    """Each documented path's pattern and methods (FastAPI's schema is the public list of routes;
    its router nests included routers in private types)."""
    return [(compile_path(path)[0], list(methods)) for path, methods in app.openapi()["paths"].items()]


def create_app(settings: Settings | None = None) -> FastAPI:
    # What is served is decided when the app is built: /docs and /metrics may be switched off.
    chosen = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrate(chosen)
        app.state.settings = chosen
        app.state.plan_store = PlanStore(chosen)
        app.state.limits = Limits(chosen)
        app.state.models = ModelSet.load(chosen)
        feature_store(chosen)  # built now (registry read, online store connection), not by the first request
        yield
        app.state.plan_store.engine.dispose()

    docs = chosen.docs_served
    app = FastAPI(
        title="pushplan",
        version="0.1.0",
        summary="Personalised push plans: who gets which variant, when, on which channel, or why not.",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    # Outermost: the key, the rate limit and the body's size are settled before any route runs.
    app.add_middleware(Guard)

    @app.exception_handler(HTTPException)
    async def allow_every_method(request: Request, exc: HTTPException) -> Response:
        """A 405's Allow lists every method of the path; Starlette lists only its first route's (GET
        /v1/keys would hide POST /v1/keys)."""
        if exc.status_code == 405:
            methods = {
                method.upper()
                for pattern, operations in _operations(app)
                if pattern.match(request.url.path)
                for method in operations
            }
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
        return await http_exception_handler(request, exc)

    app.include_router(health.router)
    if chosen.metrics_mode != "off":
        app.include_router(health.metrics_router)
    for router in (
        campaigns.router,
        approvals.router,
        audiences.router,
        events.router,
        dispatch.router,
        reports.router,
        keys.router,
        audit.router,
    ):
        app.include_router(router, responses=AUTH_RESPONSES)
    # Both plan routes answer 404 when the campaign they name does not exist; POST /v1/plans has a body.
    unknown_campaign: dict[int | str, dict[str, Any]] = {
        404: {"model": Problem, "description": "No campaign with this campaign_id."}
    }
    app.include_router(plans.router, responses=AUTH_RESPONSES | BODY_RESPONSES | unknown_campaign)
    return app
