"""Benchmark of dispatch (issues 6 and 14): end-to-end sends per second through Celery and Redis,
caps checked, the sandbox channel, against Celery running no-op tasks with the same chunking.

    python -m benchmarks.dispatch [--items 100000 --users 50000 --chunk 500 --concurrency 2]
                                  [--also-chunk 100 --also-items 100000] [--scan-seconds 0.5]
                                  [--aof everysec] [--profile-items 5000]
                                  [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

The production profile on services of the benchmark's own: a redis-server on a free port (the broker
and the caps ledger; AOF per --aof) and a scratch PostgreSQL database (the plan store) on the server
of --database-url, dropped afterwards. One real Celery worker process with `--concurrency` pool
processes consumes the queue "sends"; it also knows benchmarks.noop_tasks. It logs at info level,
so each task's run time is in its log (`pool busy` is their sum over the phase's time and the pool).

A round per chunk size (--chunk, then --also-chunk): --items due plan items, --items / --users
campaigns over the same users (the round's own) in four zones, every send due now, quiet hours off,
no minimum gap; the first campaign may reach at most 90% of the users, so that cap binds on a tenth
of its items. Each send is checked against the user's other sends. The items are stored directly,
without models.
- Phase A, the no-op baseline: the round's plan ids in chunks of the same size go to the no-op task;
  timed from the first enqueue until the worker has counted every id.
- Phase B, dispatch: the campaigns are started and this process does beat's work, a due-scan
  (`scan_due`) every --scan-seconds and `send_chunk_task` enqueued per chunk; timed from the first
  enqueue until PostgreSQL holds no item of the round planned or queued. Then the run is checked:
  one outbox line per sent item, no idempotency key twice, one push_sent event per send, exactly
  the capped items suppressed.
Per phase, the CPU seconds of the worker, PostgreSQL (this database's backends), Redis, this process
and anything else on the machine (Linux /proc), and the time this process spent scanning. Finally
`send_chunk` runs in this process on --profile-items items of their own, timed, then under cProfile.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from pushplan.settings import Settings
from tests.services import RedisServer, scratch_database  # the tests' own: the same setup

REPO = Path(__file__).resolve().parent.parent
ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Australia/Sydney"]
UNFINISHED = ("planned", "queued")
# How often the dispatch phase asks PostgreSQL whether any item is left (the end of its timing).
POLL_SECONDS = 0.1
# The share of users the first campaign of a round may reach (a campaign total): the cap that binds.
FIRST_CAMPAIGN_REACH = 0.9


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ for the block, and the process's cached settings read from them."""
    from pushplan.settings import get_settings

    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


TICK = os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[int, str, float]]:
    """pid → (parent pid, command name, CPU seconds so far) of every process (Linux /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text.rsplit(")", 1)[1].split()
        found[int(stat.parent.name)] = (int(rest[1]), name, (int(rest[11]) + int(rest[12])) / TICK)
    return found


def _machine_ticks() -> tuple[float, float]:
    """CPU seconds the machine spent busy (all but idle and iowait), and of it in interrupts."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK, (ticks[5] + ticks[6]) / TICK


