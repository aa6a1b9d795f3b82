"""pushplan's benchmarks, run by one command (`make bench`); prints figures with the machine they ran on.

    python -m benchmarks.run [--events 1000000] [--users 5000 --days 60]

Measures: importing a CSV and a parquet file of N events into an empty store (rows/s, validation
included), re-importing the same file (the idempotent path), and simulating the demo population.
Each figure is one timed run on a fresh data dir; the machine is busy with nothing else.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from features.event_store import EventStore
from features.simulator import simulate
from pushplan.settings import Settings


def synthetic_events(n: int, seed: int = 0) -> pd.DataFrame:
    """N events in the import format, over 60 days and 100,000 users, half of them push_sent."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2026-09-01T00:00:00", "s")
    stamps = start + rng.integers(0, 60 * 86_400, n).astype("timedelta64[s]")
    sent = rng.random(n) < 0.5
    return pd.DataFrame(
        {
            "event_id": [f"bench-{i:09d}" for i in range(n)],
            "user_id": [f"u{u:07d}" for u in rng.integers(0, 100_000, n)],
            "event_type": np.where(sent, "push_sent", "app_open"),
            "timestamp": pd.to_datetime(stamps).tz_localize("UTC"),
            "campaign_id": np.where(sent, "c1", None),
            "variant_id": np.where(sent, "c1-a", None),
            "channel": np.where(sent, "push", None),
            "value": np.nan,
            "propensity": np.where(sent, 1 / 72, np.nan),
        }
    )


def timed(label: str, action: Callable[[], object], rows: int | None = None) -> None:
    started = time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    rate = f"{rows / seconds:>12,.0f} rows/s" if rows else ""
    print(f"{label:<48} {seconds:>8.2f} s {rate}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--days", type=int, default=60)
    args = parser.parse_args()

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.platform()}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        frame = synthetic_events(args.events)
        csv_path, parquet_path = root / "events.csv", root / "events.parquet"
        frame.assign(timestamp=frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(
            csv_path, index=False
        )
        frame.to_parquet(parquet_path, index=False)
        print(f"input: {args.events:,} events; CSV {csv_path.stat().st_size / 1e6:.0f} MB")

        csv_store = EventStore(Settings(data_dir=root / "csv-store"))
        timed(
            f"events import, CSV, {args.events:,} rows", lambda: csv_store.import_file(csv_path), args.events
        )
        timed(
            "events import, same CSV again (all duplicates)",
            lambda: csv_store.import_file(csv_path),
            args.events,
        )
        parquet_store = EventStore(Settings(data_dir=root / "parquet-store"))
        timed(
            f"events import, parquet, {args.events:,} rows",
            lambda: parquet_store.import_file(parquet_path),
            args.events,
        )
        timed("events stats", csv_store.stats)
        timed(
            f"simulate {args.users:,} users x {args.days} days",
            lambda: simulate(root / "sim", users=args.users, days=args.days, seed=7),
        )


if __name__ == "__main__":
    main()
