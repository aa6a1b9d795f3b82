"""The audience rule language: every operator, refusals that name the field and position, no code run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pushplan.audience_rules import FieldSpec, Kind, RuleError, Schema, compile_rule, evaluate, parse
from pushplan.domain import Campaign

SCHEMA = Schema(
    {
        "country": FieldSpec(Kind.text),
        "lifecycle_stage": FieldSpec(Kind.text, frozenset({"new", "active", "sleeping", "churned"})),
        "monetary_90d": FieldSpec(Kind.number),
        "push_opt_in": FieldSpec(Kind.flag),
        "vip": FieldSpec(Kind.flag),
    },
    frozenset({"purchase", "app_open"}),
)


@dataclass
class _Columns:
    frame: pd.DataFrame
    done: dict[tuple[str, int], list[str]]

    def column(self, name: str) -> pd.Series:
        return self.frame[name]

    def did(self, event: str, days: int) -> np.ndarray:
        return self.frame["user_id"].isin(self.done.get((event, days), [])).to_numpy()


USERS = _Columns(
    pd.DataFrame(
        {
            "user_id": ["a", "b", "c", "d", "e"],
            "country": ["DE", "FR", None, "DE", "US"],
            "lifecycle_stage": ["active", "sleeping", "churned", "new", None],
            "monetary_90d": [1500.0, 0.0, np.nan, 999.5, 1000.0],
            "push_opt_in": pd.array([True, False, True, None, True], dtype="boolean"),
            "vip": [True, False, False, False, True],
        }
    ),
    {("purchase", 30): ["a", "d"], ("app_open", 7): ["a", "b", "c"]},
)


def selected(text: str) -> list[str]:
    mask = evaluate(compile_rule(text, SCHEMA), USERS)
    return USERS.frame["user_id"][mask].tolist()


@pytest.mark.parametrize(
    ("text", "users"),
    [
        ('country = "DE"', ["a", "d"]),
        ("country == 'DE'", ["a", "d"]),
        ('country != "DE"', ["b", "e"]),  # no value: no match, even for !=
        ("monetary_90d > 1000", ["a"]),
        ("monetary_90d >= 1000", ["a", "e"]),
        ("monetary_90d < 1000", ["b", "d"]),
        ("monetary_90d <= 999.5", ["b", "d"]),
        ("monetary_90d = 0", ["b"]),
        ('lifecycle_stage in ("active", "sleeping")', ["a", "b"]),
        ('lifecycle_stage not in ("active", "sleeping")', ["c", "d"]),
        ("monetary_90d between 999 and 1000", ["d", "e"]),
        ("monetary_90d not between 999 and 1000", ["a", "b"]),
        ("push_opt_in", ["a", "c", "e"]),
        ("push_opt_in = false", ["b"]),
        ("not push_opt_in", ["b", "d"]),
        ("did purchase in last 30 days", ["a", "d"]),
        ("did not purchase in the last 30 days", ["b", "c", "e"]),
        ('vip or country = "FR"', ["a", "b", "e"]),
        ('vip and country = "DE"', ["a"]),
        ('NOT (vip OR country = "FR")', ["c", "d"]),
        ('vip or country = "FR" and push_opt_in', ["a", "e"]),  # `and` binds tighter than `or`
        ('(vip or country = "FR") and not did app_open in last 7 days', ["e"]),
        ("did purchase in last 30 days and did not app_open in last 7 days", ["d"]),
    ],
)
def test_each_operator_selects_the_right_users(text: str, users: list[str]) -> None:
    assert selected(text) == users


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ('contry = "DE"', "unknown field 'contry' (did you mean 'country'?)", 0),
        ('vip and lifecycle_stage = "asleep"', "field 'lifecycle_stage' has no value 'asleep'", 8),
        ('monetary_90d > "1000"', "field 'monetary_90d' is a number, compared with a text", 0),
        ('country > "DE"', "field 'country' is a text: only = and != apply to it", 0),
        ("vip and country", "field 'country' is a text, not yes/no", 8),
        ("country between 1 and 2", "'between' needs a number", 0),
        ("did buy in last 3 days", "unknown event 'buy'", 4),
        ("did purchase in last 9999 days", "at most 3650 days back", 21),
        ("country = ", "the rule ends too early", 10),
        ('country = "DE" vip', "unexpected 'vip'", 15),
        ("monetary_90d >> 1", "unexpected '>'", 14),
        ('country = "DE" ; drop table users', "unexpected character ';'", 15),
        ("(vip", "the rule ends too early", 4),
        ("   ", "the rule is empty", None),
    ],
)
def test_a_bad_rule_is_refused_naming_what_and_where(text: str, message: str, position: int | None) -> None:
    with pytest.raises(RuleError) as refused:
        compile_rule(text, SCHEMA)
    assert message in str(refused.value)
    assert refused.value.position == position


def test_nothing_in_a_rule_is_run_as_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for text in (
        f"__import__('os').system('touch {marker}')",
        f"country = __import__('os').system('touch {marker}')",
    ):
        with pytest.raises(RuleError):
            compile_rule(text, SCHEMA)
    # Inside quotes it is a text, compared with a column and never run.
    assert selected(f"country = \"{{__import__('os').system('touch {marker}')}}\"") == []
    assert not marker.exists()
    # A text that looks like code is only ever a value compared with a column.
    assert selected("country = \"__import__('os')\"") == []


def test_a_rule_says_what_it_reads() -> None:
    rule = parse(
        'vip and (country = "DE" or did purchase in last 30 days) and not did app_open in last 7 days'
    )
    assert rule.fields == ("vip", "country")
    assert rule.events == (("purchase", 30), ("app_open", 7))


def test_a_campaign_refuses_a_malformed_audience_and_keeps_a_good_one() -> None:
    spec = {
        "campaign_id": "c",
        "name": "c",
        "channels": ["push"],
        "variants": [{"variant_id": "a", "title": "Hello"}],
        "window": {"start": datetime(2026, 10, 6, tzinfo=UTC), "end": datetime(2026, 10, 7, tzinfo=UTC)},
    }
    with pytest.raises(ValueError, match=r"audience[\s\S]*unexpected 'and'.*at position 7"):
        Campaign.model_validate({**spec, "audience": "vip or and country"})
    kept = Campaign.model_validate({**spec, "audience": 'lifecycle_stage in ("active", "sleeping")'})
    assert Campaign.model_validate_json(kept.model_dump_json()).audience == kept.audience