def _postgres_role(pid: int, database: str) -> str:
    """Whose a PostgreSQL process is, by its title: this database's backend (autovacuum included),
    the server's own (WAL writer, checkpointer, background writer), or another database's."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if f" {database} " in f"{title} ":
        return "PostgreSQL"
    if "(" in title or "[local]" in title or "autovacuum worker" in title:
        return "other databases"
    return "PostgreSQL server"


class CpuUse:
    """CPU seconds each part of the deployment, and anything else, used between `start` and `stop`."""

    PARTS = ("worker", "PostgreSQL", "PostgreSQL server", "Redis", "this process", "interrupts")

    def __init__(self, worker_pid: int, redis_pid: int, database: str) -> None:
        self.worker_pid, self.redis_pid, self.database = worker_pid, redis_pid, database

    def start(self) -> None:
        self._before, self._machine_before = _processes(), _machine_ticks()
        self._wall = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        now, (busy, interrupts) = _processes(), _machine_ticks()
        used: dict[str, Any] = dict.fromkeys(self.PARTS, 0.0)
        others: dict[str, float] = defaultdict(float)
        for pid, (parent, name, seconds) in now.items():
            delta = seconds - self._before.get(pid, (0, "", 0.0))[2]
            if pid == self.worker_pid or parent == self.worker_pid:
                used["worker"] += delta
            elif pid == self.redis_pid:
                used["Redis"] += delta
            elif pid == os.getpid():
                used["this process"] += delta
            elif name == "postgres" and (role := _postgres_role(pid, self.database)) in used:
                used[role] += delta
            elif delta > 0:
                others["postgres, other databases" if name == "postgres" else name] += delta
        used["interrupts"] = interrupts - self._machine_before[1]
        used["others"] = sorted(others.items(), key=lambda kv: -kv[1])[:3]
        used["machine busy"] = busy - self._machine_before[0]
        used["wall"] = time.perf_counter() - self._wall
        return used


def cpu_line(what: str, used: dict[str, Any], items: int) -> str:
    parts = ", ".join(f"{name} {used[name]:.1f}" for name in CpuUse.PARTS)
    others = ", ".join(f"{name} {seconds:.1f}" for name, seconds in used["others"]) or "none"
    cores = os.cpu_count() or 1
    return (
        f"  {what} CPU s: {parts}; others: {others}; machine busy {used['machine busy']:.1f} s "
        f"= {used['machine busy'] / (cores * used['wall']):.0%} of {cores} cores, "
        f"{1000 * used['machine busy'] / items:.2f} ms per item"
    )


@dataclass
class Deployment:
    settings: Settings
    store: Any  # pushplan.db.store.PlanStore
    redis: Any  # redis.Redis on the benchmark's redis-server
    worker_log: Path

    def unfinished(self, campaign_ids: list[str], *, count: bool) -> int:
        """Items of these campaigns not yet final: how many, or (cheaper: the first one found ends the
        query) 1 if any else 0."""
        import sqlalchemy as sa

        from pushplan.db.schema import PlanItemRow

        where = (PlanItemRow.campaign_id.in_(campaign_ids), PlanItemRow.state.in_(UNFINISHED))
        with self.store.session() as session:
            if count:
                return int(session.scalar(sa.select(sa.func.count()).where(*where)) or 0)
            return 1 if session.scalar(sa.select(PlanItemRow.plan_id).where(*where).limit(1)) else 0

    def log_size(self) -> int:
        return self.worker_log.stat().st_size if self.worker_log.exists() else 0

    def task_seconds(self, since: int, task_name: str) -> list[float]:
        """Run times of `task_name` the worker logged after byte `since` (Celery logs them at info)."""
        with self.worker_log.open("rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
        pattern = re.compile(rf"Task {re.escape(task_name)}\[[^\]]+\] succeeded in ([0-9.e-]+)s")
        return [float(found) for found in pattern.findall(text)]

    def log_tail(self) -> str:
        return self.worker_log.read_text(errors="replace")[-3000:] if self.worker_log.exists() else ""


@dataclass(frozen=True)
class Round:
    """One set of due plan items: its campaigns, over users of its own."""

    tag: str
    campaign_ids: list[str]
    plan_ids: list[str]
    users: int


def store_round(deployment: Deployment, tag: str, items: int, users: int) -> Round:
    """`items / users` campaigns over the same `users` users (of this round only), every send due now."""
    from pushplan.domain import Campaign, Channel
    from serving.planner import plan_ids

    if items % users:
        raise SystemExit(f"--items ({items}) must be a multiple of --users ({users})")
    now = datetime.now(UTC)
    user_ids = [f"{tag}-u{i:06d}" for i in range(users)]
    zones = [ZONES[i % len(ZONES)] for i in range(users)]
    campaign_ids: list[str] = []
    all_ids: list[str] = []
    for k in range(items // users):
        campaign = Campaign.model_validate(
            {
                "campaign_id": f"{tag}-c{k:02d}",
                "name": f"benchmark {tag} {k}",
                "channels": [Channel.sandbox.value],
                "variants": [{"variant_id": "a", "title": f"{tag} {k}: hello", "body": "b"}],
                "window": {
                    "start": (now - timedelta(hours=12)).isoformat(),
                    "end": (now + timedelta(hours=12)).isoformat(),
                },
                "priority": k,
                "caps": {"campaign_total": int(users * FIRST_CAMPAIGN_REACH)} if k == 0 else None,
            }
        )
        at = pd.DatetimeIndex([now - timedelta(seconds=1 + (i * 7 + k) % 600) for i in range(users)])
        ids = plan_ids(campaign.campaign_id, pd.Series(user_ids).to_numpy())
        frame = pd.DataFrame(
            {
                "plan_id": ids,
                "campaign_id": campaign.campaign_id,
                "user_id": user_ids,
                "decision": "send",
                "reason": None,
                "channel": Channel.sandbox.value,
                "variant_id": "a",
                "send_at": at,
                "local_send_at": [t.tz_convert(z).isoformat() for t, z in zip(at, zones, strict=True)],
                "p_click": 0.05,
                "propensity": 0.9,
                "state": "planned",
                "timezone": zones,
            }
        )
        deployment.store.save_campaign(campaign)
        deployment.store.save_items(frame)
        campaign_ids.append(campaign.campaign_id)
        all_ids += list(ids)
    return Round(tag, campaign_ids, all_ids, users)


@contextmanager
def celery_worker(deployment: Deployment, env: dict[str, str], concurrency: int) -> Iterator[int]:
    """One `celery worker` process consuming "sends", no-op task included; ready when it yields its pid."""
    from benchmarks.noop_tasks import NOOP_COUNTER, noop_chunk_task

    command = [
        str(Path(sys.executable).with_name("celery")), "-A", "dispatch.celery_app:app", "worker",
        "--concurrency", str(concurrency), "-Q", "sends", "--include", "benchmarks.noop_tasks",
        "--without-gossip", "--without-mingle", "--loglevel", "info",
    ]  # fmt: skip
    pythonpath = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    with deployment.worker_log.open("w") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**env, "PYTHONPATH": pythonpath},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its pool children go with it when its group is stopped
        )
    try:
        # Ready: a few no-op chunks done, so every pool process has started and taken a task.
        warmup = 4 * concurrency
        deployment.redis.delete(NOOP_COUNTER)  # an earlier round's count would pass for ready
        for _ in range(warmup):
            noop_chunk_task.apply_async(args=[["warm-up"], "warm-up", None])
        deadline = time.monotonic() + 120
        while int(deployment.redis.get(NOOP_COUNTER) or 0) < warmup:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not start; its log:\n{deployment.log_tail()}")
            time.sleep(0.05)
        time.sleep(0.5)  # the warm-up tasks' log lines, before a phase starts reading the log
        deployment.redis.delete(NOOP_COUNTER)
        yield process.pid
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def progress_bar() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )


def noop_phase(deployment: Deployment, round_: Round, chunk: int) -> float:
    """Seconds from the first enqueue until the no-op worker counted every id of the round."""
    from benchmarks.noop_tasks import NOOP_COUNTER, noop_chunk_task

    deployment.redis.delete(NOOP_COUNTER)
    total = len(round_.plan_ids)
    with progress_bar() as progress:
        task = progress.add_task(f"no-op tasks, chunk {chunk}", total=total)
        started = time.perf_counter()
        for first in range(0, total, chunk):
            noop_chunk_task.apply_async(
                args=[round_.plan_ids[first : first + chunk], str(uuid.uuid4()), None]
            )
        deadline = time.monotonic() + 600
        while (done := int(deployment.redis.get(NOOP_COUNTER) or 0)) < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no-op tasks: {done} of {total} in 600 s; log:\n{deployment.log_tail()}")
            progress.update(task, completed=done)
            time.sleep(0.005)
        return time.perf_counter() - started


@dataclass(frozen=True)
class DispatchTiming:
    seconds: float  # from the first enqueue
    seconds_from_scan: float  # from the start of the first due-scan
    handed_out: int  # ids in the chunks enqueued (more than the items if a lease lapsed)
    chunks: int
    scans: int
    scan_seconds: float  # in scan_due and enqueueing, all scans
    first_scan_seconds: float
    poll_seconds: float  # in this benchmark's own counting of unfinished items


def dispatch_phase(deployment: Deployment, round_: Round, chunk: int, scan_seconds: float) -> DispatchTiming:
    """Start the round's campaigns, then scan and enqueue as beat would until every item is final."""
    from dispatch.control import control
    from dispatch.sending import scan_due
    from dispatch.tasks import send_chunk_task

    settings = deployment.settings.model_copy(update={"dispatch_chunk": chunk})
    for campaign_id in round_.campaign_ids:
        control(deployment.store, campaign_id, "dispatch")
    total = len(round_.plan_ids)
    handed = chunks_sent = scans = 0
    first_enqueue: float | None = None
    scanning = polling = first_scan_took = next_count = 0.0
    with progress_bar() as progress:
        task = progress.add_task(f"dispatch, chunk {chunk}", total=total)
        first_scan = next_scan = time.perf_counter()
        deadline = time.monotonic() + 1800
        while True:
            began = time.perf_counter()
            if began >= next_scan:
                next_scan = began + scan_seconds
                chunks = scan_due(deployment.store, settings)
                if not scans:
                    first_scan_took = time.perf_counter() - began
                scans += 1
                for found in chunks:
                    if first_enqueue is None:
                        first_enqueue = time.perf_counter()
                    send_chunk_task.apply_async(args=found.args())
                handed += sum(len(found.plan_ids) for found in chunks)
                chunks_sent += len(chunks)
            scanned = time.perf_counter()
            scanning += scanned - began
            # Whether any is left, often (a cheap query); how many, for the progress bar, every few seconds.
            if not deployment.unfinished(round_.campaign_ids, count=False):
                ended = time.perf_counter()
                polling += ended - scanned
                break
            if scanned >= next_count:
                left = deployment.unfinished(round_.campaign_ids, count=True)
                progress.update(task, completed=total - left)
                next_count = scanned + 3.0
            polling += time.perf_counter() - scanned
            if time.monotonic() > deadline:
                raise RuntimeError(f"dispatch: not every item final in 1800 s; log:\n{deployment.log_tail()}")
            time.sleep(max(0.0, min(POLL_SECONDS, next_scan - time.perf_counter())))
    assert first_enqueue is not None
    return DispatchTiming(
        ended - first_enqueue,
        ended - first_scan,
        handed,
        chunks_sent,
        scans,
        scanning,
        first_scan_took,
        polling,
    )


