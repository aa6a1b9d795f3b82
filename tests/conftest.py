"""Shared fixtures: every test gets its own data dir and freshly read settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushplan.settings import Settings, get_settings


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
