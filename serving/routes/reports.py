"""Uplift reports for operators: a campaign's report as JSON and as its self-contained HTML page."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from fastapi.responses import HTMLResponse

from pushplan.domain import NoSuchCampaign
from reports.campaign_log import DEFAULT_HORIZON, NothingToReport
from serving.deps import AUTH_RESPONSES, OperatorRole, PlanStoreDep, Problem, owned

router = APIRouter(tags=["reports"])

DEFAULT_HORIZON_HOURS = DEFAULT_HORIZON.total_seconds() / 3600
CampaignId = Annotated[str, Path(examples=["black-friday"])]
Horizon = Annotated[
    float,
    Query(
        ge=0,
        le=24 * 90,
        description="Hours after the window's end during which outcomes count.",
    ),
]
JSON: dict[str, Any] = {"content": {"application/json": {}}}
PAGE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/html": {}}, "description": "The report page."}
}
NOT_REPORTABLE: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No campaign with this id."},
    409: {"model": Problem, "description": "The campaign has nothing to report yet (not planned)."},
}


def _report(request: Request, campaign_id: str, horizon_hours: float) -> dict[str, Any]:
    # Imported here: the report pulls in LightGBM fits and matplotlib, which a planning-only
    # service never needs at start-up.
    from reports.report import campaign_report

    try:
        return campaign_report(
            request.app.state.settings, campaign_id, horizon=timedelta(hours=horizon_hours)
        )
    except NoSuchCampaign as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except NothingToReport as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


# Plain `def` routes: building a report fits uplift models for seconds, so FastAPI runs them in its
# thread pool rather than on the event loop.
@router.get("/v1/reports/campaigns/{campaign_id}", responses=NOT_REPORTABLE)
def campaign_report_json(
    request: Request,
    campaign_id: CampaignId,
    store: PlanStoreDep,
    caller: OperatorRole,
    horizon_hours: Horizon = DEFAULT_HORIZON_HOURS,
) -> dict[str, Any]:
    """The campaign's uplift report: lift over the holdout per outcome with 95 % intervals, sample
    ratio check, segments (variant, local send hour, channel, user segments), funnel, uplift
    targeting (Qini) and off-policy values. The HTML page renders the same numbers."""
    owned(store, caller, campaign_id)
    return _report(request, campaign_id, horizon_hours)


@router.get(
    "/reports/campaigns/{campaign_id}",
    response_class=HTMLResponse,
    # The page's errors are JSON like every other route's, not HTML: documented as such.
    responses=PAGE | {code: answer | JSON for code, answer in (AUTH_RESPONSES | NOT_REPORTABLE).items()},
)
def campaign_report_page(
    request: Request,
    campaign_id: CampaignId,
    store: PlanStoreDep,
    caller: OperatorRole,
    horizon_hours: Horizon = DEFAULT_HORIZON_HOURS,
) -> HTMLResponse:
    """The campaign's uplift report as one self-contained HTML page with charts."""
    from reports.page import render_html

    owned(store, caller, campaign_id)
    return HTMLResponse(render_html(_report(request, campaign_id, horizon_hours)))
