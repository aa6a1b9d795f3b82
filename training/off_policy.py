"""Off-policy values: what a target policy would have earned, estimated from logged actions and their
propensities (IPS, SNIPS and doubly robust, with intervals). The one implementation, shared by the
models' evaluation (training.evaluation) and the operators' reports (reports.policy_value)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats


def estimates(
    reward: np.ndarray,
    logged_propensity: np.ndarray,
    target_probability: np.ndarray,
    direct_target: np.ndarray | None = None,
    direct_logged: np.ndarray | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """IPS, SNIPS and (with a reward model) doubly robust values of a target policy, each with a
    normal-approximation interval from its per-row terms (SNIPS through its linearisation).

    `direct_target` is the reward model's expected reward of the target policy's action(s) per row
    (its average over the policy's actions); `direct_logged` its prediction for the logged action.
    """
    reward = np.asarray(reward, dtype=float)
    weight = np.asarray(target_probability, dtype=float) / np.asarray(logged_propensity, dtype=float)
    n = reward.size
    if n == 0:
        raise ValueError("no logged rows to estimate from")
    z = float(stats.norm.ppf(1 - alpha / 2))

    def summary(terms: np.ndarray, value: float | None = None) -> dict[str, Any]:
        centre = float(terms.mean()) if value is None else value
        half = z * float(terms.std(ddof=1)) / np.sqrt(n) if n > 1 else float("nan")
        return {"value": centre, "ci": [centre - half, centre + half] if np.isfinite(half) else None}

    result: dict[str, Any] = {"rows": int(n), "ips": summary(weight * reward)}
    mean_weight = float(weight.mean())
    if mean_weight > 0:
        snips = float((weight * reward).sum() / weight.sum())
        result["snips"] = summary(weight * (reward - snips) / mean_weight + snips, snips)
    else:
        result["snips"] = None  # the target policy never takes a logged action
    if direct_target is not None and direct_logged is not None:
        terms = np.asarray(direct_target, dtype=float) + weight * (
            reward - np.asarray(direct_logged, dtype=float)
        )
        result["dr"] = summary(terms)
    else:
        result["dr"] = None
    square = float((weight**2).sum())
    result["effective_rows"] = float(weight.sum() ** 2 / square) if square > 0 else 0.0
    return result


def snips_difference(
    reward: np.ndarray,
    logged_propensity: np.ndarray,
    target_a: np.ndarray,
    target_b: np.ndarray,
    z: float,
) -> dict[str, float]:
    """SNIPS of policy A minus SNIPS of policy B on the same logged rows, with a one-sided lower bound
    (`z` standard errors below) from the paired per-row linearised terms: how sure the rows are that
    A is better.
    The pairing matters: both policies are judged on the same sends, so their noise largely cancels."""
    reward = np.asarray(reward, dtype=float)
    propensity = np.asarray(logged_propensity, dtype=float)
    terms = []
    for target in (target_a, target_b):
        weight = np.asarray(target, dtype=float) / propensity
        mean_weight = float(weight.mean())
        if mean_weight <= 0:
            return {"difference": float("nan"), "lower": float("nan")}
        value = float((weight * reward).sum() / weight.sum())
        terms.append(weight * (reward - value) / mean_weight + value)
    paired = terms[0] - terms[1]
    centre = float(paired.mean())
    spread = float(paired.std(ddof=1)) / np.sqrt(paired.size) if paired.size > 1 else float("inf")
    return {"difference": centre, "lower": centre - z * spread}
