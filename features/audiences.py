"""Audiences: the fields a rule may use, and who a rule selects, read column by column.

A rule (pushplan.audience_rules) is evaluated over the latest feature snapshot at or before `now`
(the tables `features build` writes and Feast's offline store reads, one UTC day's rows only), the
users file's attributes (the contract's columns and any extra ones, as of today) and the event store
for "did X in the last N days". Nothing loops over users: each clause is one vectorised pass, so a
preview of 100,000 users takes well under a second (`python -m benchmarks.audiences`).

The universe is the users file (the users a plan job plans); a user who appears in events only is
not in any audience until imported as a user.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from features.attributes import as_kind, attributes
from features.event_store import EventStore
from features.tables import LIFECYCLE_STAGES, RFM_CELLS, RFM_SEGMENTS, table_path
from pushplan.audience_rules import (
    FieldSpec,
    Kind,
    Rule,
    RuleError,
    Schema,
    check,
    compile_rule,
    evaluate,
    parse,
)
from pushplan.db.labels import LabelVersion, add_version, labels_in_force
from pushplan.db.store import PlanStore
from pushplan.domain import OPT_IN_OF_CHANNEL, Channel, EventType
from pushplan.settings import Settings, per_settings

_N = Kind.number
# Built-in fields and the feature table each is read from (None: the users file only).
BUILT_IN: dict[str, tuple[str | None, FieldSpec]] = {
    "timezone": ("user_profile", FieldSpec(Kind.text, about="IANA time zone")),
    "country": ("user_profile", FieldSpec(Kind.text, about="country code from the users file")),
    "platform": ("user_profile", FieldSpec(Kind.text, about="android, ios, web, …")),
    "push_opt_in": ("user_profile", FieldSpec(Kind.flag, about="reachable by push (opt-outs applied)")),
    "sms_opt_in": ("user_profile", FieldSpec(Kind.flag, about="reachable by SMS (opt-outs applied)")),
    "email_opt_in": ("user_profile", FieldSpec(Kind.flag, about="reachable by email (opt-outs applied)")),
    "days_since_signup": ("user_profile", FieldSpec(_N, about="days since signup")),
    "rfm_cell": (
        "user_rfm",
        FieldSpec(Kind.text, frozenset(RFM_CELLS), "named RFM cell (docs/audiences.md)"),
    ),
    "rfm_segment": (
        "user_rfm",
        FieldSpec(Kind.text, frozenset(RFM_SEGMENTS), "the models' coarse RFM group"),
    ),
    "lifecycle_stage": ("user_rfm", FieldSpec(Kind.text, frozenset(LIFECYCLE_STAGES), "lifecycle stage")),
    "recency_days": ("user_rfm", FieldSpec(_N, about="days since the last purchase")),
    "frequency_90d": ("user_rfm", FieldSpec(_N, about="purchases in the last 90 days")),
    "monetary_90d": ("user_rfm", FieldSpec(_N, about="revenue in the last 90 days")),
    "r_score": ("user_rfm", FieldSpec(_N, about="recency quintile among buyers, 1-5 (0: no purchase)")),
    "f_score": ("user_rfm", FieldSpec(_N, about="frequency quintile among buyers, 1-5 (0: none)")),
    "m_score": ("user_rfm", FieldSpec(_N, about="monetary quintile among buyers, 1-5 (0: none)")),
    "days_since_active": ("user_rfm", FieldSpec(_N, about="days since any activity")),
    "sends_7d": ("user_fatigue", FieldSpec(_N, about="pushes sent in the last 7 days")),
    "sends_30d": ("user_fatigue", FieldSpec(_N, about="pushes sent in the last 30 days")),
    "clicks_7d": ("user_fatigue", FieldSpec(_N, about="push clicks in the last 7 days")),
    "clicks_30d": ("user_fatigue", FieldSpec(_N, about="push clicks in the last 30 days")),
}
# The labels a preview breaks its count down by.
BREAKDOWN = ("lifecycle_stage", "rfm_cell")
# Shown for each user of a preview's sample.
SHOWN = ("country", "platform", *BREAKDOWN)


def schema(settings: Settings, *, custom_labels: bool = True) -> Schema:
    """The built-in fields, the users file's custom attributes, the operators' custom labels (yes/no
    fields) and the event names, for `pushplan.audience_rules.check`."""
    fields = {name: spec for name, (_, spec) in BUILT_IN.items()}
    for name, kind in attributes(settings).items():
        fields.setdefault(name, FieldSpec(kind, about="custom attribute from the users file"))
    if custom_labels:
        for label in labels_in_force(_plan_store(settings)):
            about = f"custom label v{label.version} by {label.author}: {label.rule}"
            fields.setdefault(label.name, FieldSpec(Kind.flag, about=about))
    events = {e.value for e in EventType} | EventStore(settings).custom_event_names()
    return Schema(fields, frozenset(events))


@per_settings
def _plan_store(settings: Settings) -> PlanStore:
    """One plan store (one engine and pool) per configuration and process, for the label definitions."""
    return PlanStore(settings)


# A custom label's name: a field name that stays readable in rules and reports.
LABEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def define_label(settings: Settings, name: str, rule: str, author: str) -> LabelVersion:
    """Store a new version of a custom label, checked first: the name must be new among fields (or
    this label's), and the rule valid over the built-in fields and the users file's attributes (not
    over other custom labels, so no label depends on another). Takes effect at the next build."""
    if not LABEL_NAME.match(name):
        raise RuleError(f"label name {name!r}: lower-case letters, digits and _, a letter first, at most 64")
    fields = schema(settings, custom_labels=False)
    if name in fields.fields:
        raise RuleError(f"label name {name!r} is already a field; choose another")
    try:
        parse(name)
    except RuleError:
        raise RuleError(f"label name {name!r} is a word of the rule language; choose another") from None
    check(parse(rule), fields)
    if not author.strip():
        raise RuleError("a label needs its author")
    return add_version(_plan_store(settings), name, rule, author.strip())


def remove_label(settings: Settings, name: str, author: str) -> LabelVersion:
    """A last version of the label that removes it (its history stays); KeyError if not in force."""
    store = _plan_store(settings)
    if name not in {label.name for label in labels_in_force(store)}:
        raise KeyError(f"no custom label {name!r}")
    return add_version(store, name, None, author)


def compile_for(settings: Settings, text: str) -> Rule:
    """The rule, parsed and checked against this deployment's fields (RuleError otherwise)."""
    return compile_rule(text, schema(settings))


@dataclass
class _FrameColumns:
    """`pushplan.audience_rules.Columns` over one frame of users, events read on demand."""

    frame: pd.DataFrame
    events: EventStore
    now: datetime

    def column(self, name: str) -> pd.Series:
        return self.frame[name]

    def did(self, event: str, days: int) -> np.ndarray:
        done = self.events.read_events(
            ["user_id"], start=self.now - timedelta(days=days), end=self.now, event_types=[event]
        )["user_id"]
        return self.frame["user_id"].isin(pd.unique(done)).to_numpy()


@dataclass(frozen=True)
class Snapshot:
    """Users with the fields a rule reads, and the snapshot day the features are from."""

    frame: pd.DataFrame
    as_of: datetime | None


def snapshot(
    settings: Settings, names: Iterable[str], now: datetime, user_ids: Sequence[str] | None = None
) -> Snapshot:
    """The users file (or `user_ids` of it) with `names` filled from the latest feature snapshot at
    or before `now`; a user with no snapshot keeps the users file's values (or none)."""
    wanted = list(dict.fromkeys(["user_id", *names]))
    if not settings.users_path.exists():
        raise ValueError(
            f"no users: {settings.users_path} is missing (import users first: pushplan events import)"
        )
    user_file = pq.read_schema(settings.users_path).names
    frame = pq.read_table(settings.users_path, columns=[c for c in wanted if c in user_file]).to_pandas()
    if user_ids is not None:
        order = pd.Index(frame["user_id"].astype(str)).get_indexer(list(user_ids))
        frame = frame.iloc[order[order >= 0]].reset_index(drop=True)
        missing = pd.DataFrame({"user_id": [u for u, i in zip(user_ids, order, strict=True) if i < 0]})
        frame = pd.concat([frame, missing], ignore_index=True) if len(missing) else frame
    frame["user_id"] = frame["user_id"].astype(str)
    for name, kind in attributes(settings).items():
        if name in frame:
            frame[name] = as_kind(frame[name], kind)
    as_of = None
    by_table: dict[str, list[str]] = {}
    # A checked rule's other names are the custom labels (a field of neither the tables nor the users file).
    custom = [name for name in wanted if name not in BUILT_IN and name not in user_file]
    for name in wanted:
        table = BUILT_IN.get(name, (None, None))[0]
        if table is not None:
            by_table.setdefault(table, []).append(name)
    if custom:
        as_of = _custom_flags(settings, frame, custom, now)
    for table, columns in by_table.items():
        stamp, values = _latest_day(settings, table, columns, now)
        as_of = stamp if as_of is None or (stamp is not None and stamp < as_of) else as_of
        if values is None:
            for column in columns:
                if column not in frame:
                    frame[column] = None
            continue
        rows = pd.Index(values.column("user_id").to_pylist()).get_indexer(frame["user_id"])
        found = rows >= 0
        for column in columns:
            taken = values.column(column).take(pa.array(np.where(found, rows, 0))).to_pandas()
            taken = taken.where(found, None) if taken.dtype == object else taken.where(found)
            frame[column] = (
                taken.to_numpy() if column not in frame else taken.combine_first(frame[column]).to_numpy()
            )
    return Snapshot(frame, as_of)


def _custom_flags(
    settings: Settings, frame: pd.DataFrame, names: list[str], now: datetime
) -> datetime | None:
    """Each custom label in `names` as a yes/no column of `frame`, from the `user_labels` table's
    latest snapshot at or before `now` (a label defined since that build is no one's yet)."""
    stamp, values = _latest_day(settings, "user_labels", ["labels"], now)
    for name in names:
        frame[name] = False
    if values is None:
        return stamp
    lists = values.column("labels").combine_chunks()
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
    parent = pc.list_parent_indices(lists).to_numpy()
    rows = pd.Index(values.column("user_id").to_pylist()).get_indexer(frame["user_id"])
    for name in names:
        holders = np.zeros(len(values), dtype=bool)
        holders[parent[flat == name]] = True
        frame[name] = np.where(rows >= 0, holders[np.maximum(rows, 0)], False)
    return stamp


def _latest_day(
    settings: Settings, table: str, columns: list[str], now: datetime
) -> tuple[datetime | None, pa.Table | None]:
    """One feature table's rows of its latest snapshot at or before `now` (one UTC day's rows)."""
    path = table_path(settings, table)
    if not path.exists():
        return None, None
    data = ds.dataset(path, format="parquet")
    moment = pa.scalar(_utc(now), pa.timestamp("us", tz="UTC"))
    stamps = data.to_table(columns=["event_timestamp"], filter=ds.field("event_timestamp") <= moment)
    stamps = stamps.column(0)
    if len(stamps) == 0:
        return None, None
    latest = pc.max(stamps)
    rows = data.to_table(columns=["user_id", *columns], filter=ds.field("event_timestamp") == latest)
    return latest.as_py(), rows


def select(
    settings: Settings,
    rule: Rule | None,
    now: datetime,
    user_ids: Sequence[str] | None = None,
    also: Sequence[str] = (),
) -> Snapshot:
    """The users the rule selects (all users, or all `user_ids`, without a rule), with the fields it
    reads and those named in `also`."""
    snap = snapshot(settings, [*(rule.fields if rule else ()), *also], now, user_ids)
    if rule is None:
        return snap
    mask = evaluate(rule, _FrameColumns(snap.frame, EventStore(settings), _utc(now)))
    return Snapshot(snap.frame[mask].reset_index(drop=True), snap.as_of)


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def preview(
    settings: Settings,
    text: str,
    now: datetime,
    channels: Sequence[Channel] = (Channel.push,),
    sample: int = 10,
) -> dict[str, Any]:
    """Count, count reachable on `channels`, breakdown by label and a sample, for a rule's audience."""
    rule = compile_for(settings, text)
    total = pq.read_metadata(settings.users_path).num_rows if settings.users_path.exists() else 0
    chosen = select(settings, rule, now, also=[*SHOWN, *OPT_IN_OF_CHANNEL.values()])
    frame = chosen.frame
    reached = {  # a channel without an opt-in (a webhook) reaches everyone
        str(c): frame[OPT_IN_OF_CHANNEL[c]].fillna(False).astype(bool).to_numpy()
        if c in OPT_IN_OF_CHANNEL
        else np.ones(len(frame), dtype=bool)
        for c in channels
    }
    reach = {c: int(mask.sum()) for c, mask in reached.items() if Channel(c) in OPT_IN_OF_CHANNEL}
    any_reach = np.logical_or.reduce([*reached.values(), np.zeros(len(frame), dtype=bool)])
    by_label = {
        label: {str(k): int(v) for k, v in frame[label].fillna("(none)").value_counts().items()}
        for label in BREAKDOWN
    }
    shown = ["user_id", *SHOWN]
    picked = (
        frame.sample(n=min(sample, len(frame)), random_state=0)[shown]
        if sample > 0 and len(frame)
        else frame.iloc[:0][shown]
    )
    return {
        "rule": text,
        "fields": list(rule.fields),
        "as_of": chosen.as_of.isoformat() if chosen.as_of else None,
        "users": total,
        "count": len(frame),
        "reachable": {**reach, "any": int(any_reach.sum())},
        "by_label": by_label,
        "sample": picked.astype(object).where(picked.notna(), None).to_dict(orient="records"),
    }


__all__ = ["BUILT_IN", "RuleError", "Snapshot", "compile_for", "preview", "schema", "select", "snapshot"]
