"""`durable worker` starts with the garbage collector paused (its imports
trigger ~0.2 s of collections) and resumes it once the worker is built,
before the pool forks: what exists then is frozen. It resumes also when
the worker never gets that far."""

from __future__ import annotations

import gc
from typing import Iterator

import pytest
from celery.signals import celeryd_after_setup

from durable.worker_command import collector_paused_until_built


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    yield
    gc.unfreeze()
    gc.enable()


def test_paused_while_the_worker_is_built_frozen_and_resumed_before_it_starts() -> None:
    with collector_paused_until_built() as resume_once_built:
        assert not gc.isenabled()
        resume_once_built()
        assert not gc.isenabled()
        frozen_before = gc.get_freeze_count()
        celeryd_after_setup.send(sender="w@host", instance=None, conf=None)
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen_before
    gc.disable()
    celeryd_after_setup.send(sender="w2@host", instance=None, conf=None)  # disconnected: stays paused
    assert not gc.isenabled()


def test_resumed_when_the_worker_stops_before_it_is_built() -> None:
    with pytest.raises(RuntimeError):
        with collector_paused_until_built() as resume_once_built:
            resume_once_built()
            raise RuntimeError("the app failed to load")
    assert gc.isenabled()


def test_a_collector_paused_by_someone_else_stays_paused() -> None:
    gc.disable()
    with collector_paused_until_built() as resume_once_built:
        resume_once_built()
        celeryd_after_setup.send(sender="w@host", instance=None, conf=None)
        assert not gc.isenabled()
    assert not gc.isenabled()