def check_round(deployment: Deployment, round_: Round) -> dict[str, Any]:
    """What the round left: states and reasons, outbox lines and keys, events; and whether that is right."""
    import sqlalchemy as sa

    from pushplan.db.schema import DispatchEventRow, PlanItemRow

    mine = set(round_.campaign_ids)
    with deployment.store.session() as session:
        rows = session.execute(
            sa.select(PlanItemRow.plan_id, PlanItemRow.state, PlanItemRow.reason, PlanItemRow.detail).where(
                PlanItemRow.campaign_id.in_(round_.campaign_ids)
            )
        ).all()
        sent_events = session.scalar(
            sa.select(sa.func.count()).where(
                DispatchEventRow.campaign_id.in_(round_.campaign_ids),
                DispatchEventRow.event_type == "push_sent",
            )
        )
    prefix = deployment.settings.feast_project  # the ledger's key prefix (dispatch.ledger.ledger_for)
    campaign_ttls = {c: deployment.redis.ttl(f"{prefix}:caps:campaign:{c}") for c in round_.campaign_ids}
    states = Counter(row.state for row in rows)
    suppressed = Counter(row.detail for row in rows if row.state == "suppressed")
    sent = {row.plan_id for row in rows if row.state == "sent"}
    keys: Counter[str] = Counter()
    with (deployment.settings.sandbox_dir / "outbox.jsonl").open() as outbox:
        for line in outbox:
            message = json.loads(line)
            if message["campaign_id"] in mine:
                keys[message["idempotency_key"]] += 1
    twice = sum(1 for n in keys.values() if n > 1)
    expected_capped = round_.users - int(round_.users * FIRST_CAMPAIGN_REACH)
    unfinished = sum(states[state] for state in UNFINISHED)
    checks = {
        f"{unfinished} items not final": unfinished == 0,
        f"{twice} idempotency keys in the outbox more than once": twice == 0,
        f"outbox keys != sent items ({len(keys)} vs {len(sent)})": set(keys) == sent,
        f"push_sent events {sent_events} != sent {len(sent)}": sent_events == len(sent),
        f"suppressed {states['suppressed']}, expected {expected_capped}": states["suppressed"]
        == expected_capped,
    }
    problems = [what for what, holds in checks.items() if not holds]
    return {
        "states": dict(states),
        "suppressed": dict(suppressed),
        "outbox_lines": sum(keys.values()),
        "keys_twice": twice,
        "problems": problems,
        "campaign_ttls": campaign_ttls,
    }


