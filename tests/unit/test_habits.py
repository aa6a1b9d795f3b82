"""The send-hour blend and its rules on hand-made habits: how far each user's own hours are trusted,
by history size and by the planned day's type, and what the simple rules choose."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.habits import COMPONENTS, Habits, HourBlend, Population, _em, history_bucket, rule_scores
from training.inference import choose_hours


def _frame(weekday: list[np.ndarray], weekend: list[np.ndarray], is_weekend: float) -> pd.DataFrame:
    all_time = [a + b for a, b in zip(weekday, weekend, strict=True)]
    return pd.DataFrame(
        {
            "hours_weekday_recent": weekday,
            "hours_weekend_recent": weekend,
            "hours_all_time": all_time,
            "habit_events": [float(a.sum()) for a in all_time],
            "is_weekend": is_weekend,
        }
    )


def _at(hour: int, count: float) -> np.ndarray:
    counts = np.zeros(24)
    counts[hour] = count
    return counts


FLAT = Population.fit(np.arange(24).repeat(10), np.zeros(240, dtype=bool))
EVENING = Population.fit(np.array([20] * 50 + list(range(24))), np.zeros(74, dtype=bool))


def test_history_buckets_are_0_1to2_3to9_10plus() -> None:
    events = np.array([0, 1, 2, 3, 9, 10, 500, np.nan])
    assert history_bucket(events).tolist() == [0, 1, 1, 2, 2, 3, 3, 0]


def test_em_recovers_the_weights_of_a_known_mixture() -> None:
    rng = np.random.default_rng(0)
    first = rng.random(20_000) < 0.7
    # Two components over 4 outcomes: A puts 0.7 on outcome 0, B 0.7 on outcome 3.
    a, b = np.array([0.7, 0.1, 0.1, 0.1]), np.array([0.1, 0.1, 0.1, 0.7])
    outcome = np.where(first, rng.choice(4, 20_000, p=a), rng.choice(4, 20_000, p=b))
    weights = _em(np.column_stack([a[outcome], b[outcome]]))
    assert np.allclose(weights, [0.7, 0.3], atol=0.02)


def test_rules_choose_the_population_hour_the_users_own_or_its_smoothed_shrunk_peak() -> None:
    lone_spike = _at(6, 3) + np.array([0] * 18 + [2, 2, 2, 0, 0, 0])  # 6 once-peaked, 18-20 broad
    frame = _frame([_at(9, 4), np.zeros(24), lone_spike], [np.zeros(24)] * 3, 0.0)
    habits = Habits.of(frame)
    mode = choose_hours(rule_scores("user_mode_hour", habits, EVENING, 5.0))
    assert mode.tolist() == [9, 20, 6]  # no history: the population's most frequent hour
    assert choose_hours(rule_scores("population_mode_hour", habits, EVENING, 5.0)).tolist() == [20] * 3
    # Smoothing prefers the centre of the broad evening habit over the lone morning spike.
    assert choose_hours(rule_scores("shrinkage_blend", habits, FLAT, 5.0))[2] == 19


def _blend_trained_on(rows: int, seed: int) -> HourBlend:
    """Users with 10+ events engage at their own hour 80 % of the time; users with 1-2 events are
    no better predicted by their one or two past hours than by the population's."""
    rng = np.random.default_rng(seed)
    weekday, weekend, labels = [], [], []
    for i in range(rows):
        own = int(rng.integers(0, 24))
        if i % 2:
            weekday.append(_at(own, 20))
            labels.append(own if rng.random() < 0.8 else int(rng.integers(0, 24)))
        else:
            weekday.append(_at(own, 1))
            labels.append(int(rng.integers(0, 24)))
        weekend.append(np.zeros(24))
    frame = _frame(weekday, weekend, 0.0)
    blend = HourBlend(None, FLAT)
    return blend.fit_weights(np.full((rows, 24), 1 / 24), frame, np.array(labels))


def test_trust_in_a_users_own_hours_grows_with_the_history_behind_them() -> None:
    blend = _blend_trained_on(4_000, seed=1)
    table = blend.weights_table()
    own = [c for c in COMPONENTS if c not in ("model", "population", "uniform")]
    trust = {bucket: sum(table[bucket][c] for c in own) for bucket in ("1-2", "10+")}
    assert trust["10+"] > 0.6
    assert trust["1-2"] < 0.2


