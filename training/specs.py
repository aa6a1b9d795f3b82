"""One spec per model: what it learns from, what it predicts, how it is judged; one pipeline runs all."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from training.frames import VARIANT_FEATURES
from training.habits import RULES

CONTEXT_COLUMNS = ("candidate_local_hour", "is_weekend")


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the CLI's name
    registered_name: str  # MLflow registry name
    feature_service: str  # the Feast contract it is trained and served with
    examples: Literal["sends", "engagements"]
    label: str
    label_window: timedelta | None
    objective: str
    metric: str  # the evaluation metric that decides promotion
    higher_is_better: bool
    baselines: tuple[str, ...]
    extra_columns: tuple[str, ...] = ()  # request context and variant features beside the service's
    params: dict[str, Any] = field(default_factory=dict)
    calibrate: bool = False
    chooses_variant: bool = False  # judged also by the off-policy value of its variant choices
    blends_habits: bool = False  # the trees' hour probabilities mixed with the user's habits (HourBlend)
    max_rows: int = 150_000

    @property
    def n_classes(self) -> int:
        return 24 if self.objective == "multiclass" else 2


_BASE_PARAMS: dict[str, Any] = {
    "n_estimators": 400,
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 50,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
    "verbose": -1,
    "n_jobs": 2,
}

CLICK = ModelSpec(
    name="click",
    registered_name="pushplan-click",
    feature_service="click_v1",
    examples="sends",
    label="push_clicked within 24 hours of push_sent (same user and campaign)",
    label_window=timedelta(hours=24),
    objective="binary",
    metric="log_loss",
    higher_is_better=False,
    baselines=("base_rate",),
    extra_columns=(*CONTEXT_COLUMNS, *VARIANT_FEATURES),
    params={**_BASE_PARAMS, "num_leaves": 15, "min_child_samples": 100},
    calibrate=True,
)

SEND_HOUR = ModelSpec(
    name="send-hour",
    registered_name="pushplan-send-hour",
    feature_service="send_hour_v2",
    examples="engagements",
    label="local hour (0-23) of an engagement: app open, purchase, push open or click",
    label_window=None,
    objective="multiclass",
    metric="within1_hit_rate",
    higher_is_better=True,
    baselines=RULES,
    extra_columns=("is_weekend",),
    blends_habits=True,
    params={
        **_BASE_PARAMS,
        "n_estimators": 150,
        "learning_rate": 0.1,
        "num_leaves": 15,
        "min_child_samples": 100,
    },
    max_rows=60_000,
)

VARIANT = ModelSpec(
    name="variant",
    registered_name="pushplan-variant",
    feature_service="variant_v1",
    examples="sends",
    label="push_clicked within 24 hours of push_sent, scored per variant",
    label_window=timedelta(hours=24),
    objective="binary",
    metric="snips_model",
    higher_is_better=True,
    baselines=("random_variant", "best_variant_overall"),
    chooses_variant=True,
    extra_columns=VARIANT_FEATURES,
    params={**_BASE_PARAMS, "num_leaves": 15, "min_child_samples": 100},
)

SPECS = {spec.name: spec for spec in (CLICK, SEND_HOUR, VARIANT)}
