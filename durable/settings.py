"""One settings object, read once from the environment (DURABLE_*).

With nothing set, durable runs on the embedded default: a SQLite file and a
filesystem broker under `DURABLE_HOME` (./.durable), no server to install.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

EMBEDDED_BROKER = "filesystem://"


@dataclass(frozen=True)
class Settings:
    home: str = ".durable"
    database_url: str = ""  # "" → SQLite file under home
    app_database_url: str = ""  # "" → the system database
    broker_url: str = ""  # "" → filesystem broker under home
    default_queue: str = "celery"
    # A live execution's lease is renewed every lease_seconds / 3 (by the
    # worker's main process on a prefork pool); a lease not renewed for
    # lease_seconds marks the execution lost.
    lease_seconds: float = 5.0
    # Where the lease is renewed from the execution's own process (threads
    # or solo pool), a C call holding the GIL stops the renewal: the lease
    # there is at least this long.
    in_process_lease_seconds: float = 60.0
    sweep_interval_seconds: float = 1.0
    # An unleased runnable workflow not picked up this long after its message
    # was published gets published again (a lost or flushed broker message).
    redelivery_seconds: float = 10.0
    # ... and again after as long as it has waited, up to this: a broker
    # backlog is not flooded with duplicates, a flushed message not forgotten.
    redelivery_max_seconds: float = 60.0
    max_recovery_attempts: int = 10
    # A worker that consumes the next link's queue of a static chain runs it
    # in the delivery of the link before (runner.py); off: every link is a
    # message of its own.
    local_chain_links: bool = True
    # Sleeps and retry back-offs up to this long wait in the worker; longer
    # ones suspend the workflow and free the worker slot.
    inline_wait_max_seconds: float = 2.0
    # A workflow's inputs, a step's output or a message larger than this is
    # refused with SerializationError: rows stay small enough to list and load.
    max_payload_bytes: int = 8 * 1024 * 1024
    app_version: str = ""
    imports: tuple[str, ...] = field(default_factory=tuple)
    sql_echo: bool = False
    # Create or upgrade durable's tables on a process's first use of the
    # database. None: on for SQLite (the embedded default), off for Postgres,
    # where `durable migrate` runs once (DDL rights, and a session lock that
    # pgbouncer's transaction pooling breaks); a process then only checks
    # that the schema is the one its code expects.
    auto_migrate: bool | None = None
    # A migration waits this long for its lock (another process migrating, a
    # long transaction on durable's tables), then fails saying so.
    migration_lock_timeout_seconds: float = 60.0
    # Delete ended workflows (with their steps, messages, events and
    # transaction outputs) this long after they ended, e.g. "30d", "12h";
    # "": keep them. The sweepers delete in small batches.
    retention: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"DURABLE_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).validated()

    def validated(self) -> "Settings":
        if self.lease_seconds <= 0 or self.sweep_interval_seconds <= 0:
            raise ValueError("lease_seconds and sweep_interval_seconds must be > 0")
        if self.max_payload_bytes <= 0:
            raise ValueError("max_payload_bytes must be > 0")
        if not self.migration_lock_timeout_seconds > 0:
            raise ValueError("migration_lock_timeout_seconds must be > 0")
        if self.max_recovery_attempts < 0:
            raise ValueError("max_recovery_attempts must be >= 0")
        if self.retention:
            parse_duration(self.retention, "DURABLE_RETENTION")
        return self

    @property
    def retention_seconds(self) -> float | None:
        return parse_duration(self.retention, "DURABLE_RETENTION") if self.retention else None

    def with_overrides(self, **overrides: Any) -> "Settings":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None}).validated()

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home_path / 'durable.sqlite3'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or EMBEDDED_BROKER

    @property
    def is_embedded_broker(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem://")

    def broker_transport_options(self) -> dict[str, Any]:
        if not self.is_embedded_broker:
            return {}
        queue_dir = self.home_path / "broker"
        control_dir = queue_dir / "control"  # kombu's default is ./control
        control_dir.mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            "control_folder": str(control_dir),
            "polling_interval": 0.1,
        }


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds of a duration such as "90s", "15m", "12h", "30d" or "2w"."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"{what} must be a positive duration like '30d', '12h', '15m' or '90s', got {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _parse(name: str, annotation: object, raw: str) -> Any:
    kind = str(annotation)
    try:
        if kind == "float":
            return float(raw)
        if kind == "int":
            return int(raw)
        if kind in ("bool", "bool | None"):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if kind.startswith("tuple"):
            return tuple(p.strip() for p in raw.split(",") if p.strip())
    except ValueError as exc:
        raise ValueError(f"DURABLE_{name.upper()}={raw!r}: {exc}") from exc
    return raw
