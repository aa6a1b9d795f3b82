"""Uplift modelling for a randomized campaign: who did the push move, and who would have acted anyway.

T- and X-learners over LightGBM estimate each user's uplift τ(x) = E[y | x, pushed] − E[y | x, not pushed] and
their control outcome μ0(x); the Qini curve and coefficient judge the ranking on a held-out split, and
`uplift_analysis` gathers it all into a JSON-safe dict for the operators' uplift report.

Why hand-written rather than a library (checked against the packages' own metadata, causalml 0.18.0 and
scikit-uplift 0.5.1):
- causalml has T/X learners that accept LightGBM, but its runtime requirements pin forestci==0.6 and
  pathos==0.2.9 exactly, pull in xgboost, shap, seaborn, graphviz, pydot and even black>=26.1 at run time,
  and raise our scipy/statsmodels floors (scipy>=1.16, statsmodels>=0.14.5) — a heavy, pinned tree for
  what is a few dozen lines of modelling here.
- scikit-uplift does not pin an old scikit-learn (it asks for >=0.21), but its last release is from 2022,
  it has no X-learner, its qini_curve rejects any outcome that is not 0/1 (we also rank revenue), and it
  imports sklearn.utils.extmath.stable_cumsum, deprecated in scikit-learn 1.8 and removed in 1.10, which
  our scikit-learn>=1.6,<2 range admits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from reports.statistics import segment_labels, segment_order

Predictor = Callable[[pd.DataFrame], tuple[np.ndarray, np.ndarray]]
_Model = Callable[[pd.DataFrame], np.ndarray]

# Small, smooth models. Uplift is a difference of fitted outcomes, so their variance is what hurts: on 32
# synthetic campaigns (6,000 users, the effect in a third of them, two noise columns) 100 trees of 7 leaves
# of at least 100 rows gave a held-out Qini coefficient above 0.1 for all 64 learner fits, where 200 trees of
# 15 leaves of 20 rows (which chase the noise columns) gave 60 of 64, and took twice as long.
_LGB_PARAMS: dict[str, Any] = {
    "n_estimators": 100,
    "learning_rate": 0.05,
    "num_leaves": 7,
    "verbose": -1,
    # One thread: on a few thousand rows threads cost more than they save, and with the other core busy (a
    # parallel test run, the API) OpenMP's spin-waiting made a 0.06 s fit take a second with two.
    "n_jobs": 1,
    # Same seed, same thread count, same trees: the report must not change between two runs.
    "deterministic": True,
    "force_col_wise": True,
}
# Leaves of at least 5% of the rows a model sees, between 10 and 100, so that a small campaign (min_rows is
# 50 per arm) still gets a model that can split at all.
_LEAF_SHARE, _LEAF_MIN, _LEAF_MAX = 0.05, 10, 100
# Segment verdicts (see uplift_analysis): "moved" needs τ at least half the overall absolute uplift and at
# least two standard errors of the segment's own observed treated-vs-control difference; "acts anyway" needs
# μ0 at least 1.5x the overall control mean.
_MEANINGFUL_SHARE = 0.5
_NOISE_FLOOR_SE = 2.0
_ACTS_ANYWAY_RATIO = 1.5
_CROSS_FIT_FOLDS = 3


def _fit(X: pd.DataFrame, y: np.ndarray, *, binary: bool, seed: int) -> _Model:
    """One LightGBM model returning E[y | x]; a constant when y is (a model cannot split a constant)."""
    if len(y) == 0:
        raise ValueError("cannot fit an outcome model on no rows")
    if np.all(y == y[0]):
        value = float(y[0])
        return lambda Z: np.full(len(Z), value)
    params = {
        **_LGB_PARAMS,
        "min_child_samples": int(np.clip(round(_LEAF_SHARE * len(y)), _LEAF_MIN, _LEAF_MAX)),
        "random_state": seed,
    }
    if binary:
        classifier = lgb.LGBMClassifier(**params).fit(X, y.astype(int))
        # predict_proba is typed loosely (it may return a list for some inputs); ours is a 2-column array.
        return lambda Z: np.asarray(classifier.predict_proba(Z), dtype=float)[:, 1]
    regressor = lgb.LGBMRegressor(**params).fit(X, y)
    return lambda Z: np.asarray(regressor.predict(Z), dtype=float)


def _arms(
    X: pd.DataFrame, treated: np.ndarray, y: np.ndarray, *, binary: bool, seed: int
) -> tuple[np.ndarray, np.ndarray, _Model, _Model]:
    """μ0 fitted on the control rows and μ1 on the treated ones (shared by both learners)."""
    t = np.asarray(treated).astype(bool)
    y = np.asarray(y, dtype=float)
    if len(t) != len(X) or len(y) != len(X):
        raise ValueError(f"X has {len(X)} rows, treated {len(t)}, y {len(y)}")
    if t.all() or not t.any():
        raise ValueError("both a treated and a control row are needed")
    mu0 = _fit(X[~t], y[~t], binary=binary, seed=seed)
    mu1 = _fit(X[t], y[t], binary=binary, seed=seed)
    return t, y, mu0, mu1


def t_learner(
    X: pd.DataFrame, treated: np.ndarray, y: np.ndarray, *, binary: bool, seed: int = 0
) -> Predictor:
    """Fits μ0 on control rows and μ1 on treated rows; returns predict(X) -> (uplift τ = μ1 − μ0, μ0).

    X must already be LightGBM-ready (numeric, bool or pandas category columns); `uplift_analysis` does that.
    """
    _, _, mu0, mu1 = _arms(X, treated, y, binary=binary, seed=seed)
    return _t_predict(mu0, mu1)


def _t_predict(mu0: _Model, mu1: _Model) -> Predictor:
    def predict(Z: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        control = mu0(Z)
        return mu1(Z) - control, control

    return predict


def x_learner(
    X: pd.DataFrame, treated: np.ndarray, y: np.ndarray, *, binary: bool, seed: int = 0
) -> Predictor:
    """Künzel et al. 2019: μ0, μ1 as above; imputed effects D1 = y1 − μ0(x1), D0 = μ1(x0) − y0; regress τ1, τ0
    on them; τ = g·τ0 + (1−g)·τ1 with g the propensity (a randomized campaign: the treated share, constant);
    returns (τ, μ0).
    """
    t, y_, mu0, mu1 = _arms(X, treated, y, binary=binary, seed=seed)
    return _x_predict(X, t, y_, mu0, mu1, seed=seed)


def _x_predict(
    X: pd.DataFrame, t: np.ndarray, y: np.ndarray, mu0: _Model, mu1: _Model, *, seed: int
) -> Predictor:
    # The imputed effects are differences, so both effect models are regressions even for a binary outcome.
    tau1 = _fit(X[t], y[t] - mu0(X[t]), binary=False, seed=seed)
    tau0 = _fit(X[~t], mu1(X[~t]) - y[~t], binary=False, seed=seed)
    # Künzel et al. weigh τ0 by the propensity g: where treated rows are many, μ1 is good, so τ0 (built from
    # μ1) deserves the larger weight. Randomized, so g is one number.
    g = float(t.mean())

    def predict(Z: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return g * tau0(Z) + (1.0 - g) * tau1(Z), mu0(Z)

    return predict


def qini_curve(uplift: np.ndarray, treated: np.ndarray, y: np.ndarray, points: int = 101) -> pd.DataFrame:
    """Users sorted by predicted uplift, highest first; at each targeted fraction φ the Qini value
    Q(φ) = Y_t(φ) − Y_c(φ)·N_t(φ)/N_c(φ) (incremental outcomes among the targeted; 0 when N_c(φ)=0), and the
    random line φ·Q(1). Columns: fraction, qini, random.

    Ties are averaged, not broken by row order: the cumulative counts N_t, N_c and sums Y_t, Y_c are taken at
    the end of each group of equal uplift and interpolated linearly inside it, which is their expectation when
    the group is targeted in a random order; Q is then computed from those. So a constant uplift gives exactly
    the random line, and shuffling the rows never changes the curve.
    """
    u = np.asarray(uplift, dtype=float)
    t = np.asarray(treated).astype(bool)
    y_ = np.asarray(y, dtype=float)
    if not len(u) == len(t) == len(y_):
        raise ValueError(f"uplift has {len(u)} rows, treated {len(t)}, y {len(y_)}")
    if len(u) == 0:
        raise ValueError("a Qini curve needs at least one row")
    if points < 2:
        raise ValueError("points must be at least 2")
    order = np.argsort(-u, kind="stable")
    u, t, y_ = u[order], t[order], y_[order]
    # The last position of each group of equal uplift, then the cumulative quantities at 0 and at those ends.
    ends = np.r_[np.flatnonzero(np.diff(u) != 0), len(u) - 1]
    at = np.r_[0, ends + 1].astype(float)

    def cumulative(values: np.ndarray) -> np.ndarray:
        return np.r_[0.0, np.cumsum(values, dtype=float)[ends]]

    fraction = np.linspace(0.0, 1.0, points)
    position = fraction * len(u)
    n_t = np.interp(position, at, cumulative(t.astype(float)))
    n_c = np.interp(position, at, cumulative((~t).astype(float)))
    y_t = np.interp(position, at, cumulative(np.where(t, y_, 0.0)))
    y_c = np.interp(position, at, cumulative(np.where(t, 0.0, y_)))
    # No control row targeted yet: no baseline to subtract, so no incremental outcome can be claimed.
    has_control = n_c > 1e-12
    qini = np.where(has_control, y_t - y_c * n_t / np.where(has_control, n_c, 1.0), 0.0)
    return pd.DataFrame({"fraction": fraction, "qini": qini, "random": fraction * qini[-1]})


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    # np.trapz is deprecated and np.trapezoid needs numpy 2; we still allow numpy 1.26.
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def qini_coefficient(curve: pd.DataFrame) -> float:
    """Area between the Qini curve and the random line (trapezoid over fraction), divided by |Q(1)|.

    Q is in outcome units times users, so the raw area grows with the campaign's size and the outcome's scale;
    dividing by |Q(1)|, the whole campaign's incremental outcome, makes the coefficient unit-free and
    comparable across campaigns: 0 is no better than random targeting, below 0 is worse, and a ranking that
    finds the whole gain in a vanishing share of users scores 0.5 (more when the push harms some users, as Q
    then peaks above Q(1)). When Q(1) is 0 (no overall effect) there is nothing to divide by and the raw
    area is returned. When Q(1) is merely small the ratio swings widely, so show Q(1) (the random line's
    last value) beside it.
    """
    fraction = curve["fraction"].to_numpy(dtype=float)
    gap = curve["qini"].to_numpy(dtype=float) - curve["random"].to_numpy(dtype=float)
    area = _trapezoid(gap, fraction)
    total = float(curve["qini"].iloc[-1])
    return area / abs(total) if abs(total) > 1e-12 else area


def _prepare(frame: pd.DataFrame, covariates: Sequence[str]) -> pd.DataFrame:
    """Covariates as LightGBM reads them: object and bool columns become pandas categories, fixed on the
    whole frame so that the train and test splits (and the cross-fitting folds) agree on the codes."""
    X = frame[list(covariates)].copy()
    for column in X.columns:
        values = X[column]
        # Anything but numbers (object, pandas strings, bools) is categorical to LightGBM.
        if pd.api.types.is_bool_dtype(values) or not (
            pd.api.types.is_numeric_dtype(values) or isinstance(values.dtype, pd.CategoricalDtype)
        ):
            X[column] = values.astype(object).astype("category")
    return X.reset_index(drop=True)


def _curve_dict(curve: pd.DataFrame, column: str) -> dict[str, list[float]]:
    return {"fraction": [float(v) for v in curve["fraction"]], "qini": [float(v) for v in curve[column]]}


def _deciles(uplift: np.ndarray, treated: np.ndarray, y: np.ndarray) -> list[dict[str, Any]]:
    """Ten groups by predicted uplift, highest first; tied uplifts share a decile (average rank), so the
    groups never depend on row order and may be a little uneven."""
    rank = pd.Series(-uplift).rank(method="average").to_numpy()
    decile = np.clip(np.ceil(rank / len(uplift) * 10), 1, 10).astype(int)
    rows = []
    for d in range(1, 11):
        members = decile == d
        if not members.any():
            continue
        in_t, in_c = members & treated, members & ~treated
        observed = float(y[in_t].mean() - y[in_c].mean()) if in_t.any() and in_c.any() else None
        rows.append(
            {
                "decile": d,
                "n": int(members.sum()),
                "predicted_uplift": float(uplift[members].mean()),
                "observed_uplift": observed,
            }
        )
    return rows


def _cross_fit(
    X: pd.DataFrame, t: np.ndarray, y: np.ndarray, learner: str, *, binary: bool, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold (τ, μ0) for every row: each row is scored by a model fitted on the other folds only."""
    tau, mu0 = np.zeros(len(X)), np.zeros(len(X))
    folds = StratifiedKFold(n_splits=_CROSS_FIT_FOLDS, shuffle=True, random_state=seed)
    fit = x_learner if learner == "x_learner" else t_learner
    for train, held in folds.split(X, t):
        predict = fit(X.iloc[train], t[train], y[train], binary=binary, seed=seed)
        tau[held], mu0[held] = predict(X.iloc[held])
    return tau, mu0


