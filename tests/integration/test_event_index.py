"""The event store's index of stored ids and its compaction, on both profiles (SQLite, PostgreSQL): a
store is de-duplicated by the index as it was by reading every id, an import that died is reconciled
with what reached the disk, and compaction keeps every row exactly once for every reader."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from features.event_index import STORE_ID_FILE, EventIndex
from features.event_parts import COMPACT_PREFIX, live_files
from features.event_store import EventStore, ImportRefused
from pushplan.db.engine import database_url
from pushplan.settings import Profile, Settings
from tests.services import REDIS_URL, scratch_database
from tests.unit.test_event_import import EVENT_HEADER, event_row, write_csv


@pytest.fixture(params=["local", "production"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "local":
        yield Settings(data_dir=tmp_path / "data")
        return
    with scratch_database("pushplan_index") as url:
        yield Settings(
            profile=Profile.production, data_dir=tmp_path / "data", redis_url=REDIS_URL, database_url=url
        )


def indexed(settings: Settings) -> set[str]:
    with sa.create_engine(database_url(settings)).connect() as connection:
        return set(connection.scalars(sa.text("select event_id from event_index")))


def csv_of(tmp_path: Path, name: str, numbers: range | list[int], **changes: str) -> Path:
    return write_csv(tmp_path / name, EVENT_HEADER, [event_row(i, **changes) for i in numbers])


def test_the_index_holds_exactly_the_stored_ids_and_is_rebuilt_for_an_older_store(
    settings: Settings, tmp_path: Path
) -> None:
    store = EventStore(settings)
    assert store.import_file(csv_of(tmp_path, "a.csv", range(30))).stored == 30
    assert indexed(settings) == {f"e{i}" for i in range(30)}
    # A store written before the index (or a data dir restored under another): no id of its own.
    (settings.events_dir / STORE_ID_FILE).unlink()
    with sa.create_engine(database_url(settings)).begin() as connection:
        connection.execute(sa.text("delete from event_index"))
    result = store.import_file(csv_of(tmp_path, "b.csv", range(20, 50)))
    assert (result.stored, result.already_stored) == (20, 10)
    assert indexed(settings) == {f"e{i}" for i in range(50)}
    events = store.read_events(["event_id"])["event_id"]
    assert len(events) == 50 and events.is_unique


def test_an_import_that_died_after_its_claim_is_reconciled_with_what_reached_the_disk(
    settings: Settings, tmp_path: Path
) -> None:
    store = EventStore(settings)
    store.import_file(csv_of(tmp_path, "base.csv", range(5)))
    # A process killed between claiming ids 10..39 and moving its day files: one day's file (e12's,
    # named for its import) made it into place, the others did not.
    dead = "0" * 32
    assert EventIndex(settings).claim(dead, [f"e{i}" for i in range(10, 40)]) == {
        f"e{i}" for i in range(10, 40)
    }
    other = EventStore(Settings(data_dir=tmp_path / "other"))
    other.import_file(csv_of(tmp_path, "e12.csv", [12]))
    day = "event_date=2026-09-13"
    (store.events_dir / day).mkdir(parents=True)
    next((other.events_dir / day).glob("part-*.parquet")).replace(
        store.events_dir / day / f"part-{dead}.parquet"
    )

    result = store.import_file(csv_of(tmp_path, "again.csv", range(10, 40)))
    assert (result.stored, result.already_stored) == (29, 1)  # the unlanded claims were forgotten
    assert indexed(settings) == {f"e{i}" for i in [*range(5), *range(10, 40)]}
    events = store.read_events(["event_id"])["event_id"]
    assert len(events) == 35 and events.is_unique


def test_a_refused_file_leaves_no_claimed_id_behind(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EventStore(settings.model_copy(update={"import_chunk_rows": 10}))
    rows = [event_row(i) for i in range(30)]
    rows[25]["timestamp"] = "yesterday"  # the third chunk is bad, after two were claimed and staged
    with pytest.raises(ImportRefused, match="row 26"):
        store.import_file(write_csv(tmp_path / "bad.csv", EVENT_HEADER, rows))
    assert indexed(settings) == set() and store.stats().events == 0
    assert store.import_file(csv_of(tmp_path, "good.csv", range(30))).stored == 30


def test_compaction_bounds_the_files_and_every_reader_sees_each_row_once(
    settings: Settings, tmp_path: Path
) -> None:
    store = EventStore(
        settings.model_copy(update={"event_compact_fanout": 4, "event_compact_grace_seconds": 3600})
    )
    day = store.events_dir / "event_date=2026-09-02"
    # A part written before events had properties: merged with them, it reads as null.
    store.import_file(csv_of(tmp_path, "old.csv", [1]))
    old = next(day.glob("part-*.parquet"))
    pq.write_table(pq.read_table(old).drop_columns(["properties"]), old)
    listings: list[list[Path]] = []
    for batch in range(40):  # a stream of small batches into one day, as POST /v1/events brings them
        numbers = [1000 + 3 * batch + k for k in range(3)]
        store.import_file(csv_of(tmp_path, f"b{batch}.csv", numbers, timestamp="2026-09-02T10:00:00Z"))
        listings.append(live_files(store.events_dir))
        events = store.read_events(["event_id", "properties"])
        assert len(events) == 1 + 3 * (batch + 1) and events["event_id"].is_unique
    assert any(p.name.startswith(COMPACT_PREFIX) for p in day.iterdir())
    assert len(live_files(store.events_dir)) <= 4 * 3  # at most fanout-1 per level, and 41 imports
    # A reader that listed the files before a merge still finds them within the grace period.
    for listing in listings[-8:]:
        assert all(path.exists() for path in listing)
        assert pq.read_table(listing, columns=["event_id"]).num_rows == 1 + 3 * (listings.index(listing) + 1)
    # After the grace, the next compaction of the day deletes what was merged; nothing is lost.
    store = EventStore(
        settings.model_copy(update={"event_compact_fanout": 4, "event_compact_grace_seconds": 0})
    )
    store.import_file(csv_of(tmp_path, "last.csv", [5000], timestamp="2026-09-02T11:00:00Z"))
    assert sorted(p.name for p in day.glob("*.parquet")) == sorted(
        p.name for p in live_files(store.events_dir)
    )
    events = store.read_events(["event_id", "properties"]).set_index("event_id")
    assert len(events) == 1 + 120 + 1 and events.index.is_unique and pd.isna(events.loc["e1", "properties"])
