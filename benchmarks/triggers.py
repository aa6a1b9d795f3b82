"""Benchmark of triggered campaigns' intake (issue 18): events posted at a steady rate through
`POST /v1/events` into a store that already holds millions, with three live triggers; the time from
an event's acceptance to its plan item in the plan store.

    python -m benchmarks.triggers [--rate 1000 --batch 100 --connections 4 --minutes 10]
                                  [--stored 10000000 --users 5000 --days 35] [--no-train]
                                  [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

The production profile as the integration tests deploy it (tests.dispatch_processes.deployed): a
redis-server of the benchmark's own (broker and online store), a scratch PostgreSQL database (plan
store, event index, MLflow), and the real processes: `pushplan serve`, `pushplan worker`
(--worker-concurrency) and `pushplan beat` (its firing scan every second rather than 5: each
POST starts the firing task as well, so the scan only catches what a lost message left).

Setup: --users users over --days days are simulated, imported, built and materialized into Redis,
and the three models trained and made champions (--no-train: the planner's rules). The event store is
then filled to --stored events with synthetic ones (a day's part file each, as bulk imports leave
them) and its index of event ids is built from the files by the next import, timed.

Three triggered campaigns listen (paused: they fire and plan, nothing is sent):
    cart:    on add_to_cart, 1 hour later within 6 hours, unless purchase
    welcome: on signup, at once within 2 hours, once per user in 30 days
    coupon:  on coupon_claimed where amount >= 10, a day later within 12 hours, unless purchase,
             once per user per day
The load: batches of --batch events, the i-th due at start + i x batch / rate (open loop), over
--connections keep-alive connections; a fifth of the users are new, the rest simulated ones. Of the
events 50 % are app_open, 20 % page_view, 12 % add_to_cart, 3 % signup, 10 % coupon_claimed (amount 5
or 20) and 5 % purchase. A warm-up (--warmup-seconds, 60) at the same rate comes first.

Measured: the requests' latency and achieved rate; for every event a trigger fires on, the moment
the firing task had stored its item and marked the event processed, less the moment the client had
the batch's answer (one clock: same machine); the firing task's backlog at the end; the store's
files and the index's rows afterwards. Library warnings and logs are silenced (as in
benchmarks.serving): they are not the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from benchmarks.serving import build_population, free_port, load, percentiles, train_champions, wait_ready
from pushplan.settings import Profile

MIX = {
    "app_open": 0.50,
    "page_view": 0.20,
    "add_to_cart": 0.12,
    "signup": 0.03,
    "coupon_claimed": 0.10,
    "purchase": 0.05,
}


def campaigns(now: datetime) -> list[dict[str, Any]]:
    window = {"start": (now - timedelta(hours=1)).isoformat(), "end": (now + timedelta(days=3)).isoformat()}
    common = {
        "channels": ["push"],
        "window": window,
        "holdout_fraction": 0.1,
        "exploration": 0.05,
    }
    return [
        {
            **common,
            "campaign_id": "cart",
            "name": "Abandoned cart",
            "variants": [
                {"variant_id": "a", "title": "Still thinking it over?", "tags": ["question"]},
                {"variant_id": "b", "title": "Your cart is waiting", "tags": ["reminder"]},
            ],
            "trigger": {"on": "add_to_cart", "delay": "PT1H", "send_within": "PT6H", "unless": ["purchase"]},
        },
        {
            **common,
            "campaign_id": "welcome",
            "name": "Welcome",
            "variants": [{"variant_id": "a", "title": "Welcome aboard", "tags": ["personal"]}],
            "trigger": {"on": "signup", "delay": "PT0S", "send_within": "PT2H", "once_per_user_days": 30},
        },
        {
            **common,
            "campaign_id": "coupon",
            "name": "Coupon reminder",
            "variants": [
                {"variant_id": "a", "title": "Your coupon expires tomorrow", "tags": ["urgency"]},
                {"variant_id": "b", "title": "10% off, still yours", "tags": ["discount"]},
            ],
            "trigger": {
                "on": "coupon_claimed",
                "where": "amount >= 10",
                "delay": "P1D",
                "send_within": "PT12H",
                "unless": ["purchase"],
                "once_per_user_days": 1,
            },
        },
    ]


# ---- the store's fill --------------------------------------------------------------------------


def fill_store(settings: Any, users: list[str], total: int, now: datetime, seed: int = 3) -> int:
    """Add synthetic events until the store holds `total`, one part file per day over the 120 days
    before the population's (as a bulk import of history leaves them); returns how many were added."""
    from features.event_index import STORE_ID_FILE
    from features.event_store import EventStore
    from features.schema import EVENT_SCHEMA

    store = EventStore(settings)
    have = store.stats().events
    missing = max(total - have, 0)
    days = 120
    rng = np.random.default_rng(seed)
    per_day = -(-missing // days)
    users_array = np.asarray(users)
    types = np.asarray(["app_open", "purchase", "push_sent", "push_clicked"])
    written = 0
    for day in range(days):
        n = min(per_day, missing - written)
        if n <= 0:
            break
        start = pd.Timestamp(now - timedelta(days=200 - day)).floor("D")
        seconds = np.sort(rng.integers(0, 86_400, n))
        stamps = pa.array(
            (start + pd.to_timedelta(seconds, unit="s")).to_numpy(), pa.timestamp("us", tz="UTC")
        )
        ids = np.char.add(f"bulk-{day:03d}-", np.arange(n).astype(str))
        table = pa.table(
            {
                "event_id": pa.array(ids, pa.string()),
                "user_id": pa.array(users_array[rng.integers(0, len(users_array), n)], pa.string()),
                "event_type": pa.array(types[rng.choice(4, n, p=[0.7, 0.05, 0.2, 0.05])], pa.string()),
                "timestamp": stamps,
            }
        )
        table = pa.table(
            [table[f.name] if f.name in table.column_names else pa.nulls(n, f.type) for f in EVENT_SCHEMA],
            schema=EVENT_SCHEMA,
        )
        target = settings.events_dir / f"event_date={start.date().isoformat()}"
        target.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target / f"part-bulk{day:03d}.parquet")
        written += n
    # Files added behind the index's back: as a store written before the index, it is rebuilt.
    (settings.events_dir / STORE_ID_FILE).unlink(missing_ok=True)
    return written


