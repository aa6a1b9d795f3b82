"""Offline evaluation: calibration and ranking for the click models, hit rates for the send hour, off-policy
values for variant choice, and, on simulated data, the share of the oracle's expected clicks.

Metric functions take arrays and return plain dicts, so they are tested on hand-computed cases.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from features.feature_repo.transforms import tag_match_features
from training.frames import variant_features
from training.habits import HISTORY_BUCKETS, RULES
from training.inference import choose_hours
from training.off_policy import estimates


def binary_metrics(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """AUC, log loss, expected calibration error and the reliability curve; the base-rate baseline."""
    y, p = np.asarray(y, dtype=float), np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    edges = np.quantile(p, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    curve = []
    ece = 0.0
    for b in range(bins):
        members = which == b
        if not members.any():
            continue
        predicted, observed = float(p[members].mean()), float(y[members].mean())
        curve.append({"predicted": predicted, "observed": observed, "count": int(members.sum())})
        ece += members.mean() * abs(predicted - observed)
    base = float(y.mean())
    both_classes = 0 < y.sum() < len(y)
    return {
        "auc": float(roc_auc_score(y, p)) if both_classes else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "ece": float(ece),
        "base_rate": base,
        "base_rate_log_loss": float(
            log_loss(y, np.full_like(p, np.clip(base, 1e-6, 1 - 1e-6)), labels=[0, 1])
        ),
        "positives": int(y.sum()),
        "rows": len(y),
        "reliability": curve,
    }


def top_k_hits(hours: np.ndarray, proba: np.ndarray, k: int) -> float:
    """Share of rows whose true hour is among the k most probable."""
    top = np.argsort(-proba, axis=1)[:, :k]
    return float((top == np.asarray(hours)[:, None]).any(axis=1).mean())


def hour_hits(hours: np.ndarray, choice: np.ndarray) -> dict[str, float]:
    """Share of rows whose chosen hour is the engaged hour (top-1), and within one hour of it
    (wrapping at midnight)."""
    hours, choice = np.asarray(hours, dtype=int), np.asarray(choice, dtype=int)
    apart = np.abs(hours - choice)
    apart = np.minimum(apart, 24 - apart)
    if len(hours) == 0:
        return {"top1": float("nan"), "within1": float("nan")}
    return {"top1": float((apart == 0).mean()), "within1": float((apart <= 1).mean())}


def hour_metrics(
    hours: np.ndarray, proba: np.ndarray, rules: dict[str, np.ndarray], buckets: np.ndarray
) -> dict[str, Any]:
    """The served hour (smoothed, as `choose_hours` picks it) of the model and of each simple rule:
    top-1 and within-one-hour hit rates overall and per history-size bucket; the model's top-3 too.

    `rules` maps a rule's name to its (rows × 24) scores; `buckets` indexes HISTORY_BUCKETS.
    """
    hours = np.asarray(hours, dtype=int)
    choices = {"model": choose_hours(proba)}
    choices.update({name: choose_hours(scores) for name, scores in rules.items()})
    model = hour_hits(hours, choices["model"])
    metrics: dict[str, Any] = {
        "top1_hit_rate": model["top1"],
        "within1_hit_rate": model["within1"],
        "top3_hit_rate": top_k_hits(hours, proba, 3),
        "rows": len(hours),
    }
    for name in rules:
        hits = hour_hits(hours, choices[name])
        metrics[f"{name}_top1"], metrics[f"{name}_within1"] = hits["top1"], hits["within1"]
    by_history: dict[str, dict[str, float]] = {}
    for b, (label, _) in enumerate(HISTORY_BUCKETS):
        members = np.asarray(buckets) == b
        row: dict[str, float] = {"rows": int(members.sum())}
        for name, choice in choices.items():
            hits = hour_hits(hours[members], choice[members])
            row[f"{name}_top1"], row[f"{name}_within1"] = hits["top1"], hits["within1"]
        by_history[label] = row
    metrics["by_history"] = by_history
    ranked = sorted(rules, key=lambda r: (metrics[f"{r}_within1"], metrics[f"{r}_top1"]), reverse=True)
    metrics["best_rule"] = ranked[0] if ranked else ""
    return metrics


def off_policy_values(
    reward: np.ndarray, chosen_by_model: np.ndarray, logged_propensity: np.ndarray, n_variants: np.ndarray
) -> dict[str, float]:
    """IPS and SNIPS values of "the model's best variant" and "a uniformly random variant", as flat
    metrics for MLflow (training.off_policy.estimates computes them; these are its point values).

    `chosen_by_model` says whether the model's choice equals the logged variant; the logging
    policy's probability of the logged variant is `logged_propensity`.
    """
    reward = np.asarray(reward, dtype=float)
    model = estimates(reward, logged_propensity, np.asarray(chosen_by_model, dtype=float))
    uniform = estimates(reward, logged_propensity, 1.0 / np.asarray(n_variants, dtype=float))
    return {
        "ips_model": model["ips"]["value"],
        "snips_model": model["snips"]["value"] if model["snips"] else 0.0,
        "ips_random": uniform["ips"]["value"],
        "snips_random": uniform["snips"]["value"] if uniform["snips"] else 0.0,
        "logged_mean_reward": float(reward.mean()),
        "matched_rows": int(np.asarray(chosen_by_model).sum()),
    }


def with_variant(rows: pd.DataFrame, title: str, tags: list[str], variant_id: str = "") -> pd.DataFrame:
    """The same rows scored for another variant: its text features and the user's match with its tags."""
    out = rows.copy()
    out["candidate_variant_id"] = variant_id
    text = variant_features([title] * len(rows), [tags] * len(rows))
    text.index = out.index
    out[text.columns] = text
    out["variant_tags"] = ",".join(tags)
    if "tag_affinity_mean" in out:
        matched = tag_match_features(out)
        out[matched.columns] = matched
    return out


