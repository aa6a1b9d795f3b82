"""Telling approvers that a campaign waits for them: a signed POST to PUSHPLAN_APPROVAL_WEBHOOK_URL.

The body is JSON ({"event": "approval_requested", "campaign_id", "name", "team", "reasons",
"written_by", "at"}), signed as the webhook channel signs its messages (X-Pushplan-Timestamp and
X-Pushplan-Signature, HMAC-SHA256 with PUSHPLAN_WEBHOOK_SECRET) when that secret is set. A receiver
that is down does not stop the campaign's save: the failure is logged and the audit trail keeps the
request; the approvers can always list drafts (`pushplan audit --action approve`, GET …/approval).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import httpx

from dispatch.channels import signature_headers
from pushplan.db.campaigns import CampaignMeta
from pushplan.settings import Settings

_log = logging.getLogger(__name__)
NOTIFY_TIMEOUT_SECONDS = 5.0


def notify_approvers(settings: Settings, meta: CampaignMeta, name: str) -> bool:
    """POST the request for approval; True when the receiver answered 2xx (or none is configured)."""
    if settings.approval_webhook_url is None:
        return True
    body = json.dumps(
        {
            "event": "approval_requested",
            "campaign_id": meta.campaign_id,
            "name": name,
            "team": meta.team,
            "reasons": meta.approval_reasons,
            "written_by": meta.created_by,
            "at": datetime.now(UTC).isoformat(),
        }
    ).encode()
    headers = {"Content-Type": "application/json"}
    if settings.webhook_secret is not None:
        headers |= signature_headers(settings.webhook_secret.get_secret_value(), body)
    try:
        response = httpx.post(
            settings.approval_webhook_url, content=body, headers=headers, timeout=NOTIFY_TIMEOUT_SECONDS
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        _log.warning("approval request for %r not delivered: %s", meta.campaign_id, type(exc).__name__)
        return False
    return True
