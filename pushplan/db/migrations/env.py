"""Alembic environment for the database: the URL comes from pushplan.db.engine.migrate."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from pushplan.db.engine import VERSION_TABLE
from pushplan.db.schema import Base

config = context.config
connectable = sa.create_engine(config.get_main_option("sqlalchemy.url") or "")
with connectable.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()
connectable.dispose()
