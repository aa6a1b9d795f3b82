"""The event store's index of stored event ids, kept in the plan store's database (SQLite locally,
PostgreSQL in production), so that an import de-duplicates with keyed INSERTs instead of reading
every id the store holds: intake stays as fast at ten million stored events as at ten.

Two phases per import, under the event store's import lock:
1. `claim` inserts the import's ids (ON CONFLICT DO NOTHING ... RETURNING): the returned ones are
   new, and are staged; the import is noted as pending in `event_imports`.
2. `commit` deletes that note once its part files are in place.

An import that failed or died between the two is reconciled by `reconcile` (at once when it fails,
else by the next import's `prepare`): the ids whose part file made it into place stay, the others
are forgotten, so re-sending them stores them. `prepare` also (re)builds the index from the files
when the store has none, or when the data dir holds another store than the one indexed (its
`events/_store_id` differs): one event store per database.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from pushplan.db.engine import database_url, engine_for, migrate
from pushplan.db.schema import EventImportRow, EventIndexRow
from pushplan.settings import Settings

STORE_ID_FILE = "_store_id"  # under events/; "_" keeps it out of the parquet dataset
_STORE = "store:"
_IDS_PER_DELETE = 5_000  # one parameter each: well inside SQLite's 32,766
_REBUILT_BY = "stored-before-index"
_CLAIM_POSTGRES = sa.text(
    "insert into event_index (event_id, import_id) select unnest(cast(:ids as text[])), :import_id "
    "on conflict (event_id) do nothing returning event_id"
)
_CLAIM_SQLITE = sa.text(  # `where true` parses the upsert's ON after a SELECT (SQLite's documented rule)
    "insert into event_index (event_id, import_id) select value, :import_id from json_each(:ids) where true "
    "on conflict (event_id) do nothing returning event_id"
)

_engines: dict[str, sa.Engine] = {}
_engines_lock = threading.Lock()


def _engine(settings: Settings) -> sa.Engine:
    """One migrated engine per database and process (the API posts events many times a second)."""
    url = database_url(settings)
    sqlite_file = sa.engine.make_url(url).database if url.startswith("sqlite") else None
    with _engines_lock:
        engine = _engines.get(url)
        # A local store's file may be gone under a cached engine (a data dir removed and made again).
        if engine is None or (sqlite_file is not None and not Path(sqlite_file).exists()):
            migrate(settings)
            if len(_engines) >= 8:  # tests make many data dirs: keep the newest few open
                _engines.pop(next(iter(_engines))).dispose()
            engine = _engines[url] = engine_for(url)
        return engine


class EventIndex:
    def __init__(self, settings: Settings) -> None:
        self.engine = _engine(settings)

    # ---- under the import lock, before an import ------------------------------------------------

    def prepare(self, events_dir: Path, stored_ids: Iterable[pa.Array]) -> None:
        """Make the index whole for this store: build it if it has none, and reconcile imports that
        died; `stored_ids` (read lazily) are the ids in the store's files."""
        store_id = _store_id(events_dir)
        with self.engine.begin() as connection:
            built = connection.scalar(
                sa.select(EventImportRow.import_id).where(EventImportRow.import_id == _STORE + store_id)
            )
            pending = connection.scalars(
                sa.select(EventImportRow.import_id).where(EventImportRow.import_id.not_like(_STORE + "%"))
            ).all()
        if built is None:
            self._rebuild(store_id, stored_ids)
            return
        for import_id in pending:
            self.reconcile(import_id, events_dir)

    def _rebuild(self, store_id: str, stored_ids: Iterable[pa.Array]) -> None:
        with self.engine.begin() as connection:
            connection.execute(sa.delete(EventIndexRow))
            connection.execute(sa.delete(EventImportRow))
            if connection.dialect.name == "postgresql":
                # COPY: ten million ids in seconds rather than minutes of INSERTs.
                cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
                with cursor.copy("COPY event_index (event_id, import_id) FROM STDIN") as copy:
                    for ids in stored_ids:
                        for event_id in ids.to_pylist():
                            copy.write_row((event_id, _REBUILT_BY))
            else:
                raw = connection.connection.driver_connection
                for ids in stored_ids:
                    raw.executemany(  # type: ignore[union-attr]
                        "insert into event_index (event_id, import_id) values (?, ?)",
                        ((event_id, _REBUILT_BY) for event_id in ids.to_pylist()),
                    )
            connection.execute(
                sa.insert(EventImportRow).values(import_id=_STORE + store_id, started_at=datetime.now(UTC))
            )

    # ---- an import ------------------------------------------------------------------------------

    def claim(self, import_id: str, ids: Sequence[str]) -> set[str]:
        """Insert `ids` for this import; returns those the store did not hold (to be stored).

        One statement whatever the number of ids, the list passed as one parameter (an array in
        PostgreSQL, a JSON text read by json_each in SQLite): a multi-row VALUES built by SQLAlchemy
        took 35 s for a million ids where this takes a few."""
        with self.engine.begin() as connection:
            postgres = connection.dialect.name == "postgresql"
            insert: Any = postgresql.insert if postgres else sqlite.insert
            connection.execute(
                insert(EventImportRow)
                .values(import_id=import_id, started_at=datetime.now(UTC))
                .on_conflict_do_nothing(index_elements=["import_id"])
            )
            if not ids:
                return set()
            statement, values = (
                (_CLAIM_POSTGRES, list(ids)) if postgres else (_CLAIM_SQLITE, json.dumps(list(ids)))
            )
            return set(connection.scalars(statement, {"ids": values, "import_id": import_id}))

    def commit(self, import_id: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(sa.delete(EventImportRow).where(EventImportRow.import_id == import_id))

    def reconcile(self, import_id: str, events_dir: Path) -> None:
        """Keep the ids of an unfinished import whose part files are in place; forget the rest."""
        landed: set[str] = set()
        for part in events_dir.glob(f"event_date=*/part-{import_id}.parquet"):
            landed.update(pq.read_table(part, columns=["event_id"]).column("event_id").to_pylist())
        with self.engine.begin() as connection:
            claimed = connection.scalars(
                sa.select(EventIndexRow.event_id).where(EventIndexRow.import_id == import_id)
            ).all()
            lost = [event_id for event_id in claimed if event_id not in landed]
            for first in range(0, len(lost), _IDS_PER_DELETE):
                connection.execute(
                    sa.delete(EventIndexRow).where(
                        EventIndexRow.event_id.in_(lost[first : first + _IDS_PER_DELETE])
                    )
                )
            connection.execute(sa.delete(EventImportRow).where(EventImportRow.import_id == import_id))


def _store_id(events_dir: Path) -> str:
    """This event store's id, made on first use: the index is rebuilt when the data dir's store is
    not the one it was built for (a restored or replaced data dir)."""
    path = events_dir / STORE_ID_FILE
    if not path.exists():
        events_dir.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(".tmp")
        scratch.write_text(uuid.uuid4().hex)
        scratch.replace(path)
    return path.read_text().strip()
