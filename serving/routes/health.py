"""Liveness, readiness (which models are loaded, which are heuristics) and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

router = APIRouter(tags=["health"])
_log = logging.getLogger(__name__)


class Ready(BaseModel):
    ready: bool
    models: dict[str, str] = Field(
        description="Model name to its champion's registry version, `rule:<name>` when the simple rule "
        "its last training found best serves instead (no version beat it), or `heuristic` (never trained)."
    )
    heuristics: list[str] = Field(description="Models with no champion, planned with a rule or heuristics.")
    rules: dict[str, str] = Field(default_factory=dict, description="Model name to the rule serving it.")


class NotReady(BaseModel):
    ready: bool = False
    reason: str


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Ready,
    responses={
        503: {
            "model": NotReady,
            "description": "A store does not answer; the reason says which (the "
            "error itself, which may name hosts and users, goes to the service's log only).",
        }
    },
)
def readyz(request: Request) -> JSONResponse:
    """Ready when the stores answer; models missing from the registry are reported, not fatal."""
    models = request.app.state.models
    try:
        request.app.state.plan_store.counts("__readiness__")
        ready = True
    except Exception:  # any store failure makes the instance unready; the details go to the log only
        _log.exception("readiness: the plan store does not answer")
        return JSONResponse({"ready": False, "reason": "the plan store does not answer"}, status_code=503)
    rules = {name: rule for name, (rule, _) in models.rules.items()}
    return JSONResponse(
        {"ready": ready, "models": models.versions, "heuristics": models.missing, "rules": rules}
    )


# Its own router: served, open or behind an operator's key as PUSHPLAN_METRICS_ACCESS says.
metrics_router = APIRouter(tags=["health"])


@metrics_router.get(
    "/metrics", response_class=PlainTextResponse, description="Prometheus text exposition format."
)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
