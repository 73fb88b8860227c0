"""The deployment's settings: durable's own (DURABLE_* variables, read once)
and the Celery options our workers run with. docker-compose, the test suite
and the benchmarks all start workers through `workers.app`, which reads this."""

from __future__ import annotations

from typing import Any

from durable.settings import Settings


def load_settings() -> Settings:
    return Settings.from_env()


def celery_options(settings: Settings) -> dict[str, Any]:
    return {
        # Flower reads task events; sent events show enqueued work too.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "broker_connection_retry_on_startup": True,
        # Workflow tasks are long-lived; a small prefetch keeps a killed
        # worker from holding many unclaimed messages.
        "worker_prefetch_multiplier": 1,
        "imports": list(settings.imports),
        "worker_hijack_root_logger": False,
    }
