"""The event store: users and events as parquet under the data dir, imported whole-file-or-nothing.

Layout (both profiles; Feast's offline store reads the same files):
    <data_dir>/events/event_date=YYYY-MM-DD/part-<import id>.parquet   (hive partitions, UTC date)
    <data_dir>/events/event_date=YYYY-MM-DD/compact-<id>.parquet       (merged parts: event_parts)
    <data_dir>/events/_store_id                                           (the store the index is of)
    <data_dir>/users/users.parquet                                        (one row per user)

    <data_dir>/catalogue/variants.parquet                                 variants of imported campaigns
    <data_dir>/catalogue/event_names.json                                 the app's own event names seen

An import streams its file in chunks, validates every row and stages what is new under
<data_dir>/staging/; only when the whole file is valid are the staged files moved into place
(an atomic rename per partition file). A refused file therefore leaves the store as it was. Rows are
de-duplicated on `event_id` through the index of stored ids (features.event_index) in the plan
store's database; if the process dies in the middle of the moves, the next import reconciles the
index with what made it into place, and re-running the same import completes it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from filelock import FileLock
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from features.event_index import EventIndex
from features.event_parts import compact_day, live_files
from features.schema import (
    EVENT_SCHEMA,
    TEXT,
    Kind,
    RowsRefused,
    check_columns,
    detect_kind,
    duplicate_rows,
    validate_events,
    validate_users,
)
from pushplan.domain import BUILT_IN_EVENTS, Campaign
from pushplan.files import write_parquet
from pushplan.settings import Settings

_log = logging.getLogger(__name__)
_CSV_BLOCK_BYTES = 8 << 20
_CAMPAIGNS = TypeAdapter(list[Campaign])
_STORED_EVENTS = EVENT_SCHEMA.append(pa.field("event_date", pa.string()))
_VARIANT_SCHEMA = pa.schema(
    [
        ("campaign_id", pa.string()),
        ("variant_id", pa.string()),
        ("title", pa.string()),
        ("body", pa.string()),
        ("tags", pa.list_(pa.string())),
    ]
)


class ImportRefused(ValueError):
    """A file was refused whole; the message names the file, and where it can, row, column and reason."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"{path}: {detail}")


@dataclass(frozen=True)
class ImportResult:
    path: Path
    kind: Kind
    rows: int
    stored: int

    @property
    def already_stored(self) -> int:
        return self.rows - self.stored


@dataclass(frozen=True)
class EventStats:
    users: int
    events: int
    by_type: dict[str, int]
    first: datetime | None
    last: datetime | None

    def as_dict(self) -> dict[str, object]:
        return {
            "users": self.users,
            "events": self.events,
            "by_type": self.by_type,
            "first": self.first.isoformat() if self.first else None,
            "last": self.last.isoformat() if self.last else None,
        }


class _Source:
    """A CSV or parquet file read as pandas chunks, with how far through it we are for progress."""

    def __init__(self, path: Path, chunk_rows: int) -> None:
        self.path = path
        self.chunk_rows = chunk_rows
        self.is_parquet = path.suffix.lower() in {".parquet", ".pq"}
        if not path.is_file():
            raise ImportRefused(path, "no such file")
        if self.is_parquet:
            try:
                self._parquet = pq.ParquetFile(path)
            except (pa.ArrowInvalid, OSError) as exc:
                raise ImportRefused(path, f"not a readable parquet file ({exc})") from exc
            self.columns = list(self._parquet.schema_arrow.names)
            self.total = self._parquet.metadata.num_rows
        else:
            with path.open(newline="", encoding="utf-8-sig") as handle:
                header = next(csv.reader(handle), None)
            if not header:
                raise ImportRefused(path, "the file is empty (no header row)")
            self.columns = [name.strip() for name in header]
            self.total = path.stat().st_size

    def chunks(self, advance: Progress | None, task: object) -> Iterator[pd.DataFrame]:
        if self.is_parquet:
            for batch in self._parquet.iter_batches(batch_size=self.chunk_rows):
                frame = batch.to_pandas(types_mapper=_arrow_strings)
                if advance is not None:
                    advance.update(task, advance=len(frame))  # type: ignore[arg-type]
                yield frame
            return
        # Every column is read as text so that validation, not the CSV parser, says what is wrong
        # and where; only empty cells are null ("NA" may well be a real id).
        convert = pacsv.ConvertOptions(
            column_types={name: pa.string() for name in self.columns},
            strings_can_be_null=True,
            null_values=[""],
        )
        read = pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES, column_names=self.columns, skip_rows=1)
        with self.path.open("rb") as handle:
            reader = pacsv.open_csv(_Utf8Sig(handle), read_options=read, convert_options=convert)
            buffered: list[pd.DataFrame] = []
            rows = 0
            for batch in reader:
                buffered.append(batch.to_pandas(types_mapper=_arrow_strings))
                rows += batch.num_rows
                if advance is not None:
                    advance.update(task, completed=handle.tell())  # type: ignore[arg-type]
                if rows >= self.chunk_rows:
                    yield pd.concat(buffered, ignore_index=True)
                    buffered, rows = [], 0
            if buffered:
                yield pd.concat(buffered, ignore_index=True)


