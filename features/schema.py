"""The users and events file contract (docs/event-store.md) and its row-level validation.

Validation is vectorised over a chunk of rows and reports the first bad rows by their 1-based row
number in the file (header not counted), the column and the reason. It is written here rather than
with a dataframe-validation library because the contract needs file-global row numbers across
streamed chunks, the IANA zone and UTC-offset checks, and a message a person can act on; the checks
themselves are a handful of pandas expressions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from zoneinfo import available_timezones

import numpy as np
import pandas as pd
import pyarrow as pa

from pushplan.domain import Channel, event_name_problem, properties_problem


class Kind(StrEnum):
    users = "users"
    events = "events"
    campaigns = "campaigns"


EVENT_REQUIRED = ("event_id", "user_id", "event_type", "timestamp")
EVENT_OPTIONAL = ("campaign_id", "variant_id", "channel", "value", "propensity", "properties")
USER_REQUIRED = ("user_id", "timezone", "push_opt_in")
USER_OPTIONAL = ("country", "platform", "signup_at", "sms_opt_in", "email_opt_in")
OPT_IN_COLUMNS = ("push_opt_in", "sms_opt_in", "email_opt_in")

# How events are stored: the contract's columns with fixed types, plus the partition column.
EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("event_type", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("campaign_id", pa.string()),
        ("variant_id", pa.string()),
        ("channel", pa.string()),
        ("value", pa.float64()),
        ("propensity", pa.float64()),
        ("properties", pa.string()),  # a flat JSON object, compact with sorted keys; null if none
    ]
)


MAX_REPORTED_PROBLEMS = 5
# A clock time followed by Z or an offset; a date alone, or a time without an offset, names no instant.
_OFFSET_SUFFIX = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"
_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


@dataclass(frozen=True)
class Problem:
    """One bad cell: `row` is 1-based within the file, header not counted."""

    row: int
    column: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}, column {self.column!r}: {self.reason}"


class RowsRefused(ValueError):
    """A chunk had bad rows; carries the first few, in row order, and how many there were."""

    def __init__(self, problems: list[Problem], total: int) -> None:
        self.problems = sorted(problems, key=lambda p: p.row)[:MAX_REPORTED_PROBLEMS]
        self.total = total
        super().__init__("; ".join(map(str, self.problems)))


class _Checker:
    """Collects problems over one chunk; each check is a boolean mask of bad rows."""

    def __init__(self, first_row: int) -> None:
        self.first_row = first_row
        self.problems: list[Problem] = []
        self.total = 0

    def flag(self, mask: pd.Series | np.ndarray, column: str, reason_of: object) -> None:
        """`reason_of` is a message, or a function of the bad value giving one."""
        bad = np.flatnonzero(np.asarray(mask, dtype=bool))
        if bad.size == 0:
            return
        self.total += int(bad.size)
        for position in bad[:MAX_REPORTED_PROBLEMS]:
            reason = reason_of(position) if callable(reason_of) else str(reason_of)
            self.problems.append(Problem(self.first_row + int(position), column, reason))

    def raise_if_any(self) -> None:
        if self.problems:
            raise RowsRefused(self.problems, self.total)


def detect_kind(columns: list[str]) -> Kind | None:
    """Events carry `event_id` and `event_type`; a users file carries `user_id` without them."""
    names = set(columns)
    if {"event_id", "event_type"} <= names:
        return Kind.events
    if "user_id" in names and not names & {"event_id", "event_type"}:
        return Kind.users
    return None


def check_columns(columns: list[str], kind: Kind) -> None:
    """Refuse a file whose header misses a required column, or (events) names an unknown one.

    An unknown events column is refused rather than dropped: a misspelt `propensty` would
    otherwise lose its values without anyone noticing. Users files keep extra columns as attributes.
    """
    required = EVENT_REQUIRED if kind is Kind.events else USER_REQUIRED
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"missing required column(s) {', '.join(map(repr, missing))} for a {kind} file")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise ValueError(f"column(s) {', '.join(map(repr, duplicated))} appear more than once")
    if kind is Kind.events:
        unknown = [c for c in columns if c not in EVENT_REQUIRED + EVENT_OPTIONAL]
        if unknown:
            allowed = ", ".join(EVENT_REQUIRED + EVENT_OPTIONAL)
            raise ValueError(
                f"unknown column(s) {', '.join(map(repr, unknown))}; events columns are: {allowed}"
            )


@lru_cache(maxsize=1)
def _iana_zones() -> frozenset[str]:
    return frozenset(available_timezones())


# Arrow-backed strings keep the per-cell work (strip, compare, membership) in Arrow's C++ kernels.
TEXT = pd.StringDtype("pyarrow")


def _as_text(values: pd.Series) -> pd.Series:
    return values if values.dtype == TEXT else values.astype(TEXT)


def _is_missing(values: pd.Series) -> pd.Series:
    if pd.api.types.is_object_dtype(values.dtype) or pd.api.types.is_string_dtype(values.dtype):
        text = _as_text(values).str.strip()
        blank = text.isna() | (text == "")
        return pd.Series(blank.to_numpy(dtype=bool, na_value=True), index=values.index)
    return values.isna()


def _text(chk: _Checker, frame: pd.DataFrame, column: str, *, required: bool) -> pd.Series:
    text = _as_text(frame[column]).str.strip()
    missing = _is_missing(text)
    if required:
        chk.flag(missing, column, "is empty")
    return text.where(~missing)


def _timestamp(chk: _Checker, frame: pd.DataFrame, column: str, *, required: bool) -> pd.Series:
    """Parse to UTC; a value without a UTC offset is refused, since its instant is unknown."""
    values = frame[column]
    missing = _is_missing(values)
    if required:
        chk.flag(missing, column, "is empty")
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        chk.flag(~missing, column, "has no time zone (store timestamps in UTC or with an offset)")
        return pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")
    text = _as_text(values).str.strip()
    no_offset = ~missing & ~text.str.contains(_OFFSET_SUFFIX, regex=True).to_numpy(dtype=bool, na_value=False)
    chk.flag(no_offset, column, lambda i: f"{text.iloc[i]!r} has no UTC offset (write Z or +HH:MM)")
    parsed = pd.to_datetime(text.where(~missing & ~no_offset), utc=True, format="ISO8601", errors="coerce")
    chk.flag(
        ~missing & ~no_offset & parsed.isna(),
        column,
        lambda i: f"{text.iloc[i]!r} is not an ISO 8601 timestamp",
    )
    return parsed


def _number(chk: _Checker, frame: pd.DataFrame, column: str) -> pd.Series:
    values = frame[column]
    missing = _is_missing(values)
    numbers = pd.to_numeric(values.where(~missing), errors="coerce").astype("float64")
    chk.flag(~missing & numbers.isna(), column, lambda i: f"{values.iloc[i]!r} is not a number")
    chk.flag(~missing & np.isinf(numbers.fillna(0.0)), column, "is not finite")
    return numbers


def _boolean(chk: _Checker, frame: pd.DataFrame, column: str, *, required: bool) -> pd.Series:
    values = frame[column]
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.astype(bool)
    missing = _is_missing(values)
    if required:
        chk.flag(missing, column, "is empty (write true or false)")
    text = _as_text(values).str.strip().str.lower()
    truthy, falsy = text.isin(_TRUE).to_numpy(dtype=bool), text.isin(_FALSE).to_numpy(dtype=bool)
    chk.flag(~missing & ~truthy & ~falsy, column, lambda i: f"{values.iloc[i]!r} is not true or false")
    return pd.Series(np.asarray(truthy, dtype=bool), index=frame.index)


def _choice(chk: _Checker, values: pd.Series, column: str, allowed: type[StrEnum]) -> None:
    names = {member.value for member in allowed}
    bad = values.notna().to_numpy() & ~values.isin(names).to_numpy(dtype=bool)
    chk.flag(bad, column, lambda i: f"{values.iloc[i]!r} is not one of {', '.join(sorted(names))}")


def validate_events(frame: pd.DataFrame, first_row: int) -> pa.Table:
    """Validate one chunk of an events file; return it as a table in EVENT_SCHEMA.

    `first_row` is the 1-based row number of the chunk's first row within its file.
    """
    chk = _Checker(first_row)
    out: dict[str, pd.Series] = {}
    for column in ("event_id", "user_id", "event_type"):
        out[column] = _text(chk, frame, column, required=True)
    _event_names(chk, out["event_type"])
    # Stored at microsecond precision; finer digits say nothing about when a person acted.
    out["timestamp"] = _timestamp(chk, frame, "timestamp", required=True).dt.floor("us")
    for column in ("campaign_id", "variant_id", "channel"):
        out[column] = (
            _text(chk, frame, column, required=False)
            if column in frame
            else pd.Series(None, index=frame.index, dtype=TEXT)
        )
    _choice(chk, out["channel"], "channel", Channel)
    for column in ("value", "propensity"):
        out[column] = (
            _number(chk, frame, column) if column in frame else pd.Series(math.nan, index=frame.index)
        )
    propensity = out["propensity"]
    chk.flag(
        propensity.notna() & ((propensity <= 0) | (propensity > 1)),
        "propensity",
        lambda i: f"{propensity.iloc[i]} is not a probability in (0, 1]",
    )
    out["properties"] = (
        _properties(chk, frame["properties"]) if "properties" in frame else pd.Series(None, index=frame.index)
    )
    chk.raise_if_any()
    return pa.Table.from_pandas(pd.DataFrame(out), schema=EVENT_SCHEMA, preserve_index=False)


def _event_names(chk: _Checker, names: pd.Series) -> None:
    """Built-in names, or an app's own (pushplan.domain.APP_EVENT_NAME) outside the reserved prefixes."""
    unique = {name: event_name_problem(name) for name in pd.unique(names.dropna())}
    bad = names.map(lambda name: unique.get(name) is not None if isinstance(name, str) else False)
    chk.flag(bad.to_numpy(dtype=bool), "event_type", lambda i: unique[names.iloc[i]])


