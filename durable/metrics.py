"""Prometheus metrics (prometheus_client).

Workers count what they do in these metrics; a prefork worker's children
each count their own, so run workers with PROMETHEUS_MULTIPROC_DIR set (an
empty directory per host, as for any multiprocess Python app) and serve them
with `durable metrics`, which adds them up with prometheus_client's
multiprocess collector. Queue backlog and the age of the oldest enqueued
workflow are read from the database when scraped.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

WORKFLOWS_STARTED = Counter(
    "durable_workflows_started_total", "Workflows whose first execution began", ["name"]
)
WORKFLOWS_ENDED = Counter(
    "durable_workflows_ended_total", "Workflows ended by an execution, by final status", ["name", "status"]
)
STEP_SECONDS = Histogram(
    "durable_step_duration_seconds", "Duration of each step attempt (inline steps)", ["name", "outcome"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300),
)
CHECKPOINTS = Counter("durable_checkpoints_total", "Step checkpoints written")
RECOVERIES = Counter(
    "durable_recoveries_total", "Executions that took over a lost execution's workflow", ["cause"]
)
QUARANTINES = Counter(
    "durable_quarantines_total", "Workflows quarantined past max_recovery_attempts", ["name"]
)
REPUBLISHED = Counter(
    "durable_sweeper_republished_total", "Workflows the recovery sweeper published (timers, lost messages, lost workers)"
)


def death_cause(last_death: str | None) -> str:
    """A bounded label for how an execution was lost."""
    text = (last_death or "").lower()
    if "signal 9" in text or "sigkill" in text:
        return "sigkill"
    if "signal" in text or "exited" in text:
        return "worker_lost"
    if "process gone" in text:
        return "process_gone"
    return "lease_expired"


class DatabaseGauges:
    """Queue backlog and the oldest enqueued workflow's age, per queue, read
    from the database when scraped (any process can serve them)."""

    def __init__(self, store: Any, clock: Any):
        self.store = store
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        backlog = GaugeMetricFamily("durable_queue_backlog", "Workflows enqueued, not started", labels=["queue"])
        running = GaugeMetricFamily("durable_queue_running", "Workflows started, not ended", labels=["queue"])
        oldest = GaugeMetricFamily(
            "durable_queue_oldest_enqueued_seconds", "Age of the oldest enqueued workflow", labels=["queue"]
        )
        now = self.clock.now_ms()
        for queue in self.store.queue_stats():
            backlog.add_metric([queue["name"]], queue["backlog"])
            running.add_metric([queue["name"]], queue["running"])
        for name, created_at_ms in self.store.oldest_enqueued().items():
            oldest.add_metric([name], max(0.0, (now - created_at_ms) / 1000))
        yield backlog
        yield running
        yield oldest


def exposition(store: Any = None, clock: Any = None, multiprocess_dir: str | None = None) -> bytes:
    """The metrics in Prometheus's text format: this process's, or every
    process's that wrote to `multiprocess_dir` (default
    PROMETHEUS_MULTIPROC_DIR), plus the database gauges when given a store."""
    directory = multiprocess_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        counted = CollectorRegistry()
        MultiProcessCollector(counted, path=directory)  # type: ignore[no-untyped-call]
    else:
        counted = REGISTRY
    output: bytes = generate_latest(counted)
    if store is not None:
        gauges = CollectorRegistry()
        gauges.register(DatabaseGauges(store, clock))
        output += generate_latest(gauges)
    return output


def serve(port: int, host: str, store: Any, clock: Any) -> Any:
    """Serve /metrics over HTTP in a thread (`durable metrics`): every
    worker process's counts (PROMETHEUS_MULTIPROC_DIR) and the database gauges."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry()
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        for collector in (WORKFLOWS_STARTED, WORKFLOWS_ENDED, STEP_SECONDS, CHECKPOINTS, RECOVERIES,
                          QUARANTINES, REPUBLISHED):
            registry.register(collector)
    registry.register(DatabaseGauges(store, clock))
    return start_http_server(port, addr=host, registry=registry)
