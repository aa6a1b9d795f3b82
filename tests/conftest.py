"""Shared fixtures: every test gets its own data dir and freshly read settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from pushplan.settings import Settings, get_settings

SIM_START = date(2026, 9, 1)


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point PUSHPLAN_DATA_DIR at a fresh directory and drop cached settings around each test."""
    for name in list(os.environ):
        if name.startswith("PUSHPLAN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PUSHPLAN_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One simulated population for the whole run: 1,500 users over 35 days (seed 11)."""
    from features.simulator import simulate

    out = tmp_path_factory.mktemp("sim")
    simulate(out, users=1500, days=35, seed=11, start=SIM_START)
    return out
