"""Uplift reports for operators: what an experiment changed against its randomized control, as one
JSON-ready dict that the HTML page, the API and the CLI all render.

Two sources give the same report shape (`outcomes`, `srm`, `segments`, `uplift`, `headline`):
- `campaign_report`: a pushplan campaign, read from its plan items and events (reports.campaign_log),
  with the funnel, the breakdowns by variant, local send hour and channel, and policy values;
- `experiment_log_report`: any experiment log with one row per user, its arm and its outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pushplan.settings import Settings
from reports.campaign_log import (
    CAMPAIGN_ARM,
    DEFAULT_HORIZON,
    HOLDOUT_ARM,
    OUTCOMES,
    PLAN_COLUMNS,
    funnel,
    label_stats,
    load_campaign_log,
)
from reports.policy_value import campaign_policy_values
from reports.statistics import (
    Kind,
    arm_labels,
    compare_arms,
    compare_by,
    outcome_kind,
    sample_ratio_check,
)
from reports.uplift import uplift_analysis

REPORT_VERSION = 1
# More values than this is a continuous column, not a segment: hundreds of tiny segments are noise.
MAX_SEGMENT_VALUES = 50


def experiment_report(
    frame: pd.DataFrame,
    arm_column: str,
    control: str,
    outcomes: Sequence[str],
    *,
    segments: Sequence[str] = (),
    expected_share: Mapping[str, float] | None = None,
    covariates: Sequence[str] | None = None,
    uplift_outcome: str | None = None,
    uplift_segments: Sequence[str] | None = None,
    headline_outcome: str | None = None,
    title: str = "Experiment",
    source: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The statistics of one experiment: per arm and outcome, by segment, SRM and uplift targeting.

    `expected_share` gives the intended share of each arm (equal shares when omitted); `covariates`
    are the columns an uplift model may use (default: the segment columns); `uplift_outcome` the one
    outcome it models (default: the first); `uplift_segments` the segments it summarises (default: all);
    `headline_outcome` the outcome of the report's one-line headline (default: the first).
    """
    if not outcomes:
        raise ValueError("name at least one outcome")
    missing = [c for c in (*outcomes, *segments, *(covariates or ())) if c not in frame]
    if missing:
        raise ValueError(f"no column(s) {', '.join(missing)}; the columns are {', '.join(map(str, frame))}")
    labels = arm_labels(frame, arm_column, control)  # names a missing arm value or control
    frame = frame.assign(**{arm_column: labels})
    arms = sorted(labels.unique())
    if len(arms) < 2:
        raise ValueError(f"only one arm ({control!r}) in {arm_column}: nothing to compare it with")
    too_many = {c: int(frame[c].nunique()) for c in segments if frame[c].nunique() > MAX_SEGMENT_VALUES}
    if too_many:
        raise ValueError(
            "segment column(s) with more than "
            f"{MAX_SEGMENT_VALUES} values: {', '.join(f'{c} ({n:,})' for c, n in too_many.items())}; "
            "bin them first (e.g. tenure in bands), or use them as covariates"
        )
    kinds: dict[str, Kind] = {outcome: outcome_kind(frame[outcome]) for outcome in outcomes}
    if expected_share:
        unshared = [arm for arm in arms if arm not in expected_share]
        if unshared:
            raise ValueError(
                f"no expected share for arm(s) {', '.join(unshared)}: give one for every arm "
                f"({', '.join(arms)}), or none for equal shares"
            )
        shares = {str(arm): float(share) for arm, share in expected_share.items()}
    else:
        shares = {arm: 1 / len(arms) for arm in arms}
    counts = frame[arm_column].value_counts()
    # An arm meant to get a share but with no rows is the plainest sample ratio mismatch: counted as 0.
    observed = {arm: int(counts.get(arm, 0)) for arm in sorted(set(arms) | set(shares))}
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "title": title,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": dict(source or {}),
        "arm_column": arm_column,
        "control": control,
        "arms": observed,
        **compare_arms(frame, arm_column, control, outcomes, kinds=kinds),
        "srm": sample_ratio_check(observed, shares),
        "segments": {
            column: compare_by(frame, column, arm_column, control, outcomes, kinds=kinds)
            for column in segments
        },
    }
    target = uplift_outcome or outcomes[0]
    report["uplift"] = {
        arm: _uplift(
            frame,
            arm_column,
            control,
            arm,
            list(covariates or segments),
            target,
            segments if uplift_segments is None else uplift_segments,
            seed,
        )
        for arm in arms
        if arm != control
    }
    report["headline"] = headline(report, headline_outcome or outcomes[0])
    return report