# Where send_chunk's time goes: (what, file, function); cumulative times, so the parts overlap.
PROFILE_PARTS = [
    ("send_chunk", "dispatch/sending.py", "send_chunk"),
    ("ledger: one Lua script per send (settles the call before)", "dispatch/ledger.py", "reserve"),
    ("  of which local day bounds (ZoneInfo) per send", "dispatch/ledger.py", "local_day_bounds"),
    ("sandbox channel: flock, a JSON line, one write per send", "dispatch/channels.py", "send"),
    ("reservations and messages built per send (_pending)", "dispatch/sending.py", "_pending"),
    ("campaign specs parsed (pydantic)", "pydantic/main.py", "model_validate"),
    ("campaign states re-read (every 20 sends)", "dispatch/sending.py", "_campaign_states"),
    ("outcomes written (UPDATE per outcome, events by unnest)", "dispatch/sending.py", "write"),
    ("psycopg: waiting on PostgreSQL", "psycopg/connection.py", "wait"),
]


def profile_send_chunk(deployment: Deployment, items: int, chunk: int) -> str:
    """`send_chunk` in this process, on two sets of `items` items of their own (two campaigns each,
    one scan each): the first timed plainly, the second under cProfile."""
    from dispatch.control import control
    from dispatch.sending import scan_due, send_chunk

    settings = deployment.settings.model_copy(update={"dispatch_chunk": chunk})
    runs = []
    for tag in ("plain", "prof"):
        round_ = store_round(deployment, tag, items, items // 2)
        for campaign_id in round_.campaign_ids:
            control(deployment.store, campaign_id, "dispatch")
        chunks = scan_due(deployment.store, settings)
        profiler = cProfile.Profile()
        started = time.perf_counter()
        if tag == "prof":
            profiler.enable()
        for found in chunks:
            send_chunk(deployment.store, settings, found.plan_ids, found.claim)
        profiler.disable()
        runs.append((time.perf_counter() - started, sum(len(found.plan_ids) for found in chunks)))
    (plain, handled), (profiled, _) = runs
    stats = pstats.Stats(profiler, stream=io.StringIO())
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    lines = [
        f"send_chunk in this process, {handled:,} items in chunks of {chunk}: {plain:.2f} s "
        f"= {handled / plain:,.0f} items/s ({1000 * plain / handled:.2f} ms per item); "
        f"under cProfile {profiled:.2f} s, of which:"
    ]
    for what, path, name in PROFILE_PARTS:
        seconds = sum(
            row[3] for (file, _line, function), row in raw.items() if file.endswith(path) and function == name
        )
        lines.append(f"  {what:<66} {seconds:6.2f} s {100 * seconds / profiled:4.0f}%")
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(12)
    body = out.getvalue()
    return "\n".join(lines) + "\nmost own time:\n" + body[body.index("   ncalls") :].rstrip()


def machine() -> str:
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.platform()}"
    )


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min) {five:.2f} (5 min)"


