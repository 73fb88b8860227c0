"""The unit-test layer: the engine against SQLite, with a clock the test
drives and a dispatcher that records what would be published. No server,
no worker process, no real waiting: a test advances time by hand.

`Cluster.drive()` plays the broker and the workers: it executes every
published workflow until nothing is left to run. `Cluster.sweep()` is one
recovery sweep at the current (fake) time.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from durable import Durable, Settings
from durable.database import Database
from durable.recovery import sweep_once

START_MS = 1_800_000_000_000


class FakeClock:
    def __init__(self, start_ms: int = START_MS):
        self.ms = start_ms
        self.mono = 1000.0
        self.sleeps: list[float] = []

    def now_ms(self) -> int:
        return self.ms

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.ms += int(round(seconds * 1000))
        self.mono += seconds


class RecordingDispatcher:
    """Publishes into a list instead of a broker."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, str]] = []
        self.published: list[str] = []
        self.queues: list[tuple[str, str]] = []  # (workflow_id, queue) of every publish
        self.last_queue: dict[str, str] = {}  # the queue a message came from, as a worker sees it

    def publish(self, workflow_id: str, name: str, queue: str, priority: int = 0) -> bool:
        self.pending.append((workflow_id, name))
        self.published.append(workflow_id)
        self.queues.append((workflow_id, queue))
        self.last_queue[workflow_id] = queue
        return True


class SimulatedCrash(BaseException):
    """What a SIGKILL looks like from inside: nothing after it runs, no
    checkpoint, the lease stays held until it expires."""


class Cluster:
    """One Durable app run in this process on a fake clock, its messages
    recorded instead of published: `drive()` delivers them in order."""

    @classmethod
    def on(cls, database_url: str, home: Path) -> "Cluster":
        """A cluster on an existing database (migrated here), e.g. a real Postgres."""
        Database(database_url).migrate()
        clock = FakeClock()
        dispatcher = RecordingDispatcher()
        dur = Durable(settings=Settings(home=str(home), database_url=database_url), clock=clock, dispatcher=dispatcher)
        return cls(dur, clock, dispatcher)

    def __init__(self, dur: Durable, clock: FakeClock, dispatcher: RecordingDispatcher):
        self.dur = dur
        self.clock = clock
        self.dispatcher = dispatcher
        self.crashes = 0

    def drive(self, max_messages: int = 100) -> list[str]:
        """Run every published message, and those they publish, in order.
        A SimulatedCrash ends that message's execution as a kill would."""
        outcomes = []
        for _ in range(max_messages):
            if not self.dispatcher.pending:
                return outcomes
            workflow_id, name = self.dispatcher.pending.pop(0)
            try:
                delivered_on = self.dispatcher.last_queue.get(workflow_id)
                outcomes.append(self.dur.runner.deliver(workflow_id, name, delivered_on).kind)
            except SimulatedCrash:
                self.crashes += 1
                outcomes.append("crashed")
        raise AssertionError(f"still publishing after {max_messages} messages")

    def sweep(self) -> int:
        return sweep_once(self.dur.store, self.dispatcher, self.dur.settings, self.clock.now_ms())

    def recover(self) -> list[str]:
        """A lost execution's lease runs out, a sweep notices, a worker runs it."""
        self.clock.advance(self.dur.settings.lease_seconds + 0.001)
        self.sweep()
        return self.drive()

    def status(self, workflow_id: str) -> Any:
        return self.dur.get(workflow_id)

    def steps(self, workflow_id: str) -> list[Any]:
        return self.dur.list_steps(workflow_id)


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file; each test gets a copy (migrating takes longer
    than the test)."""
    path = tmp_path_factory.mktemp("template") / "durable.sqlite3"
    Database(f"sqlite:///{path}").migrate()
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cluster(tmp_path: Path, migrated_template: Path, clock: FakeClock) -> Iterator[Cluster]:
    db_path = tmp_path / "durable.sqlite3"
    shutil.copy(migrated_template, db_path)
    dispatcher = RecordingDispatcher()
    settings = Settings(home=str(tmp_path), database_url=f"sqlite:///{db_path}")
    dur = Durable(settings=settings, clock=clock, dispatcher=dispatcher)
    yield Cluster(dur, clock, dispatcher)
    dur.store.db.dispose()
