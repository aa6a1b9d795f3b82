"""Uplift modelling: the Qini curve on hand-computed cases, both learners on synthetic campaigns."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from reports.uplift import qini_coefficient, qini_curve, t_learner, uplift_analysis, x_learner

COVARIATES = ["segment", "noise1", "noise2"]


def campaign(n: int = 6000, seed: int = 0, revenue: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    """A randomized push, 50/50: A is moved by it (+0.15, or +15 in revenue), B buys anyway (0.30 base rate,
    or 30), C neither (0.05, or 5). The noise columns carry nothing."""
    rng = np.random.default_rng(seed)
    segment = rng.choice(np.array(["A", "B", "C"]), n)
    treated = rng.permutation(np.r_[np.ones(n // 2, dtype=bool), np.zeros(n - n // 2, dtype=bool)])
    frame = pd.DataFrame({"segment": segment, "noise1": rng.normal(size=n), "noise2": rng.random(n)})
    if revenue:
        mean = np.where(segment == "B", 30.0, 5.0) + treated * np.where(segment == "A", 15.0, 0.0)
        frame["revenue"] = rng.gamma(2.0, mean / 2.0)
    else:
        rate = np.where(segment == "B", 0.30, 0.05) + treated * np.where(segment == "A", 0.15, 0.0)
        frame["bought"] = (rng.random(n) < rate).astype(int)
    return frame, treated


@pytest.fixture(scope="module")
def binary_result() -> dict[str, Any]:
    frame, treated = campaign()
    return uplift_analysis(frame, COVARIATES, treated, "bought", segments=["segment"], seed=0)


@pytest.fixture(scope="module")
def revenue_result() -> dict[str, Any]:
    frame, treated = campaign(seed=1, revenue=True)
    # Other covariate dtypes: a pandas category and a bool; and a few unknown outcomes, which are left out.
    frame["segment"] = frame["segment"].astype("category")
    frame["weekend"] = np.random.default_rng(2).random(len(frame)) < 0.3
    frame.loc[frame.index[:10], "revenue"] = np.nan
    return uplift_analysis(
        frame, [*COVARIATES, "weekend"], pd.Series(treated), "revenue", segments=["segment"]
    )


# --- Qini curve and coefficient on hand-computed cases ------------------------------------------------------

# Eight users already in uplift order, treated and control alternating.
UPLIFT = np.array([0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
TREATED = np.array([1, 0, 1, 0, 1, 0, 1, 0])


def test_qini_curve_by_hand() -> None:
    y = np.array([1, 0, 1, 0, 0, 1, 0, 1])
    curve = qini_curve(UPLIFT, TREATED, y, points=9)
    assert list(curve.columns) == ["fraction", "qini", "random"]
    assert curve["fraction"].tolist() == pytest.approx([k / 8 for k in range(9)])
    # k=1: one treated buyer, no control yet -> 0. k=2: Y_t=1, Y_c=0 -> 1. k=3: 2. k=4, 5: still 2.
    # k=6: Y_t=2, Y_c=1, N_t=3, N_c=3 -> 2 - 1 = 1. k=7: N_t=4 -> 2 - 4/3. k=8: Y_c=2, N_t=N_c=4 -> 0.
    assert curve["qini"].tolist() == pytest.approx([0, 0, 1, 2, 2, 2, 1, 2 / 3, 0])
    assert curve["random"].tolist() == pytest.approx([0] * 9)  # Q(1) = 0
    # Q(1) = 0, so the raw area: (1/8) x (0 + 1 + 2 + 2 + 2 + 1 + 2/3).
    assert qini_coefficient(curve) == pytest.approx(26 / 24)


def test_qini_coefficient_is_normalised_by_the_total() -> None:
    y = np.array([1, 0, 1, 0, 0, 0, 0, 0])
    curve = qini_curve(UPLIFT, TREATED, y, points=9)
    assert curve["qini"].tolist() == pytest.approx([0, 0, 1, 2, 2, 2, 2, 2, 2])
    assert curve["random"].tolist() == pytest.approx([k / 4 for k in range(9)])  # φ·Q(1), Q(1) = 2
    # Area under Q = (1/8) x (1 + 2 x 5 + 2/2) = 1.5; under the random line 1; (1.5 - 1) / |Q(1)| = 0.25.
    assert qini_coefficient(curve) == pytest.approx(0.25)
    # Doubling the outcome (cents instead of dollars) leaves the normalised coefficient alone.
    assert qini_coefficient(qini_curve(UPLIFT, TREATED, 2 * y, points=9)) == pytest.approx(0.25)


def test_ties_are_averaged_not_broken_by_row_order() -> None:
    # Two tied pairs: {treated buyer, control non-buyer} then {treated, control}, neither buying.
    # At φ = 1/4 half of the first pair is targeted on average: N_t = N_c = 1/2, Y_t = 1/2, Y_c = 0 -> 0.5.
    uplift, treated, y = np.array([1.0, 1.0, 0.0, 0.0]), np.array([1, 0, 1, 0]), np.array([1, 0, 0, 0])
    curve = qini_curve(uplift, treated, y, points=5)
    assert curve["qini"].tolist() == pytest.approx([0, 0.5, 1, 1, 1])
    flipped = [1, 0, 3, 2]
    assert qini_curve(uplift[flipped], treated[flipped], y[flipped], points=5).equals(curve)

    # A constant uplift ranks nobody: the curve is the random line, whatever the row order.
    rng = np.random.default_rng(0)
    treated, y = rng.random(200) < 0.5, rng.random(200) < 0.2
    curve = qini_curve(np.zeros(200), treated, y)
    assert curve["qini"].to_numpy() == pytest.approx(curve["random"].to_numpy())
    assert qini_coefficient(curve) == pytest.approx(0.0, abs=1e-12)
    order = rng.permutation(200)
    assert np.allclose(qini_curve(np.zeros(200), treated[order], y[order])["qini"], curve["qini"])


def test_perfect_ranking_beats_random_and_reversed_is_negative() -> None:
    frame, treated = campaign(n=4000, seed=3)
    effect = np.where(frame["segment"] == "A", 0.15, 0.0)
    y = frame["bought"].to_numpy()
    perfect = qini_coefficient(qini_curve(effect, treated, y))
    shuffled = qini_coefficient(qini_curve(np.random.default_rng(4).random(len(y)), treated, y))
    reversed_ = qini_coefficient(qini_curve(-effect, treated, y))
    assert perfect > 0.2
    assert perfect > shuffled + 0.2
    assert reversed_ < 0


# --- The learners -------------------------------------------------------------------------------------------


def test_learners_return_uplift_and_control_outcome() -> None:
    frame, treated = campaign(n=3000, seed=5, revenue=True)
    X = frame[COVARIATES].astype({"segment": "category"})
    y = frame["revenue"].to_numpy()
    in_a = (frame["segment"] == "A").to_numpy()
    for learner in (t_learner, x_learner):
        tau, mu0 = learner(X, treated, y, binary=False, seed=0)(X)
        assert tau.shape == mu0.shape == (len(X),)
        assert tau[in_a].mean() == pytest.approx(15.0, abs=3.0)
        assert abs(tau[~in_a].mean()) < 3.0
        assert mu0[frame["segment"].to_numpy() == "B"].mean() == pytest.approx(30.0, rel=0.15)


# --- The analysis -------------------------------------------------------------------------------------------


def test_binary_campaign(binary_result: dict[str, Any]) -> None:
    result = binary_result
    assert result["outcome"] == "bought"
    assert result["binary"] is True
    assert result["rows"] == {"train": 4200, "test": 1800, "treated": 3000, "control": 3000}
    random = np.array(result["random_curve"]["qini"])
    third = 33  # φ = 0.33 on the 101-point grid: about where A's users run out in a good ranking
    for name in ("t_learner", "x_learner"):
        learner = result["learners"][name]
        assert learner["qini_coefficient"] > 0.1, name
        assert learner["curve"]["fraction"] == result["random_curve"]["fraction"]
        assert learner["curve"]["qini"][third] > random[third], name
        assert np.mean(np.array(learner["curve"]["qini"]) - random) > 0, name
    assert result["best_learner"] in ("t_learner", "x_learner")
    best = result["learners"][result["best_learner"]]["qini_coefficient"]
    assert best == max(learner["qini_coefficient"] for learner in result["learners"].values())


def test_binary_campaign_deciles(binary_result: dict[str, Any]) -> None:
    deciles = binary_result["deciles"]
    assert [d["decile"] for d in deciles] == list(range(1, 11))
    assert sum(d["n"] for d in deciles) == binary_result["rows"]["test"]
    predicted = [d["predicted_uplift"] for d in deciles]
    assert predicted == sorted(predicted, reverse=True)
    observed = [d["observed_uplift"] for d in deciles]
    assert all(o is not None for o in observed)
    assert np.mean(observed[:3]) > np.mean(observed[-3:]) + 0.05


def test_binary_campaign_segments(binary_result: dict[str, Any]) -> None:
    rows = {row["value"]: row for row in binary_result["segments"]["segment"]}
    assert set(rows) == {"A", "B", "C"}
    assert sum(row["n"] for row in rows.values()) == 6000
    assert rows["A"]["verdict"] == "moved"
    assert rows["B"]["verdict"] == "acts anyway"
    assert rows["C"]["verdict"] == "not moved"
    assert rows["A"]["predicted_uplift"] == pytest.approx(0.15, abs=0.04)
    assert rows["B"]["predicted_control"] == pytest.approx(0.30, abs=0.04)


def test_revenue_campaign(revenue_result: dict[str, Any]) -> None:
    result = revenue_result
    assert result["binary"] is False
    assert result["rows"]["treated"] + result["rows"]["control"] == 5990
    for name in ("t_learner", "x_learner"):
        assert result["learners"][name]["qini_coefficient"] > 0.1, name
    verdicts = {row["value"]: row["verdict"] for row in result["segments"]["segment"]}
    assert verdicts == {"A": "moved", "B": "acts anyway", "C": "not moved"}


def test_results_are_json_safe(binary_result: dict[str, Any], revenue_result: dict[str, Any]) -> None:
    for result in (binary_result, revenue_result):
        text = json.dumps(result, allow_nan=False)
        assert json.loads(text) == result  # plain types only: nothing numpy, no tuples


def test_same_seed_same_result(binary_result: dict[str, Any]) -> None:
    frame, treated = campaign()
    again = uplift_analysis(frame, COVARIATES, treated, "bought", segments=["segment"], seed=0)
    assert json.dumps(again, allow_nan=False) == json.dumps(binary_result, allow_nan=False)


def test_too_little_data_is_skipped_with_a_reason() -> None:
    frame, treated = campaign(n=400)
    few = treated.copy()
    few[np.flatnonzero(treated)[30:]] = False  # 30 treated rows
    result = uplift_analysis(frame, COVARIATES, few, "bought")
    assert set(result) == {"outcome", "skipped"}
    assert result["outcome"] == "bought"
    assert "30 treated" in result["skipped"]

    frame["bought"] = np.where(treated, frame["bought"], 0)  # nobody in control ever buys
    result = uplift_analysis(frame, COVARIATES, treated, "bought")
    assert "control" in result["skipped"]
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize(
    ("covariates", "outcome", "segments", "missing"),
    [
        ([*COVARIATES, "age"], "bought", (), "age"),
        (COVARIATES, "revenue", (), "revenue"),
        (COVARIATES, "bought", ("country",), "country"),
    ],
)
def test_missing_column_is_named(
    covariates: list[str], outcome: str, segments: tuple[str, ...], missing: str
) -> None:
    frame, treated = campaign(n=200)
    with pytest.raises(ValueError, match=missing):
        uplift_analysis(frame, covariates, treated, outcome, segments=segments)
