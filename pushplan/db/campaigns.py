"""Campaigns in the database: create, replace while dispatch has not started, read back."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from pushplan.db.schema import CampaignRow
from pushplan.domain import Campaign, DispatchState


class CampaignFrozen(ValueError):
    """A new spec for a campaign whose dispatch has started: its items were planned and sent under
    the old one, so replacing it would make later sends and the experiment's record disagree."""


class CampaignRepository:
    """The campaigns half of `pushplan.db.store.PlanStore`."""

    session: Callable[[], AbstractContextManager[Session]]

    def save_campaign(self, campaign: Campaign) -> None:
        """Create the campaign, or replace its spec while its dispatch has not started.

        Once started (dispatch_state not `idle`), only the same spec again is accepted, as a
        harmless retry; any other raises CampaignFrozen.
        """
        now = datetime.now(UTC)
        with self.session() as session:
            # FOR UPDATE: dispatch.control starts a campaign under the same row lock, so the state
            # read here holds until this commits; no spec lands after a start it did not see.
            row = session.get(CampaignRow, campaign.campaign_id, with_for_update=True)
            spec = campaign.model_dump(mode="json")
            if (
                row is not None
                and row.dispatch_state != DispatchState.idle.value
                and not _same_spec(row.spec, campaign)
            ):
                raise CampaignFrozen(
                    f"campaign {campaign.campaign_id!r} is {row.dispatch_state}: its spec is frozen "
                    "once dispatch has started; create a new campaign"
                )
            listens = " ".join(campaign.trigger.listens()) if campaign.trigger else None
            if row is None:
                session.add(
                    CampaignRow(
                        campaign_id=campaign.campaign_id,
                        name=campaign.name,
                        spec=spec,
                        created_at=now,
                        updated_at=now,
                        trigger_events=listens,
                    )
                )
            else:
                row.name, row.spec, row.updated_at, row.trigger_events = campaign.name, spec, now, listens

    def get_campaign(self, campaign_id: str) -> Campaign | None:
        with self.session() as session:
            row = session.get(CampaignRow, campaign_id)
            return Campaign.stored(row.spec) if row else None


def _same_spec(stored: dict[str, Any], campaign: Campaign) -> bool:
    # Read as stored (Campaign.stored): one made before a text rule differs from any new one anyway.
    return Campaign.stored(stored) == campaign
