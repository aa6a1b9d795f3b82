"""Where the database is and how to reach it: the URL by profile, an engine several processes can
write through, and the Alembic migrations that own the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from pushplan.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"
# In production the database is shared with MLflow, which keeps its own Alembic history in the
# default `alembic_version` table; ours must not collide with it.
VERSION_TABLE = "pushplan_alembic_version"


def database_url(settings: Settings) -> str:
    return settings.sql_url("plans.db")


def migrate(settings: Settings) -> None:
    """Bring the plan store's schema to the latest Alembic revision."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url(settings).replace("%", "%%"))
    _adopt_shared_version_table(config, database_url(settings))
    command.upgrade(config, "head")


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