def service_versions(deployment: Deployment) -> str:
    import celery
    import sqlalchemy as sa

    redis_info = deployment.redis.info("server")
    with deployment.store.session() as session:
        pg = session.scalar(sa.text("show server_version"))
        fsync = session.scalar(sa.text("show fsync"))
        sync_commit = session.scalar(sa.text("show synchronous_commit"))
    aof = deployment.redis.config_get("appendonly")["appendonly"]
    fsync_aof = deployment.redis.config_get("appendfsync")["appendfsync"]
    return (
        f"Celery {celery.__version__}; Redis {redis_info['redis_version']} (appendonly {aof}, "
        f"appendfsync {fsync_aof}); PostgreSQL {pg} (fsync {fsync}, synchronous_commit {sync_commit})"
    )


@dataclass(frozen=True)
class RoundFigures:
    chunk: int
    items: int
    noop_seconds: float
    dispatch: DispatchTiming
    check: dict[str, Any]
    concurrency: int
    noop_task_seconds: list[float]  # each task's run time, from the worker's log
    send_task_seconds: list[float]
    noop_cpu: dict[str, float]
    send_cpu: dict[str, float]
    load_before: str
    load_after: str

    def tasks_line(self, what: str, seconds: list[float], phase_seconds: float) -> str:
        if not seconds:
            return f"  {what}: no run times in the worker's log"
        busy = sum(seconds) / (self.concurrency * phase_seconds)
        p90 = statistics.quantiles(seconds, n=10)[-1] if len(seconds) > 1 else seconds[0]
        return (
            f"  {what}: {len(seconds):,} tasks, median {1000 * statistics.median(seconds):.1f} ms, "
            f"p90 {1000 * p90:.1f} ms, {1000 * statistics.median(seconds) / self.chunk:.3f} ms per item; "
            f"pool busy {busy:.0%}"
        )

    @property
    def sent(self) -> int:
        return int(self.check["states"].get("sent", 0))

    def lines(self) -> list[str]:
        noop_rate = self.items / self.noop_seconds
        items_rate = self.items / self.dispatch.seconds
        sends_rate = self.sent / self.dispatch.seconds
        d = self.dispatch
        return [
            f"chunk {self.chunk}: {self.items:,} items, {self.items // self.chunk:,} chunks; "
            f"load average before {self.load_before}, after {self.load_after}",
            f"  A no-op tasks      {self.noop_seconds:8.2f} s  {noop_rate:>10,.0f} items/s",
            f"  B dispatch         {d.seconds:8.2f} s  {items_rate:>10,.0f} items/s (all final)  "
            f"{sends_rate:>8,.0f} sends/s ({self.sent:,} sent)",
            f"    from the first scan {d.seconds_from_scan:.2f} s = "
            f"{self.items / d.seconds_from_scan:,.0f} items/s; "
            f"{d.scans} scans, {d.chunks} chunks, {d.handed_out:,} ids handed out",
            f"    scans and enqueues {d.scan_seconds:.1f} s (the first {d.first_scan_seconds:.2f} s), "
            f"counting unfinished items {d.poll_seconds:.1f} s",
            f"  B / A              {items_rate / noop_rate:8.3f} (items/s)   "
            f"{sends_rate / noop_rate:.3f} (sends/s)",
            self.tasks_line("A no-op", self.noop_task_seconds, self.noop_seconds),
            self.tasks_line("B send_chunk_task", self.send_task_seconds, d.seconds),
            cpu_line("A", self.noop_cpu, self.items),
            cpu_line("B", self.send_cpu, self.items),
            f"  states {self.check['states']}; suppressed {self.check['suppressed']}; "
            f"TTL of the ledger's campaign sets (-1: none) {self.check['campaign_ttls']}",
            f"  outbox lines {self.check['outbox_lines']:,}, keys twice {self.check['keys_twice']}; "
            + (
                "check: ok"
                if not self.check["problems"]
                else f"check FAILED: {'; '.join(self.check['problems'])}"
            ),
        ]


