"""Custom labels in the database: each definition a new version with its author, none ever changed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from pushplan.db.schema import LabelRow
from pushplan.db.store import PlanStore


@dataclass(frozen=True)
class LabelVersion:
    name: str
    version: int
    rule: str | None  # None: the label was removed in this version
    author: str
    created_at: datetime


def add_version(store: PlanStore, name: str, rule: str | None, author: str) -> LabelVersion:
    """Append the next version of `name` (its first if new). Two writers racing for the same version
    collide on the primary key: the loser's transaction fails and nothing of it is stored."""
    with store.session() as session:
        latest = session.scalar(sa.select(sa.func.max(LabelRow.version)).where(LabelRow.name == name))
        row = LabelRow(
            name=name, version=(latest or 0) + 1, rule=rule, author=author, created_at=datetime.now(UTC)
        )
        session.add(row)
        return _version(row)


def label_versions(store: PlanStore, name: str | None = None) -> list[LabelVersion]:
    """Every version (of `name`, or of all labels), oldest first; none where the plan store has not
    been created yet (a feature build may come before any command that migrates it)."""
    if not sa.inspect(store.engine).has_table(LabelRow.__tablename__):
        return []
    query = sa.select(LabelRow).order_by(LabelRow.name, LabelRow.version)
    if name is not None:
        query = query.where(LabelRow.name == name)
    with store.session() as session:
        return [_version(row) for row in session.scalars(query)]


def labels_in_force(store: PlanStore) -> list[LabelVersion]:
    """The newest version of each label that has not been removed, by name."""
    newest: dict[str, LabelVersion] = {}
    for version in label_versions(store):
        newest[version.name] = version
    return [v for v in newest.values() if v.rule is not None]


def _version(row: LabelRow) -> LabelVersion:
    return LabelVersion(row.name, row.version, row.rule, row.author, row.created_at)
