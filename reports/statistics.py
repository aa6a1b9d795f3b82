"""Statistics of a randomized experiment, for the operators' uplift report: per-arm rates and means with
confidence intervals, absolute and relative lifts against the control arm with their intervals and p-values,
the sample-ratio-mismatch check, and the same comparison per segment.

Pure functions over counts, arrays and data frames (no I/O). Every result is a JSON-safe dict of plain
float/int/str/None/list/dict, with NaN and ±inf turned into None, so a report can serialise it as is.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    test_proportions_2indep,
)
from statsmodels.stats.weightstats import DescrStatsW

Kind = Literal["binary", "numeric"]

MISSING_SEGMENT = "(missing)"


class TooFew(ValueError):
    """An arm with too few observations to compare: reported as skipped, not raised, by compare_arms."""


# The usual alarm threshold for a sample ratio mismatch: an SRM check runs on every experiment, so it needs a
# far stricter level than 0.05 to keep false alarms rare, and a real assignment bug at report-sized n gives
# p-values many orders of magnitude below it anyway.
SRM_ALPHA = 0.001
# How far the intended shares may be from summing to 1 (rounding in a config file, e.g. three arms of 1/3).
SHARE_TOLERANCE = 1e-6

_LIFT_KEYS = ("lift_abs", "lift_abs_ci", "lift_rel", "lift_rel_ci", "p_value")


def outcome_kind(values: pd.Series) -> Kind:
    """binary when every non-missing value is 0/1 or bool, else numeric (non-numeric -> ValueError naming the
    column)."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return "binary"
    present = values.dropna()
    if not (pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_complex_dtype(values.dtype)):
        # object (or categorical) columns still count when they hold numbers and bools, e.g. a bool column
        # that picked up None and so lost its dtype.
        bad = [v for v in present if not isinstance(v, (bool, np.bool_, numbers.Real))]
        if bad:
            raise ValueError(
                f"outcome column {values.name!r} is not numeric (dtype {values.dtype}, e.g. {bad[0]!r}); "
                "an outcome must hold 0/1, bools or numbers"
            )
    numeric = present.to_numpy(dtype="float64", na_value=np.nan)
    return "binary" if bool(np.isin(numeric, (0.0, 1.0)).all()) else "numeric"


def compare_rates(
    control_successes: int, control_n: int, arm_successes: int, arm_n: int, alpha: float = 0.05
) -> dict[str, Any]:
    """Compare a binary outcome's rate in an arm against the control.

    - per-arm intervals: Wilson score;
    - lift_abs = arm rate - control rate, interval: Newcombe's hybrid score (method 10 of Newcombe 1998);
    - lift_rel = arm rate / control rate - 1, interval: the score interval for the ratio (Koopman;
      Miettinen-Nurminen), minus 1; see _ratio_interval for the corners at rates of 0 and 1. When the
      control rate is 0 the relative lift and its interval are None: there is nothing to be relative to (a
      holdout that never receives a message has a click rate of exactly 0);
    - p_value: two-sided score test of equal rates (Miettinen-Nurminen, statsmodels
      test_proportions_2indep method="score"); unlike the Wald z-test its variance is estimated under the
      null, so it stays valid with 0 successes in one arm. When neither arm varies (both 0 % or both 100 %),
      the statistic is 0/0 and the p-value is 1, which is also what Fisher's exact test gives.
    """
    _check_alpha(alpha)
    cs, cn = _count("control", control_successes, control_n)
    a_s, an = _count("arm", arm_successes, arm_n)
    control, arm = _rate_summary(cs, cn, alpha), _rate_summary(a_s, an, alpha)
    # statsmodels compares its first sample with its second, so the arm goes first (arm - control, arm /
    # control). It raises numpy floating-point warnings for the 0 % and 100 % corners handled below.
    with np.errstate(divide="ignore", invalid="ignore"):
        diff_lo, diff_hi = confint_proportions_2indep(
            a_s, an, cs, cn, method="newcomb", compare="diff", alpha=alpha
        )
        test = test_proportions_2indep(a_s, an, cs, cn, method="score", compare="diff", value=0)
        p_value = float(test.pvalue)
        if math.isnan(p_value) and (a_s + cs in (0, an + cn)):
            p_value = 1.0
        if cs == 0:
            ratio_method = "none (control rate 0)"
            lift_rel, lift_rel_ci = None, None
        else:
            ratio_lo, ratio_hi, ratio_method = _ratio_interval(a_s, an, cs, cn, alpha)
            lift_rel = _num((a_s / an) / (cs / cn) - 1)
            lift_rel_ci = _interval(ratio_lo - 1, ratio_hi - 1)
    return {
        "control": control,
        "arm": arm,
        "lift_abs": _num(a_s / an - cs / cn),
        "lift_abs_ci": _interval(diff_lo, diff_hi),
        "lift_rel": lift_rel,
        "lift_rel_ci": lift_rel_ci,
        "p_value": _num(p_value),
        "method": (
            "rates: Wilson; lift_abs: Newcombe hybrid score; "
            f"lift_rel: {ratio_method} interval for the ratio; p_value: score test (Miettinen-Nurminen)"
        ),
    }