def test_the_planned_days_type_decides_which_habit_is_followed() -> None:
    blend = _blend_trained_on(2_000, seed=2)
    weekday, weekend = [_at(8, 30)], [_at(11, 30)]
    uniform = np.full((1, 24), 1 / 24)
    on_monday = blend.combine(uniform, _frame(weekday, weekend, 0.0))
    on_saturday = blend.combine(uniform, _frame(weekday, weekend, 1.0))
    assert choose_hours(on_monday)[0] == 8
    assert choose_hours(on_saturday)[0] == 11
    assert np.allclose(on_monday.sum(axis=1), 1.0) and np.allclose(on_saturday.sum(axis=1), 1.0)


def test_the_gate_asks_each_model_to_beat_every_one_of_its_rules() -> None:
    from training.baselines import verdict
    from training.specs import CLICK, SEND_HOUR, VARIANT

    click = {"log_loss": 0.110, "base_rate_log_loss": 0.109}
    assert not verdict(CLICK, click).beats and verdict(CLICK, click).best_rule == "base_rate"
    assert verdict(CLICK, {**click, "log_loss": 0.100}).beats

    variant = {
        "snips_model": 0.032,
        "snips_random": 0.025,
        "snips_best_overall": 0.031,
        "snips_lead_over_random_lower": 0.004,
        "snips_lead_over_best_overall_lower": -0.001,  # ahead by its point estimate, not surely
        "snips_random_lead_over_best_overall_lower": -0.002,
    }
    judged = verdict(VARIANT, variant)
    assert not judged.beats and judged.lost_to == ("best_variant_overall",)
    assert judged.best_rule == "best_variant_overall"
    assert verdict(VARIANT, {**variant, "snips_lead_over_best_overall_lower": 0.0005}).beats
    # Random variants are served only when they surely beat the best variant overall.
    noisy = {**variant, "snips_random": 0.035}
    assert verdict(VARIANT, noisy).best_rule == "best_variant_overall"
    sure = {**noisy, "snips_random_lead_over_best_overall_lower": 0.001}
    assert verdict(VARIANT, sure).best_rule == "random_variant"

    hour = {"top1_hit_rate": 0.15, "within1_hit_rate": 0.35, "best_rule": "user_mode_hour"}
    for rule in ("population_mode_hour", "user_mode_hour", "shrinkage_blend"):
        hour |= {f"{rule}_top1": 0.10, f"{rule}_within1": 0.30}
    assert verdict(SEND_HOUR, hour).beats
    # Better within one hour is not enough when the rule's own hour is hit more often.
    judged = verdict(SEND_HOUR, {**hour, "user_mode_hour_top1": 0.16})
    assert not judged.beats and judged.lost_to == ("user_mode_hour",)


def test_best_variant_overall_knows_variants_by_campaign_and_new_ones_by_their_tags() -> None:
    from training.baselines import MIN_VARIANT_SENDS, variant_rate, variant_rates, variant_rule_scores

    n = MIN_VARIANT_SENDS
    history = pd.DataFrame(
        {
            "campaign_id": ["c1"] * (2 * n) + ["c2"] * (2 * n),
            "variant_id": ["a"] * n + ["b"] * n + ["a"] * n + ["b"] * n,
            # c1's "a" wins, c2's "a" loses: the same id in two campaigns is two variants.
            "label": [1] * (n // 2)
            + [0] * (n // 2)
            + [0] * n
            + [0] * n
            + [1] * (n // 4)
            + [0] * (3 * n // 4),
            "tag_discount": [1.0] * n + [0.0] * n + [0.0] * n + [1.0] * n,
        }
    )
    rates = variant_rates(history)
    assert variant_rate(rates, "c1", "a", []) == pytest.approx(0.5)
    assert variant_rate(rates, "c2", "a", []) == 0.0
    # A campaign never sent: its variant "a" is judged by its tags, not by another campaign's "a".
    new = variant_rule_scores(
        "best_variant_overall", rates, np.array(["u1", "u2"]), [("a", []), ("b", ["discount"])], "c3"
    )
    assert new.shape == (2, 2) and (new.argmax(axis=1) == 1).all()
    assert new[0, 0] == pytest.approx(rates["overall"])
