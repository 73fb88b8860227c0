"""Bad input and a bad environment give a clear error, and nothing is left
half-done: an error that cannot be rendered, a database that is down at
start, a home folder that does not exist yet."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg.errors as pg
import pytest

from durable import Durable, Settings, Status
from durable.database import Database
from durable.db_errors import DbErrorKind, classify
from durable.errors import DatabaseUnavailableError

from .conftest import Cluster, FakeClock, RecordingDispatcher


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")


def test_an_error_that_cannot_be_rendered_still_ends_the_workflow(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.workflow()
    def raises_unprintable() -> None:
        raise Unprintable()

    handle = raises_unprintable.start()
    cluster.drive()
    status = cluster.status(handle.workflow_id)
    assert status.status == Status.ERROR  # not PENDING behind a live lease
    assert status.error is not None and "could not be rendered" in status.error.message


def test_start_with_the_database_down_is_a_durable_error(tmp_path: Path, clock: FakeClock) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here
    dur = Durable(
        settings=Settings(home=str(tmp_path), database_url=f"postgresql+psycopg://x@127.0.0.1:{port}/none"),
        clock=clock, dispatcher=RecordingDispatcher(),
    )

    @dur.workflow()
    def never_starts() -> None:
        pass

    with pytest.raises(DatabaseUnavailableError, match="never_starts.*unavailable"):
        never_starts.start()
    assert 5 <= sum(clock.sleeps) < 8  # waited a few seconds for a restart, then said so
    assert dur.dispatcher.published == []  # type: ignore[attr-defined]


def test_a_fresh_home_folder_is_created_before_its_migration_lock(tmp_path: Path) -> None:
    path = tmp_path / "not" / "there" / "yet" / "durable.sqlite3"
    assert Database(f"sqlite:///{path}").migrate() == Database.head_revision()


@pytest.mark.parametrize("error", [
    pg.InvalidPassword("password authentication failed"),
    pg.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),
    pg.DiskFull("could not extend file"),
    pg.InsufficientPrivilege("permission denied"),
])
def test_errors_that_waiting_will_not_fix_are_not_unavailable(error: Exception) -> None:
    assert classify(error) is DbErrorKind.OTHER