def build_index(settings: Any, root: Path) -> float:
    """Time the import that finds no index for the store and builds it (one event of its own)."""
    from features.event_store import EventStore

    path = root / "first.csv"
    now = datetime.now(UTC).isoformat()
    path.write_text(f"event_id,user_id,event_type,timestamp\nfirst-{uuid.uuid4().hex},u0,app_open,{now}\n")
    started = time.perf_counter()
    EventStore(settings).import_file(path)
    return time.perf_counter() - started


# ---- the load ----------------------------------------------------------------------------------


@dataclass
class Sent:
    """What the client knows of each batch: its event ids (of the types that fire) and when answered."""

    accepted: list[float] = field(default_factory=list)  # epoch seconds
    latency_ms: list[float] = field(default_factory=list)
    late_ms: list[float] = field(default_factory=list)
    firing_ids: list[list[str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unsent: int = 0


def batches(
    count: int, size: int, users: list[str], rng: np.random.Generator, tag: str
) -> list[tuple[list[dict[str, Any]], list[str]]]:
    """`count` batches of `size` events (without timestamps: stamped when sent), with their firing ids."""
    names = list(MIX)
    p = np.asarray([MIX[n] for n in names])
    made = []
    for b in range(count):
        kinds = rng.choice(len(names), size, p=p)
        known = rng.random(size) >= 0.2
        picks = rng.integers(0, len(users), size)
        events, firing = [], []
        for k in range(size):
            name = names[kinds[k]]
            user = users[picks[k]] if known[k] else f"new-{rng.integers(0, 10**9)}"
            event: dict[str, Any] = {"event_id": f"{tag}-{b}-{k}", "user_id": user, "event_type": name}
            if name == "coupon_claimed":
                event["properties"] = {"coupon": "SPRING", "amount": int(rng.choice([5, 20]))}
            events.append(event)
            if name in {"add_to_cart", "signup", "coupon_claimed"}:
                firing.append(event["event_id"])
        made.append((events, firing))
    return made


def post_at_rate(
    port: int,
    key: str,
    work: list[tuple[list[dict[str, Any]], list[str]]],
    rate_batches: float,
    connections: int,
) -> Sent:
    """Open loop: batch i is due at start + i / rate_batches, sent on connection i % connections. A
    server that falls far behind is not waited for: nothing is sent later than 60 s after the last
    batch was due (`Sent.unsent` counts what was left)."""
    sent = Sent()
    lock = threading.Lock()
    start = time.perf_counter() + 0.5
    stop_at = start + len(work) / rate_batches + 60

    def client(offset: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json", "X-API-Key": key}
        for i in range(offset, len(work), connections):
            events, firing = work[i]
            due = start + i / rate_batches
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            began = time.perf_counter()
            if began > stop_at:
                with lock:
                    sent.unsent += 1
                continue
            stamp = datetime.now(UTC).isoformat()
            body = json.dumps({"events": [{**event, "timestamp": stamp} for event in events]})
            connection.request("POST", "/v1/events", body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            answered = time.time()
            done = time.perf_counter()
            with lock:
                if response.status != 200:
                    sent.errors.append(f"{response.status} {payload[:200]!r}")
                    continue
                sent.accepted.append(answered)
                sent.latency_ms.append((done - began) * 1000)
                sent.late_ms.append(max(0.0, began - due) * 1000)
                sent.firing_ids.append(firing)
        connection.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sent


def firing_latency(engine: sa.Engine, sent: Sent) -> tuple[np.ndarray, int]:
    """Seconds from each firing event's acceptance until the firing task had stored its item (or
    decided it has none: `where` refused it) and marked it processed; and how many are not processed.

    The inbox's `processed_at` is written after the items, in the task's last step; an item's own
    `updated_at` would not do, since a later firing's caps may displace it."""
    accepted = {
        event_id: at for at, ids in zip(sent.accepted, sent.firing_ids, strict=True) for event_id in ids
    }
    done: dict[str, float] = {}
    ids = list(accepted)
    with engine.connect() as connection:
        for first in range(0, len(ids), 10_000):
            rows = connection.execute(
                sa.text(
                    "select event_id, extract(epoch from processed_at) from trigger_inbox "
                    "where processed_at is not null and event_id = any(:ids)"
                ),
                {"ids": ids[first : first + 10_000]},
            ).all()
            done.update((event_id, float(at)) for event_id, at in rows)
    delays = np.asarray([done[e] - at for e, at in accepted.items() if e in done])
    return delays, len(accepted) - len(done)


# ---- the run -----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    if args.root is None:
        with tempfile.TemporaryDirectory(prefix="pushplan-bench-triggers-") as root:
            _run(argparse.Namespace(**{**vars(args), "root": root}))
    else:
        _run(args)


def _run(args: argparse.Namespace) -> None:
    from dispatch.control import control
    from features.event_parts import live_files
    from features.event_store import EventStore
    from pushplan.db.store import PlanStore
    from pushplan.db.trigger_inbox import pending_count
    from serving.keys import Role, create_key
    from tests.dispatch_processes import deployed

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    overrides = {"quiet_start_hour": "22", "quiet_end_hour": "8", "trigger_scan_seconds": "1"}
    with deployed(Profile.production, root / "data", **overrides) as deployment:
        settings = deployment.settings
        started = time.perf_counter()
        # Feast's and training's own progress lines (stdout and stderr) are not the figures.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            _, _, users = build_population(
                settings, root / "sim", args.users, args.days, seed=11, online=True
            )
            if args.train:
                train_champions(settings)
        print(
            f"setup: {args.users:,} users x {args.days} days simulated, built, materialized into Redis"
            f"{', three champions trained' if args.train else ''} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        now = datetime.now(UTC)
        started = time.perf_counter()
        added = fill_store(settings, users, args.stored, now)
        print(
            f"store filled with {added:,} synthetic events ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        seconds = build_index(settings, root)
        stored = EventStore(settings).stats().events
        print(f"index built from {stored:,} stored events by the next import: {seconds:.1f} s", flush=True)

        store: PlanStore = deployment.store
        key = create_key(store, Role.campaign)  # creates the campaigns
        events_key = create_key(store, Role.events)  # posts the load, as an app backend would
        port = free_port()
        server = deployment.start("serve", "--host", "127.0.0.1", "--port", str(port))
        deployment.start(
            "worker",
            "--concurrency",
            str(args.worker_concurrency),
            "--queues",
            "plans",
            "--loglevel",
            "warning",
        )
        deployment.start("beat", "--loglevel", "warning")
        wait_ready(port, server, settings.data_dir / "serve-0.log")
        headers = {"Content-Type": "application/json", "X-API-Key": key}
        for campaign in campaigns(now):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.request("POST", "/v1/campaigns", body=json.dumps(campaign), headers=headers)
            response = connection.getresponse()
            assert response.status == 201, response.read()
            connection.close()
            control(store, campaign["campaign_id"], "dispatch")
            control(store, campaign["campaign_id"], "pause")

        rng = np.random.default_rng(7)
        rate_batches = args.rate / args.batch
        warm = batches(int(args.warmup_seconds * rate_batches), args.batch, users, rng, "warm")
        timed = batches(int(args.minutes * 60 * rate_batches), args.batch, users, rng, "run")
        post_at_rate(port, events_key, warm, rate_batches, args.connections)
        print(f"load average before the run: {load()}", flush=True)
        began = time.perf_counter()
        sent = post_at_rate(port, events_key, timed, rate_batches, args.connections)
        elapsed = time.perf_counter() - began
        print(f"load average after the run: {load()}", flush=True)
        backlog = pending_count(store)
        drain_started = time.perf_counter()
        while pending_count(store) and time.perf_counter() - drain_started < 600:
            time.sleep(1)
        drained = time.perf_counter() - drain_started

        events = len(sent.accepted) * args.batch
        print(
            f"POST /v1/events, {args.batch} events a batch, {args.connections} connections, "
            f"{args.minutes} min at {args.rate:,} events/s: {events:,} events in {elapsed:.0f} s = "
            f"{events / elapsed:,.0f} events/s; errors {len(sent.errors)}; unsent batches {sent.unsent:,}",
            flush=True,
        )
        print(f"  request latency: {percentiles(sent.latency_ms)}", flush=True)
        late = np.asarray(sent.late_ms)
        print(f"  sent late by more than 100 ms (server behind): {int((late > 100).sum())} of {late.size:,}")
        delays, unprocessed = firing_latency(store.engine, sent)
        print(
            f"event accepted -> its plan item stored: {percentiles(delays * 1000)}; "
            f"{(delays > 2).sum():,} over 2 s; {unprocessed:,} not processed",
            flush=True,
        )
        print(f"  firing backlog when the load stopped: {backlog:,} events, drained in {drained:.0f} s")
        stored_after = EventStore(settings).stats().events
        files = live_files(settings.events_dir)
        today = [f for f in files if f.parent.name == f"event_date={now.date().isoformat()}"]
        with store.engine.connect() as connection:
            indexed = connection.scalar(sa.text("select count(*) from event_index"))
        print(
            f"store after: {stored_after:,} events in {len(files):,} live files ({len(today)} for today); "
            f"index rows {indexed:,}",
            flush=True,
        )
        if sent.errors:
            print("first errors:", *sent.errors[:5], sep="\n  ")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=int, default=1000, help="Events per second.")
    parser.add_argument("--batch", type=int, default=100, help="Events per POST.")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup-seconds", type=float, default=60.0)
    parser.add_argument("--stored", type=int, default=10_000_000, help="Events in the store before the run.")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--worker-concurrency", type=int, default=1)
    parser.add_argument("--no-train", dest="train", action="store_false")
    parser.add_argument("--root", default=None, help="Working dir (default: a temporary one).")


def default_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args([])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import mlflow  # noqa: F401  (it sets its logger's level when imported: quieted after)

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    run(args)


if __name__ == "__main__":
    sys.exit(main())