def compare_means(control: np.ndarray, arm: np.ndarray, alpha: float = 0.05) -> dict[str, Any]:
    """Compare a numeric outcome's mean in an arm against the control (missing values are dropped first).

    - per-arm intervals: Student t;
    - lift_abs = arm mean - control mean, interval and p_value: Welch's t (unequal variances,
      Welch-Satterthwaite degrees of freedom);
    - lift_rel = arm mean / control mean - 1, interval: Fieller's interval for a ratio of two independent
      means (with the t quantile at Welch's degrees of freedom), minus 1. Fieller rather than the delta method
      on the log ratio because it needs no positive means (an arm whose revenue is all zeros still gets an
      interval) and is honest when the control mean is not clearly away from 0: the interval is then
      unbounded and lift_rel_ci is None while lift_rel is still given. lift_rel and its interval are None when
      the control mean is 0.
    """
    _check_alpha(alpha)
    c, a = _clean("control", control), _clean("arm", arm)
    with warnings.catch_warnings():
        # scipy warns about "catastrophic cancellation" for constant data, where the results are exact.
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        control_summary, arm_summary = _mean_summary(c, alpha), _mean_summary(a, alpha)
        with np.errstate(divide="ignore", invalid="ignore"):
            welch = stats.ttest_ind(a, c, equal_var=False)
            diff = welch.confidence_interval(confidence_level=1 - alpha)
    mean_c, mean_a = float(c.mean()), float(a.mean())
    if mean_c == 0:
        lift_rel, lift_rel_ci = None, None
    else:
        lift_rel = _num(mean_a / mean_c - 1)
        ratio = _fieller(
            mean_a, a.var(ddof=1) / a.size, mean_c, c.var(ddof=1) / c.size, float(welch.df), alpha
        )
        lift_rel_ci = None if ratio is None else _interval(ratio[0] - 1, ratio[1] - 1)
    return {
        "control": control_summary,
        "arm": arm_summary,
        "lift_abs": _num(mean_a - mean_c),
        "lift_abs_ci": _interval(diff.low, diff.high),
        "lift_rel": lift_rel,
        "lift_rel_ci": lift_rel_ci,
        "p_value": _num(welch.pvalue),
        "method": (
            "means: t; lift_abs: Welch t; lift_rel: Fieller interval for the ratio (Welch df); "
            "p_value: Welch t-test"
        ),
    }


