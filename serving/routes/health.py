"""Liveness, readiness (which models are loaded, which are heuristics) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Ready when the stores answer; models missing from the registry are reported, not fatal."""
    models = request.app.state.models
    try:
        request.app.state.plan_store.counts("__readiness__")
        ready = True
    except Exception as exc:  # any store failure makes the instance unready, with the reason
        return JSONResponse({"ready": False, "reason": str(exc).splitlines()[0]}, status_code=503)
    return JSONResponse({"ready": ready, "models": models.versions, "heuristics": models.missing})


@router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