def campaign_report(
    settings: Settings, campaign_id: str, *, horizon: timedelta = DEFAULT_HORIZON, seed: int = 0
) -> dict[str, Any]:
    """The report of a pushplan campaign: holdout comparison, funnel, breakdowns and policy values."""
    log = load_campaign_log(settings, campaign_id, horizon=horizon)
    campaign = log.campaign
    source = {
        "kind": "campaign",
        "campaign_id": campaign.campaign_id,
        "objective": campaign.objective.value,
        "window": {"start": campaign.window.start.isoformat(), "end": campaign.window.end.isoformat()},
        "span_end": log.span[1].isoformat(),
        "horizon_hours": horizon.total_seconds() / 3600,
        "holdout_fraction": campaign.holdout_fraction,
        "variants": {v.variant_id: v.title for v in campaign.variants},
    }
    if campaign.trigger is not None:  # the unit is a firing; results by the day it fired too
        source["trigger"] = campaign.trigger.model_dump(mode="json", exclude_none=True)
        source["unit"] = "firing"
    title = f"Campaign {campaign.name} ({campaign.campaign_id})"
    # A segment with more values than a report can show (a zone list of hundreds) is left out, named.
    segments = [c for c in log.segments if log.users[c].nunique() <= MAX_SEGMENT_VALUES]
    arms = log.users["arm"].value_counts()
    if arms.get(HOLDOUT_ARM, 0) == 0 or arms.get(CAMPAIGN_ARM, 0) == 0:
        report: dict[str, Any] = {
            "version": REPORT_VERSION,
            "title": title,
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": source,
            "arm_column": "arm",
            "control": HOLDOUT_ARM,
            "arms": {arm: int(arms.get(arm, 0)) for arm in (CAMPAIGN_ARM, HOLDOUT_ARM)},
            "outcomes": {},
            "srm": None,
            "segments": {},
            "uplift": {},
            "headline": None,
            "note": "no holdout users (holdout_fraction 0, or none planned): what the campaign changed "
            "cannot be measured; the funnel and policy values below still hold"
            if arms.get(HOLDOUT_ARM, 0) == 0
            else "no campaign users: every randomized user is in the holdout",
        }
    else:
        report = experiment_report(
            log.users,
            "arm",
            HOLDOUT_ARM,
            list(OUTCOMES),
            segments=[*PLAN_COLUMNS, *(["firing_day"] if campaign.trigger else []), *segments],
            expected_share={
                HOLDOUT_ARM: campaign.holdout_fraction,
                CAMPAIGN_ARM: 1 - campaign.holdout_fraction,
            },
            covariates=log.covariates,
            # What the holdout can tell and the campaign's own events cannot: purchases people would
            # have made anyway. (Attributed outcomes are 0 in the holdout by construction.)
            uplift_outcome="purchased",
            uplift_segments=segments,  # who the message moves; the plan's columns are not users' traits
            headline_outcome=log.headline_outcome,
            title=title,
            source=source,
            seed=seed,
        )
        report["segments_left_out"] = sorted(set(log.segments) - set(segments))
    report["funnel"] = funnel(log)
    report["labels"] = label_stats(log, report.get("segments") or {}, log.headline_outcome)
    report["policy"] = campaign_policy_values(
        log, settings.quiet_start_hour, settings.quiet_end_hour, seed=seed
    )
    return _json_safe(report)


