"""JSON codecs: every supported type round-trips; anything else is refused
with a clear SerializationError; no pickle anywhere."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import threading
import uuid

import pydantic
import pytest

from durable import serialization as ser
from durable.errors import MaxStepRetriesExceededError, SerializationError, WorkflowFailedError


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class Point:
    x: int
    when: dt.date


class Order(pydantic.BaseModel):
    order_id: str
    total: decimal.Decimal


VALUES = [
    None, True, 3, 2.5, "text", [1, "a"], {"a": 1},
    dt.datetime(2026, 11, 21, 10, 30, tzinfo=dt.timezone.utc), dt.date(2026, 1, 2), dt.time(8, 15),
    dt.timedelta(seconds=90), uuid.UUID(int=7), decimal.Decimal("10.05"), b"\x00\xffbytes",
    (1, (2, 3)), {1, 2}, frozenset({"x"}), Color.RED, Level.HIGH, Point(1, dt.date(2026, 5, 1)),
    Order(order_id="o-1", total=decimal.Decimal("9.99")), {"$t": "not a tag", "$x": [1]},
    {1: "int keys", (2, 3): "tuple key"}, float("inf"),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_round_trip(value):
    restored = ser.loads(ser.dumps(value))
    assert restored == value
    assert type(restored) is type(value)


def test_unserializable_value_names_its_type():
    with pytest.raises(SerializationError, match="_thread.lock"):
        ser.dumps({"lock": threading.Lock()})


def test_inputs_round_trip():
    text = ser.dumps_inputs((1, Color.RED), {"when": dt.date(2026, 1, 1)})
    assert ser.loads_inputs(text) == ([1, Color.RED], {"when": dt.date(2026, 1, 1)})


def test_corrupt_payload_is_a_serialization_error():
    with pytest.raises(SerializationError):
        ser.loads("{not json")
    with pytest.raises(SerializationError, match="unknown stored type"):
        ser.loads('{"$t": "pickle", "v": "..."}')
    with pytest.raises(SerializationError, match="is not a dataclass"):
        ser.loads('{"$t": "dataclass", "cls": "os:system", "v": {}}')


def test_errors_rebuild_with_their_type_and_arguments():
    record = ser.error_to_dict(MaxStepRetriesExceededError("charge", 3, [{"message": "m"}]))
    rebuilt = ser.rebuild_error(record)
    assert isinstance(rebuilt, MaxStepRetriesExceededError)
    assert (rebuilt.step_name, rebuilt.attempts, rebuilt.errors) == ("charge", 3, [{"message": "m"}])
    assert "Traceback" in record["traceback"] or record["traceback"].startswith("durable")


def test_unrebuildable_error_becomes_workflow_failed_error():
    record = {"type": "no.such.module.Boom", "message": "bang"}
    rebuilt = ser.rebuild_error(record, "wf-1")
    assert isinstance(rebuilt, WorkflowFailedError)
    assert rebuilt.error_type == "no.such.module.Boom" and "bang" in str(rebuilt)


def test_library_never_imports_pickle():
    import pathlib

    root = pathlib.Path(ser.__file__).parent
    offenders = [p.name for p in root.rglob("*.py") if "import pickle" in p.read_text()]
    assert offenders == []
