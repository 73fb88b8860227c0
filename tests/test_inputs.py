"""Workflow inputs checked before anything is written (issue 13): by
function against the parameters' type hints (pydantic, strict), and by name
against the JSON Schema each worker records at its start. A mismatch is a
WorkflowInputError naming the parameter; an unknown name is refused once
any workflow is recorded, unless allow_unknown=True."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from durable import Durable, DurableClient, Settings
from durable.errors import UnknownWorkflowError, WorkflowInputError
from durable.inputs import Parameters, check_against_schema
from durable.store.workflow_schemas import workflow_schema
from tests.harness import Backend, wait_for


@dataclasses.dataclass
class Address:
    street: str
    zip_code: int


def ship(order_id: str, total: float, address: Address, *tags: str, express: bool = False, **notes: int) -> None:
    """A signature with every kind of parameter."""


def untyped(a, b=1):  # type: ignore[no-untyped-def]
    """No hints: anything goes."""


# --- the checks themselves ----------------------------------------------------------


def _refused(call, parameter):  # type: ignore[no-untyped-def]
    with pytest.raises(WorkflowInputError) as refused:
        call()
    assert refused.value.parameter == parameter, refused.value
    assert refused.value.workflow_name == "ship"
    return refused.value


def test_by_function_each_parameter_is_checked_strictly() -> None:
    params = Parameters(ship, "ship")
    home = Address("Main St", 1000)
    params.check(("o-1", 10, home, "a", "b"), {"express": True, "gift": 1})  # an int is a float
    _refused(lambda: params.check(("o-1", "10", home), {}), "total")  # "10" is not a float
    _refused(lambda: params.check(("o-1", 10.0, {"street": "x", "zip_code": 1}), {}), "address")
    _refused(lambda: params.check(("o-1", 10.0, home, "a", 2), {}), "tags[1]")
    _refused(lambda: params.check(("o-1", 10.0, home), {"express": "yes"}), "express")
    _refused(lambda: params.check(("o-1", 10.0, home), {"gift": "one"}), "gift")
    assert "missing a required argument" in str(_refused(lambda: params.check(("o-1",), {}), "total"))
    _refused(lambda: params.check(("o-1", 1.0), {"total": 2.0, "address": home}), "total")
    Parameters(untyped, "untyped").check((object(),), {"b": "x"})


def test_by_schema_the_json_form_is_checked_the_same_way() -> None:
    recorded = json.loads(json.dumps(Parameters(ship, "ship").json_schema()))
    by_name = recorded["parameters"]
    assert [(p["name"], p["kind"], p["required"]) for p in by_name] == [
        ("order_id", "POSITIONAL_OR_KEYWORD", True), ("total", "POSITIONAL_OR_KEYWORD", True),
        ("address", "POSITIONAL_OR_KEYWORD", True), ("tags", "VAR_POSITIONAL", False),
        ("express", "KEYWORD_ONLY", False), ("notes", "VAR_KEYWORD", False),
    ]
    assert by_name[1]["schema"] == {"type": "number"}

    def check(*args, **kwargs):  # type: ignore[no-untyped-def]
        check_against_schema("ship", recorded, args, kwargs)

    check("o-1", 10, {"street": "Main St", "zip_code": 1000}, "a", express=True, gift=1)
    check("o-1", 10, Address("Main St", 1000))  # its JSON form is an object
    _refused(lambda: check("o-1", "10", {"street": "x", "zip_code": 1}), "total")
    _refused(lambda: check("o-1", 10, {"street": "x"}), "address")
    _refused(lambda: check("o-1", 10, {"street": "x", "zip_code": 1}, "a", 2), "tags[1]")
    _refused(lambda: check("o-1", 10, {"street": "x", "zip_code": 1}, express="yes"), "express")
    _refused(lambda: check("o-1", 10, {"street": "x", "zip_code": 1}, gift="one"), "gift")
    _refused(lambda: check("o-1"), "total")
    _refused(lambda: check("o-1", 1.0, {"street": "x", "zip_code": 1}, total=2.0), "total")
    with pytest.raises(WorkflowInputError, match="positional"):
        check_against_schema("ship", json.loads(json.dumps(Parameters(lambda a: None, "ship").json_schema())), (1, 2), {})


# --- start() by function: nothing written ------------------------------------------


def test_start_refuses_bad_input_and_writes_nothing(tmp_path: Path) -> None:
    dur = Durable(settings=Settings(home=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'd.sqlite3'}"))
    shipping = dur.workflow(name="ship")(ship)
    with pytest.raises(WorkflowInputError, match="parameter 'total'"):
        shipping.start("o-1", "ten", Address("x", 1))
    with pytest.raises(WorkflowInputError, match="parameter 'address'"):
        shipping.options(workflow_id="w-2").start("o-1", 10.0, None)
    assert dur.list_workflows() == []
    assert shipping.start("o-1", 10.0, Address("x", 1), express=True).workflow_id
    assert len(dur.list_workflows()) == 1


# --- enqueue() by name, against what workers recorded ------------------------------


@pytest.fixture
def backend(pg_backend: Backend) -> Backend:
    return pg_backend


def test_enqueue_by_name_checks_what_workers_recorded(client: DurableClient, backend: Backend, start_worker, effects_dir):
    # before any worker started, nothing is recorded: any name is taken unchecked
    early = client.enqueue("workflow_of_a_worker_to_come", workflow_id="early")
    assert client.get(early.workflow_id).name == "workflow_of_a_worker_to_come"
    start_worker()
    # recorded once the worker's consumer is up (a thread: not before its first messages)
    known, text = wait_for(lambda: (r := workflow_schema(client.store.db, "slow_workflow"))[1] and r, 10,
                           "the worker's record of slow_workflow")
    assert known and json.loads(text or "")["parameters"][1] == {
        "name": "seconds", "kind": "POSITIONAL_OR_KEYWORD", "required": True, "schema": {"type": "number"},
    }
    client = DurableClient(settings=client.settings)  # nothing cached from before the worker

    with pytest.raises(WorkflowInputError, match="parameter 'seconds'") as refused:
        client.enqueue("slow_workflow", args=["x", "2"], workflow_id="bad-1")
    assert refused.value.parameter == "seconds"
    with pytest.raises(WorkflowInputError, match="parameter 'seconds'.*missing"):
        client.enqueue("slow_workflow", args=["x"], workflow_id="bad-2")
    with pytest.raises(WorkflowInputError, match="parameter 'slow_stepp'"):
        client.enqueue("ten_steps", kwargs={"slow_stepp": 3}, workflow_id="bad-3")
    with pytest.raises(UnknownWorkflowError, match="allow_unknown=True"):
        client.enqueue("slow_workflw", args=["x", 1.0], workflow_id="bad-4")
    with pytest.raises(WorkflowInputError, match="parameter 'seconds'"):
        asyncio.run(client.enqueue_async("slow_workflow", args=["x", [1]], workflow_id="bad-5"))
    engine = create_engine(backend.database_url)
    with Session(engine) as session, session.begin():
        with pytest.raises(WorkflowInputError):
            client.enqueue("slow_workflow", args=[1, 1.0], workflow_id="bad-6", transaction=session)
    engine.dispose()
    assert [w.workflow_id for w in client.list_workflows()] == ["early"]

    unknown = client.enqueue("slow_workflw", args=["x", 1.0], workflow_id="unknown", allow_unknown=True)
    assert client.get(unknown.workflow_id).name == "slow_workflw"
    assert client.enqueue("slow_workflow", args=["ok", 0.1]).result(timeout=60) == "ok"
    assert client.enqueue("ten_steps", kwargs={"slow_step": 3}).result(timeout=60)["sum"] == 385
