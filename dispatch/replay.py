"""Dispatching a campaign on a simulated clock: the demo's way to run a past window through real workers.

In service, beat's due-scan runs on the wall clock. A simulated campaign's window lies in the
simulated past, so here the dispatch clock steps through the window instead (every half hour, as
some zones are half an hour off UTC, then past its end for fallbacks), and at each step the same
`scan_due` queues what is due and the same `send_chunk_task` messages go to whatever workers consume
the broker. Each step waits until the workers have drained its sends, so the caps see sends in time
order as they would in service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa
from rich.progress import Progress

from dispatch.sending import scan_due
from pushplan.db.schema import PlanItemRow
from pushplan.db.store import PlanStore
from pushplan.domain import Campaign, ItemState
from pushplan.settings import Settings


def queued_items(store: PlanStore, campaign_id: str) -> int:
    """The campaign's items handed to workers and not yet done."""
    with store.session() as session:
        return int(
            session.scalar(
                sa.select(sa.func.count()).where(
                    PlanItemRow.campaign_id == campaign_id,
                    PlanItemRow.state == ItemState.queued.value,
                    PlanItemRow.detail.is_(None),  # not one waiting to retry after a channel error
                )
            )
            or 0
        )


def replay(
    store: PlanStore,
    settings: Settings,
    campaign: Campaign,
    *,
    step: timedelta = timedelta(minutes=30),
    drain_timeout_s: float = 300.0,
    enqueue: Callable[[list[object]], None] | None = None,
    before_step: Callable[[datetime], None] | None = None,
) -> int:
    """Step the dispatch clock through the campaign's window; returns the chunks enqueued.

    A triggered campaign's sends go on past its window by the trigger's delay and send window, and
    `before_step(moment)` runs first at each step: the tour posts the events of the step there and
    has the firing task plan them as of `moment`.

    Raises TimeoutError if the workers leave a step's items queued for `drain_timeout_s` (is a
    worker running?). Items whose sends were retried keep their lease; the next steps pick them up.
    """
    if enqueue is None:
        from dispatch.tasks import send_chunk_task

        def enqueue(args: list[object]) -> None:
            send_chunk_task.apply_async(args=args)

    end = campaign.window.end + (campaign.fallback_after or timedelta(0))
    if campaign.trigger is not None:
        end += campaign.trigger.delay + campaign.trigger.send_within
    steps = []
    moment: datetime = campaign.window.start
    while moment <= end:
        steps.append(moment)
        moment += step
    chunks = 0
    with Progress(transient=True) as progress:
        task = progress.add_task(f"dispatching {campaign.campaign_id}", total=len(steps))
        for moment in steps:
            if before_step is not None:
                before_step(moment)
            for chunk in scan_due(store, settings, as_of=moment):
                enqueue(chunk.args())
                chunks += 1
            deadline = time.monotonic() + drain_timeout_s
            while queued_items(store, campaign.campaign_id):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"items of {campaign.campaign_id} still queued after {drain_timeout_s:.0f} s at "
                        f"{moment:%Y-%m-%d %H:%M} UTC: is a worker running (pushplan worker)?"
                    )
                time.sleep(0.05)
            progress.advance(task)
    return chunks
