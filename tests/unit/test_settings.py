"""Settings: read once from PUSHPLAN_* variables, local by default, production refuses missing services."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from pushplan import settings as settings_module
from pushplan.settings import Profile, Settings, get_settings


def test_local_is_the_default_and_everything_lives_under_the_data_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PUSHPLAN_DATA_DIR")
    settings = Settings()
    assert settings.profile is Profile.local
    assert settings.data_dir == Path(".pushplan")
    assert settings.events_dir == Path(".pushplan/events")
    assert settings.users_path == Path(".pushplan/users/users.parquet")


def test_production_needs_both_service_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHPLAN_PROFILE", "production")
    with pytest.raises(ValidationError, match="PUSHPLAN_REDIS_URL and PUSHPLAN_DATABASE_URL"):
        Settings()
    monkeypatch.setenv("PUSHPLAN_REDIS_URL", "redis://cache:6379/0")
    with pytest.raises(ValidationError, match="needs PUSHPLAN_DATABASE_URL to be set"):
        Settings()
    monkeypatch.setenv("PUSHPLAN_DATABASE_URL", "postgresql+psycopg://app@db/pushplan")
    assert Settings().profile is Profile.production


def test_unknown_default_timezone_and_profile_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHPLAN_DEFAULT_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ValidationError, match="not an IANA time zone"):
        Settings()
    monkeypatch.setenv("PUSHPLAN_DEFAULT_TIMEZONE", "Asia/Kolkata")
    monkeypatch.setenv("PUSHPLAN_PROFILE", "staging")
    with pytest.raises(ValidationError, match="'local' or 'production'"):
        Settings()


def test_get_settings_is_cached_until_cleared(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = get_settings()
    monkeypatch.setenv("PUSHPLAN_DATA_DIR", str(tmp_path / "elsewhere"))
    assert get_settings() is first
    get_settings.cache_clear()
    assert get_settings().data_dir == tmp_path / "elsewhere"


def test_importing_reads_no_environment_and_touches_no_disk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A broken environment must not break an import: only get_settings() reads it.
    monkeypatch.setenv("PUSHPLAN_PROFILE", "not-a-profile")
    monkeypatch.setenv("PUSHPLAN_DATA_DIR", str(tmp_path / "never-created"))
    for name in ("pushplan.settings", "cli.main", "features.event_store", "features.simulator"):
        importlib.reload(importlib.import_module(name))
    assert not (tmp_path / "never-created").exists()
    importlib.reload(settings_module)


def test_lifecycle_thresholds_must_be_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHPLAN_LIFECYCLE_ACTIVE_DAYS", "40")
    with pytest.raises(ValidationError, match="must be below PUSHPLAN_LIFECYCLE_CHURNED_DAYS"):
        Settings()