@contextmanager
def deployed(args: argparse.Namespace, server: RedisServer, data_dir: Path) -> Iterator[Deployment]:
    """A scratch database, migrated, and the production profile's settings on it and `server`, in
    this process's environment (for the worker it starts) until the block ends."""
    import redis

    with scratch_database("pushplan_bench_dispatch", args.database_url) as database_url:
        values = {
            "PUSHPLAN_PROFILE": "production",
            "PUSHPLAN_DATA_DIR": str(data_dir),
            "PUSHPLAN_REDIS_URL": server.url,
            "PUSHPLAN_DATABASE_URL": database_url,
            "PUSHPLAN_QUIET_START_HOUR": "0",
            "PUSHPLAN_QUIET_END_HOUR": "0",
            "PUSHPLAN_CAP_MIN_GAP_MINUTES": "0",
            "PUSHPLAN_DISPATCH_CHUNK": str(args.dispatch_chunk),
            "PUSHPLAN_DISPATCH_MAX_IN_FLIGHT": str(args.dispatch_max_in_flight),
            "PUSHPLAN_DISPATCH_LEASE_SECONDS": str(args.dispatch_lease_seconds),
        }
        with environment(values):
            from dispatch.celery_app import app, celery_config
            from pushplan.db.engine import migrate
            from pushplan.db.store import PlanStore
            from pushplan.settings import get_settings

            settings = get_settings()
            settings.data_dir.mkdir(parents=True)
            migrate(settings)
            # The app may have been configured before (an earlier benchmark in this process): this
            # run's broker, the same Redis for every round.
            app.conf.update(celery_config(settings))
            deployment = Deployment(
                settings, PlanStore(settings), redis.Redis.from_url(server.url), data_dir / "worker.log"
            )
            try:
                yield deployment
            finally:
                deployment.store.engine.dispose()
                deployment.redis.close()


