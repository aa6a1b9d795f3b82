"""Where the database is and how to reach it: the URL by profile, an engine several processes can
write through, and the Alembic migrations that own the schema."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from filelock import FileLock

from pushplan.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"
# In production the database is shared with MLflow, which keeps its own Alembic history in the
# default `alembic_version` table; ours must not collide with it.
VERSION_TABLE = "pushplan_alembic_version"


def database_url(settings: Settings) -> str:
    return settings.sql_url("plans.db")


def migrate(settings: Settings) -> None:
    """Bring the plan store's schema to the latest Alembic revision; processes starting together
    (uvicorn's workers, service replicas, a worker and the API) take turns, so the second finds the
    schema current instead of racing the first through the same migration."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url(settings).replace("%", "%%"))
    with _one_at_a_time(settings):
        _adopt_shared_version_table(config, database_url(settings))
        command.upgrade(config, "head")


# The key of PostgreSQL's advisory lock around migrations: any constant the database's other users
# (MLflow) do not take.
MIGRATION_LOCK = 0x70757368706C616E  # "pushplan"


@contextmanager
def _one_at_a_time(settings: Settings) -> Iterator[None]:
    """A lock across processes: PostgreSQL's advisory lock, or for any other database (SQLite: the
    local profile's, or one a test configures) a lock file under the data dir."""
    url = database_url(settings)
    if sa.engine.make_url(url).get_backend_name() != "postgresql":
        with FileLock(settings.data_dir / "plans.db.migrate.lock"):
            yield
        return
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("select pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            try:
                yield
            finally:
                connection.execute(sa.text("select pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
    finally:
        engine.dispose()


def _adopt_shared_version_table(config: Config, url: str) -> None:
    """Stores made before VERSION_TABLE kept their revision in Alembic's default table: carry it
    over once, so upgrading pushplan never tries to create the tables they already have."""
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    engine = sa.create_engine(url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
        if "alembic_version" not in tables or "plan_items" not in tables:
            return
        with engine.connect() as connection:
            if VERSION_TABLE in tables and connection.scalar(
                sa.text(f"select count(*) from {VERSION_TABLE}")
            ):
                return
            revisions = connection.execute(sa.text("select version_num from alembic_version")).scalars().all()
    finally:
        engine.dispose()
    scripts = ScriptDirectory.from_config(config)
    for revision in revisions:  # MLflow's revisions may share the table; only ours are known here
        try:
            if scripts.get_revision(revision) is not None:
                command.stamp(config, revision)
                return
        except CommandError:
            continue


def engine_for(url: str) -> sa.Engine:
    """An engine for the store; on SQLite, one on which several processes (API, workers, beat) can write.

    pysqlite opens transactions lazily and as DEFERRED, so two writers that both read first deadlock
    on the upgrade to a write lock; SQLAlchemy's documented recipe is to take the driver's hands off
    and begin each transaction IMMEDIATE, which waits (up to `timeout`) for the other writer instead.
    WAL lets readers go on while one writes.
    """
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("pragma journal_mode=wal")
        dbapi_connection.execute("pragma synchronous=normal")

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("begin immediate")

    return engine
