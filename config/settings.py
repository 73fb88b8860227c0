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
        # Task events cost the worker's main process about 1.2 ms per
        # workflow (three Redis publishes), as much as the rest of its
        # bookkeeping. Flower turns them on itself while it runs (its
        # enable_events broadcast), so workers start without them; `celery
        # worker -E` or this option turns them on for good. A sent event is
        # a second publish on every start() (a quarter of its cost) and only
        # shows a task in Flower before a worker receives it: off.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "broker_connection_retry_on_startup": True,
        # Workflow tasks are long-lived; a small prefetch keeps a killed
        # worker from holding many unclaimed messages.
        "worker_prefetch_multiplier": 1,
        "imports": list(settings.imports),
        "worker_hijack_root_logger": False,
    }
