"""Benchmark of audiences (issue 17): a preview and a plan job's selection over a million users.

    python -m benchmarks.audiences [--users 1000000 --base-users 25000 --days 14]

A population of --base-users is simulated over --days, imported and built; then the users file, the
feature tables a rule reads (profile, RFM, fatigue, custom labels) and the event store are repeated
under new user ids (`<id>-r<k>`) up to --users, the way benchmarks.serving grows its offline
audience: building a million users' tables directly needs far more memory than this machine has
(the dense hour grids; 50,000 users over 30 days alone peaked near 24 GB). Each step then runs in a
process of its own, whose time and peak RSS are reported: `features.audiences.preview` of a rule
that reads two labels, a custom attribute and the event log, and `features.audiences.select` of
the same rule (what a plan job does once when it is created). Targets: a preview <= 5 s, a
selection <= 15 s, <= 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.serving import load, peak_rss, run_step
from pushplan.settings import Settings

RULE = (
    'lifecycle_stage in ("active", "sleeping") and rfm_cell != "lost" '
    'and tier in ("gold", "silver") and not did purchase in last 7 days'
)


TABLES_READ = ("user_profile", "user_rfm", "user_fatigue", "user_labels")


def build(settings: Settings, sim: Path, users: int, days: int) -> datetime:
    """Simulate, import and build the tables; the last snapshot's instant."""
    from features.event_store import EventStore
    from features.simulator import simulate
    from features.store import snapshot_span
    from features.tables import build_feature_tables

    simulate(sim, users=users, days=days, seed=9)
    events = EventStore(settings)
    for name in ("users.parquet", "events.parquet", "campaigns.json"):
        events.import_file(sim / name)
    build_feature_tables(settings)
    return snapshot_span(settings)[1]


def tile_tables(settings: Settings, copies: int) -> None:
    """Repeat the tables a rule reads `copies` times under new ids, kept day by day as the build
    writes them (so a read of one day's snapshot skips the others' row groups)."""
    from features.tables import table_path

    for name in TABLES_READ:
        path = table_path(settings, name)
        table = pq.read_table(path)
        tiled = pa.concat_tables([_renamed(table, k) for k in range(copies)]).sort_by("event_timestamp")
        pq.write_table(tiled, path)


def tile_users_and_events(settings: Settings, copies: int) -> None:
    """Repeat the users file (with a custom `tier` column) and every event file `copies` times."""
    users = pq.read_table(settings.users_path)
    rng = np.random.default_rng(3)
    tiers = pa.array(rng.choice(["gold", "silver", "bronze"], len(users), p=[0.1, 0.3, 0.6]))
    users = users.append_column("tier", tiers)
    with pq.ParquetWriter(settings.users_path.with_suffix(".tiled"), users.schema) as writer:
        for k in range(copies):
            writer.write_table(_renamed(users, k), row_group_size=200_000)
    settings.users_path.with_suffix(".tiled").replace(settings.users_path)
    for path in sorted(settings.events_dir.glob("event_date=*/*.parquet")):
        events = pq.read_table(path)
        for k in range(1, copies):
            pq.write_table(_renamed(events, k), path.with_name(f"{path.stem}-r{k}.parquet"))


def _renamed(table: pa.Table, k: int) -> pa.Table:
    if k == 0:
        return table
    column = table.schema.get_field_index("user_id")
    kind = table.schema.field("user_id").type
    ids = pc.binary_join_element_wise(table.column("user_id").cast(pa.string()), pa.scalar(f"r{k}"), "-")
    return table.set_column(column, table.schema.field("user_id"), ids.cast(kind))


def step(spec: dict[str, Any]) -> None:
    """One measured step in its own process: prints its seconds, peak RSS and result as JSON."""
    warnings.simplefilter("ignore")
    from features.audiences import compile_for, preview, select

    settings = Settings(data_dir=Path(spec["data_dir"]))
    now = datetime.fromisoformat(spec["now"])
    started = time.perf_counter()
    if spec["what"] == "preview":
        shown = preview(settings, RULE, now)
        result = {"count": shown["count"], "reachable": shown["reachable"]}
    else:
        chosen = select(settings, compile_for(settings, RULE), now).frame
        result = {"count": len(chosen)}
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss": peak_rss(), **result}))


def measure(what: str, settings: Settings, now: datetime) -> dict[str, Any]:
    spec = {"what": what, "data_dir": str(settings.data_dir), "now": now.isoformat()}
    return run_step("benchmarks.audiences", "--step", spec, what)


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="pushplan-bench-audiences-") as tmp:
        root = Path(tmp)
        settings = Settings(data_dir=root / "data")
        started = time.perf_counter()
        last = build(settings, root / "sim", args.base_users, args.days)
        copies = -(-args.users // args.base_users)
        tile_tables(settings, copies)
        tile_users_and_events(settings, copies)
        users = pq.read_metadata(settings.users_path).num_rows
        events = sum(pq.read_metadata(p).num_rows for p in settings.events_dir.glob("event_date=*/*.parquet"))
        print(
            f"setup: {args.base_users:,} users x {args.days} days simulated and built, repeated to "
            f"{users:,} users and {events:,} events ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        now = pd.Timestamp(last).to_pydatetime() + timedelta(hours=1)
        print(f"rule: {RULE}", flush=True)
        print(f"load average before the steps: {load()}", flush=True)
        for what, target in (("preview", 5.0), ("select", 15.0)):
            figures = measure(what, settings, now)
            print(
                f"{what:<8} {figures['seconds']:6.2f} s (target <= {target:.0f} s), peak RSS "
                f"{figures['peak_rss'] / 2**30:.2f} GiB (target <= 2 GiB); selected {figures['count']:,} "
                f"of {users:,}" + (f", reachable {figures['reachable']}" if "reachable" in figures else ""),
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--base-users", type=int, default=25_000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        step(json.loads(args.step))
        return
    run(args)


if __name__ == "__main__":
    main()
