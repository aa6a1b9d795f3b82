"""What every notebook in notebooks/ starts with: the settings of the data `make demo` made, found from
the repository root whether Jupyter runs in notebooks/ or at the root, and a clear error when there is
no such data yet."""

from __future__ import annotations

import os
from pathlib import Path

from pushplan.settings import Settings, get_settings


def demo_settings() -> Settings:
    """The settings for `PUSHPLAN_DATA_DIR`, or the repository's `.pushplan/` when it is not set.

    Jupyter starts a kernel in the notebook's own directory, where the default relative
    `.pushplan` would point at notebooks/.pushplan; the repository root is where `make demo` wrote.
    """
    if "PUSHPLAN_DATA_DIR" not in os.environ:
        here = Path.cwd()
        root = here.parent if here.name == "notebooks" else here
        os.environ["PUSHPLAN_DATA_DIR"] = str((root / ".pushplan").resolve())
        get_settings.cache_clear()
    settings = get_settings()
    if not (settings.data_dir / "events").exists():
        raise FileNotFoundError(
            f"no event store under {settings.data_dir}: run `make demo` first "
            "(or set PUSHPLAN_DATA_DIR to a data directory that has one)"
        )
    return settings
