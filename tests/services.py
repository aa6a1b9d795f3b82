"""Where the integration tests find Redis and PostgreSQL, and the rule: under CI they must be there."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pytest

from pushplan.services import reachable

REDIS_URL = os.environ.get("PUSHPLAN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
DATABASE_URL = os.environ.get(
    "PUSHPLAN_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def require_services() -> None:
    """Skip on a laptop without the services; fail under CI, where a skip would hide a broken run."""
    down = [url for url in (REDIS_URL, DATABASE_URL) if not reachable(url)]
    if not down:
        return
    message = f"not reachable: {', '.join(urlsplit(u).netloc.split('@')[-1] for u in down)}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must test the production profile for real)")
    pytest.skip(message)
