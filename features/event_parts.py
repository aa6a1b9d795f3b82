"""The event store's part files: which of them hold the stored rows, and their compaction.

Every import adds one part file to each day it touches, so a stream of small `POST /v1/events`
batches would leave a day with thousands of tiny files that every read opens. After each import,
the days it touched are compacted by levels (as log-structured stores do): when a day holds
`fanout` live files of one level (part files are level 0), they are merged into one `compact-…`
file of the next level, so a day keeps about `fanout` × levels files and each row is rewritten
about log_fanout(rows) times.

Readers never wait for compaction and never see a row twice or lose one: a merged file names, in
its parquet footer, the files whose rows it holds (transitively), and `live_files` leaves those out.
The replaced files stay on disk for `grace` after the merge, so a reader that listed them before
still reads them; the next compaction of the day deletes them. Compaction runs under the import
lock, so it never races a writer. (Table formats such as Delta Lake do this with a transaction log;
one footer key per merged file is all this layout needs, and Feast and the readers keep reading
plain hive-partitioned parquet.)
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

COMPACT_PREFIX = "compact-"
_REPLACES = b"pushplan.replaces"  # JSON list of the file names whose rows a merged file holds
_LEVEL = b"pushplan.level"


@dataclass(frozen=True)
class _Merged:
    level: int
    replaces: frozenset[str]
    written: float  # its mtime: when the merge took effect


# Merged files never change once in place, so each process reads a footer once (the import path
# scans the day it wrote after every request; re-reading every footer each time was most of its cost).
_footers: dict[Path, _Merged] = {}


def live_files(events_dir: Path) -> list[Path]:
    """The files that hold the store's rows, each row in exactly one (day by day, by name)."""
    files: list[Path] = []
    for day in sorted(events_dir.glob("event_date=*")):
        files.extend(day / name for name in _Day(day).live)
    return files


def compact_day(day: Path, schema: pa.Schema, *, fanout: int, grace_seconds: float) -> int:
    """Delete files replaced more than `grace_seconds` ago, then merge the lowest level that holds
    `fanout` live files; returns the number of files merged (0: nothing to do). Under the import lock."""
    scan = _Day(day)
    for leftover in scan.leftovers:  # under the import lock: a write that died half-way
        (day / leftover).unlink(missing_ok=True)
    now = time.time()
    expired = frozenset().union(
        *(m.replaces for m in scan.merged.values() if now - m.written > grace_seconds)
    )
    for old in expired & scan.names:
        (day / old).unlink(missing_ok=True)
    by_level: dict[int, list[str]] = defaultdict(list)
    for name in scan.live:
        by_level[scan.merged[name].level if name in scan.merged else 0].append(name)
    for level in sorted(by_level):
        group = by_level[level]
        if len(group) >= fanout:
            _merge(day, group, level + 1, scan, schema)
            return len(group)
    return 0


def _merge(day: Path, group: list[str], level: int, scan: _Day, schema: pa.Schema) -> None:
    # With the schema given, files written before a column existed (`properties`) read it as null.
    paths = [str(day / name) for name in group]
    table = ds.dataset(paths, schema=schema, format="parquet").to_table().sort_by("timestamp")
    replaces = set(group)
    for name in group:  # transitively, while they exist: a reader must skip them all
        if name in scan.merged:
            replaces |= scan.merged[name].replaces & scan.names
    table = table.replace_schema_metadata(
        {_REPLACES: json.dumps(sorted(replaces)).encode(), _LEVEL: str(level).encode()}
    )
    name = f"{COMPACT_PREFIX}{uuid.uuid4().hex}.parquet"
    scratch = day / f".{name}.tmp"
    pq.write_table(table, scratch)
    scratch.replace(day / name)  # one atomic step: the rows move from the group to the merged file


class _Day:
    """One listing of a day's directory: its parquet files, what each merged one holds, and which
    files hold the rows (those no merged file replaces)."""

    def __init__(self, day: Path) -> None:
        with os.scandir(day) as entries:
            listed = [entry.name for entry in entries]
        self.leftovers = [name for name in listed if name.startswith(".") and name.endswith(".tmp")]
        names = sorted(n for n in listed if n.endswith(".parquet") and not n.startswith((".", "_")))
        self.merged: dict[str, _Merged] = {}
        for name in names:
            if name.startswith(COMPACT_PREFIX) and (info := _footer(day / name)) is not None:
                self.merged[name] = info
        # A merged file deleted since the listing was replaced: the one that replaced it names its rows.
        self.names = frozenset(n for n in names if not n.startswith(COMPACT_PREFIX) or n in self.merged)
        replaced = frozenset().union(*(m.replaces for m in self.merged.values()))
        self.live = [n for n in names if n in self.names and n not in replaced]


def _footer(path: Path) -> _Merged | None:
    info = _footers.get(path)
    if info is None:
        try:
            meta = pq.read_metadata(path).metadata or {}
            written = path.stat().st_mtime
        except FileNotFoundError:
            return None
        if len(_footers) > 100_000:
            _footers.clear()
        info = _footers[path] = _Merged(int(meta[_LEVEL]), frozenset(json.loads(meta[_REPLACES])), written)
    return info
