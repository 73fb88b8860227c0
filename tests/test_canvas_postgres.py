"""The canvas tests of tests/unit/test_canvas.py against a real Postgres:
there a static chain's start and its last task's end are single statements
(CTEs) that SQLite runs as transactions instead. The engine runs in this
process, as in tests/unit."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.unit.conftest import Cluster
from tests.unit.test_canvas import (  # noqa: F401 - collected here again, on Postgres
    tasks,
    test_a_canvas_nested_in_a_group_runs_as_a_child_canvas,
    test_a_chain_passes_results_as_celery_does,
    test_a_chain_started_again_with_its_id_is_not_run_twice,
    test_a_chain_started_through_its_workflow_ends_with_its_last_task,
    test_a_crash_mid_chain_does_not_run_completed_tasks_again,
    test_a_failing_task_fails_the_canvas_with_its_error,
    test_a_last_task_ending_while_its_canvas_runs_wakes_it,
    test_a_static_chain_survives_a_lost_message_between_links,
    test_group_and_chord,
)


@pytest.fixture
def cluster(create_pg_database, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster.on(create_pg_database("canvas"), tmp_path)
    yield cluster
    cluster.dur.store.db.dispose()