def _verdict(tau: float, mu0: float, noise: float, overall_uplift: float, control_mean: float) -> str:
    moved = tau > 0 and tau >= _MEANINGFUL_SHARE * abs(overall_uplift) and tau >= _NOISE_FLOOR_SE * noise
    anyway = control_mean > 0 and mu0 >= _ACTS_ANYWAY_RATIO * control_mean
    if moved and anyway:
        return "moved, and acts anyway"
    if moved:
        return "moved"
    return "acts anyway" if anyway else "not moved"


def _standard_error(y: np.ndarray, t: np.ndarray) -> float:
    """Standard error of the difference in means between the treated and control rows (inf below 2 each)."""
    if min(t.sum(), (~t).sum()) < 2:
        return float("inf")
    return float(np.sqrt(y[t].var(ddof=1) / t.sum() + y[~t].var(ddof=1) / (~t).sum()))


def _segment_rows(
    values: pd.Series,
    tau: np.ndarray,
    mu0: np.ndarray,
    y: np.ndarray,
    t: np.ndarray,
    overall: float,
    control: float,
) -> list[dict[str, Any]]:
    """Mean τ and μ0 per value of one segment column (a missing value is its own group, "(missing)")."""
    labels = segment_labels(values).to_numpy()
    rows = []
    for value in segment_order(values, pd.Series(labels)):  # the same labels and order as the report's
        members = labels == value
        t_mean, c_mean = float(tau[members].mean()), float(mu0[members].mean())
        noise = _standard_error(y[members], t[members])
        rows.append(
            {
                "value": value,
                "n": int(members.sum()),
                "predicted_uplift": t_mean,
                "predicted_control": c_mean,
                "verdict": _verdict(t_mean, c_mean, noise, overall, control),
            }
        )
    return rows


