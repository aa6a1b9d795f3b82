"""Schemathesis over the service's own OpenAPI schema: no operation answers 5xx, whatever it is sent,
and no key reaches another team's campaign.

Every operation gets the examples in the schema, schemathesis's coverage cases and a bounded,
derandomized run of generated requests (valid and invalid), sent in process to the app with an
admin key, so auth never hides a handler. Each response must pass schemathesis's checks: no 5xx,
documented status codes, content types and bodies, invalid input refused, auth enforced. Then the
same cases are sent with a key of each other role from a team that does not own the known campaign:
the same checks, and nothing about that campaign may answer 2xx.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import settings
from schemathesis import Case

from pushplan.db.store import PlanStore
from pushplan.settings import Settings
from serving.app import create_app
from serving.keys import Role, create_key

pytestmark = pytest.mark.slow

# Stored before fuzzing, so that generated requests can reach a real campaign's plan and items.
CAMPAIGN = {
    "campaign_id": "black-friday",
    "name": "Black Friday",
    "channels": ["push"],
    "variants": [
        {"variant_id": "a", "title": "Save 30% today", "tags": ["discount", "urgency"]},
        {"variant_id": "b", "title": "What's new?", "tags": ["question", "news"]},
    ],
    "window": {"start": "2026-10-06T00:00:00Z", "end": "2026-10-08T00:00:00Z"},
    "holdout_fraction": 0.2,
}

# Known values: half the generated campaign ids (path and plan body) and plan users are real ones.
CONFIG = schemathesis.Config.from_dict(
    {
        "dictionaries": {
            "campaigns": {"values": [CAMPAIGN["campaign_id"]]},
            "users": {"values": ["u0000001", "u0000042", "u0000777", "u0001499"]},
        },
        "parameters": {"path.campaign_id": {"dictionary": "campaigns", "probability": 0.5}},
        "operations": [
            {
                "include-path": "/v1/plans",
                "parameters": {
                    "body.campaign_id": {"dictionary": "campaigns", "probability": 0.5},
                    "body.user_ids[*]": {"dictionary": "users", "probability": 0.5},
                },
            }
        ],
        "checks": {
            # Schema-valid input may still be refused by rules JSON Schema cannot state: a window's
            # end after its start, unique variant ids, the events contract checked row by row.
            "positive_data_acceptance": {"enabled": False},
        },
    }
)


class _Forward:
    """The ASGI app schemathesis is given when it collects the tests, before any fixture has run.

    `fuzzed_app` points it at an app over the `served` data dir; lifespan events are forwarded too, so
    that app starts and stops as schemathesis drives it (it ends every lifespan after each test).
    """

    target: FastAPI | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert self.target is not None, "requests before the fuzzed_app fixture"
        await self.target(scope, receive, send)


FORWARD = _Forward()
# The schema is the app's own; producing it reads no settings and runs nothing.
schema = schemathesis.openapi.from_dict(create_app().openapi(), config=CONFIG)
schema.app = FORWARD  # as schemathesis.openapi.from_asgi does: requests and its own probes go there
ADMIN_KEY: dict[str, str] = {}  # filled by `fuzzed_app`
OUTSIDERS: dict[Role, str] = {}  # a key of every other role, of a team that owns no campaign here
# Schemathesis builds its coverage cases while collecting, before any fixture made a key.
PENDING_KEY = "pp_pending_admin-key-of-fuzzed_app"


@schema.auth(refresh_interval=None, retry_on=[])
class _AdminKey:
    """An admin key in X-API-Key, so no role check hides a handler. Schemathesis leaves it out of
    the cases that test the security scheme itself, and checks those are refused (`ignored_auth`)."""

    def get(self, case: Case, ctx: schemathesis.AuthContext) -> str:
        return ADMIN_KEY.get("key", PENDING_KEY)

    def set(self, case: Case, data: str, ctx: schemathesis.AuthContext) -> None:
        case.headers["X-API-Key"] = data


ServedApi = tuple[TestClient, dict[Role, str], Settings]


@pytest.fixture(scope="module")
def fuzzed_app(served: ServedApi) -> Iterator[FastAPI]:
    """A second app over the served data dir (the TestClient runs the first): the known campaign stored."""
    client, keys, settings = served
    created = client.post("/v1/campaigns", json=CAMPAIGN, headers={"X-API-Key": keys[Role.admin]})
    assert created.status_code == 201, created.text
    FORWARD.target, ADMIN_KEY["key"] = create_app(settings), keys[Role.admin]
    store = PlanStore(settings)
    OUTSIDERS.update(
        {role: create_key(store, role, team="outsiders") for role in Role if role is not Role.admin}
    )
    yield FORWARD.target
    FORWARD.target = None
    ADMIN_KEY.clear()
    OUTSIDERS.clear()


@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True, database=None)
def test_no_operation_answers_5xx(case: Case, fuzzed_app: FastAPI) -> None:
    if case.headers.get("X-API-Key") == PENDING_KEY:
        case.headers["X-API-Key"] = ADMIN_KEY["key"]
    case.call_and_validate()
    if "X-API-Key" not in (case.headers or {}):
        return  # a case about the missing key itself
    for role, key in OUTSIDERS.items():
        case.headers["X-API-Key"] = key
        response = case.call_and_validate()
        known = str(CAMPAIGN["campaign_id"])
        touches = known in f"{case.formatted_path} {case.body!r}"
        assert not (touches and response.status_code < 300), (
            f"an outsider's {role} key reached {known}: {case.method} {case.formatted_path} "
            f"answered {response.status_code}"
        )
