"""The demo's service step: run `pushplan serve` as its own process and plan through the HTTP API,
the way a campaign system would, so the tour shows the real service rather than a function call."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd

from pushplan.domain import Campaign

# Users per `POST /v1/plans` call: well under the API's 10,000, as a campaign system would batch.
PLAN_BATCH = 2_500


@dataclass(frozen=True)
class RunningService:
    base_url: str
    api_key: str
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"X-API-Key": self.api_key}, timeout=120)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_service(data_dir: Path, api_key: str, ready_within_s: float = 120.0) -> Iterator[RunningService]:
    """`pushplan serve` on a free loopback port until the block ends; its log goes to a file."""
    port = free_port()
    log = data_dir / "serve.log"
    pushplan = Path(sys.executable).with_name("pushplan")
    command = [str(pushplan), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=dict(os.environ))
    service = RunningService(f"http://127.0.0.1:{port}", api_key, log)
    try:
        _wait_ready(service, process, ready_within_s)
        yield service
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_worker(
    data_dir: Path, concurrency: int = 2, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`pushplan worker` as its own process until the block ends (a real Celery worker, not eager mode);
    its log goes to `<data_dir>/worker.log`."""
    log = data_dir / "worker.log"
    pushplan = Path(sys.executable).with_name("pushplan")
    command = [str(pushplan), "worker", "--concurrency", str(concurrency)]
    with log.open("a") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env or dict(os.environ)
        )
    try:
        yield process
    finally:
        process.terminate()  # Celery's warm shutdown: finishes the tasks it holds
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(service: RunningService, process: subprocess.Popen[bytes], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}; see {service.log}")
        try:
            if httpx.get(f"{service.base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.25)
    raise RuntimeError(f"the service was not ready within {within_s:.0f} s; see {service.log}")


def demo_campaign(start: datetime) -> Campaign:
    """Four titles of different kinds over one day, pushed, with a 10 % holdout and 10 % exploration."""
    return Campaign.model_validate(
        {
            "campaign_id": f"demo-{start:%Y%m%d}",
            "name": "Demo: weekend picks",
            "channels": ["sandbox"],
            "variants": [
                {"variant_id": "discount", "title": "20% off your favourites today", "tags": ["discount"]},
                {"variant_id": "news", "title": "New arrivals just dropped", "tags": ["news"]},
                {"variant_id": "personal", "title": "We picked these for you", "tags": ["personal"]},
                {"variant_id": "question", "title": "Ready for more? 🎉", "tags": ["question", "emoji"]},
            ],
            "window": {"start": start.isoformat(), "end": (start + timedelta(days=1)).isoformat()},
            "holdout_fraction": 0.1,
            "exploration": 0.1,
        }
    )


def plan_through_api(
    service: RunningService, campaign: Campaign, user_ids: list[str], now: datetime
) -> pd.DataFrame:
    """Create the campaign and plan every user through the API, in batches; the items as a frame."""
    items = []
    with service.client() as client:
        created = client.post("/v1/campaigns", json=campaign.model_dump(mode="json"))
        created.raise_for_status()
        for first in range(0, len(user_ids), PLAN_BATCH):
            body = {
                "campaign_id": campaign.campaign_id,
                "user_ids": user_ids[first : first + PLAN_BATCH],
                "now": now.isoformat(),
            }
            response = client.post("/v1/plans", json=body)
            response.raise_for_status()
            items += response.json()["items"]
    return pd.DataFrame(items)
