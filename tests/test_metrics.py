"""Metrics from a real prefork worker: the counts of a test batch, exactly,
added up over the worker's processes (prometheus_client multiprocess mode)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from durable.metrics import exposition


@pytest.fixture
def backend(pg_backend):
    return pg_backend


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_a_prefork_workers_metrics_count_a_batch_exactly(client, start_worker, tmp_path: Path):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    start_worker(concurrency=2, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    handles = [client.enqueue("ten_steps") for _ in range(5)]
    for handle in handles:
        assert handle.result(timeout=60)["sum"] == 385
    queued = client.enqueue("ten_steps", queue="nobody-consumes")
    samples = _samples(exposition(client.store, client.clock, multiprocess_dir=str(metrics_dir)))
    assert samples[("durable_workflows_started_total", (("name", "ten_steps"),))] == 5
    assert samples[("durable_workflows_ended_total", (("name", "ten_steps"), ("status", "SUCCESS")))] == 5
    step = (("le", "+Inf"), ("name", "numbered_step"), ("outcome", "success"))
    assert samples[("durable_step_duration_seconds_bucket", step)] == 50
    assert samples[("durable_checkpoints_total", ())] == 50
    assert samples[("durable_queue_backlog", (("queue", "nobody-consumes"),))] == 1
    assert samples[("durable_queue_oldest_enqueued_seconds", (("queue", "nobody-consumes"),))] >= 0
