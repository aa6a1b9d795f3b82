"""pushplan's benchmarks, run by one command (`make bench`); prints figures with the machine they ran on.

    python -m benchmarks.run [--events 1000000] [--users 5000 --days 60]
                             [--feature-users 100000 --feature-days 14] [--redis-url redis://127.0.0.1:6379/15]
                             [--audience-users 1000000]
                             [--skip-serving | --only-serving] [the sizes of benchmarks/serving.py]
                             [--skip-dispatch | --only-dispatch] [--dispatch-items 100000 ...]
                             [--skip-triggers]

Measures: importing a CSV and a parquet file of N events into an empty store (rows/s, validation
included), re-importing the same file (the idempotent path), simulating the demo population; and
for a population of --feature-users: building the feature tables, and materializing the latest
snapshot of every user into the SQLite and the Redis online stores (users/s); an audience's
preview and selection over --audience-users (benchmarks/audiences.py). Then the plan
service's figures (benchmarks/serving.py): one-user `POST /v1/plans` latency over HTTP on the
production profile against its floor, and offline planning of a million users against the naive
per-user path. Then dispatch's (benchmarks/dispatch.py): end-to-end sends per second through a
Celery worker and Redis against Celery running no-op tasks; its options are those of
`python -m benchmarks.dispatch` with a `--dispatch-` prefix. Last, triggered campaigns' intake
(benchmarks/triggers.py at its defaults: 1,000 events/s for 10 minutes into 10 million; about 20
minutes). A quick run: `--events 100000
--feature-users 5000 --audience-users 100000 --requests 500 --plan-users 100000 --naive-users 2000
--dispatch-items 20000 --dispatch-users 10000`.
Each figure is one timed run on a fresh data dir; the machine is busy with nothing else.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import audiences, dispatch, serving, triggers
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


def timed(label: str, action: Callable[[], object], rows: int | None = None, unit: str = "rows") -> None:
    started = time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    rate = f"{rows / seconds:>12,.0f} {unit}/s" if rows else ""
    print(f"{label:<52} {seconds:>8.2f} s {rate}", flush=True)


def feature_store_figures(root: Path, users: int, days: int, redis_url: str) -> None:
    """Build and materialize features for a simulated population, into SQLite and into Redis."""
    import uuid

    from features.store import apply, feature_store, materialize
    from features.tables import build_feature_tables
    from pushplan.reachability import reachable
    from pushplan.settings import Profile

    sim = root / "feature-sim"
    simulate(sim, users=users, days=days, seed=7)
    local = Settings(data_dir=root / "feature-local")
    store = EventStore(local)
    for name in ("users.parquet", "events.parquet", "campaigns.json"):
        store.import_file(sim / name)
    events = store.stats().events
    print(f"feature population: {users:,} users, {days} days, {events:,} events")
    timed(f"features build, {users:,} users x {days} days", lambda: build_feature_tables(local))

    sqlite_store = feature_store(local)
    apply(sqlite_store, local)
    timed(
        "features materialize, SQLite online store", lambda: materialize(sqlite_store, local), users, "users"
    )
    if not reachable(redis_url):
        print(f"features materialize, Redis online store: skipped, {redis_url} not reachable")
        return
    production = Settings(
        profile=Profile.production,
        data_dir=local.data_dir,
        redis_url=redis_url,
        database_url="postgresql+psycopg://unused@127.0.0.1/unused",
        feast_project=f"bench_{uuid.uuid4().hex[:8]}",
    )
    redis_store = feature_store(production)
    apply(redis_store, production)
    try:
        timed(
            "features materialize, Redis online store",
            lambda: materialize(redis_store, production),
            users,
            "users",
        )
    finally:
        redis_store.teardown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--feature-users", type=int, default=100_000)
    parser.add_argument("--feature-days", type=int, default=14)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--audience-users", type=int, default=1_000_000)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--skip-serving", action="store_true", help="leave out benchmarks/serving.py")
    which.add_argument("--only-serving", action="store_true", help="only benchmarks/serving.py")
    serving.add_arguments(parser)
    sends = parser.add_mutually_exclusive_group()
    sends.add_argument("--skip-dispatch", action="store_true", help="leave out benchmarks/dispatch.py")
    sends.add_argument("--only-dispatch", action="store_true", help="only benchmarks/dispatch.py")
    dispatch.add_arguments(parser, prefix="dispatch-")
    parser.add_argument("--skip-triggers", action="store_true", help="leave out benchmarks/triggers.py")
    args = parser.parse_args()
    if args.only_dispatch and args.only_serving:
        parser.error("--only-dispatch and --only-serving exclude each other")
    # Feast and ibis warn about their own APIs on every call; the figures are what this prints.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", RuntimeWarning)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.platform()}"
    )
    if not (args.only_serving or args.only_dispatch):
        store_figures(args)
        audiences.run(argparse.Namespace(users=args.audience_users, base_users=25_000, days=14))
    if not (args.skip_serving or args.only_dispatch):
        serving.run(args)
    if not (args.skip_dispatch or args.only_serving):
        dispatch.run(args)
    if not (args.skip_triggers or args.only_serving or args.only_dispatch):
        triggers.run(triggers.default_args())


def store_figures(args: argparse.Namespace) -> None:
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
        feature_store_figures(root, args.feature_users, args.feature_days, args.redis_url)


if __name__ == "__main__":
    main()
