"""The Celery app: configured from settings when first used, never at import.

Broker by profile (README.md, "Profiles"): Redis in `production`; in `local`, kombu's filesystem
transport under `<data_dir>/broker`, which needs no server yet runs a real worker process. Messages
are JSON only and carry ids, never objects; results are not kept (state lives in the plan store).
Send and plan tasks are idempotent, so they are acknowledged late and requeued if their worker is
lost; beat's due-scan is what makes dispatch exactly-once-per-item, so no ETAs are ever sent.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from pushplan.settings import Profile, Settings, get_settings, per_settings

app = Celery("pushplan")


def celery_config(settings: Settings) -> dict[str, Any]:
    if settings.profile is Profile.production:
        assert settings.redis_url
        broker: dict[str, Any] = {
            "broker_url": settings.redis_url,
            # Unacked messages of a dead worker come back after this; the plan store's lease
            # (dispatch_lease_seconds) usually re-queues their items sooner.
            "broker_transport_options": {"visibility_timeout": 3600},
        }
    else:
        folder = (settings.data_dir / "broker").resolve()
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        broker = {
            "broker_url": "filesystem://",
            # kombu's filesystem transport, writing each message whole before a worker can see it.
            "broker_transport": "dispatch.broker:Transport",
            "broker_transport_options": {
                "data_folder_in": str(folder / "queue"),
                "data_folder_out": str(folder / "queue"),
                "processed_folder": str(folder / "processed"),
                "control_folder": str(folder / "control"),  # else kombu writes ./control
                "store_processed": False,
                "polling_interval": 0.1,
            },
        }
    return broker | {
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        # Remote control needs broadcast queues, which the filesystem transport lacks.
        "worker_enable_remote_control": settings.profile is Profile.production,
        "task_default_queue": "sends",
        "task_routes": {
            "dispatch.tasks.due_scan_task": {"queue": "scans"},
            "dispatch.tasks.flush_events_task": {"queue": "scans"},
            "dispatch.tasks.send_chunk_task": {"queue": "sends"},
            "serving.tasks.plan_partition_task": {"queue": "plans"},
            "serving.tasks.fire_triggers_task": {"queue": "plans"},
            "dispatch.tasks.plan_partition_task": {"queue": "plans"},  # its name before it moved
        },
        "beat_schedule": {
            "due-scan": {"task": "dispatch.tasks.due_scan_task", "schedule": settings.dispatch_scan_seconds},
            "flush-events": {"task": "dispatch.tasks.flush_events_task", "schedule": 10.0},
            # Named, not imported (serving sits above dispatch); a no-op while no trigger is live.
            "fire-triggers": {
                "task": "serving.tasks.fire_triggers_task",
                "schedule": settings.trigger_scan_seconds,
            },
        },
        "beat_schedule_filename": str((settings.data_dir / "celerybeat-schedule").resolve()),
        # One app; each package's tasks module registers on it (Saleor's pattern). Named, not imported:
        # serving sits above dispatch.
        "imports": ["dispatch.tasks", "serving.tasks"],
    }


@app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    sender.conf.update(celery_config(get_settings()))


@per_settings
def app_for(settings: Settings) -> Celery:
    """A Celery app bound to these settings' broker, for enqueueing from the service. The module's
    `app` is configured once per process from the environment's settings; a service built with other
    settings (tests run several, on both profiles, in one process) must still send each message to
    its own broker, never to whichever one the process happened to configure first."""
    bound = Celery("pushplan", set_as_current=False)
    bound.conf.update(celery_config(settings))
    return bound


def enqueue(settings: Settings, task: str, *args: Any) -> None:
    """Send `task` (by name: the service does not import the tasks modules, which load Feast and
    MLflow) with `args` to the broker of `settings`, routed to its queue as any message is."""
    app_for(settings).send_task(task, args=list(args))