def sample_ratio_check(counts: Mapping[str, int], expected_share: Mapping[str, float]) -> dict[str, Any]:
    """Sample ratio mismatch: a chi-square goodness-of-fit test of the arm counts against the intended shares.

    mismatch is p_value < 0.001, the usual SRM alarm threshold (see SRM_ALPHA). A mismatch means the
    assignment or the logging is broken, and the experiment's comparisons should not be trusted. An arm with
    a share of 0 is allowed: any unit in it is a mismatch (p_value 0, chi2 None for infinity).
    """
    if set(counts) != set(expected_share):
        missing = sorted(map(str, set(counts) - set(expected_share)))
        extra = sorted(map(str, set(expected_share) - set(counts)))
        raise ValueError(
            "expected shares must cover the same arms as the counts: "
            f"no share for {missing}, no count for {extra} "
            f"(counts: {sorted(map(str, counts))}, shares: {sorted(map(str, expected_share))})"
        )
    if len(counts) < 2:
        raise ValueError(f"a sample ratio check needs at least two arms, got {sorted(map(str, counts))}")
    total_share = float(sum(expected_share.values()))
    if not abs(total_share - 1) <= SHARE_TOLERANCE:
        raise ValueError(
            f"expected shares sum to {total_share:.9g}, not 1 (within {SHARE_TOLERANCE:g}): "
            + ", ".join(f"{arm}={share:g}" for arm, share in expected_share.items())
        )
    for arm, share in expected_share.items():
        if not share >= 0:
            raise ValueError(f"expected share of arm {arm!r} is {share!r}; a share cannot be negative")
    arms = list(counts)
    observed = {arm: _whole(f"count of arm {arm!r}", counts[arm]) for arm in arms}
    total = sum(observed.values())
    if total == 0:
        raise ValueError(f"no units in any arm ({arms}); nothing to check")
    # An arm meant to get no one (share 0) has no place in the chi-square (its expected count is 0): anyone in
    # it is a mismatch outright, and if it is empty the test runs on the other arms.
    planned = [arm for arm in arms if expected_share[arm] > 0]
    if any(observed[arm] for arm in arms if arm not in planned):
        chi2, p_value = math.inf, 0.0
    elif len(planned) < 2:
        chi2, p_value = 0.0, 1.0  # everyone is in the one arm meant to have everyone
    else:
        # Shares are renormalised because scipy insists that observed and expected totals agree to 1e-8,
        # tighter than the tolerance allowed for the shares themselves.
        planned_share = sum(expected_share[arm] for arm in planned)
        result = stats.chisquare(
            [observed[arm] for arm in planned],
            [expected_share[arm] / planned_share * total for arm in planned],
        )
        chi2, p_value = float(result.statistic), float(result.pvalue)
    return {
        "p_value": _num(p_value),
        "chi2": _num(chi2),
        "observed": {str(arm): observed[arm] for arm in arms},
        "observed_share": {str(arm): observed[arm] / total for arm in arms},
        "expected_share": {str(arm): float(expected_share[arm]) for arm in arms},
        "mismatch": bool(p_value < SRM_ALPHA),
    }


def compare_arms(
    frame: pd.DataFrame,
    arm_column: str,
    control: str,
    outcomes: Sequence[str],
    *,
    alpha: float = 0.05,
    kinds: Mapping[str, Kind] | None = None,
) -> dict[str, Any]:
    """Every arm against the control on each outcome: binary outcomes with compare_rates, numeric ones with
    compare_means. Arms are the other values of arm_column (as str), sorted; kinds default to outcome_kind of
    each column. An arm's n is its number of non-missing values of that outcome."""
    _check_alpha(alpha)
    labels = arm_labels(frame, arm_column, control)
    outcome_list = _outcome_list(frame, outcomes)
    resolved = _resolve_kinds(frame, outcome_list, kinds)
    control = str(control)
    arms = sorted(set(labels) - {control})
    return _compare(frame, labels, control, arms, outcome_list, resolved, alpha)


