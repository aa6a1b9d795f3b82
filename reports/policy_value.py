"""Off-policy values of a campaign's logged sends: what "always the model's choice" and "a uniformly
random choice" would have earned, by IPS, SNIPS and doubly robust estimates from the propensities
the planner logged on every item.

The planner's logging policy is a mixture: with probability 1 − ε the models' (hour, variant), with
probability ε a uniformly random allowed (hour, variant) (serving/planner.py). Every item records
the propensity of what it carries and, since issue 7, the models' own choice (`model_variant_id`,
`model_send_at`), so for each logged send we know both target policies' probability of it:
- "model": 1 when the logged (variant, slot) is the models' choice, else 0;
- "uniform": 1 / (allowed hours × variants) = ε-part of the propensity / ε.

Left out, and counted in the result: sends the caps deferred off their chosen slot (their logged
propensity is the original choice's, not the slot's) and items that were never sent (their reward
is not the policy's doing).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pushplan.clock import local_clock
from pushplan.domain import Reason
from pushplan.windows import QuietHours, window_slots
from reports.campaign_log import CampaignLog
from reports.statistics import compare_rates
from training.off_policy import estimates


def campaign_policy_values(
    log: CampaignLog, quiet_start: int, quiet_end: int, *, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any]:
    """The model's choice vs exploration among the sent, and the off-policy values of both policies."""
    campaign, items = log.campaign, log.items
    outcome = log.reward_outcome
    reward_of = log.users.set_index("plan_id")[outcome]  # per item: a triggered campaign's users fire again
    sent = items[(items["state"] == "sent") & (items["decision"] == "send")].copy()
    sent["reward"] = sent["plan_id"].astype(str).map(reward_of).fillna(0).to_numpy(dtype=float)
    deferred = sent["reason"] == Reason.deferred.value
    explored = sent["reason"] == Reason.exploration.value
    result: dict[str, Any] = {
        "outcome": outcome,
        "exploration_rate": campaign.exploration,
        "sent": len(sent),
        "left_out": {"deferred": int(deferred.sum())},
    }
    greedy_rows, explore_rows = sent[~explored & ~deferred], sent[explored & ~deferred]
    if len(greedy_rows) and len(explore_rows):
        # Among the sent: the models' choices against exploration's. Nearly randomized (the exploration
        # draw decides), though a draw that lands on the models' choice counts as the models'.
        result["model_vs_exploration"] = compare_rates(
            int(explore_rows["reward"].sum()),
            len(explore_rows),
            int(greedy_rows["reward"].sum()),
            len(greedy_rows),
            alpha,
        )
    logged = sent[~deferred & sent["propensity"].notna()]
    if logged.empty:
        result["skipped"] = "no sends with a logged propensity"
        return result
    if campaign.exploration <= 0:
        result["skipped"] = "the campaign did not explore (ε = 0): other policies cannot be evaluated"
        return result

    has_choice = "model_variant_id" in logged and logged["model_variant_id"].notna().all()
    if has_choice:
        is_model = (logged["variant_id"] == logged["model_variant_id"]) & (
            logged["send_at"] == logged["model_send_at"]
        )
    else:  # items planned before the models' choice was recorded: exploration marks the others
        is_model = logged["reason"] != Reason.exploration.value
    model_probability = is_model.to_numpy(dtype=float)
    eps = campaign.exploration
    uniform_probability = (logged["propensity"].to_numpy() - (1 - eps) * model_probability) / eps
    if not ((uniform_probability > 0) & (uniform_probability <= 1 + 1e-9)).all():
        # The propensities were logged under another exploration rate than the campaign has now.
        result["skipped"] = (
            f"the logged propensities do not fit the campaign's exploration rate {eps}: was it changed "
            "after planning? Off-policy values need the rate the items were planned with"
        )
        return result

    direct = _direct_method(log, logged, quiet_start, quiet_end, seed) if has_choice else None
    reward = logged["reward"].to_numpy()
    propensity = logged["propensity"].to_numpy(dtype=float)
    result["logged_value"] = float(reward.mean())
    fitted = direct or {}
    result["policies"] = {
        name: estimates(
            reward,
            propensity,
            probability,
            direct_target=fitted.get(name),
            direct_logged=fitted.get("logged"),
            alpha=alpha,
        )
        for name, probability in (("model", model_probability), ("uniform", uniform_probability))
    }
    result["direct_model"] = direct["about"] if direct else "not fitted: items carry no models' choice"
    return result


