"""Management without a worker, on both store dialects: a fork never
writes into an existing workflow and is written in one transaction
(issue 15, item 7); lists read no payloads unless asked (item 12)."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
from sqlalchemy import insert, text, update

from durable import DurableClient
from durable.client import new_workflow_row
from durable.dashboard import Dashboard
from durable.errors import WorkflowNotFoundError
from durable.schema import steps, workflows

NOW = 1_800_000_000_000


def _step(workflow_id: str, step_id: int, output: str) -> dict[str, Any]:
    return dict(workflow_id=workflow_id, step_id=step_id, name=f"step{step_id}", status="SUCCESS",
                output=output, attempts=1, started_at_ms=NOW, completed_at_ms=NOW)


def _source_with_steps(client: DurableClient, workflow_id: str, count: int) -> None:
    client.store.insert_workflow(new_workflow_row(client.settings, "process", ["a"], {}, workflow_id=workflow_id))
    with client.store.db.begin() as conn:
        for step_id in range(count):
            conn.execute(insert(steps).values(**_step(workflow_id, step_id, f'"out{step_id}"')))


def _step_ids(client: DurableClient, workflow_id: str) -> list[int]:
    return [s["step_id"] for s in client.store.list_steps(workflow_id)]


def test_fork_into_an_existing_workflow_id_is_refused_and_writes_nothing(client: DurableClient) -> None:
    _source_with_steps(client, "src", 3)
    client.store.insert_workflow(new_workflow_row(client.settings, "other", ["b"], {}, workflow_id="victim"))
    published_before = client.store.workflow_row("victim")

    with pytest.raises(ValueError, match="'victim'.*already exists"):
        client.fork("src", from_step=2, new_workflow_id="victim")

    assert _step_ids(client, "victim") == []  # no checkpoint of src copied into it
    assert client.store.workflow_row("victim") == published_before
    assert client.get("victim").name == "other"
    # the source itself is an existing ID too
    with pytest.raises(ValueError, match="already exists"):
        client.fork("src", from_step=1, new_workflow_id="src")
    assert _step_ids(client, "src") == [0, 1, 2]

    # a fresh ID still forks
    fork = client.fork("src", from_step=2, new_workflow_id="fresh")
    assert _step_ids(client, fork.workflow_id) == [0, 1]


def test_fork_is_one_transaction(client: DurableClient, backend: Any) -> None:
    """A failure while the checkpoints are copied (here a trigger refusing
    them; in life a crash or a dropped connection) leaves no fork behind:
    before, the fork's row was committed first and re-ran every step."""
    _source_with_steps(client, "src", 3)
    with client.store.db.begin() as conn:
        if backend.name == "sqlite":
            conn.execute(text(
                "CREATE TRIGGER refuse_fork BEFORE INSERT ON durable_steps "
                "WHEN NEW.workflow_id = 'forked' BEGIN SELECT RAISE(ABORT, 'simulated crash'); END"
            ))
        else:
            conn.execute(text(
                "CREATE FUNCTION refuse_fork() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.workflow_id = 'forked' THEN RAISE EXCEPTION 'simulated crash'; END IF; "
                "RETURN NEW; END $$"
            ))
            conn.execute(text(
                "CREATE TRIGGER refuse_fork BEFORE INSERT ON durable_steps "
                "FOR EACH ROW EXECUTE FUNCTION refuse_fork()"
            ))
    with pytest.raises(Exception, match="simulated crash"):
        client.fork("src", from_step=2, new_workflow_id="forked")
    with pytest.raises(WorkflowNotFoundError):
        client.get("forked")
    assert _step_ids(client, "forked") == []


def test_fork_checks_its_arguments_before_writing(client: DurableClient) -> None:
    _source_with_steps(client, "src", 1)
    for bad in ("", "a\nb", "x" * 256):
        with pytest.raises(ValueError, match="new_workflow_id"):
            client.fork("src", from_step=1, new_workflow_id=bad)
    for bad_step in (-1, 1.5, True):
        with pytest.raises(ValueError, match="from_step"):
            client.fork("src", from_step=bad_step)  # type: ignore[arg-type]
    assert [w.workflow_id for w in client.list_workflows()] == ["src"]


# --- lists read summaries (item 12) --------------------------------------------

BIG = 1_000_000  # characters per payload


def _big_workflows(client: DurableClient, count: int) -> None:
    for i in range(count):
        wid = f"big-{i}"
        client.store.insert_workflow(
            new_workflow_row(client.settings, "big", ["i" * BIG], {}, workflow_id=wid)
        )
        with client.store.db.begin() as conn:
            conn.execute(update(workflows).where(workflows.c.workflow_id == wid)
                         .values(status="SUCCESS", output='"' + "o" * BIG + '"'))


def _peak_bytes(fn: Any) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_list_page_reads_no_inputs_or_outputs_unless_asked(client: DurableClient) -> None:
    _big_workflows(client, 5)
    client.list_workflows()  # connect and warm the statement caches outside the measurement

    page, peak = _peak_bytes(lambda: client.list_workflows(limit=50))
    assert len(page) == 5 and all(w.inputs is None and w.output is None for w in page)
    assert peak < 2 * BIG, f"a page of 5 summaries took {peak} bytes"  # 10 MB of payloads before

    dashboard = Dashboard(client)
    listing, peak = _peak_bytes(lambda: dashboard.api_list({}))
    assert len(listing["workflows"]) == 5 and peak < 2 * BIG, peak
    _, peak = _peak_bytes(lambda: dashboard.page_list({}))
    assert peak < 2 * BIG, peak
    _, peak = _peak_bytes(lambda: client.store.workflow_summary("big-0"))
    assert peak < BIG // 2, peak

    # asked for: each payload on its own
    outputs = client.list_workflows(load_output=True, limit=2)
    assert [len(w.output) for w in outputs] == [BIG, BIG] and all(w.inputs is None for w in outputs)
    rows = client.store.list_workflows(limit=1, load_output=True)
    assert "output" in rows[0] and "inputs" not in rows[0]
    inputs = client.list_workflows(load_input=True, limit=1)
    assert len(inputs[0].inputs["args"][0]) == BIG and inputs[0].output is None
    both = client.list_workflows(with_payloads=True, limit=1)
    assert both[0].inputs is not None and both[0].output is not None
    # one workflow's page still shows everything
    assert len(client.get("big-3").output) == BIG
