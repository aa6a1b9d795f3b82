"""Plan items in the database: stored by (campaign, user, firing), re-planned only while still dispatch's to
take, listed by cursor, and the holdings other campaigns' plans are capped against.

Re-planning is idempotent: a new plan replaces only items not yet handed to dispatch (`planned`, or
`suppressed` skips and holdouts), never one queued, sent, failed or cancelled.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from enum import Enum
from functools import lru_cache
from typing import Any, cast

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from pushplan.caps import HELD_COLUMNS, item_value
from pushplan.db.schema import CampaignRow, PlanItemRow, utc
from pushplan.domain import Campaign, Decision, ItemState, PlanItem, Reason

# States a new plan may overwrite: not yet handed to dispatch. Queued, sent, failed and cancelled
# items are dispatch's record of what happened and are never rewritten by planning.
REPLANNABLE = {ItemState.planned.value, ItemState.suppressed.value}
# States whose sends count against a user's caps: still to go, on their way, or gone.
HOLDING = (
    ItemState.planned.value,
    ItemState.queued.value,
    ItemState.sent.value,
    ItemState.unknown.value,  # maybe delivered: it counts, like a send
)
# A plan in a window needs the holdings a week either side of it: the widest cap is 7 days.
HOLDING_MARGIN = timedelta(days=7)
# Past this many users, held sends are read by time range and filtered here, not by an IN list.
USER_FILTER_LIMIT = 10_000


class PlanItemRepository:
    """The plan items half of `pushplan.db.store.PlanStore`."""

    session: Callable[[], AbstractContextManager[Session]]

    def save_items(self, items: pd.DataFrame | list[PlanItem], displaced: list[str] | None = None) -> int:
        """Insert new items, replace REPLANNABLE ones of the same (campaign, user, firing); returns rows
        written (a triggered campaign's firing is planned once: its item is never re-planned).

        `displaced` are other campaigns' items a higher-value send took the place of: in the same
        transaction they become `skip` / `capped`, if they are still only planned.
        """
        if not len(items) and not displaced:
            return 0
        validated = plan_records(items) if isinstance(items, pd.DataFrame) else items
        now = datetime.now(UTC)
        written = 0
        with self.session() as session:
            if displaced:
                session.execute(
                    sa.update(PlanItemRow)
                    .where(PlanItemRow.plan_id.in_(displaced), PlanItemRow.state == ItemState.planned.value)
                    .values(
                        decision=Decision.skip.value,
                        reason=Reason.capped.value,
                        state=ItemState.suppressed.value,
                        updated_at=now,
                    )
                )
            rows = [
                {**{k: _column_value(v) for k, v in item.model_dump().items()}, "updated_at": now}
                for item in validated
            ]
            if rows:
                # Counted by what the statement returns (the rows it inserted or replaced): drivers'
                # rowcount of a multi-row upsert is not reliable (psycopg gives -1). Executed with a
                # list of rows, SQLAlchemy sends them as multi-row VALUES of its cached statement.
                upsert = _upsert(session.get_bind().dialect.name, tuple(rows[0]))
                written += len(session.connection().execute(upsert, rows).all())
        return written

    def list_items(
        self,
        campaign_id: str,
        *,
        decision: str | None = None,
        reason: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[PlanItem]:
        """Items of a campaign in plan_id order, `limit` at a time after the cursor `after`."""
        query = sa.select(PlanItemRow).where(PlanItemRow.campaign_id == campaign_id)
        if decision:
            query = query.where(PlanItemRow.decision == decision)
        if reason:
            query = query.where(PlanItemRow.reason == reason)
        if after:
            query = query.where(PlanItemRow.plan_id > after)
        with self.session() as session:
            rows = session.scalars(query.order_by(PlanItemRow.plan_id).limit(limit)).all()
            return [PlanItem.model_validate(_from_row(row)) for row in rows]

    def held_sends(self, campaign: Campaign, user_ids: list[str] | None = None) -> pd.DataFrame:
        """Other campaigns' sends that count against caps near `campaign`'s window (HELD_COLUMNS).

        `priority` and `value` say what each is worth (pushplan.caps.item_value); `movable` is
        whether planning may still displace it (only `planned` items: queued ones are dispatch's).
        """
        query = (
            sa.select(
                PlanItemRow.plan_id,
                PlanItemRow.campaign_id,
                PlanItemRow.user_id,
                PlanItemRow.channel,
                PlanItemRow.send_at,
                PlanItemRow.p_click,
                PlanItemRow.state,
            )
            .where(
                PlanItemRow.campaign_id != campaign.campaign_id,
                PlanItemRow.decision == Decision.send.value,
                PlanItemRow.state.in_(HOLDING),
                PlanItemRow.send_at >= campaign.window.start - HOLDING_MARGIN,
                PlanItemRow.send_at < campaign.window.end + HOLDING_MARGIN,
            )
            .order_by(PlanItemRow.plan_id)
        )
        small = user_ids is not None and len(user_ids) <= USER_FILTER_LIMIT
        if small:
            query = query.where(PlanItemRow.user_id.in_(user_ids or []))
        with self.session() as session:
            rows = session.execute(query).all()
            if not rows:  # the common case on a hot path: nothing held, no frame work
                return pd.DataFrame(columns=list(HELD_COLUMNS))
            held = pd.DataFrame(rows, columns=[*HELD_COLUMNS[:5], "p_click", "state"])
            others = {
                row.campaign_id: Campaign.stored(row.spec)
                for row in session.scalars(
                    sa.select(CampaignRow).where(CampaignRow.campaign_id.in_(set(held["campaign_id"])))
                )
            }
        if user_ids is not None and not small:
            held = held[held["user_id"].isin(set(user_ids))]
        held["send_at"] = pd.to_datetime(held["send_at"], utc=True)  # SQLite keeps no zone; we store UTC
        held["priority"] = [others[c].priority for c in held["campaign_id"]]
        held["value"] = [
            float(item_value(others[c], p)) for c, p in zip(held["campaign_id"], held["p_click"], strict=True)
        ]
        held["movable"] = held["state"] == ItemState.planned.value
        return held[list(HELD_COLUMNS)].reset_index(drop=True)

    def sends_kept(self, campaign_id: str, user_ids: list[str]) -> int:
        """The campaign's sends a new plan for `user_ids` leaves standing: those of other users, and
        those already queued or sent (never rewritten). They count toward its `campaign_total`."""
        with self.session() as session:
            rows = session.execute(
                sa.select(PlanItemRow.user_id, PlanItemRow.state).where(
                    PlanItemRow.campaign_id == campaign_id,
                    PlanItemRow.decision == Decision.send.value,
                    PlanItemRow.state.in_(HOLDING),
                )
            ).all()
        listed = set(user_ids)
        return sum(1 for user, state in rows if user not in listed or state not in REPLANNABLE)

    def counts(self, campaign_id: str) -> dict[str, int]:
        with self.session() as session:
            rows = session.execute(
                sa.select(PlanItemRow.decision, sa.func.count())
                .where(PlanItemRow.campaign_id == campaign_id)
                .group_by(PlanItemRow.decision)
            ).all()
        return {decision: int(count) for decision, count in rows}


_PLAN_ITEMS = cast(sa.Table, PlanItemRow.__table__)
_KEY = ("campaign_id", "user_id", "firing_id")


@lru_cache(maxsize=16)
def _upsert(dialect: str, columns: tuple[str, ...]) -> Any:
    """One INSERT for new items and re-plans alike: on the (campaign, user, firing) key, a stored item
    is replaced in `columns` (what a plan writes; it keeps its plan_id) only while it is still
    REPLANNABLE, decided by the database in the statement itself. A due-scan that queues the item
    first, or another process that stores the same new user first, is seen: no read-then-write
    gap, no unique-key error to retry."""
    insert = postgresql.insert(_PLAN_ITEMS) if dialect == "postgresql" else sqlite.insert(_PLAN_ITEMS)
    kept = {"plan_id", *_KEY}  # and the columns a plan does not write (dispatch's claim, lease)
    return insert.on_conflict_do_update(
        index_elements=list(_KEY),
        set_={name: insert.excluded[name] for name in columns if name not in kept},
        # One comparison per state, not IN: an IN list is an expanding parameter, which a statement
        # executed with many rows may not hold.
        where=sa.or_(*(_PLAN_ITEMS.c.state == state for state in sorted(REPLANNABLE))),
    ).returning(_PLAN_ITEMS.c.plan_id)


def _column_value(value: Any) -> Any:
    """Enums as their values, pandas timestamps as plain datetimes: what every SQL driver takes."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value


def plan_records(items: pd.DataFrame) -> list[PlanItem]:
    """The planner's frame as PlanItems: validated once, then stored and answered as they are."""
    return [PlanItem.model_validate(missing_to_none(r)) for r in items.to_dict("records")]


def missing_to_none(record: dict[str, Any]) -> dict[str, Any]:
    """Missing values from a frame (NaN, NaT) become None for the contract."""
    return {k: (None if not isinstance(v, dict | list) and pd.isna(v) else v) for k, v in record.items()}


def _from_row(row: PlanItemRow) -> dict[str, Any]:
    values = {column.name: getattr(row, column.name) for column in PlanItemRow.__table__.columns}
    for internal in ("updated_at", "claim", "lease_until", "opened_at"):
        values.pop(internal)
    for instant in ("send_at", "model_send_at", "sent_at", "fired_at", "window_end"):
        values[instant] = utc(values[instant])
    return values