def compare_by(
    frame: pd.DataFrame,
    by: str,
    arm_column: str,
    control: str,
    outcomes: Sequence[str],
    *,
    alpha: float = 0.05,
    min_n: int = 30,
    kinds: Mapping[str, Kind] | None = None,
) -> dict[str, Any]:
    """compare_arms within each value of `by` (keyed by the value as str, numbers sorted numerically, missing
    values as "(missing)", last), plus "n", the segment's rows.

    The arms are those of the whole frame, so an arm absent from a segment counts as having 0 rows there. A
    segment where the control or an arm has fewer than min_n rows gets {"n", "skipped": reason} instead of
    statistics, so a report can still list it. Kinds default to those of the whole frame, so a segment whose
    revenue happens to be all 0/1 is still compared as numeric.
    """
    _check_alpha(alpha)
    _require_columns(frame, [by], "segment")
    labels = arm_labels(frame, arm_column, control)
    outcome_list = _outcome_list(frame, outcomes)
    resolved = _resolve_kinds(frame, outcome_list, kinds)
    control = str(control)
    arms = sorted(set(labels) - {control})
    segments = segment_labels(frame[by])
    positions = segments.reset_index(drop=True).groupby(segments.to_numpy(), sort=False).indices
    columns = frame[
        list(dict.fromkeys(outcome_list))
    ]  # only what the comparisons read gets copied per segment
    result: dict[str, Any] = {}
    for segment in segment_order(frame[by], segments):
        rows = positions[segment]
        sizes = labels.iloc[rows].value_counts()
        short = [
            f"{role} {name!r} ({int(sizes.get(name, 0))})"
            for role, name in [("control", control), *(("arm", arm) for arm in arms)]
            if sizes.get(name, 0) < min_n
        ]
        if short:
            result[segment] = {"n": len(rows), "skipped": f"fewer than {min_n} rows in " + ", ".join(short)}
            continue
        try:
            stats_ = _compare(
                columns.iloc[rows], labels.iloc[rows], control, arms, outcome_list, resolved, alpha
            )
        except ValueError as error:
            raise ValueError(f"{by}={segment}: {error}") from error
        result[segment] = {"n": len(rows), **stats_}
    return result


# --- helpers ------------------------------------------------------------------------------------------------


def _compare(
    frame: pd.DataFrame,
    labels: pd.Series,
    control: str,
    arms: list[str],
    outcomes: list[str],
    kinds: Mapping[str, Kind],
    alpha: float,
) -> dict[str, Any]:
    is_control = (labels == control).to_numpy()
    is_arm = {arm: (labels == arm).to_numpy() for arm in arms}
    result: dict[str, Any] = {}
    for outcome in outcomes:
        kind = kinds[outcome]
        try:
            values = frame[outcome].to_numpy(dtype="float64", na_value=np.nan)
        except (TypeError, ValueError) as error:
            raise ValueError(f"outcome column {outcome!r} is not numeric ({error})") from error
        if kind == "binary" and not np.isin(values[~np.isnan(values)], (0.0, 1.0)).all():
            raise ValueError(f"outcome {outcome!r} is treated as binary but holds values other than 0/1")
        if np.isinf(values).any():
            raise ValueError(
                f"outcome {outcome!r} has {int(np.isinf(values).sum())} infinite value(s); "
                "fix or drop those rows"
            )
        control_values = values[is_control]
        try:
            if kind == "binary":
                control_values = control_values[~np.isnan(control_values)]
                cs, cn = _count("control", int(control_values.sum()), control_values.size)
                control_summary = _rate_summary(cs, cn, alpha)
            else:
                control_summary = _mean_summary(_clean("control", control_values), alpha)
        except TooFew as error:  # nothing to compare any arm with: say so rather than fail the report
            note = f"outcome {outcome!r}, control {control!r}: {error}"
            count = int((~np.isnan(control_values)).sum())
            result[outcome] = {
                "kind": kind,
                "control": {"n": count, "mean": None},
                "arms": {},
                "skipped": note,
            }
            continue
        except ValueError as error:
            raise ValueError(f"outcome {outcome!r}, control {control!r}: {error}") from error
        per_arm: dict[str, Any] = {}
        for arm in arms:
            arm_values = values[is_arm[arm]]
            try:
                if kind == "binary":
                    arm_values = arm_values[~np.isnan(arm_values)]
                    comparison = compare_rates(cs, cn, int(arm_values.sum()), arm_values.size, alpha)
                else:
                    comparison = compare_means(control_values, arm_values, alpha)
            except TooFew as error:
                per_arm[arm] = {"n": int((~np.isnan(arm_values)).sum()), "mean": None, "skipped": str(error)}
                continue
            except ValueError as error:
                raise ValueError(
                    f"outcome {outcome!r}, arm {arm!r} against control {control!r}: {error}"
                ) from error
            per_arm[arm] = {**comparison["arm"], **{key: comparison[key] for key in _LIFT_KEYS}}
        result[outcome] = {"kind": kind, "control": control_summary, "arms": per_arm}
    return {"outcomes": result}


