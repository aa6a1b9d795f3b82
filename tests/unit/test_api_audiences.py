"""Audiences over HTTP on the local profile (the same scenario runs on production in integration)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from pushplan.settings import Settings
from serving.keys import Role
from tests.api_audiences import audience_scenario


def test_preview_refusals_and_plans_by_audience(served: tuple[TestClient, dict[Role, str], Settings]) -> None:
    client, keys, settings = served
    audience_scenario(client, {"X-API-Key": keys[Role.campaign]}, settings, "2026-10-06T00:00:00Z")
