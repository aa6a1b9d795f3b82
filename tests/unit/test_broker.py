"""The local broker writes each message whole before a worker can see it, and Celery uses it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kombu import Connection

from dispatch import broker
from dispatch.celery_app import celery_config
from pushplan.settings import Settings


def test_a_message_appears_only_when_it_is_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen_during_write: list[list[str]] = []
    real_replace = os.replace

    def replace(source: str, target: str) -> None:
        # What a polling worker would list just before the message is renamed into place.
        seen_during_write.append(sorted(os.listdir(tmp_path)))
        real_replace(source, target)

    monkeypatch.setattr(broker.os, "replace", replace)
    options = {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path)}
    options["control_folder"] = str(tmp_path / "control")  # else kombu writes ./control
    with Connection(transport=broker.Transport, transport_options=options) as connection:
        queue = connection.SimpleQueue("sends")
        queue.put({"plan_ids": ["a", "b"]})
        [before] = seen_during_write
        assert not [name for name in before if name.endswith(".msg")]  # only the hidden scratch file
        assert queue.get(timeout=5).payload == {"plan_ids": ["a", "b"]}
        queue.close()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".part")]


def test_the_local_profile_runs_celery_on_this_transport(settings: Settings) -> None:
    config = celery_config(settings)
    assert config["broker_url"] == "filesystem://"
    assert config["broker_transport"] == "dispatch.broker:Transport"
    connection = Connection(config["broker_url"], transport=config["broker_transport"])
    assert connection.transport.Channel is broker.Channel
