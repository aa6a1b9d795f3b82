"""Which campaigns need an approver's yes before they may dispatch, and the approval states.

A campaign is sensitive when it says so (`sensitive: true`), when it may send on SMS or e-mail
(costly, regulated, read as personal), or when its audience selects more users than
PUSHPLAN_APPROVAL_AUDIENCE_ABOVE. A sensitive campaign is saved as `draft`; an approver who did not
write it approves or rejects it; dispatch refuses a draft or a rejected campaign; a new spec sends
an approved campaign back to draft. Shared by the API and the CLI, so both apply the same rules.
"""

from __future__ import annotations

from enum import StrEnum

from pushplan.domain import Campaign, Channel
from pushplan.settings import Settings

SENSITIVE_CHANNELS = (Channel.sms, Channel.email)


class Approval(StrEnum):
    not_needed = "not_needed"
    draft = "draft"  # waits for an approver
    approved = "approved"
    rejected = "rejected"

    @property
    def may_dispatch(self) -> bool:
        return self in (Approval.not_needed, Approval.approved)


class ApprovalRefused(ValueError):
    """An approval or rejection that is not allowed: nothing waits, or the approver wrote the spec."""


def approval_reasons(campaign: Campaign, settings: Settings, audience_size: int | None) -> list[str]:
    """Why the campaign needs approval (none: it does not). `audience_size` is None when it could not
    be counted (no users imported yet); with a size rule in force that counts as too big."""
    reasons = []
    if campaign.sensitive:
        reasons.append("flagged sensitive")
    channels = [c.value for c in campaign.channels if c in SENSITIVE_CHANNELS]
    if channels:
        reasons.append(f"sends on {' and '.join(channels)}")
    limit = settings.approval_audience_above
    if limit is not None:
        if audience_size is None:
            reasons.append(f"audience size unknown (the size rule is {limit:,} users)")
        elif audience_size > limit:
            reasons.append(f"audience of {audience_size:,} users is above {limit:,}")
    return reasons
