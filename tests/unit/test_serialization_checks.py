"""Values are checked when written, classes are resolved from an allowlist
before anything is imported, and every decode failure is a
SerializationError (issue 15, item 9)."""

from __future__ import annotations

import dataclasses
import enum
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pydantic
import pytest

from durable import serialization as ser
from durable.errors import SerializationError, WorkflowFailedError
from durable.records import Status, StepStatus

from .conftest import Cluster


@dataclasses.dataclass
class WithDerived:
    price: int
    total: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.total = self.price * 2


@dataclasses.dataclass
class WithInitVar:
    price: int
    tax: dataclasses.InitVar[int]

    def __post_init__(self, tax: int) -> None:
        self.price += tax


@dataclasses.dataclass(init=False)
class OwnInit:
    a: int

    def __init__(self, b: int) -> None:
        self.a = b


@dataclasses.dataclass
class Fine:
    a: int
    b: list[int] = dataclasses.field(default_factory=list)


class Shade(enum.Enum):
    DARK = 1


def _local_dataclass() -> Any:
    @dataclasses.dataclass
    class Local:
        x: int

    return Local(1)


def _local_enum() -> Any:
    class LocalColor(enum.Enum):
        RED = 1

    return LocalColor.RED


def _local_model() -> Any:
    class LocalModel(pydantic.BaseModel):
        x: int

    return LocalModel(x=1)


@pytest.mark.parametrize("value, message", [
    (WithDerived(3), "init=False \\(total\\)"),
    (WithInitVar(3, 1), "requires tax"),
    (OwnInit(1), "requires b.*does not take a"),
    (_local_dataclass(), "defined inside a function"),
    (_local_enum(), "defined inside a function"),
    (_local_model(), "defined inside a function"),
    ({"nested": [(1, _local_dataclass())]}, "defined inside a function"),
], ids=["init-false", "initvar", "own-init", "local-dataclass", "local-enum", "local-model", "nested"])
def test_values_that_could_not_be_read_back_are_refused_when_written(value: Any, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        ser.dumps(value)
    with pytest.raises(SerializationError, match=message):
        ser.dumps_inputs((value,), {})


def test_classes_defined_in_main_are_refused_when_written(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import dataclasses, enum
        from durable import serialization as ser
        from durable.errors import SerializationError

        @dataclasses.dataclass
        class Order:
            x: int

        class Color(enum.Enum):
            RED = 1

        for value in (Order(1), Color.RED):
            try:
                ser.dumps(value)
            except SerializationError as exc:
                assert "defined in __main__" in str(exc), exc
            else:
                raise SystemExit("stored a __main__ class")
        print("ok")
    """))
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": repo}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                          cwd=repo, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_readable_classes_still_round_trip() -> None:
    for value in (Fine(1, [2]), Shade.DARK, {"k": Fine(2)}):
        assert ser.loads(ser.dumps(value)) == value


def test_the_decoder_imports_no_module_a_stored_row_names(tmp_path: Path, monkeypatch: Any) -> None:
    """A module nobody imported nor allowed is never imported: its import
    could run anything (here it would write a file)."""
    package = tmp_path / "not_allowed_pkg"
    package.mkdir()
    marker = tmp_path / "imported"
    (package / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "import dataclasses\n@dataclasses.dataclass\nclass Thing:\n    x: int\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    stored = '{"$t": "dataclass", "cls": "not_allowed_pkg:Thing", "v": {"x": 1}}'
    with pytest.raises(SerializationError, match="may not import"):
        ser.loads(stored)
    assert not marker.exists()
    # an error type in such a module is not imported either
    rebuilt = ser.rebuild_error({"type": "not_allowed_pkg.Boom", "message": "m"}, "wf")
    assert isinstance(rebuilt, WorkflowFailedError) and not marker.exists()

    ser.allow_module("not_allowed_pkg")  # the operator says so: now it may be imported
    try:
        assert ser.loads(stored).x == 1 and marker.exists()
    finally:
        ser._allowed_modules.discard("not_allowed_pkg")
        sys.modules.pop("not_allowed_pkg", None)


@pytest.mark.parametrize("stored", [
    '{"$t": "decimal", "v": "not a number"}',
    '{"$t": "dict", "v": [1, 2]}',
    '{"$t": "map", "v": 3}',
    '{"$t": "bytes", "v": "%%%"}',
    '{"$t": "datetime", "v": 12}',
    '{"$t": "dataclass", "cls": 5, "v": {}}',
    '{"$t": "dataclass", "cls": "tests.unit.test_serialization_checks:Fine", "v": {"zz": 1}}',
    '{"$t": "dataclass", "cls": "tests.unit.test_serialization_checks:Fine", "v": []}',
    '{"$t": "dataclass", "cls": "tests.unit.test_serialization_checks:<lambda>", "v": {}}',
    '{"$t": "enum", "cls": "tests.unit.test_serialization_checks:Shade", "v": 99}',
    '{"$t": "enum", "cls": "tests.unit.test_serialization_checks:NoSuchThing", "v": 1}',
    '{"$t": "pydantic", "cls": "os:path", "v": {}}',
    "[" * 100_000 + "]" * 100_000,
])
def test_every_decode_failure_is_a_serialization_error(stored: str) -> None:
    with pytest.raises(SerializationError):
        ser.loads(stored)


def test_bad_inputs_and_errors_are_serialization_errors() -> None:
    for stored in ('[1, 2]', '{"args": 1, "kwargs": {}}', '{"args": []}'):
        with pytest.raises(SerializationError, match="inputs"):
            ser.loads_inputs(stored)
    for stored in ("{nope", "[1]"):
        with pytest.raises(SerializationError, match="stored error"):
            ser.loads_error(stored)


def test_a_step_returning_an_unreadable_value_fails_at_that_step(cluster: Cluster) -> None:
    """Before: the step's checkpoint was written, and the workflow failed
    only when a later execution replayed it."""
    dur = cluster.dur
    calls: list[str] = []

    @dur.step()
    def price() -> WithDerived:
        calls.append("price")
        return WithDerived(5)

    @dur.step()
    def after() -> str:
        calls.append("after")
        return "done"

    @dur.workflow()
    def order() -> str:
        price()
        return after()

    handle = order.start()
    cluster.drive()
    status = cluster.status(handle.workflow_id)
    assert status.status is Status.ERROR
    assert status.error is not None and status.error.type.endswith("SerializationError")
    assert "init=False" in status.error.message
    [step] = cluster.steps(handle.workflow_id)
    assert step.name.endswith("price") and step.status is StepStatus.ERROR
    assert calls == ["price"]


def test_a_start_with_unreadable_inputs_writes_nothing(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.workflow()
    def takes(value: Any) -> None:
        return None

    with pytest.raises(SerializationError, match="defined inside a function"):
        takes.start(_local_dataclass())
    assert dur.list_workflows() == []
    assert cluster.dispatcher.published == []
