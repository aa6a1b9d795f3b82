"""The operators' side of security through the real `pushplan` executable: keys made, listed, rotated
and revoked; a draft approved from the command line; and all of it read back from `pushplan audit`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pushplan.settings import Settings
from serving.app import create_app
from tests.api_security import spec
from tests.e2e.test_cli import run

pytestmark = pytest.mark.e2e


def test_keys_approvals_and_the_audit_trail_from_the_command_line(env: dict[str, str]) -> None:
    author = run("keys", "create", "--role", "campaign", "--team", "growth", env=env).stdout.strip()
    approver = run("keys", "create", "--role", "approver", "--team", "growth", "--expires", "30d", env=env)
    approver_id = approver.stdout.strip().split("_")[1]
    past = run("keys", "create", "--role", "operator", "--expires", "2020-01-01", env=env, check=False)
    assert past.returncode == 2 and "not in the future" in past.stderr
    listed = {k["key_id"]: k for k in json.loads(run("keys", "list", "--json", env=env).stdout)}
    assert {k["team"] for k in listed.values()} == {"growth"} and len(listed) == 2
    assert listed[approver_id]["expires_at"] is not None and listed[approver_id]["usable"] is True

    settings = Settings(data_dir=Path(env["PUSHPLAN_DATA_DIR"]))
    with TestClient(create_app(settings)) as client:
        created = client.post(
            "/v1/campaigns", json=spec("winback-sms", channels=["sms"]), headers={"X-API-Key": author}
        )
        assert created.status_code == 201, created.text

    refused = run("campaign", "dispatch", "winback-sms", env=env, check=False)
    assert refused.returncode == 2 and "approver" in refused.stderr
    approved = run("campaign", "approve", "winback-sms", "-m", "checked the copy", "--by", "dana", env=env)
    assert "approved by cli:dana" in approved.stdout
    again = run("campaign", "reject", "winback-sms", "-m", "too late", env=env, check=False)
    assert again.returncode == 2 and "nothing waits" in again.stderr
    assert "is running" in run("campaign", "dispatch", "winback-sms", env=env).stdout

    author_id = author.split("_")[1]
    rotated = run("keys", "rotate", author_id, env=env).stdout.strip()
    assert rotated.startswith(f"pp_{author_id}_") and rotated != author
    run("keys", "revoke", approver_id, env=env)
    assert run("keys", "rotate", approver_id, env=env, check=False).returncode == 2

    rows = json.loads(run("audit", "--json", env=env).stdout)
    trail = [(r["actor"].split(":")[0], r["action"], r["target"], r["outcome"]) for r in rows]
    assert trail == [
        ("cli", "cli keys create", author_id, "ok"),
        ("cli", "cli keys create", approver_id, "ok"),
        ("key", "POST /v1/campaigns", "winback-sms", "201"),
        ("cli", "cli campaign dispatch", "winback-sms", "refused"),
        ("cli", "cli campaign approve", "winback-sms", "ok"),
        ("cli", "cli campaign reject", "winback-sms", "refused"),
        ("cli", "cli campaign dispatch", "winback-sms", "ok"),
        ("cli", "cli keys rotate", author_id, "ok"),
        ("cli", "cli keys revoke", approver_id, "ok"),
    ], trail
    assert rows[4]["actor"] == "cli:dana" and rows[4]["detail"] == {"comment": "checked the copy"}
    only = json.loads(run("audit", "--json", "--action", "approve", env=env).stdout)
    assert [r["action"] for r in only] == ["cli campaign approve"]
    table = run("audit", "--target", "winback-sms", env=env).stdout
    assert "audit trail: 5 rows" in table
