"""The users file's custom attributes (its columns beyond the contract) and what kind each holds:
the fields audience rules and custom labels may use besides the built-in ones."""

from __future__ import annotations

from functools import lru_cache

import pandas as pd
import pyarrow.parquet as pq

from features.schema import USER_OPTIONAL, USER_REQUIRED
from pushplan.audience_rules import Kind
from pushplan.settings import Settings

# The users file's contract columns; any other column is a custom attribute.
_USER_CONTRACT = (*USER_REQUIRED, *USER_OPTIONAL)


def attributes(settings: Settings) -> dict[str, Kind]:
    """The users file's extra columns and their kinds (read again only when the file changes)."""
    path = settings.users_path
    return _attribute_kinds(str(path), path.stat().st_mtime_ns) if path.exists() else {}


@lru_cache(maxsize=4)
def _attribute_kinds(path: str, _mtime_ns: int) -> dict[str, Kind]:
    extra = [c for c in pq.read_schema(path).names if c not in _USER_CONTRACT]
    return attributes_of(pq.read_table(path, columns=extra).to_pandas()) if extra else {}


def attributes_of(users: pd.DataFrame) -> dict[str, Kind]:
    """A users frame's extra columns and their kinds: from the column's type, or, for text (a CSV's
    columns arrive as text), from its values: all numbers is a number, all true/false is yes/no."""
    kinds = {}
    for name in users.columns:
        if name in _USER_CONTRACT:
            continue
        column = users[name]
        if pd.api.types.is_bool_dtype(column):
            kinds[name] = Kind.flag
        elif pd.api.types.is_numeric_dtype(column):
            kinds[name] = Kind.number
        else:
            values = pd.Series(column.dropna().unique(), dtype=object).astype(str).str.strip()
            values = values[values != ""]
            if len(values) and values.str.lower().isin(_FLAG_TEXT).all():
                kinds[name] = Kind.flag
            elif len(values) and pd.to_numeric(values, errors="coerce").notna().all():
                kinds[name] = Kind.number
            else:
                kinds[name] = Kind.text
    return kinds


_FLAG_TEXT = {"true": True, "false": False}


def as_kind(values: pd.Series, kind: Kind) -> pd.Series:
    """A users file column as its kind: text numbers as numbers, true/false text as yes/no."""
    if kind == Kind.number:
        return pd.to_numeric(values, errors="coerce")
    if kind == Kind.flag and not pd.api.types.is_bool_dtype(values):
        return values.astype(str).str.strip().str.lower().map(_FLAG_TEXT).astype("boolean")
    return values.astype(object).where(values.astype(str).str.strip() != "", None)
