"""Evaluation metrics and decision rules against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluation import (
    binary_metrics,
    hour_hits,
    hour_metrics,
    off_policy_values,
    oracle_share,
    top_k_hits,
)
from training.frames import variant_features
from training.inference import choose_hours


def test_binary_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    metrics = binary_metrics(y, p, bins=2)
    assert metrics["auc"] == pytest.approx(0.75)  # 3 of the 4 (positive, negative) pairs ordered right
    expected = -(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4
    assert metrics["log_loss"] == pytest.approx(expected)
    assert metrics["base_rate"] == 0.5
    assert metrics["base_rate_log_loss"] == pytest.approx(math.log(2))
    # Two bins of two: predicted means 0.225 and 0.6 against observed 0.5 and 0.5.
    assert metrics["ece"] == pytest.approx(0.5 * 0.275 + 0.5 * 0.1)
    assert [b["count"] for b in metrics["reliability"]] == [2, 2]


def test_hour_hit_rates_and_baselines() -> None:
    hours = np.array([20, 8, 21, 3])
    proba = np.zeros((4, 24))
    proba[:, 20], proba[:, 21], proba[:, 8] = 0.5, 0.3, 0.2
    assert top_k_hits(hours, proba, 1) == 0.25
    assert top_k_hits(hours, proba, 3) == 0.75
    rules = {"always_20": np.tile(np.eye(24)[20], (4, 1)), "own": np.eye(24)[[19, 8, 2, 3]]}
    buckets = np.array([0, 3, 3, 3])
    metrics = hour_metrics(hours, proba, rules, buckets)
    # The served hour is the smoothed scores' best: 20 (0.5·1.25 + 0.3 beats 21's 0.3·1.25 + 0.5 + …).
    assert metrics["top1_hit_rate"] == 0.25
    assert metrics["within1_hit_rate"] == 0.5  # 20 and 21
    assert (metrics["always_20_top1"], metrics["always_20_within1"]) == (0.25, 0.5)
    assert (metrics["own_top1"], metrics["own_within1"]) == (0.5, 0.75)  # 19 is within one of 20
    assert metrics["best_rule"] == "own"
    assert metrics["by_history"]["0"] == {
        "rows": 1,
        **{f"{p}_{m}": 1.0 for p in ("model", "always_20") for m in ("top1", "within1")},
        "own_top1": 0.0,
        "own_within1": 1.0,
    }
    assert metrics["by_history"]["10+"]["rows"] == 3
    assert metrics["by_history"]["1-2"]["rows"] == 0


def test_within_one_hour_wraps_at_midnight() -> None:
    assert hour_hits(np.array([0, 23, 12]), np.array([23, 0, 14])) == {"top1": 0.0, "within1": 2 / 3}


def test_off_policy_values_by_hand() -> None:
    reward = np.array([1, 0, 1, 0])
    matched = np.array([True, True, False, False])
    propensity = np.full(4, 0.5)
    values = off_policy_values(reward, matched, propensity, np.full(4, 2))
    assert values["ips_model"] == pytest.approx((1 / 0.5) / 4)
    assert values["snips_model"] == pytest.approx(2 / 4)
    assert values["ips_random"] == pytest.approx(0.5)  # uniform = the logger here: the logged mean
    assert values["snips_random"] == pytest.approx(0.5)


def test_a_paired_snips_lead_by_hand() -> None:
    from training.off_policy import snips_difference

    reward = np.array([1.0, 0.0, 1.0, 0.0])
    propensity = np.full(4, 0.5)
    # A takes the logged action on rows 0 and 2 (both clicked), B on rows 1 and 3 (neither).
    a, b = np.array([1.0, 0, 1, 0]), np.array([0.0, 1, 0, 1])
    lead = snips_difference(reward, propensity, a, b, z=1.0)
    assert lead["difference"] == pytest.approx(1.0)  # SNIPS 1.0 against 0.0
    # Per-row paired terms are 2·(r - 1)·a_i - 2·(r - 0)·b_i + 1 = [1, 1, 1, 1]: no spread at all.
    assert lead["lower"] == pytest.approx(1.0)
    same = snips_difference(reward, propensity, a, a, z=1.0)
    assert same["difference"] == 0 and same["lower"] == 0


def test_oracle_share_splits_the_gap_into_time_and_variant() -> None:
    true_p = np.zeros((2, 24, 2))
    true_p[0, 20] = [0.10, 0.05]
    true_p[0, 21] = [0.08, 0.04]
    true_p[1, 8] = [0.02, 0.06]
    shares = oracle_share(true_p, hour_choice=np.array([21, 8]), variant_choice=np.array([0, 0]))
    best = 0.10 + 0.06
    assert shares["oracle_share"] == pytest.approx((0.08 + 0.02) / best)
    assert shares["hour_only_share"] == pytest.approx((0.08 + 0.06) / best)
    assert shares["variant_only_share"] == pytest.approx((0.10 + 0.02) / best)
    # One variant for both users, at their best hours: variant 1 gives 0.05 + 0.06, variant 0 0.12.
    assert shares["best_single_variant_share"] == pytest.approx(max(0.10 + 0.02, 0.05 + 0.06) / best)
    assert shares["random_share"] == pytest.approx(true_p.mean(axis=(1, 2)).sum() / best)


def test_choose_hours_prefers_the_centre_of_a_broad_peak_to_a_lone_spike() -> None:
    proba = np.full((1, 24), 0.01)
    proba[0, 3] = 0.12  # a lone spike
    proba[0, 18:23] = [0.08, 0.10, 0.11, 0.10, 0.08]
    assert choose_hours(proba).tolist() == [20]
    wraps = np.full((1, 24), 0.01)
    wraps[0, [22, 23, 0, 1, 2]] = [0.08, 0.1, 0.12, 0.1, 0.08]
    assert choose_hours(wraps).tolist() == [0]


def test_variant_features_read_the_title() -> None:
    frame = variant_features(
        ["Flash sale: 30% off today only ⚡", "Ready for something new?"], [["discount", "urgency"], []]
    )
    first, second = frame.iloc[0], frame.iloc[1]
    assert first["title_has_number"] == 1 and first["title_has_emoji"] == 1
    assert first["title_discount_words"] >= 2 and first["title_urgency_words"] >= 2
    assert first["tag_discount"] == 1 and first["tag_news"] == 0
    assert second["title_is_question"] == 1 and second["title_words"] == 4
