"""`pushplan report` on an imported experiment log, through the real executable: page, JSON, headline,
and bad input refused with a message that names it (nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.e2e.test_cli import run

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("PUSHPLAN_")}
    return {**clean, "PUSHPLAN_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}


def test_an_imported_experiment_log_gets_its_report(tmp_path: Path, env: dict[str, str]) -> None:
    rng = np.random.default_rng(8)
    n = 6_000
    arm = rng.choice(["control", "a", "b"], n, p=[0.2, 0.4, 0.4])
    plan = rng.choice(["free", "paid"], n)
    rate = np.select([arm == "a", arm == "b"], [0.14, 0.10], 0.10)
    log = tmp_path / "log.parquet"
    pd.DataFrame(
        {
            "variant": arm,
            "plan": plan,
            "tenure_days": rng.integers(0, 900, n),
            "ordered": (rng.random(n) < rate).astype(int),
            "spend": np.where(rng.random(n) < rate, rng.lognormal(3, 0.5, n), 0.0),
        }
    ).to_parquet(log)
    page, report_json = tmp_path / "out" / "log.html", tmp_path / "out" / "log.json"
    args = ["report", "--experiment-log", str(log), "--arm-column", "variant", "--control", "control"]
    args += [
        "--outcome",
        "ordered",
        "--outcome",
        "spend",
        "--segment-column",
        "plan",
        "--covariate",
        "tenure_days",
    ]
    args += ["--expected-share", "control=0.2", "--expected-share", "a=0.4", "--expected-share", "b=0.4"]
    done = run(*args, "--out", str(page), "--json", str(report_json), env=env)

    report = json.loads(report_json.read_text())
    assert f"report: {page}" in done.stdout and "ordered: +" in done.stdout and "a vs control" in done.stdout
    ordered = report["outcomes"]["ordered"]
    assert set(ordered["arms"]) == {"a", "b"} and ordered["control"]["n"] == (arm == "control").sum()
    lo, hi = ordered["arms"]["a"]["lift_abs_ci"]
    assert lo <= 0.04 <= hi and lo > 0
    assert report["outcomes"]["spend"]["kind"] == "numeric"
    assert report["srm"]["mismatch"] is False and report["srm"]["expected_share"]["control"] == 0.2
    assert set(report["segments"]["plan"]) == {"free", "paid"}
    assert "learners" in report["uplift"]["a"] and "learners" in report["uplift"]["b"]
    assert "<svg" in page.read_text()


def test_bad_report_arguments_are_refused_by_name(tmp_path: Path, env: dict[str, str]) -> None:
    log = tmp_path / "log.csv"
    pd.DataFrame({"arm": ["x", "y"] * 40, "clicked": [0, 1] * 40}).to_csv(log, index=False)
    base = ["report", "--experiment-log", str(log), "--arm-column", "arm"]
    missing = run(*base, "--outcome", "clicked", env=env, check=False)
    assert missing.returncode != 0 and "--control" in missing.stderr
    wrong = run(*base, "--control", "x", "--outcome", "clicks", env=env, check=False)
    assert wrong.returncode == 1 and "no column(s) clicks" in wrong.stderr
    share = run(
        *base, "--control", "x", "--outcome", "clicked", "--expected-share", "x:0.5", env=env, check=False
    )
    assert share.returncode == 1 and "'x:0.5'" in share.stderr
    nothing = run("report", env=env, check=False)
    assert nothing.returncode != 0 and "--campaign or --experiment-log" in nothing.stderr
    unknown = run("report", "--campaign", "nope", env=env, check=False)
    assert unknown.returncode == 1 and "no campaign 'nope'" in unknown.stderr
    assert not list(tmp_path.glob("*.html"))
