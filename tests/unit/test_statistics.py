"""Experiment statistics: hand-computed intervals and tests, a synthetic experiment with a known lift,
coverage of the intervals and size of the tests over seeded simulations, and the errors for bad input."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from reports.statistics import (
    compare_arms,
    compare_by,
    compare_means,
    compare_rates,
    outcome_kind,
    sample_ratio_check,
)

Z = stats.norm.ppf(0.975)


def wilson(successes: int, n: int, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval written out: centre (x + z²/2) / (n + z²), half-width
    z / (n + z²) * sqrt(x (n - x) / n + z²/4)."""
    centre = (successes + z**2 / 2) / (n + z**2)
    half = z / (n + z**2) * math.sqrt(successes * (n - successes) / n + z**2 / 4)
    return centre - half, centre + half


def json_safe(result: Any) -> Any:
    """Round-trips through strict JSON (no NaN or infinity), as a report would write it."""
    return json.loads(json.dumps(result, allow_nan=False))


# --- hand-computed cases ------------------------------------------------------------------------------------


def test_wilson_interval_of_a_known_case() -> None:
    # Newcombe (1998a), "Two-sided confidence intervals for the single proportion", example 81/263.
    lo, hi = wilson(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    assert proportion_confint(81, 263, alpha=0.05, method="wilson") == pytest.approx((lo, hi))
    result = compare_rates(81, 263, 15, 148)
    assert result["control"] == {"n": 263, "mean": pytest.approx(81 / 263), "ci": pytest.approx([lo, hi])}
    assert result["arm"]["ci"] == pytest.approx(list(wilson(15, 148)))
    assert [round(x, 4) for x in result["arm"]["ci"]] == [0.0624, 0.1605]  # the paper's 15/148


def test_newcombe_hybrid_score_interval_worked_example() -> None:
    # Newcombe (1998b), "Interval estimation for the difference between independent proportions", example (a):
    # 56/70 vs 48/80, difference 0.8 - 0.6 = 0.2, method 10 (hybrid score) interval 0.0524 to 0.3339.
    p1, p2 = 56 / 70, 48 / 80
    (l1, u1), (l2, u2) = wilson(56, 70), wilson(48, 80)
    lower = (p1 - p2) - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    upper = (p1 - p2) + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    assert (round(lower, 4), round(upper, 4)) == (0.0524, 0.3339)
    assert confint_proportions_2indep(56, 70, 48, 80, method="newcomb", compare="diff") == pytest.approx(
        (lower, upper)
    )
    result = compare_rates(48, 80, 56, 70)  # control 48/80, arm 56/70
    assert result["lift_abs"] == pytest.approx(0.2)
    assert result["lift_abs_ci"] == pytest.approx([lower, upper])
    assert result["lift_rel"] == pytest.approx(p1 / p2 - 1)
    lo, hi = result["lift_rel_ci"]
    assert lo < p1 / p2 - 1 < hi
    assert lo > 0  # the difference interval excludes 0, so the ratio interval excludes 1
    assert 0 < result["p_value"] < 0.05
    json_safe(result)


def test_relative_lift_is_none_at_control_rate_zero() -> None:
    # A holdout never receives a message, so its click rate is exactly 0.
    result = compare_rates(0, 1_000, 12, 1_000)
    assert result["lift_rel"] is None and result["lift_rel_ci"] is None
    assert result["lift_abs"] == pytest.approx(0.012)
    assert result["control"]["ci"][0] == 0.0
    assert result["p_value"] is not None and result["p_value"] < 0.01
    json_safe(result)


def test_rates_at_the_corners() -> None:
    # No clicks in the arm: the relative lift is -100 % and its interval starts there.
    none_in_arm = compare_rates(30, 1_000, 0, 1_000)
    assert none_in_arm["lift_rel"] == -1.0
    assert none_in_arm["lift_rel_ci"][0] == pytest.approx(-1.0)
    assert none_in_arm["lift_rel_ci"][1] < 0
    # Nobody clicks anywhere, or everybody does: nothing to tell apart, p = 1 as Fisher's exact test gives.
    for successes in (0, 500):
        result = compare_rates(successes, 500, successes, 500)
        assert result["p_value"] == 1.0
        assert stats.fisher_exact([[successes, 500 - successes]] * 2).pvalue == 1.0
        assert result["lift_abs"] == 0.0
        json_safe(result)
    everyone = compare_rates(95, 100, 100, 100)
    lo, hi = everyone["lift_rel_ci"]
    assert lo < 100 / 95 - 1 < hi  # statsmodels' score interval gets this one wrong (complex roots)
    assert "log (Katz)" in everyone["method"]
    all_or_nothing = compare_rates(20, 20, 0, 10)
    assert all_or_nothing["lift_rel"] == -1.0 and all_or_nothing["lift_rel_ci"][0] == -1.0


def test_welch_difference_interval_and_p_value_by_hand() -> None:
    control = np.array([1.0, 2.0, 3.0, 4.0, np.nan])  # the NaN is dropped
    arm = np.array([2.0, 4.0, 6.0, 8.0, 10.0])
    mean_c, mean_a = 2.5, 6.0
    var_c, var_a = 5 / 3, 10.0  # sample variances (n - 1 in the denominator)
    se2_c, se2_a = var_c / 4, var_a / 5
    se = math.sqrt(se2_c + se2_a)
    df = (se2_c + se2_a) ** 2 / (se2_c**2 / 3 + se2_a**2 / 4)  # Welch-Satterthwaite
    t = (mean_a - mean_c) / se
    q = stats.t.ppf(0.975, df)
    assert round(df, 3) == 5.521 and round(t, 4) == 2.2514

    result = compare_means(control, arm)
    assert result["lift_abs"] == pytest.approx(3.5)
    assert result["lift_abs_ci"] == pytest.approx([3.5 - q * se, 3.5 + q * se])
    assert result["p_value"] == pytest.approx(2 * stats.t.sf(t, df))
    assert round(result["p_value"], 4) == 0.0691
    # Per-arm t intervals.
    assert result["control"]["n"] == 4 and result["arm"]["n"] == 5
    half_c = stats.t.ppf(0.975, 3) * math.sqrt(se2_c)
    assert result["control"]["ci"] == pytest.approx([mean_c - half_c, mean_c + half_c])
    # Fieller: the ends of the ratio interval are where (a - r c)² = q² (var(a) + r² var(c)).
    assert result["lift_rel"] == pytest.approx(6.0 / 2.5 - 1)
    lo, hi = result["lift_rel_ci"]
    assert lo < 6.0 / 2.5 - 1 < hi
    for r in (lo + 1, hi + 1):
        assert (mean_a - r * mean_c) ** 2 == pytest.approx(q**2 * (se2_a + r**2 * se2_c))
    json_safe(result)


def test_means_edge_cases() -> None:
    # A control mean of 0 (no revenue at all): no relative lift.
    zero = compare_means(np.zeros(50), np.array([0.0] * 45 + [3.0] * 5))
    assert zero["lift_rel"] is None and zero["lift_rel_ci"] is None
    assert zero["lift_abs"] == pytest.approx(0.3)
    # A control mean indistinguishable from 0: the Fieller interval is unbounded, so only the estimate.
    noisy = compare_means(np.array([-5.0, 5.5, -4.0, 4.0]), np.array([1.0, 2.0, 3.0]))
    assert noisy["lift_rel"] is not None and noisy["lift_rel_ci"] is None
    # An arm with no revenue at all still has an interval for the relative lift, and it reaches -100 %.
    rng = np.random.default_rng(3)
    nothing = compare_means(rng.exponential(2.0, 200), np.zeros(200))
    assert nothing["lift_rel"] == -1.0 and nothing["lift_rel_ci"][0] == pytest.approx(-1.0)
    # Constant arms: no variance, no test.
    constant = compare_means(np.full(5, 2.0), np.full(5, 2.0))
    assert constant["p_value"] is None and constant["lift_abs"] == 0.0
    for result in (zero, noisy, nothing, constant):
        json_safe(result)


def test_srm_chi_square_by_hand() -> None:
    # 4,900 / 5,100 against 50/50: expected 5,000 each, chi² = 2 * 100² / 5,000 = 4; with 1 degree of freedom
    # P(chi² > x) = erfc(sqrt(x / 2)).
    result = sample_ratio_check({"control": 4_900, "treatment": 5_100}, {"control": 0.5, "treatment": 0.5})
    assert result["chi2"] == pytest.approx(4.0)
    assert result["p_value"] == pytest.approx(math.erfc(math.sqrt(2)))
    assert round(result["p_value"], 4) == 0.0455
    assert result["mismatch"] is False  # 0.0455 is far above the 0.001 alarm threshold
    assert result["observed"] == {"control": 4_900, "treatment": 5_100}
    assert result["observed_share"] == {"control": 0.49, "treatment": 0.51}
    assert result["expected_share"] == {"control": 0.5, "treatment": 0.5}
    json_safe(result)
    # Three arms of 1/3 written to 6 decimals are within the tolerance; an empty arm is a glaring mismatch.
    thirds = sample_ratio_check({"a": 0, "b": 100, "c": 100}, {"a": 0.333333, "b": 0.333333, "c": 0.333334})
    assert thirds["mismatch"] is True
    # A share of 0: anyone there is a mismatch; nobody there leaves the test to the other arms.
    stray = sample_ratio_check({"a": 1, "b": 100, "c": 100}, {"a": 0.0, "b": 0.5, "c": 0.5})
    assert stray["mismatch"] is True and stray["p_value"] == 0.0 and stray["chi2"] is None
    unused = sample_ratio_check({"a": 0, "b": 4_900, "c": 5_100}, {"a": 0.0, "b": 0.5, "c": 0.5})
    assert unused["chi2"] == pytest.approx(4.0)
    for result in (thirds, stray, unused):
        json_safe(result)


def test_outcome_kind() -> None:
    assert outcome_kind(pd.Series([True, False, True])) == "binary"
    assert outcome_kind(pd.Series([1, 0, np.nan, 1])) == "binary"
    assert outcome_kind(pd.Series([True, None, False], dtype=object)) == "binary"
    assert outcome_kind(pd.Series([1, 0, pd.NA], dtype="Int64")) == "binary"
    assert outcome_kind(pd.Series([0.0, 2.5, 0.0])) == "numeric"
    assert outcome_kind(pd.Series([0, 1, 2])) == "numeric"
    with pytest.raises(ValueError, match="'channel'"):
        outcome_kind(pd.Series(["push", "email"], name="channel"))


# --- a synthetic experiment with a known lift ---------------------------------------------------------------

CLICK = {"holdout": 0.0, "control": 0.05, "treatment": 0.06}
BUY = {"holdout": 0.10, "control": 0.10, "treatment": 0.11}
MU, SIGMA = 2.0, 1.0
BASKET = math.exp(MU + SIGMA**2 / 2)  # mean of the lognormal basket value


def synthetic_experiment(users: int = 20_000, seed: int = 20260901) -> pd.DataFrame:
    """A holdout (10 %) that is never messaged, a control message and a better treatment message (45 % each);
    revenue is 0 for most users and a lognormal basket for buyers."""
    rng = np.random.default_rng(seed)
    arm = rng.choice(list(CLICK), size=users, p=[0.1, 0.45, 0.45])
    clicked = rng.random(users) < pd.Series(arm).map(CLICK).to_numpy()
    bought = rng.random(users) < pd.Series(arm).map(BUY).to_numpy()
    revenue = np.where(bought, rng.lognormal(MU, SIGMA, users), 0.0)
    platform = rng.choice(np.array(["ios", "android", None], dtype=object), size=users, p=[0.5, 0.45, 0.05])
    tenure = rng.choice([1.0, 2.0, 10.0, 100.0, np.nan], size=users, p=[0.3, 0.3, 0.3, 0.001, 0.099])
    return pd.DataFrame(
        {"arm": arm, "clicked": clicked, "revenue": revenue, "platform": platform, "tenure_weeks": tenure}
    )


def test_synthetic_experiment_recovers_the_known_lift() -> None:
    frame = synthetic_experiment()
    # 99 % intervals: six of them must each hold the truth, which at 95 % would fail for about one seed in
    # four (should numpy ever change its streams); the 95 % default is what the coverage tests are about.
    result = json_safe(compare_arms(frame, "arm", "control", ["clicked", "revenue"], alpha=0.01))
    clicks = result["outcomes"]["clicked"]
    assert set(result) == {"outcomes"} and set(clicks) == {"kind", "control", "arms"}
    assert set(clicks["control"]) == {"n", "mean", "ci"}
    assert set(clicks["arms"]["treatment"]) == {
        "n",
        "mean",
        "ci",
        "lift_abs",
        "lift_abs_ci",
        "lift_rel",
        "lift_rel_ci",
        "p_value",
    }
    assert clicks["kind"] == "binary"
    assert list(clicks["arms"]) == ["holdout", "treatment"]
    treatment = clicks["arms"]["treatment"]
    lo, hi = treatment["lift_abs_ci"]
    assert lo < CLICK["treatment"] - CLICK["control"] < hi
    lo, hi = treatment["lift_rel_ci"]
    assert lo < CLICK["treatment"] / CLICK["control"] - 1 < hi
    assert treatment["n"] + clicks["control"]["n"] + clicks["arms"]["holdout"]["n"] == len(frame)
    assert clicks["arms"]["holdout"]["lift_rel"] == -1.0

    revenue = result["outcomes"]["revenue"]
    assert revenue["kind"] == "numeric"
    treatment = revenue["arms"]["treatment"]
    lo, hi = treatment["lift_abs_ci"]
    assert lo < (BUY["treatment"] - BUY["control"]) * BASKET < hi
    lo, hi = treatment["lift_rel_ci"]
    assert lo < BUY["treatment"] / BUY["control"] - 1 < hi
    lo, hi = revenue["control"]["ci"]
    assert lo < BUY["control"] * BASKET < hi

    # Against the holdout as control, clicks have nothing to be relative to.
    against_holdout = json_safe(compare_arms(frame, "arm", "holdout", ["clicked"]))
    for arm in ("control", "treatment"):
        stats_ = against_holdout["outcomes"]["clicked"]["arms"][arm]
        assert stats_["lift_rel"] is None and stats_["lift_rel_ci"] is None
        assert stats_["lift_abs_ci"][0] > 0

    check = sample_ratio_check(
        frame["arm"].value_counts().to_dict(), {"holdout": 0.1, "control": 0.45, "treatment": 0.45}
    )
    assert check["mismatch"] is False


def test_compare_by_segments() -> None:
    frame = synthetic_experiment()
    by_tenure = json_safe(compare_by(frame, "tenure_weeks", "arm", "control", ["clicked", "revenue"]))
    # Numbers sorted numerically (not "1", "10", "100", "2"), whole floats without ".0", missing last.
    assert list(by_tenure) == ["1", "2", "10", "100", "(missing)"]
    assert sum(segment["n"] for segment in by_tenure.values()) == len(frame)
    assert by_tenure["100"]["skipped"].startswith("fewer than 30 rows in control 'control'")
    assert "outcomes" not in by_tenure["100"]
    assert by_tenure["(missing)"]["outcomes"]["clicked"]["kind"] == "binary"
    assert list(by_tenure["1"]["outcomes"]["revenue"]["arms"]) == ["holdout", "treatment"]
    segment = frame[frame["tenure_weeks"] == 1.0]
    assert by_tenure["1"]["n"] == len(segment)
    assert by_tenure["1"]["outcomes"]["revenue"] == json_safe(
        compare_arms(segment, "arm", "control", ["revenue"])["outcomes"]["revenue"]
    )

    by_platform = compare_by(frame, "platform", "arm", "control", ["clicked"], min_n=200)
    assert list(by_platform) == ["android", "ios", "(missing)"]  # text alphabetically
    as_category = frame.assign(platform=pd.Categorical(frame["platform"], categories=["ios", "android"]))
    assert list(compare_by(as_category, "platform", "arm", "control", ["clicked"])) == [
        "ios",
        "android",
        "(missing)",
    ]
    assert "arm 'holdout'" in by_platform["(missing)"]["skipped"]  # ~100 holdout rows with no platform


def test_compare_by_keeps_the_whole_frame_kinds() -> None:
    # In segment "b" revenue happens to be all 0/1, yet it is revenue, so it stays a mean comparison.
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(
        {
            "arm": np.tile(["control", "treatment"], 200),
            "segment": np.repeat(["a", "b"], 200),
            "revenue": np.concatenate([rng.exponential(5.0, 200), rng.integers(0, 2, 200)]).astype(float),
        }
    )
    result = compare_by(frame, "segment", "arm", "control", ["revenue"])
    assert result["b"]["outcomes"]["revenue"]["kind"] == "numeric"
    # On its own the segment's revenue looks binary; kinds given explicitly win over detection.
    as_rate = compare_arms(frame[frame["segment"] == "b"], "arm", "control", ["revenue"])
    assert as_rate["outcomes"]["revenue"]["kind"] == "binary"
    forced = compare_arms(
        frame[frame["segment"] == "b"], "arm", "control", ["revenue"], kinds={"revenue": "numeric"}
    )
    assert forced["outcomes"]["revenue"]["kind"] == "numeric"


# --- coverage and size over repeated simulations ------------------------------------------------------------
# 2,000 runs: the standard error of a 95 % coverage estimate is sqrt(0.95 * 0.05 / 2000) = 0.49 points, so
# the 93-97 % band is about 4 standard errors either side; the same holds for a 5 % rejection rate in 3-7 %.
RUNS = 2_000


def test_rate_intervals_cover_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(101)
    n, p_control, p_arm = 4_000, 0.05, 0.06
    covered_abs = covered_rel = 0
    for control, arm in zip(rng.binomial(n, p_control, RUNS), rng.binomial(n, p_arm, RUNS), strict=True):
        result = compare_rates(int(control), n, int(arm), n)
        lo, hi = result["lift_abs_ci"]
        covered_abs += lo <= p_arm - p_control <= hi
        lo, hi = result["lift_rel_ci"]
        covered_rel += lo <= p_arm / p_control - 1 <= hi
    assert 0.93 <= covered_abs / RUNS <= 0.97
    assert 0.93 <= covered_rel / RUNS <= 0.97


def test_rate_test_has_its_nominal_size() -> None:
    rng = np.random.default_rng(102)
    n, p = 4_000, 0.05
    rejected = sum(
        compare_rates(int(control), n, int(arm), n)["p_value"] < 0.05
        for control, arm in zip(rng.binomial(n, p, RUNS), rng.binomial(n, p, RUNS), strict=True)
    )
    assert 0.03 <= rejected / RUNS <= 0.07


def revenue(rng: np.random.Generator, buy: float, shape: tuple[int, int]) -> np.ndarray:
    """Mostly zeros, a lognormal basket for the buyers: mean buy * BASKET."""
    return np.where(rng.random(shape) < buy, rng.lognormal(MU, SIGMA, shape), 0.0)


def test_mean_intervals_cover_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(103)
    m, buy_control, buy_arm = 1_000, 0.20, 0.24
    true_abs, true_rel = (buy_arm - buy_control) * BASKET, buy_arm / buy_control - 1
    controls, arms = revenue(rng, buy_control, (RUNS, m)), revenue(rng, buy_arm, (RUNS, m))
    covered_abs = covered_rel = 0
    for control, arm in zip(controls, arms, strict=True):
        result = compare_means(control, arm)
        lo, hi = result["lift_abs_ci"]
        covered_abs += lo <= true_abs <= hi
        # Welch's interval is the inversion of Welch's test, so the p-value is below 0.05 exactly when the
        # interval leaves out 0, and covering the true difference at 95 % is the test rejecting a true null
        # in 5 % of runs: this loop checks the test's size too, without a second 2,000 runs of it.
        assert (result["p_value"] < 0.05) == (lo > 0 or hi < 0)
        lo, hi = result["lift_rel_ci"]
        covered_rel += lo <= true_rel <= hi
    assert 0.93 <= covered_abs / RUNS <= 0.97
    assert 0.93 <= covered_rel / RUNS <= 0.97


def test_srm_check_flags_a_broken_split_and_rarely_a_correct_one() -> None:
    rng = np.random.default_rng(105)
    intended = {"small": 0.1, "large": 0.9}

    def flagged(drawn: list[float], runs: int) -> int:
        return sum(
            sample_ratio_check({"small": int(s), "large": int(g)}, intended)["mismatch"]
            for s, g in rng.multinomial(20_000, drawn, size=runs)
        )

    # Expected 0.1 % false alarms, 2 in 2,000; 20 or more would take a miracle (Poisson(2) >= 20: ~1e-14).
    assert flagged([0.1, 0.9], RUNS) < 0.01 * RUNS
    # 2,400 against 2,000 expected gives chi² ~ 89; even 5 standard deviations short of 2,400 it is ~ 45.
    assert flagged([0.12, 0.88], 500) == 500


# --- bad input ----------------------------------------------------------------------------------------------


def test_bad_input_names_the_culprit() -> None:
    frame = pd.DataFrame({"arm": ["control", "treatment"] * 3, "clicked": [0, 1] * 3})
    with pytest.raises(ValueError, match=r"'revenue'.*columns: \['arm', 'clicked'\]"):
        compare_arms(frame, "arm", "control", ["clicked", "revenue"])
    with pytest.raises(ValueError, match=r"'variant'.*columns: \['arm', 'clicked'\]"):
        compare_arms(frame, "variant", "control", ["clicked"])
    with pytest.raises(ValueError, match=r"'platform'"):
        compare_by(frame, "platform", "arm", "control", ["clicked"])
    with pytest.raises(ValueError, match=r"'holdout'.*arms present: \['control', 'treatment'\]"):
        compare_arms(frame, "arm", "holdout", ["clicked"])
    with_gaps = frame.assign(arm=["control", None, "treatment", None, "control", "treatment"])
    with pytest.raises(ValueError, match=r"2 of 6 rows have no arm"):
        compare_arms(with_gaps, "arm", "control", ["clicked"])
    with pytest.raises(ValueError, match=r"'channel'"):
        compare_arms(frame.assign(channel="push"), "arm", "control", ["channel"])
    with pytest.raises(ValueError, match=r"'channel' is not numeric"):
        compare_arms(
            frame.assign(channel="push"), "arm", "control", ["channel"], kinds={"channel": "numeric"}
        )

    with pytest.raises(ValueError, match=r"sum to 0\.95.*control=0\.5, treatment=0\.45"):
        sample_ratio_check({"control": 10, "treatment": 10}, {"control": 0.5, "treatment": 0.45})
    with pytest.raises(ValueError, match=r"no share for \['holdout'\]"):
        sample_ratio_check({"control": 10, "treatment": 10, "holdout": 2}, {"control": 0.5, "treatment": 0.5})
    with pytest.raises(ValueError, match=r"no count for \['holdout'\]"):
        sample_ratio_check({"control": 10}, {"control": 0.9, "holdout": 0.1})

    with pytest.raises(ValueError, match=r"^control has no observations"):
        compare_rates(0, 0, 1, 10)
    with pytest.raises(ValueError, match=r"^arm has no observations"):
        compare_rates(1, 10, 0, 0)
    with pytest.raises(ValueError, match=r"^arm has 1 non-missing values"):
        compare_means(np.array([1.0, 2.0]), np.array([3.0, np.nan]))
    # Too few observations in one arm is reported on that arm (or on the outcome, for the control) rather
    # than raised, so one thin arm does not take the whole report down.
    thin = compare_arms(frame.assign(clicked=[0, np.nan] * 3), "arm", "control", ["clicked"])
    assert thin["outcomes"]["clicked"]["arms"]["treatment"]["mean"] is None
    assert "no observations" in thin["outcomes"]["clicked"]["arms"]["treatment"]["skipped"]
    thin = compare_arms(
        frame.assign(revenue=[1.0, 2.0, np.nan, 3.0, np.nan, 4.0]), "arm", "control", ["revenue"]
    )
    skipped = thin["outcomes"]["revenue"]
    assert skipped["arms"] == {} and re.search(r"control 'control'.*1 non-missing values", skipped["skipped"])
