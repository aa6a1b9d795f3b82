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


def live_files(events_dir: Path) -> list[Path]:
    """The files that hold the store's rows, each row in exactly one (day by day, by name)."""
    files: list[Path] = []
    for day in sorted(events_dir.glob("event_date=*")):
        visible, merged = _day(day)
        replaced = frozenset().union(*(m.replaces for m in merged.values()))
        files.extend(path for path in visible if path.name not in replaced)
    return files


def compact_day(day: Path, schema: pa.Schema, *, fanout: int, grace_seconds: float) -> int:
    """Delete files replaced more than `grace_seconds` ago, then merge the lowest level that holds
    `fanout` live files; returns the number of files merged (0: nothing to do). Under the import lock."""
    visible, merged = _day(day)
    now = time.time()
    expired = [
        info.replaces for name, info in merged.items() if now - (day / name).stat().st_mtime > grace_seconds
    ]
    for old in frozenset().union(*expired):
        (day / old).unlink(missing_ok=True)
    visible, merged = _day(day)
    replaced = frozenset().union(*(m.replaces for m in merged.values()))
    by_level: dict[int, list[Path]] = defaultdict(list)
    for path in visible:
        if path.name not in replaced:
            by_level[merged[path.name].level if path.name in merged else 0].append(path)
    for level in sorted(by_level):
        group = by_level[level]
        if len(group) >= fanout:
            _merge(day, group, level + 1, merged, schema)
            return len(group)
    return 0


def _merge(day: Path, group: list[Path], level: int, merged: dict[str, _Merged], schema: pa.Schema) -> None:
    # With the schema given, files written before a column existed (`properties`) read it as null.
    table = (
        ds.dataset([str(p) for p in group], schema=schema, format="parquet").to_table().sort_by("timestamp")
    )
    existing = {p.name for p in day.iterdir()}
    replaces = {p.name for p in group}
    for path in group:  # transitively, while they exist: a reader must skip them all
        if path.name in merged:
            replaces |= {name for name in merged[path.name].replaces if name in existing}
    table = table.replace_schema_metadata(
        {_REPLACES: json.dumps(sorted(replaces)).encode(), _LEVEL: str(level).encode()}
    )
    name = f"{COMPACT_PREFIX}{uuid.uuid4().hex}.parquet"
    scratch = day / f".{name}.tmp"
    pq.write_table(table, scratch)
    scratch.replace(day / name)  # one atomic step: the rows move from the group to the merged file


def _day(day: Path) -> tuple[list[Path], dict[str, _Merged]]:
    """A day's visible parquet files, and what each merged one holds."""
    visible = sorted(p for p in day.glob("*.parquet") if not p.name.startswith((".", "_")))
    merged: dict[str, _Merged] = {}
    for path in visible:
        if path.name.startswith(COMPACT_PREFIX):
            try:
                meta = pq.read_metadata(path).metadata or {}
            except FileNotFoundError:  # deleted by a compaction since the listing (it was replaced)
                continue
            merged[path.name] = _Merged(int(meta[_LEVEL]), frozenset(json.loads(meta[_REPLACES])))
    return [p for p in visible if not p.name.startswith(COMPACT_PREFIX) or p.name in merged], merged
