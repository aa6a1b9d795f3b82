"""The simple rules each model must beat to be promoted, and the rule served in its place when none does.

- send hour: the population's most frequent hour, each user's most frequent hour, and each user's
  smoothed histogram shrunk toward the population's (training.habits), on the served hour's top-1
  and within-one-hour hit rates: a model must do better within one hour and no worse at top-1;
- variant: a uniformly random variant, and the campaign's best variant overall (the best logged
  click rate before the test days, else the best-clicked tags), by SNIPS on the logged test sends.
  Clicks are rare, so a point estimate is not enough: the model must lead each rule with 75 %
  one-sided confidence on the paired difference (`VARIANT_LEAD_Z`). On a simulated 2,000 users ×
  30 days (185 clicks) a variant model that led both rules by its point estimate, and lost 0.4 of
  the oracle's clicks on the next campaign, had a lower bound below zero; on the demo's 5,000 × 60
  the model's lead over the best variant overall (+0.0028 clicks per send) clears it;
- click: the base rate, by log loss.

A rule's parameters (the population's hours, tag click rates, the base rate) are fitted on the same
training days as the model and stored with the registered model (training.pipeline), so serving
can plan with the best rule without a champion (serving.scoring).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pushplan.domain import VARIANT_TAGS
from training.habits import RULES
from training.specs import ModelSpec

VARIANT_RULES = ("random_variant", "best_variant_overall")
# Sends of a variant before its own click rate is trusted over its tags'.
MIN_VARIANT_SENDS = 200
# Standard errors below its SNIPS lead over a rule that a variant model's lead must stay above zero:
# 0.6745 is a one-sided 75 % bound.
VARIANT_LEAD_Z = 0.6745


@dataclass(frozen=True)
class Verdict:
    beats: bool  # better than every rule
    best_rule: str  # the rule to serve without a champion
    lost_to: tuple[str, ...]  # the rules it did not beat

    def describe(self) -> str:
        if self.beats:
            return "beats every baseline"
        return f"does not beat {', '.join(self.lost_to)}; serving falls back to {self.best_rule}"


def verdict(spec: ModelSpec, metrics: dict[str, Any]) -> Verdict:
    """Whether the metrics beat every rule of the spec, and which rule is best."""
    if spec.n_classes == 24:
        lost = tuple(
            rule
            for rule in RULES
            if not (
                metrics["within1_hit_rate"] > metrics[f"{rule}_within1"]
                and metrics["top1_hit_rate"] >= metrics[f"{rule}_top1"]
            )
        )
        return Verdict(not lost, str(metrics["best_rule"]), lost)
    if spec.chooses_variant:
        leads = {
            "random_variant": metrics["snips_lead_over_random_lower"],
            "best_variant_overall": metrics["snips_lead_over_best_overall_lower"],
        }
        lost = tuple(rule for rule, lead in leads.items() if not lead > 0)
        # The best variant overall is served unless random variants surely did better: picked from
        # noisy rates it is still, in expectation, no worse than a random one.
        surely_random = metrics["snips_random_lead_over_best_overall_lower"] > 0
        return Verdict(not lost, "random_variant" if surely_random else "best_variant_overall", lost)
    lost = () if metrics["log_loss"] < metrics["base_rate_log_loss"] else ("base_rate",)
    return Verdict(not lost, "base_rate", lost)


# ---- the variant rules ------------------------------------------------------------------------


def variant_rates(history: pd.DataFrame) -> dict[str, Any]:
    """Click rates fitted on logged sends (label, variant_id, tag_* columns): per variant with enough
    sends, per tag, and overall; the parameters of `best_variant_overall`."""
    overall = float(history["label"].mean()) if len(history) else 0.0
    by_variant = history.groupby(["campaign_id", "variant_id"])["label"].agg(["mean", "size"])
    by_variant = by_variant[by_variant["size"] >= MIN_VARIANT_SENDS]
    tags = {}
    for tag in VARIANT_TAGS:
        column = f"tag_{tag}"
        if column in history and (history[column] > 0).sum() >= MIN_VARIANT_SENDS:
            tags[tag] = round(float(history.loc[history[column] > 0, "label"].mean()), 6)
    return {
        "overall": round(overall, 6),
        "variants": {variant_key(c, v): round(float(r), 6) for (c, v), r in by_variant["mean"].items()},
        "tags": tags,
    }


def variant_key(campaign_id: object, variant_id: object) -> str:
    """A variant's key among all campaigns': variant ids are only unique within their campaign."""
    return f"{campaign_id}\x1f{variant_id}"


def variant_rate(rates: dict[str, Any], campaign_id: str, variant_id: str, tags: list[str]) -> float:
    """A variant's expected click rate under `best_variant_overall`: its own (a campaign sent before),
    else its tags', else overall."""
    own = rates["variants"].get(variant_key(campaign_id, variant_id))
    if own is not None:
        return float(own)
    known = [rates["tags"][t] for t in tags if t in rates["tags"]]
    return float(np.mean(known)) if known else float(rates["overall"])


def variant_rule_scores(
    rule: str,
    params: dict[str, Any],
    user_ids: np.ndarray,
    variants: list[tuple[str, list[str]]],
    campaign_id: str = "",
) -> np.ndarray:
    """(users × variants) scores of a variant rule: every user the best variant overall, or each user a
    variant drawn uniformly (fixed per user and variant set, so a re-plan gives the same one)."""
    if rule == "best_variant_overall":
        rates = np.array([variant_rate(params, campaign_id, v, tags) for v, tags in variants])
        return np.tile(rates, (len(user_ids), 1))
    if rule == "random_variant":
        salt = "\x1f".join(v for v, _ in variants)
        draws = np.array(
            [
                [
                    int.from_bytes(hashlib.sha256(f"{u}\x1f{salt}\x1f{v}".encode()).digest()[:8], "big")
                    for v, _ in variants
                ]
                for u in user_ids
            ],
            dtype=float,
        )
        # The scores stand for p(click) in the planner: every variant the overall rate, the draw breaks ties.
        return float(params.get("overall", 0.0)) + draws / 2.0**64 * 1e-9
    raise ValueError(f"unknown variant rule {rule!r}; expected one of {', '.join(VARIANT_RULES)}")