def run_round(
    args: argparse.Namespace, deployment: Deployment, server: RedisServer, n: int, chunk: int, items: int
) -> RoundFigures:
    """Store the round's items, start a worker, then phase A, phase B and the checks."""
    import sqlalchemy as sa

    started = time.perf_counter()
    users = args.dispatch_users * items // args.dispatch_items
    round_ = store_round(deployment, f"r{n}", items, users)
    with deployment.store.session() as session:
        session.execute(sa.text("analyze plan_items"))
    print(
        f"setup: {items:,} due plan items ({items // users} campaigns x {users:,} users) stored "
        f"in {time.perf_counter() - started:.1f} s, in a database of their own",
        flush=True,
    )
    with celery_worker(deployment, {**os.environ}, args.dispatch_concurrency) as pid:
        load_before = load()
        cpu = CpuUse(pid, server.pid, str(deployment.settings.database_url).rsplit("/", 1)[1])
        since = deployment.log_size()
        cpu.start()
        noop_seconds = noop_phase(deployment, round_, chunk)
        noop_cpu = cpu.stop()
        cpu.start()
        timing = dispatch_phase(deployment, round_, chunk, args.dispatch_scan_seconds)
        send_cpu = cpu.stop()
        check = check_round(deployment, round_)
        time.sleep(0.5)  # the last tasks' log lines follow their last write
        load_after = load()
    return RoundFigures(
        chunk,
        items,
        noop_seconds,
        timing,
        check,
        args.dispatch_concurrency,
        deployment.task_seconds(since, "benchmarks.noop_tasks.noop_chunk_task"),
        deployment.task_seconds(since, "dispatch.tasks.send_chunk_task"),
        noop_cpu,
        send_cpu,
        load_before,
        load_after,
    )


