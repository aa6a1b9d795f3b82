"""Model inputs: variant text features, and the transformer that turns Feast rows into a LightGBM frame.

The transformer is the first step of every logged model, so serving hands a model the same Feast
columns training did and gets the same encoding: 24-hour vectors expanded into columns, categories
fixed in advance (an unseen category becomes missing, never an error), booleans as numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from features.columns import hour_matrix
from features.tables import LIFECYCLE_STAGES, RFM_SEGMENTS
from pushplan.domain import VARIANT_TAGS

HOUR_VECTORS = (
    "activity_by_hour",
    "activity_by_hour_weekend",
    "push_engagement_by_hour",
    "hours_weekday_recent",
    "hours_weekend_recent",
    "hours_purchase_recent",
    "hours_push_recent",
    "hours_all_time",
)
CATEGORIES: dict[str, tuple[str, ...]] = {
    "platform": ("android", "ios", "web"),
    "lifecycle_stage": LIFECYCLE_STAGES,
    "rfm_segment": RFM_SEGMENTS,
    "timezone_group": ("americas", "europe_africa", "asia_pacific"),
}

_URGENCY = re.compile(r"\b(now|today|tonight|hurry|last chance|only|left|ends?|expires?|soon)\b", re.I)
_DISCOUNT = re.compile(r"(\b(sale|off|save|deal|free|discount|coupon)\b|%)", re.I)
_PERSONAL = re.compile(r"\b(you|your|yours|picked|for you)\b", re.I)
_EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")
VARIANT_FEATURES = (
    "title_length",
    "title_words",
    "title_has_number",
    "title_has_emoji",
    "title_is_question",
    "title_urgency_words",
    "title_discount_words",
    "title_personal_words",
    *(f"tag_{tag}" for tag in VARIANT_TAGS),
)


def variant_features(titles: Sequence[str], tags: Sequence[Sequence[str]]) -> pd.DataFrame:
    """Features of variants from their text and tags, so a title never seen in training is scored."""
    rows = []
    for title, variant_tags in zip(titles, tags, strict=True):
        text = str(title)
        tag_set = set(variant_tags) if variant_tags is not None else set()
        rows.append(
            {
                "title_length": len(text),
                "title_words": len(text.split()),
                "title_has_number": float(bool(re.search(r"\d", text))),
                "title_has_emoji": float(bool(_EMOJI.search(text))),
                "title_is_question": float(text.rstrip().endswith("?")),
                "title_urgency_words": len(_URGENCY.findall(text)),
                "title_discount_words": len(_DISCOUNT.findall(text)),
                "title_personal_words": len(_PERSONAL.findall(text)),
                **{f"tag_{tag}": float(tag in tag_set) for tag in VARIANT_TAGS},
            }
        )
    return pd.DataFrame(rows, columns=list(VARIANT_FEATURES)).astype("float64")


REGIONS = {
    "America": "americas",
    "US": "americas",
    "Europe": "europe_africa",
    "Africa": "europe_africa",
    "Asia": "asia_pacific",
    "Australia": "asia_pacific",
    "Pacific": "asia_pacific",
}


def timezone_group(zones: pd.Series) -> pd.Series:
    """A coarse region from an IANA name: enough for slices and a model input, robust to new zones."""
    return zones.fillna("").str.split("/").str[0].map(REGIONS)


def zone_group(zone: object) -> str | None:
    """`timezone_group` of one zone (serving's per-request path: no Series for one value)."""
    return REGIONS.get(zone.split("/")[0]) if isinstance(zone, str) else None


class FeatureFrame(BaseEstimator, TransformerMixin):
    """Select and encode a model's input columns from a frame of Feast features (+ context)."""

    def __init__(self, columns: Sequence[str] = ()) -> None:
        self.columns = columns

    def fit(self, frame: pd.DataFrame, y: object = None) -> FeatureFrame:
        self.output_columns_ = list(self.transform(frame.head(1)).columns)
        return self

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        out: dict[str, pd.Series | np.ndarray] = {}
        for column in self.columns:
            if column in HOUR_VECTORS:
                matrix = hour_matrix(frame[column])
                for hour in range(24):
                    out[f"{column}_{hour:02d}"] = matrix[:, hour]
            elif column == "timezone":
                out["timezone_group"] = pd.Categorical(
                    timezone_group(frame[column]), categories=CATEGORIES["timezone_group"]
                )
            elif column in CATEGORIES:
                out[column] = pd.Categorical(frame[column], categories=CATEGORIES[column])
            else:
                out[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64").to_numpy()
        return pd.DataFrame(out, index=frame.index)