def _direct_method(
    log: CampaignLog, logged: pd.DataFrame, quiet_start: int, quiet_end: int, seed: int
) -> dict[str, Any] | None:
    """A reward model q(x, variant, local hour), cross-fitted over two folds so that no row's value
    comes from a model that saw it; its predictions for the logged action, the model's action and
    the average over the uniform policy's actions (every variant at every allowed local hour)."""
    from lightgbm import LGBMClassifier
    from sklearn.model_selection import StratifiedKFold

    reward = logged["reward"].to_numpy(dtype=int)
    if reward.sum() < 10 or (len(reward) - reward.sum()) < 10:
        return None  # too few of one class to fit a reward model; IPS and SNIPS still stand
    variants = [v.variant_id for v in log.campaign.variants]
    covariates = log.users.set_index("plan_id").reindex(logged["plan_id"].astype(str))[log.covariates]
    base = covariates.reset_index(drop=True)
    for column in base.columns:
        if not pd.api.types.is_numeric_dtype(base[column]):
            base[column] = base[column].astype("category")
    zones = logged["timezone"].fillna("UTC").astype(str).to_numpy()
    logged_hour = _local_hours(logged["send_at"], zones)
    model_hour = _local_hours(logged["model_send_at"], zones)
    allowed = _allowed_hours(log, logged, quiet_start, quiet_end, zones)

    def frame(variant: np.ndarray | str, hour: np.ndarray | int) -> pd.DataFrame:
        out = base.copy()
        out["variant"] = pd.Categorical(
            np.broadcast_to(np.asarray(variant, dtype=object), len(base)), variants
        )
        out["local_hour"] = np.broadcast_to(np.asarray(hour), len(base)).astype(int)
        return out

    logged_x = frame(logged["variant_id"].to_numpy(dtype=object), logged_hour)
    model_x = frame(logged["model_variant_id"].to_numpy(dtype=object), model_hour)
    q_logged, q_model, q_uniform = (np.zeros(len(base)) for _ in range(3))
    folds = StratifiedKFold(n_splits=2, shuffle=True, random_state=seed)
    for train, test in folds.split(logged_x, reward):
        reward_model = LGBMClassifier(
            n_estimators=150, learning_rate=0.05, num_leaves=15, min_child_samples=20, n_jobs=2, verbose=-1
        ).fit(logged_x.iloc[train], reward[train], categorical_feature=["variant"])
        q_logged[test] = np.asarray(reward_model.predict_proba(logged_x.iloc[test]))[:, 1]
        q_model[test] = np.asarray(reward_model.predict_proba(model_x.iloc[test]))[:, 1]
        total, count = np.zeros(len(test)), np.zeros(len(test))
        for hour in range(24):
            open_ = allowed[test, hour]
            if not open_.any():
                continue
            for variant in variants:
                p = np.asarray(reward_model.predict_proba(frame(variant, hour).iloc[test[open_]]))[:, 1]
                total[open_] += p
                count[open_] += 1
        q_uniform[test] = total / np.maximum(count, 1)
    return {
        "logged": q_logged,
        "model": q_model,
        "uniform": q_uniform,
        "about": "LightGBM on variant, local hour and the user's features, cross-fitted over 2 folds",
    }


def _local_hours(instants: pd.Series, zones: np.ndarray) -> np.ndarray:
    naive_utc = pd.to_datetime(instants, utc=True).dt.tz_localize(None).to_numpy()
    return local_clock(naive_utc, zones)[0]


def _allowed_hours(
    log: CampaignLog, logged: pd.DataFrame, quiet_start: int, quiet_end: int, zones: np.ndarray
) -> np.ndarray:
    """(rows × 24): the local hours the window (a firing's own) offers in each row's zone outside
    quiet hours.

    The planner also drops slots before the moment it planned; that moment is not stored, so the
    uniform policy here ranges over the whole window (a campaign planned at its start, as usual, is
    the same).
    """
    quiet = QuietHours(quiet_start, quiet_end).mask()
    trigger = log.campaign.trigger
    start, end = pd.Timestamp(log.campaign.window.start), pd.Timestamp(log.campaign.window.end)
    out = np.zeros((len(zones), 24), dtype=bool)
    if trigger is None:
        windows = np.zeros(len(zones), dtype=np.int64)  # one window for every row
        bounds = {0: (start, end)}
    else:  # each firing's own window, from its stored end
        ends = pd.to_datetime(logged["window_end"], utc=True)
        windows = ends.astype("int64").to_numpy()
        bounds = {
            w: (pd.Timestamp(w, tz="UTC") - trigger.send_within, pd.Timestamp(w, tz="UTC"))
            for w in set(windows)
        }
    for window, (first, last) in bounds.items():
        for zone in pd.unique(zones):
            rows = (zones == zone) & (windows == window)
            if not rows.any():
                continue
            offered = np.zeros(24, dtype=bool)
            offered[window_slots(first, last, str(zone)).hour] = True  # the planner's own slots
            out[rows] = offered & ~quiet
    return out