def run(args: argparse.Namespace) -> list[RoundFigures]:
    """The whole benchmark on services of its own; prints as it goes, returns each round's figures.

    Each round has a database and a worker of its own (one Redis for all, the rounds' keys apart), so
    that a round's figures do not depend on the rows an earlier round left.
    """
    from pushplan.reachability import reachable

    if not reachable(args.database_url):
        print(f"dispatch benchmark: skipped, PostgreSQL not reachable at {args.database_url}")
        return []
    sizes = [(args.dispatch_chunk, args.dispatch_items)]
    if args.dispatch_also_chunk:
        sizes.append((args.dispatch_also_chunk, args.dispatch_also_items or args.dispatch_items))
    figures: list[RoundFigures] = []
    with (
        tempfile.TemporaryDirectory() as scratch,
        RedisServer(Path(scratch) / "redis", args.dispatch_aof) as server,
    ):
        for n, (chunk, items) in enumerate(sizes):
            with deployed(args, server, Path(scratch) / f"data-{n}") as deployment:
                if n == 0:
                    settings = deployment.settings
                    print(service_versions(deployment))
                    print(
                        f"settings: max in flight {settings.dispatch_max_in_flight:,}, "
                        f"lease {settings.dispatch_lease_seconds:g} s, "
                        f"scan every {args.dispatch_scan_seconds:g} s (in this process, as beat), "
                        f"worker --concurrency {args.dispatch_concurrency}; quiet hours off, min gap 0, "
                        f"caps per channel-day {settings.cap_per_channel_day}, "
                        f"week {settings.cap_per_channel_week}, user-day {settings.cap_per_user_day}; "
                        f"first campaign total {FIRST_CAMPAIGN_REACH:.0%} of users",
                        flush=True,
                    )
                found = run_round(args, deployment, server, n, chunk, items)
                figures.append(found)
                print("\n".join(found.lines()), flush=True)
                if n == len(sizes) - 1 and args.dispatch_profile_items:
                    print(profile_send_chunk(deployment, args.dispatch_profile_items, args.dispatch_chunk))
    print_targets(figures)
    return figures


def print_targets(figures: list[RoundFigures]) -> None:
    if not figures:
        return
    main = figures[0]
    sends_rate = main.sent / main.dispatch.seconds
    print(f"target >= 2,000 sends/s: {sends_rate:,.0f} sends/s, {'met' if sends_rate >= 2000 else 'missed'}")
    # Celery's own cost of a task: phase A's time per task per pool process (enqueue, delivery, ack,
    # pool hand-off: all but the work), against a send chunk's median run time.
    tasks = max(len(main.noop_task_seconds), 1)
    celery_per_task = main.noop_seconds * main.concurrency / tasks
    chunk_seconds = statistics.median(main.send_task_seconds)
    share = celery_per_task / chunk_seconds
    print(
        f"target Celery overhead <= 5% of a send chunk's time (chunk {main.chunk}): "
        f"{celery_per_task * 1000:.1f} ms a task against {chunk_seconds * 1000:.0f} ms "
        f"a chunk = {share:.1%}, {'met' if share <= 0.05 else 'missed'}"
    )


def add_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The benchmark's options, as `--items` alone or `--dispatch-items` next to the other benchmarks."""
    parser.add_argument(f"--{prefix}items", dest="dispatch_items", type=int, default=100_000)
    parser.add_argument(f"--{prefix}users", dest="dispatch_users", type=int, default=50_000)
    parser.add_argument(f"--{prefix}chunk", dest="dispatch_chunk", type=int, default=500)
    parser.add_argument(f"--{prefix}concurrency", dest="dispatch_concurrency", type=int, default=2)
    parser.add_argument(
        f"--{prefix}also-chunk",
        dest="dispatch_also_chunk",
        type=int,
        default=100,
        help="a second round (0: none)",
    )
    parser.add_argument(
        f"--{prefix}also-items",
        dest="dispatch_also_items",
        type=int,
        default=0,
        help="its items (0: as --items)",
    )
    parser.add_argument(
        f"--{prefix}aof", dest="dispatch_aof", choices=["off", "everysec", "always"], default="everysec"
    )
    parser.add_argument(
        f"--{prefix}scan-seconds",
        dest="dispatch_scan_seconds",
        type=float,
        default=0.5,
        help="how often this process runs the due-scan, as beat would (pushplan's default is 5 s)",
    )
    parser.add_argument(f"--{prefix}max-in-flight", dest="dispatch_max_in_flight", type=int, default=50_000)
    parser.add_argument(f"--{prefix}lease-seconds", dest="dispatch_lease_seconds", type=float, default=300.0)
    parser.add_argument(f"--{prefix}profile-items", dest="dispatch_profile_items", type=int, default=5_000)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    print(machine())
    run(args)


if __name__ == "__main__":
    main()
