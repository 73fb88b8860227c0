"""JSON with codecs for common types. No pickle: nothing read back can run code
beyond importing a dataclass, Enum or pydantic model class by name.

A tagged value is a one-key object {"$type": ...}; a plain dict that happens to
use a "$" key is escaped, so any JSON-able dict round-trips unchanged.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import importlib
import json
import sys
import traceback as tb
import uuid
from typing import Any, Callable

from .errors import (
    AwaitedWorkflowCancelledError,
    AwaitedWorkflowMaxRecoveryAttemptsExceededError,
    SerializationError,
    WorkflowFailedError,
    WorkflowTimeoutError,
)
from .records import Status

FORMAT = "json-v1"  # recorded beside every payload

_TAG = "$t"
_VALUE = "v"


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_name(name: str) -> Any:
    module_name, _, qualname = name.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _is_pydantic_model(value: Any) -> bool:
    return hasattr(type(value), "model_dump") and hasattr(type(value), "model_validate")


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):  # before int/str: IntEnum is an int
        return {_TAG: "enum", "cls": _qualified_name(type(value)), _VALUE: _encode(value.value)}
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return {_TAG: "float", _VALUE: repr(value)}
        return value
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            encoded = {k: _encode(v) for k, v in value.items()}
            if any(k.startswith("$") for k in value):
                return {_TAG: "dict", _VALUE: encoded}
            return encoded
        return {_TAG: "map", _VALUE: [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {_TAG: "tuple", _VALUE: [_encode(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        kind = "frozenset" if isinstance(value, frozenset) else "set"
        return {_TAG: kind, _VALUE: [_encode(v) for v in value]}
    if isinstance(value, dt.datetime):
        return {_TAG: "datetime", _VALUE: value.isoformat()}
    if isinstance(value, dt.date):
        return {_TAG: "date", _VALUE: value.isoformat()}
    if isinstance(value, dt.time):
        return {_TAG: "time", _VALUE: value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {_TAG: "timedelta", _VALUE: value.total_seconds()}
    if isinstance(value, uuid.UUID):
        return {_TAG: "uuid", _VALUE: str(value)}
    if isinstance(value, decimal.Decimal):
        return {_TAG: "decimal", _VALUE: str(value)}
    if isinstance(value, (bytes, bytearray)):
        return {_TAG: "bytes", _VALUE: base64.b64encode(bytes(value)).decode("ascii")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {_TAG: "dataclass", "cls": _qualified_name(type(value)), _VALUE: fields}
    if _is_pydantic_model(value):
        data = value.model_dump(mode="json")
        return {_TAG: "pydantic", "cls": _qualified_name(type(value)), _VALUE: data}
    raise SerializationError(
        f"cannot serialize a value of type {type(value).__module__}.{type(value).__qualname__}: "
        f"{_short_repr(value)} (durable stores JSON; use a dataclass, pydantic model or plain data)"
    )


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {k: _decode(v) for k, v in value.items()}
    raw: Any = value.get(_VALUE)  # JSON: what it holds depends on the tag
    if tag == "dict":
        return {k: _decode(v) for k, v in raw.items()}
    if tag == "map":
        return {_decode(k): _decode(v) for k, v in raw}
    if tag == "tuple":
        return tuple(_decode(v) for v in raw)
    if tag == "set":
        return {_decode(v) for v in raw}
    if tag == "frozenset":
        return frozenset(_decode(v) for v in raw)
    if tag == "float":
        return float(raw)
    if tag == "datetime":
        return dt.datetime.fromisoformat(raw)
    if tag == "date":
        return dt.date.fromisoformat(raw)
    if tag == "time":
        return dt.time.fromisoformat(raw)
    if tag == "timedelta":
        return dt.timedelta(seconds=raw)
    if tag == "uuid":
        return uuid.UUID(raw)
    if tag == "decimal":
        return decimal.Decimal(raw)
    if tag == "bytes":
        return base64.b64decode(raw)
    if tag in ("enum", "dataclass", "pydantic"):
        cls = _import_class(value["cls"], tag)
        if tag == "enum":
            return cls(_decode(raw))
        if tag == "dataclass":
            return cls(**{k: _decode(v) for k, v in raw.items()})
        return cls.model_validate(raw)
    raise SerializationError(f"unknown stored type tag {tag!r}")


def _import_class(name: str, tag: str) -> Any:
    try:
        cls = _import_name(name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise SerializationError(f"cannot import stored {tag} class {name!r}: {exc}") from exc
    valid = (
        (tag == "enum" and isinstance(cls, type) and issubclass(cls, enum.Enum))
        or (tag == "dataclass" and dataclasses.is_dataclass(cls))
        or (tag == "pydantic" and hasattr(cls, "model_validate"))
    )
    if not valid:
        raise SerializationError(f"stored class {name!r} is not a {tag}")
    return cls


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def dumps(value: Any) -> str:
    """Encode a value as JSON text; SerializationError names what cannot be stored."""
    try:
        return json.dumps(_encode(value), separators=(",", ":"), allow_nan=False)
    except SerializationError:
        raise
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(f"cannot serialize value: {exc}") from exc


def loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return _decode(json.loads(text))
    except SerializationError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise SerializationError(f"cannot read stored value: {exc}") from exc


def dumps_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return dumps({"args": list(args), "kwargs": kwargs})


def loads_inputs(text: str) -> tuple[list[Any], dict[str, Any]]:
    data = loads(text)
    return list(data["args"]), dict(data["kwargs"])


# --- errors -----------------------------------------------------------------


def error_to_dict(exc: BaseException) -> dict[str, Any]:
    """Type, message and traceback, plus the constructor arguments when they are JSON-able."""
    record: dict[str, Any] = {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": _safe_text(exc, str),
        "traceback": _safe_text(exc, lambda e: "".join(tb.format_exception(type(e), e, e.__traceback__))),
    }
    try:
        reduced = exc.__reduce__()
        args = reduced[1] if isinstance(reduced, tuple) and len(reduced) > 1 else exc.args
        record["args"] = _encode(list(args))
        json.dumps(record["args"])
    except Exception:
        record.pop("args", None)
    return record


def _safe_text(exc: BaseException, render: Callable[[BaseException], str]) -> str:
    """User exceptions may fail to render (a __str__ that raises): an error
    must still be recorded, or its workflow would stay PENDING."""
    try:
        return render(exc)
    except Exception as failure:  # noqa: BLE001 - any failure to render
        return f"<{type(exc).__qualname__}: could not be rendered: {type(failure).__qualname__}>"


def dumps_error(exc: BaseException) -> str:
    return json.dumps(error_to_dict(exc), separators=(",", ":"))


def loads_error(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json.loads(text)


def rebuild_error(record: dict[str, Any], workflow_id: str = "") -> BaseException:
    """The stored error as an exception of its own type when that type can be
    imported and rebuilt from its arguments; WorkflowFailedError otherwise."""
    type_name = record.get("type", "Exception")
    module_name, _, qualname = type_name.rpartition(".")
    try:
        cls = _import_name(f"{module_name or 'builtins'}:{qualname}")
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(type_name)
        args = _decode(record["args"]) if "args" in record else [record.get("message", "")]
        exc = cls(*args)
    except Exception:
        exc = WorkflowFailedError(workflow_id, type_name, record.get("message", ""))
    notes = [f"original traceback:\n{record.get('traceback', '')}"]
    if sys.version_info >= (3, 11):
        exc.__notes__ = notes
    else:  # before 3.11 notes are a plain attribute (not shown in tracebacks)
        setattr(exc, "__notes__", notes)
    return exc


def outcome_error(workflow_id: str, status: str, error_text: str | None) -> BaseException:
    """The exception that awaiting a workflow which ended this way raises."""
    record = loads_error(error_text) or {}
    if status == Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED.value:
        return AwaitedWorkflowMaxRecoveryAttemptsExceededError(
            f"workflow {workflow_id!r} was quarantined: {record.get('message', '')}"
        )
    if status == Status.CANCELLED.value:
        if record.get("type", "").endswith("WorkflowTimeoutError"):
            return WorkflowTimeoutError(record.get("message", f"workflow {workflow_id!r} timed out"))
        return AwaitedWorkflowCancelledError(f"workflow {workflow_id!r} was cancelled")
    return rebuild_error(record, workflow_id)