def _properties(chk: _Checker, values: pd.Series) -> pd.Series:
    """Each non-empty cell checked and normalised (one JSON parse per row that has properties)."""
    missing = _is_missing(values).to_numpy(dtype=bool)
    out = np.full(len(values), None, dtype=object)
    problems: dict[int, str] = {}
    for position in np.flatnonzero(~missing):
        text, problem = properties_problem(values.iloc[position])
        if problem is None:
            out[position] = text
        else:
            problems[int(position)] = problem
    bad = np.zeros(len(values), dtype=bool)
    bad[list(problems)] = True
    chk.flag(bad, "properties", lambda i: problems[i])
    return pd.Series(out, index=values.index, dtype=object)


def validate_users(frame: pd.DataFrame, first_row: int, default_timezone: str) -> pd.DataFrame:
    """Validate one chunk of a users file; return it with typed columns and extra columns kept.

    An empty `timezone` becomes `default_timezone` (docs/event-store.md, "Users"); a non-empty
    unknown one is refused.
    """
    chk = _Checker(first_row)
    out = frame.copy()
    out["user_id"] = _text(chk, frame, "user_id", required=True)
    zones = _text(chk, frame, "timezone", required=False)
    unknown = zones.notna() & ~zones.isin(_iana_zones())
    chk.flag(unknown, "timezone", lambda i: f"{zones.iloc[i]!r} is not an IANA time zone name")
    out["timezone"] = zones.fillna(default_timezone)
    for column in ("country", "platform"):
        if column in frame:
            out[column] = _text(chk, frame, column, required=False)
    if "signup_at" in frame:
        out["signup_at"] = _timestamp(chk, frame, "signup_at", required=False).dt.floor("us")
    for column in OPT_IN_COLUMNS:
        out[column] = (
            _boolean(chk, frame, column, required=column == "push_opt_in") if column in frame else False
        )
    chk.raise_if_any()
    return out


def duplicate_rows(ids: pd.Series, column: str) -> tuple[list[Problem], int]:
    """Rows whose id repeats an earlier row of the same file, and how many there are.

    `ids` holds the whole file's ids in file order (position 0 is row 1).
    """
    repeated = np.flatnonzero(ids.duplicated(keep="first").to_numpy())
    problems = []
    for position in repeated[:MAX_REPORTED_PROBLEMS]:
        value = ids.iloc[position]
        first = int(np.argmax((ids == value).to_numpy()))
        problems.append(Problem(int(position) + 1, column, f"{value!r} repeats row {first + 1}"))
    return problems, int(repeated.size)
