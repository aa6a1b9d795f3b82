"""Benchmarks of the plan service (issue 5): one-user plans over HTTP, and whole audiences offline.

    python -m benchmarks.serving [--requests 3000 --warmup 300 --rate 100]
                                 [--plan-users 1000000 --plan-base-users 100000 --plan-days 3]
                                 [--naive-users 20000] [--skip-service] [--skip-offline]
                                 [--redis-url redis://127.0.0.1:6379/15]
                                 [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

1. The service, production profile (Redis online store, PostgreSQL plan store and MLflow): a
   population of --train-users is simulated, built, materialized into Redis and the three models
   trained and made champions; `pushplan serve` runs as its own process on 127.0.0.1, and one client
   sends one-user `POST /v1/plans` (a campaign of 4 variants) at a steady --rate, --warmup requests
   first, then --requests timed ones, with `dry_run` true and then false (stored in PostgreSQL).
   Latency is the client's, from writing the request to reading the whole response.
   The floor, in this process, for one user: one Feast online read; the audience (`build_audience`:
   that read, cold start, request features, the send-hour and variant models on arrays); and the
   plan of it (`plan` and `arbitrate_caps` with nothing held), without HTTP or the plan store.
2. Offline planning: --plan-users users, 4 variants, a 24-hour window, the features read from
   Feast's offline store (`build_audience(..., source="offline")`) then `plan`, in a subprocess of
   its own whose peak RSS is reported. The population is simulated (--plan-base-users users over
   --plan-days days) and, when --plan-users is larger, its feature tables are repeated under new
   user ids up to --plan-users (simulating, importing and building a million users directly took
   15 minutes and 8 GB here).
   Against it, the naive path on --naive-users users of their own (simulated and materialized into
   Redis): one online read, the models and `plan` per user, one user at a time.

Each database, Feast project and data dir is the benchmark's own, removed afterwards. Nothing is
sent anywhere but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pushplan.settings import Profile, Settings

VARIANTS = [
    {"variant_id": "a", "title": "Save 30% today only", "tags": ["discount", "urgency"]},
    {"variant_id": "b", "title": "Any news for you?", "tags": ["question", "news"]},
    {"variant_id": "c", "title": "Picked for you this week", "tags": ["personal"]},
    {"variant_id": "d", "title": "Last chance: 2 left", "tags": ["urgency", "reminder"]},
]


def campaign_for(start: datetime, hours: int = 24) -> Any:
    from pushplan.domain import Campaign

    return Campaign.model_validate(
        {
            "campaign_id": "bench",
            "name": "benchmark",
            "channels": ["push"],
            "variants": VARIANTS,
            "window": {"start": start.isoformat(), "end": (start + timedelta(hours=hours)).isoformat()},
            "holdout_fraction": 0.1,
            "exploration": 0.05,
        }
    )


def load() -> str:
    """The 1-minute load average: the machine may be shared, and figures depend on it."""
    return f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def percentiles(ms: list[float] | np.ndarray) -> str:
    values = np.asarray(ms, dtype=float)
    p50, p99 = np.percentile(values, [50, 99])
    return f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  max {values.max():7.2f} ms  (n={values.size:,})"


def p99(ms: list[float] | np.ndarray) -> float:
    return float(np.percentile(np.asarray(ms, dtype=float), 99))


# ---- services of the benchmark's own ------------------------------------------------------------


@contextlib.contextmanager
def production(root: Path, redis_url: str, database_url: str) -> Iterator[Settings]:
    """Production-profile settings on a PostgreSQL database and a Feast project of the benchmark's own."""
    import psycopg

    name = f"pushplan_bench_{uuid.uuid4().hex[:10]}"
    admin = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Settings(
            profile=Profile.production,
            data_dir=root / "production",
            redis_url=redis_url,
            database_url=database_url.rsplit("/", 1)[0] + f"/{name}",
            feast_project=f"bench_{uuid.uuid4().hex[:10]}",
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def build_population(
    settings: Settings, sim: Path, users: int, days: int, seed: int, *, online: bool, tile_to: int = 0
) -> tuple[Any, datetime, list[str]]:
    """Simulate, import, build the tables and apply the repo; materialize online if asked.

    With `tile_to` above `users`, the built tables are repeated under new user ids (`<id>-r<k>`)
    until `tile_to` users have features: a large audience of simulated users, built in seconds.
    """
    from features.event_store import EventStore
    from features.simulator import simulate
    from features.store import apply, feature_store, materialize, snapshot_span, write_defaults
    from features.tables import build_feature_tables

    simulate(sim, users=users, days=days, seed=seed)
    events = EventStore(settings)
    for name in ("users.parquet", "events.parquet", "campaigns.json"):
        events.import_file(sim / name)
    build_feature_tables(settings)
    ids = pd.read_parquet(sim / "users.parquet", columns=["user_id"])["user_id"].tolist()
    if tile_to > users:
        ids = tile_tables(settings, ids, -(-tile_to // users))[:tile_to]
    write_defaults(settings)
    store = feature_store(settings)
    apply(store, settings)
    if online:
        materialize(store, settings)
    _, last = snapshot_span(settings)
    return store, last, ids


def tile_tables(settings: Settings, ids: list[str], copies: int) -> list[str]:
    """Repeat every feature table `copies` times, copy k's user ids suffixed `-r<k>` (copy 0 as is)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from features.tables import TABLES, table_path

    for name in TABLES:
        path = table_path(settings, name)
        table = pq.read_table(path)
        column = table.schema.get_field_index("user_id")
        tiled = path.with_suffix(".tiled")
        with pq.ParquetWriter(tiled, table.schema) as writer:
            for k in range(copies):
                ids_k = (
                    table.column("user_id")
                    if k == 0
                    else pc.binary_join_element_wise(table.column("user_id"), pa.scalar(f"r{k}"), "-")
                )
                writer.write_table(table.set_column(column, "user_id", ids_k), row_group_size=200_000)
        tiled.replace(path)
    return [u if k == 0 else f"{u}-r{k}" for k in range(copies) for u in ids]


def train_champions(settings: Settings) -> None:
    from training.pipeline import train
    from training.specs import SPECS

    for spec in SPECS.values():
        train(spec, settings, eval_days=7, promote=True)


# ---- 1. the service over HTTP ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    """Until `pushplan serve` on `port` answers /readyz (180 s at most, and not if it exited)."""
    deadline = time.monotonic() + 180
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"pushplan serve exited: see {log}\n{log.read_text()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"pushplan serve not ready after 180 s: see {log}")
        time.sleep(0.5)


@contextlib.contextmanager
def served(settings: Settings, log: Path, workers: int = 1) -> Iterator[int]:
    """`pushplan serve` as its own process(es), on the benchmark's settings; yields its port when ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHPLAN_")}
    env.update(
        PUSHPLAN_PROFILE="production",
        PUSHPLAN_DATA_DIR=str(settings.data_dir),
        PUSHPLAN_REDIS_URL=str(settings.redis_url),
        PUSHPLAN_DATABASE_URL=str(settings.database_url),
        PUSHPLAN_FEAST_PROJECT=settings.feast_project,
        PYTHONWARNINGS="ignore",
    )
    command = [
        str(Path(sys.executable).with_name("pushplan")),
        "serve",
        "--host",
        "127.0.0.1",
        "--workers",
        str(workers),
    ]
    with log.open("w") as out:
        server = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=out, stderr=out)
        try:
            wait_ready(port, server, log)
            yield port
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def under_load(
    port: int, key: str, bodies: list[bytes], connections: int, rate: float | None = None
) -> tuple[np.ndarray, float, np.ndarray]:
    """Send the bodies over `connections` keep-alive connections at once, one thread each taking the
    next body. Closed loop without `rate` (each sends as soon as its last answer is back: the
    throughput); open loop with it (body i due at start + i / rate, so a slow answer does not slow the
    schedule while a connection is free). Returns the latencies (ms), the achieved rate, and which
    were sent more than 1 ms after they were due (every connection busy)."""
    latency = np.empty(len(bodies))
    late = np.zeros(len(bodies), dtype=bool)
    headers = {"Content-Type": "application/json", "X-API-Key": key}
    taken = iter(range(len(bodies)))
    lock = threading.Lock()
    failures: list[str] = []
    start = time.perf_counter()

    def sender() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                i = next(taken, None)
            if i is None:
                break
            if rate is not None:
                due = start + i / rate
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                late[i] = time.perf_counter() - due > 0.001
            sent = time.perf_counter()
            connection.request("POST", "/v1/plans", body=bodies[i], headers=headers)
            response = connection.getresponse()
            payload = response.read()
            latency[i] = (time.perf_counter() - sent) * 1000
            if response.status != 200:
                failures.append(f"{response.status} {payload[:300]!r}")
                break
        connection.close()

    threads = [threading.Thread(target=sender) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"POST /v1/plans: {failures[0]}")
    return latency, len(bodies) / (time.perf_counter() - start), late


def load_figures(settings: Settings, root: Path, key: str, bodies: Any, args: argparse.Namespace) -> None:
    """Item 5 of issue 20, per uvicorn worker count: requests/s at --connections concurrent
    connections (closed loop, dry runs), and latency at --load-rate requests/s (open loop, stored)."""
    for workers in args.workers:
        with served(settings, root / f"serve-{workers}.log", workers=workers) as port:
            under_load(port, key, bodies(True)[: args.warmup], args.connections)  # every worker warm
            latency, achieved, _ = under_load(port, key, bodies(True), args.connections)
            print(
                f"{workers} worker(s), {args.connections} connections, closed loop, dry_run=true: "
                f"{achieved:.0f} requests/s ({achieved / 2:.0f} per core); "
                f"{percentiles(latency[args.warmup :])}",
                flush=True,
            )
            latency, achieved, late = under_load(port, key, bodies(False), args.connections, args.load_rate)
            print(
                f"{workers} worker(s), open loop at {args.load_rate:.0f} requests/s, dry_run=false: "
                f"{percentiles(latency[args.warmup :])}, achieved {achieved:.0f} requests/s, "
                f"{int(late[args.warmup :].sum()):,} of {late[args.warmup :].size:,} sent late "
                f"(all {args.connections} connections busy)",
                flush=True,
            )


def service_figures(root: Path, args: argparse.Namespace) -> Any:
    """Section 1; returns what section 2 reuses (the production settings with champions)."""
    from pushplan.db.engine import migrate
    from pushplan.db.store import PlanStore
    from serving.keys import Role, create_key

    settings = args.production
    started = time.perf_counter()
    store, last, ids = build_population(
        settings, root / "train-sim", args.train_users, args.train_days, seed=11, online=True
    )
    train_champions(settings)
    print(
        f"setup: {args.train_users:,} users x {args.train_days} days simulated, built, materialized "
        f"into Redis, three champions trained ({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    now = last + timedelta(hours=1)
    campaign = campaign_for(last)
    migrate(settings)
    plans = PlanStore(settings)
    plans.save_campaign(campaign)
    key = create_key(plans, Role.campaign)
    plans.engine.dispose()

    rng = np.random.default_rng(0)
    known = [u for u in ids if isinstance(u, str)]
    total = args.warmup + args.requests

    def bodies(dry_run: bool) -> list[bytes]:
        users = rng.choice(known, total)
        return [
            json.dumps(
                {"campaign_id": "bench", "user_ids": [str(u)], "dry_run": dry_run, "now": now.isoformat()}
            ).encode()
            for u in users
        ]

    results = {}
    print(f"load average before the requests: {load()}", flush=True)
    with served(settings, root / "serve.log") as port:
        for dry_run in (True, False):
            # One connection: each request waits for the answer before (if it came after its time).
            latency, achieved, sent_late = under_load(port, key, bodies(dry_run), 1, args.rate)
            measured = latency[args.warmup :]
            late = sent_late[args.warmup :]
            results[dry_run] = measured
            label = "dry_run=true (nothing stored)" if dry_run else "dry_run=false (items stored)"
            print(f"POST /v1/plans, 1 user, 4 variants, {label}", flush=True)
            print(f"  {percentiles(measured)}, {achieved:.1f} requests/s", flush=True)
            print(
                f"  sent late (previous answer not back in time): {int(late.sum())} of {late.size:,}",
                flush=True,
            )
    if args.workers:
        load_figures(settings, root, key, bodies, args)
    print(f"load average after the requests: {load()}", flush=True)
    floor_ms = floor_figures(settings, store, campaign, known, now, args.floor_iterations)
    for dry_run, measured in results.items():
        print(
            f"service p99 / floor p99, dry_run={str(dry_run).lower()}: "
            f"{p99(measured) / floor_ms:.1f}x (target <= 3x)",
            flush=True,
        )
    return settings


def floor_figures(
    settings: Settings, store: Any, campaign: Any, users: list[str], now: datetime, iterations: int
) -> float:
    """In this process, for one user, the serving path's own steps without HTTP or the plan store:
    one Feast online read; the audience (that read, cold start, request features, the send-hour and
    variant models on arrays: `build_audience`); and the plan of it (`plan` and `arbitrate_caps`
    with nothing held). Returns the floor's p99 (ms)."""
    from features.store import read_columns
    from pushplan.caps import FrequencyCap
    from pushplan.windows import QuietHours
    from serving.audience import audience_refs, build_audience
    from serving.planner import arbitrate_caps, plan
    from serving.scoring import ModelSet

    models = ModelSet.load(settings)
    refs = audience_refs(store, models.services)
    cap, quiet = FrequencyCap.of(settings, campaign), QuietHours.of(settings)
    rng = np.random.default_rng(1)
    reads, audiences, floors = [], [], []
    for i, user in enumerate(rng.choice(users, iterations + 50)):
        started = time.perf_counter()
        read_columns(store, [str(user)], refs)
        read_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        audience = build_audience(store, settings, models, campaign, [str(user)], now)
        audience_ms = (time.perf_counter() - started) * 1000
        items = plan(campaign, audience, now, quiet=quiet, slot_minutes=settings.slot_minutes)
        arbitrate_caps(
            campaign, items, audience, now, cap, None, quiet=quiet, slot_minutes=settings.slot_minutes
        )
        floor_ms = (time.perf_counter() - started) * 1000
        if i >= 50:  # the first ones warm caches up
            reads.append(read_ms)
            audiences.append(audience_ms)
            floors.append(floor_ms)
    print("floor, in process, 1 user, 4 variants (no HTTP, no plan store):")
    print(f"  Feast online read alone (one get_online_features)  {percentiles(reads)}")
    print(f"  audience: read + features + two models (arrays)    {percentiles(audiences)}")
    print(f"  floor: audience + plan + caps (target p99 <= 3 ms) {percentiles(floors)}", flush=True)
    return p99(floors)


# ---- 2. offline planning -------------------------------------------------------------------------


def peak_rss() -> int:
    """This process's peak resident memory, in bytes.

    Linux's VmHWM, the high-water mark of this process's own memory: `getrusage`'s ru_maxrss
    would also count the parent's resident memory at the fork, which survives the exec (the
    benchmark's parent holds gigabytes by then).
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_step(module: str, flag: str, spec: dict[str, Any], what: str) -> dict[str, Any]:
    """Run `python -m module flag SPEC` in a process of its own (so its peak RSS is its own) and
    return the JSON its last line prints."""
    step = subprocess.run(
        [sys.executable, "-m", module, flag, json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if step.returncode != 0:
        raise RuntimeError(f"the {what} step failed:\n{step.stderr[-3000:]}")
    return dict(json.loads(step.stdout.strip().splitlines()[-1]))


def plan_step(spec: dict[str, Any]) -> None:
    """The planning step alone, in its own process: prints its timings and peak RSS as JSON."""
    warnings.simplefilter("ignore")
    from features.store import feature_store
    from serving.audience import build_audience
    from serving.planner import plan
    from serving.scoring import ModelSet

    settings = Settings(data_dir=Path(spec["data_dir"]))
    models = ModelSet.load(Settings(**spec["models"]))
    store = feature_store(settings)
    ids = pd.read_parquet(spec["users"])["user_id"].tolist()
    now = datetime.fromisoformat(spec["now"])
    campaign = campaign_for(now)
    started = time.perf_counter()
    audience = build_audience(store, settings, models, campaign, ids, now, source="offline")
    scored = time.perf_counter()
    peak_audience = peak_rss()
    items = plan(campaign, audience, now, seed=0)
    done = time.perf_counter()
    peak = peak_rss()
    counts = items["decision"].value_counts().to_dict()
    print(
        json.dumps(
            {
                "users": len(ids),
                "audience_s": scored - started,
                "plan_s": done - scored,
                "total_s": done - started,
                "peak_rss": peak,
                "peak_rss_audience": peak_audience,
                "decisions": {k: int(v) for k, v in counts.items()},
                "models": models.versions,
            }
        )
    )


def offline_figures(root: Path, args: argparse.Namespace, production_settings: Settings) -> None:
    from serving.audience import build_audience
    from serving.planner import plan
    from serving.scoring import ModelSet

    big = Settings(data_dir=root / "audience")
    started = time.perf_counter()
    _, last, ids = build_population(
        big,
        root / "audience-sim",
        args.plan_base_users,
        args.plan_days,
        seed=5,
        online=False,
        tile_to=args.plan_users,
    )
    users_file = root / "audience-users.parquet"
    pd.DataFrame({"user_id": ids}).to_parquet(users_file, index=False)
    tiled = f", tables repeated to {len(ids):,} users" if len(ids) > args.plan_base_users else ""
    print(
        f"setup: {args.plan_base_users:,} users x {args.plan_days} days simulated and built{tiled} "
        f"({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    now = last + timedelta(hours=1)
    spec = {
        "data_dir": str(big.data_dir),
        "users": str(users_file),
        "now": now.isoformat(),
        "models": production_settings.model_dump(mode="json"),
    }
    print(f"load average before the planning step: {load()}", flush=True)
    figures = run_step("benchmarks.serving", "--plan-step", spec, "planning")
    rate = figures["users"] / figures["total_s"]
    print(
        f"offline plan, {figures['users']:,} users, 4 variants, 24 h window (offline read as of now):",
        flush=True,
    )
    print(
        f"  features read + scored {figures['audience_s']:7.1f} s, plan {figures['plan_s']:6.1f} s, "
        f"total {figures['total_s']:6.1f} s = {rate:,.0f} users/s; peak RSS "
        f"{figures['peak_rss'] / 2**30:.2f} GiB, {figures['peak_rss_audience'] / 2**30:.2f} GiB of it "
        f"before the plan (targets: <= 60 s, <= 4 GiB); models {figures['models']}",
        flush=True,
    )

    # The naive path: its own population, materialized into Redis, planned one user at a time.
    naive = production_settings.model_copy(
        update={"data_dir": root / "naive", "feast_project": production_settings.feast_project + "_n"}
    )
    store, last, naive_ids = build_population(
        naive, root / "naive-sim", args.naive_users, args.plan_days, seed=6, online=True
    )
    try:
        models = ModelSet.load(production_settings)
        now = last + timedelta(hours=1)
        campaign = campaign_for(now)
        for user in naive_ids[:50]:  # warm up
            plan(campaign, build_audience(store, naive, models, campaign, [user], now), now)
        started = time.perf_counter()
        for user in naive_ids:
            plan(campaign, build_audience(store, naive, models, campaign, [user], now), now)
        seconds = time.perf_counter() - started
    finally:
        store.teardown()
    naive_rate = len(naive_ids) / seconds
    print(
        f"naive path, {len(naive_ids):,} users one at a time (online read, models, plan): "
        f"{seconds:.1f} s = {naive_rate:,.0f} users/s",
        flush=True,
    )
    print(f"offline / naive: {rate / naive_rate:.0f}x faster (target >= 10x)", flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=3_000, help="timed requests per dry_run setting")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--floor-iterations", type=int, default=1_000)
    parser.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=[1, 2],
        help="uvicorn worker counts to load (none: skip the concurrent part)",
    )
    parser.add_argument("--connections", type=int, default=10, help="concurrent connections under load")
    parser.add_argument("--load-rate", type=float, default=200.0, help="open-loop rate under load")
    parser.add_argument("--train-users", type=int, default=1_500)
    parser.add_argument("--train-days", type=int, default=35)
    parser.add_argument("--plan-users", type=int, default=1_000_000)
    parser.add_argument("--plan-base-users", type=int, default=100_000)
    parser.add_argument("--plan-days", type=int, default=3)
    parser.add_argument("--naive-users", type=int, default=20_000)
    parser.add_argument(
        "--skip-service", action="store_true", help="train the champions, skip the HTTP figures"
    )
    parser.add_argument("--skip-offline", action="store_true")
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")


def run(args: argparse.Namespace) -> None:
    """Both sections, on services of their own (a database and Feast projects removed afterwards)."""
    from pushplan.reachability import reachable

    down = [url for url in (args.redis_url, args.database_url) if not reachable(url)]
    if down:
        print(f"serving benchmarks: skipped, not reachable: {', '.join(down)}")
        return
    with (
        tempfile.TemporaryDirectory() as scratch,
        production(Path(scratch), args.redis_url, args.database_url) as settings,
    ):
        root = Path(scratch)
        args.production = settings
        from features.store import feature_store

        try:
            if args.skip_service:
                started = time.perf_counter()
                build_population(
                    settings, root / "train-sim", args.train_users, args.train_days, 11, online=True
                )
                train_champions(settings)
                print(f"setup: champions trained ({time.perf_counter() - started:.0f} s)", flush=True)
            else:
                service_figures(root, args)
            if not args.skip_offline:
                offline_figures(root, args, settings)
        finally:
            with contextlib.suppress(Exception):
                feature_store(settings).teardown()
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--plan-step":
        plan_step(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", RuntimeWarning)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.platform()}"
    )
    run(args)


if __name__ == "__main__":
    main()