def _ratio_interval(a_s: int, an: int, cs: int, cn: int, alpha: float) -> tuple[float, float, str]:
    """Interval for the ratio of the arm's rate to the control's (control successes > 0), and its method.

    The score interval (Koopman; Miettinen-Nurminen) by default: it agrees with the score test and is right
    at 0 successes in the arm (lower bound exactly 0), where the log-adjusted interval, which adds 0.5 to
    every count, excludes its own point estimate. statsmodels' score root finder fails when a rate is 1
    (complex roots, or intervals that exclude the estimate), so there the plain log (Katz) interval is used,
    which is well defined when no count is 0. Left: a 100 % control against 0 successes in the arm, where
    neither works; there the log-adjusted interval is used with its lower bound put at 0, since an arm with
    no successes cannot rule out a true rate of 0.
    """
    if a_s < an and cs < cn:
        lo, hi = confint_proportions_2indep(a_s, an, cs, cn, method="score", compare="ratio", alpha=alpha)
        ratio = (a_s / an) / (cs / cn)
        # Guard against the root finder's known failures anyway: a score interval contains its estimate.
        if np.isrealobj(lo) and np.isrealobj(hi) and lo <= ratio * (1 + 1e-9) and ratio <= hi * (1 + 1e-9):
            return float(lo), float(hi), "score"
    if a_s > 0:
        lo, hi = confint_proportions_2indep(a_s, an, cs, cn, method="log", compare="ratio", alpha=alpha)
        return float(lo), float(hi), "log (Katz)"
    _, hi = confint_proportions_2indep(a_s, an, cs, cn, method="log-adjusted", compare="ratio", alpha=alpha)
    return 0.0, float(hi), "log-adjusted, lower bound 0"


def _rate_summary(successes: int, n: int, alpha: float) -> dict[str, Any]:
    lo, hi = proportion_confint(successes, n, alpha=alpha, method="wilson")
    # At 0 % or 100 % the Wilson bound is exactly 0 or 1; statsmodels leaves a rounding residue (2e-19).
    lo, hi = (0.0 if successes == 0 else lo), (1.0 if successes == n else hi)
    return {"n": n, "mean": _num(successes / n), "ci": _interval(lo, hi)}


def _mean_summary(values: np.ndarray, alpha: float) -> dict[str, Any]:
    with np.errstate(divide="ignore", invalid="ignore"):
        lo, hi = DescrStatsW(values).tconfint_mean(alpha=alpha)
    return {"n": int(values.size), "mean": _num(values.mean()), "ci": _interval(lo, hi)}


def _fieller(
    mean_a: float, var_a: float, mean_c: float, var_c: float, df: float, alpha: float
) -> tuple[float, float] | None:
    """Fieller's interval for mean_a / mean_c with independent means of variances var_a and var_c, or None
    when it is unbounded (the control mean is not significantly away from 0 at this level).

    Written out because neither scipy nor statsmodels has it: the ratios r with
    (mean_a - r mean_c)^2 <= q^2 (var_a + r^2 var_c) are the roots of a quadratic in r.
    """
    q = float(stats.t.ppf(1 - alpha / 2, df)) if math.isfinite(df) else math.nan
    if not math.isfinite(q):
        return None
    a = mean_c**2 - q**2 * var_c
    if a <= 0:
        return None
    # With a > 0 this discriminant is a sum of non-negative terms, so the roots are real.
    half = q * math.sqrt(mean_a**2 * var_c + var_a * a)
    return (mean_a * mean_c - half) / a, (mean_a * mean_c + half) / a