def best_variant(
    rows: pd.DataFrame, variants: pd.DataFrame, score: Callable[[pd.DataFrame], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the index in `variants` of the best-scoring variant, and all scores (rows × variants)."""
    scores = np.column_stack(
        [
            score(with_variant(rows, v.title, list(v.tags), str(getattr(v, "variant_id", ""))))
            for v in variants.itertuples(index=False)
        ]
    )
    return scores.argmax(axis=1), scores


def oracle_share(true_p: np.ndarray, hour_choice: np.ndarray, variant_choice: np.ndarray) -> dict[str, float]:
    """Shares of the oracle's expected clicks for the models' (hour, variant) choices and the baselines.

    `true_p` is (users × 24 hours × variants): the true click probability of each option. Returns
    the models' share, the share with only the hour chosen by the model (variant by the oracle)
    and only the variant (hour by the oracle), so the gap to 1.0 splits into time and variant.
    """
    users = np.arange(true_p.shape[0])
    best = true_p.reshape(len(users), -1).max(axis=1)
    best_hour = true_p.max(axis=2).argmax(axis=1)
    total = best.sum()
    return {
        "oracle_share": float(true_p[users, hour_choice, variant_choice].sum() / total),
        "hour_only_share": hour_only_share(true_p, hour_choice),
        "variant_only_share": float(true_p[users, best_hour, variant_choice].sum() / total),
        "random_share": float(true_p.mean(axis=(1, 2)).sum() / total),
        # The ceiling of any variant choice that does not tell users apart: one variant for all.
        "best_single_variant_share": float(
            true_p[users, best_hour].sum(axis=0).max() / total if true_p.shape[2] else float("nan")
        ),
        "users": len(users),
    }


def hour_only_share(true_p: np.ndarray, hour_choice: np.ndarray) -> float:
    """Share of the oracle's expected clicks with the chosen hours and, at each, the best variant."""
    users = np.arange(true_p.shape[0])
    best = true_p.reshape(len(users), -1).max(axis=1).sum()
    return float(true_p[users, hour_choice].max(axis=1).sum() / best) if best else float("nan")


def population_best_hour_share(true_p: np.ndarray, hour: int) -> float:
    best = true_p.reshape(true_p.shape[0], -1).max(axis=1).sum()
    return float(true_p[:, hour, :].mean(axis=1).sum() / best)


def markdown_report(title: str, sections: dict[str, dict[str, Any]]) -> str:
    """The evaluation as markdown tables (logged to MLflow beside the plots)."""
    lines = [f"# {title}", ""]
    for name, values in sections.items():
        lines += [f"## {name}", "", "| metric | value |", "|---|---|"]
        for key, value in values.items():
            if isinstance(value, float):
                lines.append(f"| {key} | {value:.4f} |")
            elif isinstance(value, int | str):
                lines.append(f"| {key} | {value} |")
        lines.append("")
    return "\n".join(lines)


def save_plots(out_dir: Path, metrics: dict[str, Any], importance: pd.Series | None) -> list[Path]:
    """Calibration curve, hour hit rates and feature importance as PNG files; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if "reliability" in metrics:
        curve = pd.DataFrame(metrics["reliability"])
        fig, ax = plt.subplots(figsize=(5, 5))
        top = max(curve["predicted"].max(), curve["observed"].max()) * 1.1
        ax.plot([0, top], [0, top], linestyle="--", color="grey", label="perfectly calibrated")
        ax.plot(curve["predicted"], curve["observed"], marker="o", label="model")
        ax.set(xlabel="predicted click probability", ylabel="observed click rate", title="Calibration")
        ax.legend()
        paths.append(_save(fig, out_dir / "calibration.png"))
    if "within1_hit_rate" in metrics:
        policies = ["model", *RULES]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        x = np.arange(len(policies))
        top1 = [metrics["top1_hit_rate"], *(metrics.get(f"{r}_top1", np.nan) for r in RULES)]
        within = [metrics["within1_hit_rate"], *(metrics.get(f"{r}_within1", np.nan) for r in RULES)]
        axes[0].bar(x - 0.2, top1, width=0.4, label="top-1")
        axes[0].bar(x + 0.2, within, width=0.4, label="within one hour")
        axes[0].set_xticks(x, [p.replace("_", " ") for p in policies], rotation=15)
        axes[0].set(ylabel="hit rate", title="Send hour: the served hour against the engaged one")
        axes[0].legend()
        buckets = list(metrics.get("by_history", {}))
        width = 0.8 / len(policies)
        for k, policy in enumerate(policies):
            values = [metrics["by_history"][b].get(f"{policy}_within1", np.nan) for b in buckets]
            axes[1].bar(
                np.arange(len(buckets)) + (k - (len(policies) - 1) / 2) * width, values, width, label=policy
            )
        axes[1].set_xticks(np.arange(len(buckets)), [f"{b} events" for b in buckets])
        axes[1].set(ylabel="within one hour", title="By history size")
        axes[1].legend(fontsize=7)
        paths.append(_save(fig, out_dir / "hour_hit_rate.png"))
    if importance is not None and not importance.empty:
        top = importance.sort_values().tail(20)
        fig, ax = plt.subplots(figsize=(7, 6))
        ax.barh(top.index, top.to_numpy())
        ax.set(xlabel="gain", title="Feature importance (top 20)")
        paths.append(_save(fig, out_dir / "feature_importance.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
