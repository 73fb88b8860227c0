"""Fixtures: real Postgres and Redis (started here unless the environment
names running ones), and one backend per store dialect.

A test that needs Postgres or Redis fails, never skips, when it cannot get
them: the fixtures raise.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text

from tests.harness import Backend
from tests.servers import Postgres, Redis


@pytest.fixture(scope="session")
def scratch_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="durable-tests-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(scratch_dir: Path) -> Iterator[Postgres | None]:
    if os.environ.get("DURABLE_TEST_PG_PORT"):
        yield None
        return
    server = Postgres(scratch_dir / "pg").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_port(postgres: Postgres | None) -> int:
    return postgres.port if postgres else int(os.environ["DURABLE_TEST_PG_PORT"])


def _pg_url(port: int, database: str) -> str:
    return f"postgresql+psycopg://durable@127.0.0.1:{port}/{database}"


@pytest.fixture(scope="session")
def create_pg_database(postgres_port: int):
    """Make a fresh database on the test server; returns its URL."""

    def create(prefix: str = "t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        engine = create_engine(_pg_url(postgres_port, "postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return _pg_url(postgres_port, name)

    return create


@pytest.fixture(scope="session")
def redis_server(scratch_dir: Path) -> Iterator[Redis | None]:
    if os.environ.get("DURABLE_TEST_REDIS_URL"):
        yield None
        return
    server = Redis(scratch_dir / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: Redis | None) -> str:
    return redis_server.url if redis_server else os.environ["DURABLE_TEST_REDIS_URL"]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path: Path) -> Backend:
    """The contract suite runs once per store dialect: SQLite with the embedded
    filesystem broker, and Postgres with Redis."""
    home = tmp_path / "home"
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite:///{home / 'durable.sqlite3'}", "filesystem://", home)
    database_url = request.getfixturevalue("create_pg_database")("contract")
    broker_url = request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/1"
    # tests run one at a time: an empty broker database keeps them apart
    import redis as redis_client

    redis_client.Redis.from_url(broker_url).flushdb()
    return Backend("postgres", database_url, broker_url, home)


@pytest.fixture
def effects_dir(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "effects"
    path.mkdir()
    monkeypatch.setenv("DURABLE_TEST_EFFECTS_DIR", str(path))
    return path
