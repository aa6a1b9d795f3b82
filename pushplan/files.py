"""Files written whole or not at all: readers see the old file or the new one, never half of one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """`write` a scratch file beside `path` (same folder, same file system), then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    write(scratch)
    scratch.replace(path)
    return path


def write_parquet(table: pa.Table, path: Path) -> Path:
    return write_atomically(path, lambda scratch: pq.write_table(table, scratch))


def write_text(text: str, path: Path) -> Path:
    return write_atomically(path, lambda scratch: scratch.write_text(text, encoding="utf-8"))