def experiment_log_report(
    path: Path,
    arm_column: str,
    control: str,
    outcomes: Sequence[str],
    *,
    segments: Sequence[str] = (),
    covariates: Sequence[str] = (),
    expected_share: Mapping[str, float] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The report of an imported experiment log: CSV or parquet, one row per user (no id needed).

    The uplift models use the segment columns and the named `covariates`, never other columns: a log
    often holds outcomes measured after assignment, and a model that reads them "predicts" uplift
    from its consequences.
    """
    frame = read_experiment_log(path)
    report = experiment_report(
        frame,
        arm_column,
        control,
        outcomes,
        segments=segments,
        expected_share=expected_share,
        covariates=[*segments, *covariates],
        title=f"Experiment log {path.name}",
        source={"kind": "experiment_log", "path": str(path), "rows": len(frame)},
        seed=seed,
    )
    return _json_safe(report)


def read_experiment_log(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: cannot be read as {suffix[1:]} ({exc})") from exc
    raise ValueError(f"{path}: an experiment log is a .csv or .parquet file")


def parse_shares(pairs: Sequence[str]) -> dict[str, float]:
    """`ARM=FRACTION` pairs (as the CLI takes them) into a dict; a bad pair is an error naming it."""
    shares: dict[str, float] = {}
    for pair in pairs:
        arm, sep, value = pair.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = float("nan")
        if not sep or not arm or not 0 <= share <= 1:
            raise ValueError(f"{pair!r}: an expected share is ARM=FRACTION with a fraction from 0 to 1")
        shares[arm] = share
    return shares


def headline(report: Mapping[str, Any], outcome: str) -> dict[str, Any] | None:
    """The first treatment arm's lift on `outcome`: what the report's title line says."""
    result = report.get("outcomes", {}).get(outcome)
    if not result or not result.get("arms"):
        return None
    arm, numbers = next(iter(result["arms"].items()))
    if numbers.get("skipped"):
        return None
    return {
        "outcome": outcome,
        "arm": arm,
        "control_mean": result["control"]["mean"],
        "arm_mean": numbers["mean"],
        "lift_abs": numbers["lift_abs"],
        "lift_abs_ci": numbers["lift_abs_ci"],
        "lift_rel": numbers["lift_rel"],
        "lift_rel_ci": numbers["lift_rel_ci"],
        "p_value": numbers["p_value"],
    }


def headline_text(report: Mapping[str, Any]) -> str:
    """One line: "clicked: +3.10 pp (95 % CI +2.50 pp to +3.70 pp), campaign vs holdout, p < 0.001"."""
    line = report.get("headline")
    if not line:
        return report.get("note") or "no headline: nothing to compare"
    return lift_text(report, line["outcome"])


def lift_text(report: Mapping[str, Any], outcome: str) -> str:
    """The first treatment arm's absolute lift on `outcome` in one line, as headline_text writes it."""
    line = headline(report, outcome)
    if not line:
        return f"{outcome}: no comparison"
    lo, hi = line["lift_abs_ci"] or (None, None)
    scale, unit = (100, " pp") if report["outcomes"][line["outcome"]]["kind"] == "binary" else (1, "")
    p = line["p_value"]

    def signed(value: float | None) -> str:
        return "n/a" if value is None else f"{value * scale:+.2f}{unit}"

    return (
        f"{line['outcome']}: {signed(line['lift_abs'])} (95 % CI {signed(lo)} to {signed(hi)}), "
        f"{line['arm']} vs {report['control']}, "
        + ("p n/a" if p is None else "p < 0.001" if p < 0.001 else f"p = {p:.3f}")
    )


def _uplift(
    frame: pd.DataFrame,
    arm_column: str,
    control: str,
    arm: str,
    covariates: list[str],
    outcome: str,
    segments: Sequence[str],
    seed: int,
) -> dict[str, Any]:
    pair = frame[frame[arm_column].isin([control, arm])].reset_index(drop=True)
    usable = [c for c in dict.fromkeys(covariates) if c in pair and c not in (arm_column, outcome)]
    if not usable:
        return {
            "outcome": outcome,
            "skipped": "no covariates to model uplift on (name --segment-column or --covariate)",
        }
    return uplift_analysis(
        pair,
        usable,
        (pair[arm_column] == arm).to_numpy(),
        outcome,
        segments=[s for s in segments if s in pair],
        seed=seed,
    )


def _json_safe(value: Any) -> Any:
    """NaN and infinities as None, numpy scalars as Python's: the report goes out as strict JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
