"""The environment the real `pushplan` executable runs in: no inherited PUSHPLAN_* settings, a data
dir of the test's own, and a wide terminal so tables are not folded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PUSHPLAN_")}
    return {**clean, "PUSHPLAN_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