def _arrow_strings(kind: pa.DataType) -> object:
    return TEXT if pa.types.is_string(kind) or pa.types.is_large_string(kind) else None


class _Utf8Sig:
    """Skips a UTF-8 byte-order mark (spreadsheets write one) before pyarrow reads the stream."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._started = False
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        if not self._started:
            self._started = True
            data = data.removeprefix(b"\xef\xbb\xbf")
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


class EventStore:
    """Reads and writes the users and events of one data dir."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.events_dir = settings.events_dir
        self.users_path = settings.users_path

    # ---- import -------------------------------------------------------------------------------

    def import_file(self, path: Path, kind: Kind | None = None, *, progress: bool = False) -> ImportResult:
        """Validate and store one file, whole or not at all; raises ImportRefused naming the problem."""
        if kind is Kind.campaigns or (kind is None and Path(path).suffix.lower() == ".json"):
            return self.import_campaigns(Path(path))
        source = _Source(Path(path), self.settings.import_chunk_rows)
        found = detect_kind(source.columns)
        kind = kind or found
        if kind is None:
            raise ImportRefused(
                source.path,
                "cannot tell users from events by the columns "
                f"({', '.join(source.columns)}); pass --kind users or --kind events",
            )
        try:
            check_columns(source.columns, kind)
        except ValueError as exc:
            raise ImportRefused(source.path, str(exc)) from exc

        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.settings.data_dir / ".import.lock")):
            # Under the lock, anything in staging is the leftover of an import that died.
            shutil.rmtree(self.settings.staging_dir, ignore_errors=True)
            bar = _progress_bar(source) if progress else None
            try:
                if bar is not None:
                    bar.start()
                task = bar.add_task(source.path.name, total=source.total) if bar else None
                if kind is Kind.events:
                    return self._import_events(source, bar, task)
                return self._import_users(source, bar, task)
            finally:
                if bar is not None:
                    bar.stop()
                shutil.rmtree(self.settings.staging_dir, ignore_errors=True)

    def _import_events(self, source: _Source, bar: Progress | None, task: object) -> ImportResult:
        stage = self.settings.staging_dir / uuid.uuid4().hex
        index = EventIndex(self.settings)
        index.prepare(self.events_dir, self._stored_ids())
        try:
            rows, stored = self._stage_events(source, bar, task, stage, index)
            days = self._commit_events(stage)
            index.commit(stage.name)
        except BaseException:
            # Whatever made it into place stays known; the rest is forgotten, to be stored when resent.
            # Should that fail too (the database is what failed), the next import's prepare does it.
            with contextlib.suppress(Exception):
                index.reconcile(stage.name, self.events_dir)
            raise
        for day in days:
            try:
                compact_day(
                    day,
                    EVENT_SCHEMA,
                    fanout=self.settings.event_compact_fanout,
                    grace_seconds=self.settings.event_compact_grace_seconds,
                )
            except (OSError, pa.ArrowException) as exc:  # stored already; the next import into the day merges
                _log.warning("compaction of %s put off: %s", day.name, exc)
        return ImportResult(source.path, Kind.events, rows, stored)

    def _stage_events(
        self, source: _Source, bar: Progress | None, task: object, stage: Path, index: EventIndex
    ) -> tuple[int, int]:
        """Validate the file chunk by chunk, claim its ids in the index and stage the new rows."""
        ids: list[pa.ChunkedArray] = []
        rows = stored = 0
        for number, frame in enumerate(self._guarded(source, bar, task)):
            try:
                table = validate_events(frame, first_row=rows + 1)
            except RowsRefused as exc:
                raise _refusal(source.path, exc.problems, exc.total) from exc
            rows += table.num_rows
            ids.append(table.column("event_id"))
            new = index.claim(stage.name, table.column("event_id").to_pylist())
            if not new:
                continue
            table = table.filter(pc.is_in(table.column("event_id"), pa.array(list(new), pa.string())))
            stored += table.num_rows
            day = pc.strftime(table.column("timestamp"), format="%Y-%m-%d")
            ds.write_dataset(
                table.append_column("event_date", day),
                stage,
                format="parquet",
                partitioning=["event_date"],
                partitioning_flavor="hive",
                basename_template=f"chunk-{number:05d}-{{i}}.parquet",
                existing_data_behavior="overwrite_or_ignore",
            )
        if ids:
            all_ids = pa.chunked_array([c for column in ids for c in column.chunks], pa.string()).to_pandas()
            problems, total = duplicate_rows(all_ids, "event_id")
            if problems:
                raise _refusal(source.path, problems, total)
        return rows, stored

    def _commit_events(self, stage: Path) -> list[Path]:
        """Move the staged day files into place (a rename each); returns the days written."""
        if not stage.exists():
            return []
        name = f"part-{stage.name}.parquet"
        seen: set[str] = set()
        days: list[Path] = []
        for day_dir in sorted(stage.glob("event_date=*")):
            table = pq.read_table(day_dir, schema=EVENT_SCHEMA).sort_by("timestamp")
            seen.update(pc.unique(table.column("event_type")).to_pylist())
            target = self.events_dir / day_dir.name
            target.mkdir(parents=True, exist_ok=True)
            scratch = target / f".{name}.tmp"
            pq.write_table(table, scratch)
            scratch.replace(target / name)
            days.append(target)
        self._note_event_names(seen - BUILT_IN_EVENTS)
        return days

    def _note_event_names(self, names: set[str]) -> None:
        """Add the app's own event names to the catalogue (under the import lock), so that rules and
        triggers can name them without a scan of every event."""
        known = self.custom_event_names()
        if names <= known:
            return
        path = self.settings.event_names_path
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(sorted(known | names)))
        scratch.replace(path)

    def custom_event_names(self) -> set[str]:
        """The app's own event names stored so far (built-in ones are not listed)."""
        path = self.settings.event_names_path
        return set(json.loads(path.read_text())) if path.exists() else set()

    def _import_users(self, source: _Source, bar: Progress | None, task: object) -> ImportResult:
        parts: list[pd.DataFrame] = []
        rows = 0
        for frame in self._guarded(source, bar, task):
            try:
                parts.append(validate_users(frame, rows + 1, self.settings.default_timezone))
            except RowsRefused as exc:
                raise _refusal(source.path, exc.problems, exc.total) from exc
            rows += len(frame)
        if not parts:
            return ImportResult(source.path, Kind.users, 0, 0)
        users = pd.concat(parts, ignore_index=True)
        problems, total = duplicate_rows(users["user_id"], "user_id")
        if problems:
            raise _refusal(source.path, problems, total)
        existing = self.read_users()
        changed = _changed_rows(existing, users)
        kept = existing[~existing["user_id"].isin(users["user_id"])]
        merged = pd.concat([kept, users], ignore_index=True) if not kept.empty else users
        merged = merged.sort_values("user_id", ignore_index=True)
        try:
            table = pa.Table.from_pandas(merged, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ImportRefused(
                source.path, f"an attribute column's values do not match its stored type ({exc})"
            ) from exc
        write_parquet(table, self.users_path)
        return ImportResult(source.path, Kind.users, rows, changed)

    def import_campaigns(self, path: Path) -> ImportResult:
        """Store the variants (title, body, tags) of a JSON list of campaigns, replacing re-imported ones.

        The features look variants' tags up here; the plan store will own campaigns themselves.
        """
        try:
            campaigns = _CAMPAIGNS.validate_json(path.read_bytes())
        except FileNotFoundError as exc:
            raise ImportRefused(path, "no such file") from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            where = first["loc"]
            index = where[0] if where and isinstance(where[0], int) else None
            field = ".".join(map(str, where[1:] if index is not None else where)) or "(document)"
            place = f"campaign {index + 1}, field {field!r}" if index is not None else f"field {field!r}"
            more = f" ({exc.error_count()} problems in all)" if exc.error_count() > 1 else ""
            raise ImportRefused(
                path, f"{place}: {first['msg']}{more}. Nothing from this file was stored."
            ) from exc
        ids = [c.campaign_id for c in campaigns]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ImportRefused(path, f"campaign_id {repeated[0]!r} appears more than once")
        self.store_variants(campaigns)
        return ImportResult(path, Kind.campaigns, len(campaigns), len(campaigns))

    def store_variants(self, campaigns: Sequence[Campaign]) -> None:
        """Put these campaigns' variants in the catalogue, replacing theirs; the import's path and the
        API's (`POST /v1/campaigns`), so the features know the tags of every campaign that sends."""
        ids = [c.campaign_id for c in campaigns]
        variants = pd.DataFrame(
            [
                {
                    "campaign_id": c.campaign_id,
                    "variant_id": v.variant_id,
                    "title": v.title,
                    "body": v.body,
                    "tags": list(v.tags),
                }
                for c in campaigns
                for v in c.variants
            ],
            columns=["campaign_id", "variant_id", "title", "body", "tags"],
        )
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.settings.data_dir / ".catalogue.lock")):  # read, merge, write: one at a time
            existing = self.read_variants()
            kept = existing[~existing["campaign_id"].isin(ids)]
            merged = pd.concat([kept, variants], ignore_index=True) if not kept.empty else variants
            write_parquet(
                pa.Table.from_pandas(merged, schema=_VARIANT_SCHEMA, preserve_index=False),
                self.settings.catalogue_path,
            )

    def read_variants(self) -> pd.DataFrame:
        """Every imported variant: campaign_id, variant_id, title, body, tags (a list)."""
        if not self.settings.catalogue_path.exists():
            return _VARIANT_SCHEMA.empty_table().to_pandas()
        return pq.read_table(self.settings.catalogue_path).to_pandas()

    def _guarded(self, source: _Source, bar: Progress | None, task: object) -> Iterator[pd.DataFrame]:
        """The source's chunks, with a parse failure turned into a refusal of the file."""
        try:
            yield from source.chunks(bar, task)
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise ImportRefused(source.path, f"cannot be parsed: {exc}") from exc

    # ---- reads --------------------------------------------------------------------------------

    def events_dataset(self) -> ds.Dataset | None:
        """All stored events as one pyarrow dataset (`event_date` is the partition column)."""
        files = live_files(self.events_dir)
        if not files:
            return None
        # With the schema given, files written before a column existed (`properties`) read as null.
        return ds.dataset(
            [str(path) for path in files],
            schema=_STORED_EVENTS,
            format="parquet",
            partitioning=ds.partitioning(pa.schema([("event_date", pa.string())]), flavor="hive"),
            partition_base_dir=str(self.events_dir),
        )

    def read_events(
        self,
        columns: list[str] | None = None,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        event_types: list[str] | None = None,
    ) -> pd.DataFrame:
        """Events with `start <= timestamp < end` (UTC), optionally of some types only."""
        dataset = self.events_dataset()
        wanted = columns or list(EVENT_SCHEMA.names)
        if dataset is None:
            return EVENT_SCHEMA.empty_table().select(wanted).to_pandas()
        condition = None
        for clause in (
            ds.field("timestamp") >= pa.scalar(start, pa.timestamp("us", tz="UTC")) if start else None,
            ds.field("timestamp") < pa.scalar(end, pa.timestamp("us", tz="UTC")) if end else None,
            ds.field("event_type").isin(event_types) if event_types else None,
        ):
            if clause is not None:
                condition = clause if condition is None else condition & clause
        return dataset.to_table(columns=wanted, filter=condition).to_pandas()

    def read_users(self) -> pd.DataFrame:
        if not self.users_path.exists():
            return pd.DataFrame(columns=["user_id"])
        return pq.read_table(self.users_path).to_pandas()

    def _stored_ids(self) -> Iterator[pa.Array]:
        """Every stored event id, batch by batch (read only when the index is built)."""
        dataset = self.events_dataset()
        if dataset is None:
            return
        for batch in dataset.to_batches(columns=["event_id"]):
            yield batch.column(0)

    def stats(self) -> EventStats:
        users = pq.read_metadata(self.users_path).num_rows if self.users_path.exists() else 0
        dataset = self.events_dataset()
        if dataset is None:
            return EventStats(users, 0, {}, None, None)
        table = dataset.to_table(columns=["event_type", "timestamp"])
        counts = pc.value_counts(table.column("event_type")).to_pylist()
        span = pc.min_max(table.column("timestamp")).as_py()
        return EventStats(
            users=users,
            events=table.num_rows,
            by_type={item["values"]: item["counts"] for item in sorted(counts, key=lambda c: c["values"])},
            first=span["min"],
            last=span["max"],
        )


