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


def hour_metrics(
    hours: np.ndarray, proba: np.ndarray, population_best: int, user_best: np.ndarray
) -> dict[str, Any]:
    """Top-1 / top-3 hit rates of the model beside the two baselines (top-3 of a baseline: its hour ±1)."""
    hours = np.asarray(hours)

    def around(best: np.ndarray) -> np.ndarray:
        scores = np.zeros((len(best), 24))
        for offset, weight in ((0, 3.0), (-1, 2.0), (1, 1.0)):
            scores[np.arange(len(best)), (best + offset) % 24] = weight
        return scores

    population = np.full(len(hours), population_best)
    return {
        "top1_hit_rate": top_k_hits(hours, proba, 1),
        "top3_hit_rate": top_k_hits(hours, proba, 3),
        "population_best_hour_top1": float((population == hours).mean()),
        "population_best_hour_top3": top_k_hits(hours, around(population), 3),
        "user_most_frequent_hour_top1": float((user_best == hours).mean()),
        "user_most_frequent_hour_top3": top_k_hits(hours, around(np.asarray(user_best)), 3),
        "rows": len(hours),
    }


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


def with_variant(rows: pd.DataFrame, title: str, tags: list[str]) -> pd.DataFrame:
    """The same rows scored for another variant: its text features and the user's match with its tags."""
    out = rows.copy()
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
        [score(with_variant(rows, v.title, list(v.tags))) for v in variants.itertuples(index=False)]
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
    best_variant_at = true_p.argmax(axis=2)  # (users × hours)
    total = best.sum()
    return {
        "oracle_share": float(true_p[users, hour_choice, variant_choice].sum() / total),
        "hour_only_share": float(
            true_p[users, hour_choice, best_variant_at[users, hour_choice]].sum() / total
        ),
        "variant_only_share": float(true_p[users, best_hour, variant_choice].sum() / total),
        "random_share": float(true_p.mean(axis=(1, 2)).sum() / total),
        "users": len(users),
    }


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
    if "top3_hit_rate" in metrics:
        labels = ["model", "population best hour", "user's most frequent hour"]
        top1 = [
            metrics["top1_hit_rate"],
            metrics["population_best_hour_top1"],
            metrics["user_most_frequent_hour_top1"],
        ]
        top3 = [
            metrics["top3_hit_rate"],
            metrics["population_best_hour_top3"],
            metrics["user_most_frequent_hour_top3"],
        ]
        fig, ax = plt.subplots(figsize=(7, 4))
        x = np.arange(len(labels))
        ax.bar(x - 0.2, top1, width=0.4, label="top-1")
        ax.bar(x + 0.2, top3, width=0.4, label="top-3")
        ax.set_xticks(x, labels)
        ax.set(ylabel="hit rate", title="Send hour: engaged hour among the predicted")
        ax.legend()
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