def arm_labels(frame: pd.DataFrame, arm_column: str, control: str) -> pd.Series:
    """Each row's arm as a label ("0", not "0.0"); a row with no arm or a control absent from the data is an
    error naming the column."""
    _require_columns(frame, [arm_column], "arm")
    raw = frame[arm_column]
    missing = int(raw.isna().sum())
    if missing:
        raise ValueError(
            f"{missing} of {len(raw)} rows have no arm in column {arm_column!r}; assign or drop them first"
        )
    labels = _labels(raw)
    if str(control) not in set(labels):
        raise ValueError(
            f"control arm {control!r} is not a value of column {arm_column!r}; "
            f"arms present: {sorted(set(labels))}"
        )
    return labels


def _outcome_list(frame: pd.DataFrame, outcomes: Sequence[str]) -> list[str]:
    # A bare string is a sequence of characters; take it as the one outcome it names.
    outcome_list = [outcomes] if isinstance(outcomes, str) else list(outcomes)
    _require_columns(frame, outcome_list, "outcome")
    return outcome_list


def _resolve_kinds(
    frame: pd.DataFrame, outcomes: list[str], kinds: Mapping[str, Kind] | None
) -> dict[str, Kind]:
    given = dict(kinds or {})
    for outcome, kind in given.items():
        if kind not in get_args(Kind):
            raise ValueError(
                f"kind of outcome {outcome!r} is {kind!r}; must be one of {list(get_args(Kind))}"
            )
    return {
        outcome: given[outcome] if outcome in given else outcome_kind(frame[outcome]) for outcome in outcomes
    }


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], role: str) -> None:
    absent = [column for column in columns if column not in frame.columns]
    if absent:
        raise ValueError(
            f"{role} column{'s' if len(absent) > 1 else ''} {', '.join(map(repr, absent))} not in the frame; "
            f"columns: {list(map(str, frame.columns))}"
        )


def segment_labels(values: pd.Series) -> pd.Series:
    return _labels(values).fillna(MISSING_SEGMENT)


def segment_order(values: pd.Series, labels: pd.Series) -> list[str]:
    """Segment labels in a report's order: categories in their declared order, numbers numerically, anything
    else by its text; "(missing)" last."""
    present = values.notna()
    first = {_label(value): value for value in _plain(values[present]).unique()}
    if isinstance(values.dtype, pd.CategoricalDtype):
        position = {_label(category): i for i, category in enumerate(values.dtype.categories)}
        order = sorted(first, key=lambda label: position[label])
    elif all(isinstance(v, numbers.Real) for v in first.values()):
        order = sorted(first, key=lambda label: float(first[label]))
    else:
        order = sorted(first)
    return order if present.all() else [*order, MISSING_SEGMENT]


def _labels(values: pd.Series) -> pd.Series:
    """Each value as its label (missing stays missing), worked out once per distinct value, not per row."""
    plain = _plain(values)
    return plain.map({value: _label(value) for value in plain.dropna().unique()})


def _plain(values: pd.Series) -> pd.Series:
    # A categorical column maps to a categorical and refuses new values such as "(missing)".
    return values.astype(object) if isinstance(values.dtype, pd.CategoricalDtype) else values


def _label(value: Hashable) -> str:
    # A float column of whole numbers (an int column that had missing values) should read "3", not "3.0".
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _whole(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not float(value).is_integer() or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    return int(value)


def _count(name: str, successes: Any, n: Any) -> tuple[int, int]:
    successes, n = _whole(f"{name} successes", successes), _whole(f"{name} n", n)
    if n == 0:
        raise TooFew(f"{name} has no observations (n={n})")
    if not 0 <= successes <= n:
        raise ValueError(f"{name} has {successes} successes out of n={n}")
    return successes, n


def _clean(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype="float64").ravel()
    array = array[~np.isnan(array)]
    if array.size < 2:
        raise TooFew(f"{name} has {array.size} non-missing values; comparing means needs at least 2")
    return array


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")


def _num(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def _interval(lo: Any, hi: Any) -> list[float | None]:
    return [_num(lo), _num(hi)]
