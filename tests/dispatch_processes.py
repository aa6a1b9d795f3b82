"""Dispatch as deployed, for integration tests: real `pushplan worker` and `pushplan beat` processes on
either profile — `production` (a Redis of the test's own as broker and ledger, a scratch PostgreSQL
database) or `local` (SQLite and the filesystem broker under the test's data dir)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from pushplan.db.engine import migrate
from pushplan.db.schema import PlanItemRow
from pushplan.db.store import PlanStore
from pushplan.settings import Profile, Settings
from tests.receiver import CountingReceiver
from tests.services import RedisServer, scratch_database

FINAL = {"sent", "suppressed", "failed", "unknown", "cancelled"}


@dataclass
class Deployment:
    settings: Settings
    env: dict[str, str]
    redis: RedisServer | None
    store: PlanStore
    processes: list[subprocess.Popen[bytes]]

    def start(self, *command: str) -> subprocess.Popen[bytes]:
        """`pushplan <command>` in a session of its own, so a kill takes its pool children too."""
        log = (self.settings.data_dir / f"{command[0]}-{len(self.processes)}.log").open("w")
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("pushplan")), *command],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """`pushplan <command>` to completion, as a user types it."""
        return subprocess.run(
            [str(Path(sys.executable).with_name("pushplan")), *command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def states(self) -> Counter[str]:
        with self.store.session() as session:
            return Counter(
                dict(
                    session.execute(
                        sa.select(PlanItemRow.state, sa.func.count()).group_by(PlanItemRow.state)
                    ).all()
                )
            )

    def wait_until(self, done: Callable[[], bool], what: str, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                logs = {p.name: p.read_text()[-3000:] for p in self.settings.data_dir.glob("*.log")}
                raise AssertionError(f"{what}: not within {timeout_s} s; states {self.states()}; logs {logs}")
            time.sleep(0.1)

    def all_final(self) -> bool:
        return set(self.states()) <= FINAL


def _setting(name: str) -> bool:
    return name.startswith("PUSHPLAN_") and not name.startswith("PUSHPLAN_TEST_")


def _settings_from(env: dict[str, str]) -> Settings:
    """The settings the processes will read from `env`, read the same way (pydantic-settings)."""
    saved = {k: v for k, v in os.environ.items() if _setting(k)}
    for name in saved:
        del os.environ[name]
    os.environ.update({k: v for k, v in env.items() if _setting(k)})
    try:
        return Settings()
    finally:
        for name in [k for k in os.environ if _setting(k)]:
            del os.environ[name]
        os.environ.update(saved)


@contextmanager
def deployed(profile: Profile, data_dir: Path, **overrides: str) -> Iterator[Deployment]:
    """A deployment of `profile` under `data_dir`, quiet hours off and no minimum gap (the tests run
    at any hour, their sends seconds apart); `overrides` are PUSHPLAN_* settings (without the prefix).
    Its processes are killed and its database and Redis removed afterwards."""
    with ExitStack() as stack:
        values = {
            "PUSHPLAN_PROFILE": profile.value,
            "PUSHPLAN_DATA_DIR": str(data_dir),
            "PUSHPLAN_QUIET_START_HOUR": "0",
            "PUSHPLAN_QUIET_END_HOUR": "0",
            "PUSHPLAN_CAP_MIN_GAP_MINUTES": "0",
            "PUSHPLAN_DISPATCH_SCAN_SECONDS": "0.5",
            "PUSHPLAN_DISPATCH_LEASE_SECONDS": "15",
            "PUSHPLAN_DISPATCH_MAX_IN_FLIGHT": "3000",
            "PUSHPLAN_DISPATCH_CHUNK": "250",
        }
        redis = None
        if profile is Profile.production:
            database_url = stack.enter_context(scratch_database("pushplan_dispatch"))
            redis = stack.enter_context(RedisServer(data_dir.parent / f"{data_dir.name}-redis"))
            values |= {"PUSHPLAN_REDIS_URL": redis.url, "PUSHPLAN_DATABASE_URL": database_url}
        values |= {f"PUSHPLAN_{key.upper()}": value for key, value in overrides.items()}
        env = {k: v for k, v in os.environ.items() if not _setting(k)} | values
        settings = _settings_from(env)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        migrate(settings)
        store = PlanStore(settings)
        found = Deployment(settings, env, redis, store, [])
        try:
            yield found
        finally:
            for process in found.processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            store.engine.dispose()


def webhook_deployment(
    profile: Profile, tmp_path: Path, receiver: CountingReceiver, **overrides: str
) -> AbstractContextManager[Deployment]:
    """`deployed` with the webhook channel pointed at `receiver` (signed, 1,000 calls a second)."""
    return deployed(
        profile,
        tmp_path / "data",
        webhook_url=receiver.url,
        webhook_secret="s3cret",
        channel_rate_per_second='{"webhook": 1000}',
        # The receiver answers within 0.1 s; a short timeout keeps the lease a send step holds (at
        # least twice the timeout) short, so a killed worker's chunk is handed out again soon.
        channel_timeout_seconds="1",
        **overrides,
    )