def events_in_file(path: Path, columns: Sequence[str], event_types: Iterable[str]) -> pd.DataFrame:
    """The rows of an events file (CSV or parquet, already imported) of these types, with those of
    `columns` the file has, as text (timestamps as written): what the send path's suppression list
    and the trigger inbox take from an import."""
    types = sorted(set(event_types))
    if path.suffix.lower() in {".parquet", ".pq"}:
        names = set(pq.read_schema(path).names)
        return pd.read_parquet(
            path, columns=[c for c in columns if c in names], filters=[("event_type", "in", types)]
        )
    header = set(pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns)
    frame = pd.read_csv(
        path,
        usecols=[c for c in columns if c in header],
        dtype=str,
        keep_default_na=False,
        encoding="utf-8-sig",
    )
    # As the import read them: cells stripped, an empty one missing.
    frame = frame.apply(lambda column: column.str.strip()).replace({"": None})
    return frame[frame["event_type"].isin(types)]


def _refusal(path: Path, problems: list, total: int) -> ImportRefused:
    listed = "; ".join(map(str, problems))
    more = f" ({total} bad rows in all; the first {len(problems)} shown)" if total > len(problems) else ""
    return ImportRefused(path, f"{listed}{more}. Nothing from this file was stored.")


def _changed_rows(existing: pd.DataFrame, users: pd.DataFrame) -> int:
    """How many imported users are new or differ from their stored row (0 for a repeated import)."""
    if existing.empty:
        return len(users)
    stored = existing.set_index("user_id").reindex(users["user_id"])
    incoming = users.set_index("user_id")
    same = pd.Series(True, index=incoming.index)
    for column in incoming.columns:
        if column not in stored.columns:
            return len(users)
        left, right = stored[column].astype(object), incoming[column].astype(object)
        same &= (left == right) | (left.isna() & right.isna())
    return int((~same).sum())


def _progress_bar(source: _Source) -> Progress:
    size_column = DownloadColumn() if not source.is_parquet else TextColumn("{task.completed:,.0f} rows")
    return Progress(
        TextColumn("importing {task.description}"),
        BarColumn(),
        size_column,
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
