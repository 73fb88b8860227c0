"""Fixtures: real Postgres, Redis and RabbitMQ (started here unless the
environment names running ones), and one backend per store dialect, plus
Postgres with RabbitMQ for the tests that ask for it.

A test that needs Postgres, Redis or RabbitMQ fails, never skips, when it
cannot get them: the fixtures raise.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest
from sqlalchemy import create_engine, text

from durable import DurableClient
from tests.harness import FAST_RECOVERY, Backend, Worker
from tests.servers import THROWAWAY, Postgres, RabbitMQ, Redis

Server = TypeVar("Server", Postgres, Redis, RabbitMQ)

# Every test makes fresh databases and lets its processes (workers included:
# they inherit this environment) create durable's tables on first use.
# Postgres has that off by default (`durable migrate` runs once);
# tests/test_schema_setting.py clears this to test the defaults.
os.environ.setdefault("DURABLE_AUTO_MIGRATE", "1")


@pytest.fixture(scope="session")
def scratch_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="durable-tests-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _own_server(server: Server, running_one: str) -> Iterator[Server | None]:
    """Starts `server` and stops it at the end, unless the environment
    variable `running_one` names a server already running."""
    if os.environ.get(running_one):
        yield None
        return
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres(scratch_dir: Path) -> Iterator[Postgres | None]:
    yield from _own_server(Postgres(scratch_dir / "pg", settings=THROWAWAY), "DURABLE_TEST_PG_PORT")


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
    yield from _own_server(Redis(scratch_dir / "redis"), "DURABLE_TEST_REDIS_URL")


@pytest.fixture(scope="session")
def redis_url(redis_server: Redis | None) -> str:
    return redis_server.url if redis_server else os.environ["DURABLE_TEST_REDIS_URL"]


@pytest.fixture(scope="session")
def rabbitmq_server(scratch_dir: Path) -> Iterator[RabbitMQ | None]:
    """Started by the first test that needs it in this pytest process."""
    yield from _own_server(RabbitMQ(scratch_dir / "rabbitmq"), "DURABLE_TEST_RABBITMQ_URL")


@pytest.fixture(scope="session")
def rabbitmq_url(rabbitmq_server: RabbitMQ | None) -> str:
    return rabbitmq_server.url if rabbitmq_server else os.environ["DURABLE_TEST_RABBITMQ_URL"]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path: Path) -> Backend:
    """Tests that take a backend run once per store dialect: SQLite with the
    embedded filesystem broker, and Postgres with Redis. A module that needs
    Postgres overrides it with a `backend` fixture returning `pg_backend`;
    one parametrized with "rabbitmq" (indirect) runs on Postgres with RabbitMQ."""
    if request.param == "sqlite":
        home = tmp_path / "home"
        return Backend("sqlite", f"sqlite:///{home / 'durable.sqlite3'}", "filesystem://", home)
    if request.param == "rabbitmq":
        return request.getfixturevalue("rabbitmq_backend")
    return request.getfixturevalue("pg_backend")


def _broker_db() -> int:
    """The Redis database this pytest process's workers use as their broker.
    Each pytest-xdist worker (gw0, gw1, ...) starts its own Redis, unless
    DURABLE_TEST_REDIS_URL names a shared one: then each takes its own
    database in it, so no worker flushes or consumes another's messages."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    if index > 14:
        raise RuntimeError(f"xdist worker {worker}: Redis has databases 1-15 only; run fewer workers (-n)")
    return 1 + index


@pytest.fixture
def pg_backend(request, create_pg_database, redis_url: str, tmp_path: Path) -> Backend:
    """A fresh Postgres database, named after the test module, and an empty
    Redis database as the broker: tests run one at a time in each pytest
    process, and each process has its own Redis database, so that keeps them apart."""
    import redis as redis_client

    broker_url = redis_url.rsplit("/", 1)[0] + f"/{_broker_db()}"
    redis_client.Redis.from_url(broker_url).flushdb()
    suite = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    return Backend("postgres", create_pg_database(suite), broker_url, tmp_path / "home")


@pytest.fixture
def rabbitmq_backend(request, create_pg_database, rabbitmq_url: str, tmp_path: Path) -> Backend:
    """A fresh Postgres database and RabbitMQ as the broker, its default
    queue emptied first (one test at a time per pytest process, and each
    process has its own RabbitMQ unless DURABLE_TEST_RABBITMQ_URL names one)."""
    from kombu import Connection

    with Connection(rabbitmq_url, connect_timeout=10) as conn:
        channel = conn.channel()
        try:
            channel.queue_purge("celery")
        except conn.channel_errors:  # not declared yet: nothing in it
            pass
    suite = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    return Backend("rabbitmq", create_pg_database(suite), rabbitmq_url, tmp_path / "home")


@pytest.fixture
def client(backend: Backend) -> DurableClient:
    """A client in the test process, republishing lost messages as soon as the workers do."""
    return backend.client(redelivery_seconds=float(FAST_RECOVERY["DURABLE_REDELIVERY_SECONDS"]))


@pytest.fixture
def start_worker(backend: Backend, effects_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Starts a worker on the test's backend (keywords: environment overrides)
    and waits until it is ready; every worker started is stopped at the end."""
    started: list[Worker] = []

    def start(concurrency: int = 2, **env: str) -> Worker:
        worker = Worker(backend.env(effects_dir, **env), tmp_path / f"worker{len(started)}.log",
                        concurrency=concurrency)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        # SIGKILL: the test is over, and a warm shutdown costs 5-15 s on the
        # embedded broker (Celery's synchronous loop and pool threads wind down)
        worker.kill_all()


@pytest.fixture
def effects_dir(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "effects"
    path.mkdir()
    monkeypatch.setenv("DURABLE_TEST_EFFECTS_DIR", str(path))
    return path
