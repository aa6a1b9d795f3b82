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

from pushplan.reachability import reachable

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
def scratch_database(prefix: str, server_url: str | None = None) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test (or benchmark round), on the test server or on
    `server_url`'s; its SQLAlchemy URL. Dropped after, even with connections still open (a killed
    worker's, say)."""
    if server_url is None:
        require_services()
    server_url = server_url or DATABASE_URL
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class RedisServer:
    """A redis-server of the test's (or benchmark's) own on a free port, persisting to `directory`
    with an AOF fsynced `aof` ("always", "everysec"; "off": none), so a test can stop and restart it
    without touching the shared Redis."""

    def __init__(self, directory: Path, aof: str = "always") -> None:
        from cli.demo import free_port

        self.directory, self.aof = directory, aof
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "no"] if self.aof == "off" else ["--appendonly", "yes"]
        if self.aof != "off":
            persistence += ["--appendfsync", self.aof]
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--save", "", *persistence,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not reachable(self.url):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

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