def uplift_analysis(
    frame: pd.DataFrame,
    covariates: Sequence[str],
    treated: np.ndarray | pd.Series,
    outcome: str,
    *,
    segments: Sequence[str] = (),
    test_size: float = 0.3,
    seed: int = 0,
    min_rows: int = 50,
) -> dict[str, Any]:
    """Both learners on a randomized campaign, judged on a held-out split, with a verdict per segment.

    `treated` is aligned with `frame` by position (a Series' index is ignored). Rows whose outcome is missing
    (or infinite) are left out; "overall" in the result is over the rows kept. The split is stratified by
    treatment; the learners fit on the training part and the Qini curves and deciles are measured on the
    held-out part. The better learner (higher Qini coefficient; the T-learner on a tie) then scores every row
    out of fold (3-fold cross-fitting) for the segments.

    Segment verdicts, from the mean predicted uplift τ and control outcome μ0 of the segment's rows:
    - τ is meaningful ("moved") when τ > 0, τ ≥ 0.5 × |overall uplift| (treated mean − control mean over all
      rows), and τ ≥ 2 standard errors of the segment's own observed treated-vs-control difference, so that a
      small or noisy segment is not called moved on the models' noise;
    - the segment would act anyway when μ0 ≥ 1.5 × the overall control mean (and that mean is positive);
    - "moved, and acts anyway" for both, "moved" or "acts anyway" for one, "not moved" for neither.

    Returns a JSON-safe dict; with too few rows in an arm, or an outcome constant within an arm of the
    training split, `{"outcome": ..., "skipped": reason}` instead. A missing column raises ValueError.
    """
    missing = [c for c in [*covariates, outcome, *segments] if c not in frame.columns]
    if missing:
        raise ValueError(f"column(s) not in the frame: {', '.join(dict.fromkeys(missing))}")
    t_all = np.asarray(treated).astype(bool)
    if len(t_all) != len(frame):
        raise ValueError(f"treated has {len(t_all)} entries, the frame {len(frame)} rows")
    raw = frame[outcome]
    y_all = pd.to_numeric(raw.astype(float) if pd.api.types.is_bool_dtype(raw) else raw).to_numpy(dtype=float)
    keep = np.isfinite(y_all)
    X = _prepare(frame.loc[keep], covariates)
    y, t = y_all[keep], t_all[keep]
    segment_values = frame.loc[keep, list(segments)].reset_index(drop=True)

    n_treated, n_control = int(t.sum()), int((~t).sum())
    if min(n_treated, n_control) < max(min_rows, 2):
        return {
            "outcome": outcome,
            "skipped": f"too few rows: {n_treated} treated and {n_control} control with a known {outcome!r}, "
            f"at least {max(min_rows, 2)} of each are needed",
        }
    binary = bool(np.isin(y, (0.0, 1.0)).all())
    train, test = train_test_split(np.arange(len(y)), test_size=test_size, stratify=t, random_state=seed)
    for arm, rows in (("treated", train[t[train]]), ("control", train[~t[train]])):
        if len(rows) == 0 or np.all(y[rows] == y[rows][0]):
            return {
                "outcome": outcome,
                "skipped": f"{outcome!r} is the same for every {arm} row of the training split, "
                "so there is nothing to learn about what the push changes",
            }

    X_train, X_test = X.iloc[train], X.iloc[test]
    t_train, y_train, mu0, mu1 = _arms(X_train, t[train], y[train], binary=binary, seed=seed)
    predictors = {  # the X-learner reuses the T-learner's μ0 and μ1 rather than fitting them again
        "t_learner": _t_predict(mu0, mu1),
        "x_learner": _x_predict(X_train, t_train, y_train, mu0, mu1, seed=seed),
    }
    t_test, y_test = t[test], y[test]
    learners: dict[str, Any] = {}
    curves: dict[str, pd.DataFrame] = {}
    uplift_test: dict[str, np.ndarray] = {}
    for name, predict in predictors.items():
        uplift_test[name] = predict(X_test)[0]
        curves[name] = qini_curve(uplift_test[name], t_test, y_test)
        learners[name] = {
            "qini_coefficient": qini_coefficient(curves[name]),
            "curve": _curve_dict(curves[name], "qini"),
        }
    best = max(learners, key=lambda name: (learners[name]["qini_coefficient"], name == "t_learner"))

    overall_uplift = float(y[t].mean() - y[~t].mean())
    control_mean = float(y[~t].mean())
    segment_report: dict[str, list[dict[str, Any]]] = {}
    if len(segments):
        tau_oof, mu0_oof = _cross_fit(X, t, y, best, binary=binary, seed=seed)
        for column in segments:
            segment_report[column] = _segment_rows(
                segment_values[column], tau_oof, mu0_oof, y, t, overall_uplift, control_mean
            )

    return {
        "outcome": outcome,
        "binary": binary,
        "rows": {"train": len(train), "test": len(test), "treated": n_treated, "control": n_control},
        "overall": {
            "treated_mean": float(y[t].mean()),
            "control_mean": control_mean,
            "uplift": overall_uplift,
        },
        "learners": learners,
        "random_curve": _curve_dict(curves["t_learner"], "random"),
        "deciles": _deciles(uplift_test[best], t_test, y_test),
        "best_learner": best,
        "segments": segment_report,
    }
