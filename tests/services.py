"""Where the integration tests find Redis and PostgreSQL, and the rule: under CI they must be there."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from pushplan.services import reachable

REDIS_URL = os.environ.get("PUSHPLAN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
DATABASE_URL = os.environ.get(
    "PUSHPLAN_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def require_services() -> None:
    """Skip on a laptop without the services; fail under CI, where a skip would hide a broken run."""
    down = [url for url in (REDIS_URL, DATABASE_URL) if not reachable(url)]
    if not down:
        return
    message = f"not reachable: {', '.join(urlsplit(u).netloc.split('@')[-1] for u in down)}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must test the production profile for real)")
    pytest.skip(message)


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the test server for one test; its SQLAlchemy URL. Dropped
    after, even with connections still open (a killed worker's, say)."""
    require_services()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = DATABASE_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield DATABASE_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class RedisServer:
    """A redis-server of the test's own on a free port, persisting to `directory` with an fsync per
    write (AOF), so a test can stop and restart it without touching the shared Redis."""

    def __init__(self, directory: Path) -> None:
        from pushplan.tour import free_port

        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not reachable(self.url):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: Redis shuts down cleanly, the AOF already on disk
            self.process.wait(timeout=20)
            self.process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
