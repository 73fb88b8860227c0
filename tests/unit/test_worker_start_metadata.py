"""`durable worker` reads installed packages' metadata once while it starts
(kombu and Celery scan every distribution's entry points several times,
redis-py reads its version for every client), until the worker is ready
or a pool child starts; the answers are the same as without."""

from __future__ import annotations

import importlib.metadata

import pytest
from celery.signals import worker_process_init, worker_ready

from durable.worker_command import package_metadata_read_once

REAL_VERSION, REAL_ENTRY_POINTS = importlib.metadata.version, importlib.metadata.entry_points


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What importlib.metadata reads from the installed distributions."""
    read: list[str] = []
    distributions, from_name = importlib.metadata.distributions, importlib.metadata.Distribution.from_name
    monkeypatch.setattr(importlib.metadata, "distributions",
                        lambda **kw: read.append("entry points") or distributions(**kw))
    monkeypatch.setattr(importlib.metadata.Distribution, "from_name",
                        classmethod(lambda cls, name: read.append(name) or from_name(name)))
    return read


def test_read_once_while_the_worker_starts_with_the_same_answers(scans: list[str]) -> None:
    expected_scripts = list(REAL_ENTRY_POINTS(group="console_scripts"))
    expected_version = REAL_VERSION("celery")
    scans.clear()
    with package_metadata_read_once():
        for _ in range(3):
            assert list(importlib.metadata.entry_points(group="console_scripts")) == expected_scripts
            assert importlib.metadata.version("celery") == expected_version
        assert list(importlib.metadata.entry_points(group="no-such-group")) == []
        with pytest.raises(importlib.metadata.PackageNotFoundError):
            importlib.metadata.version("no-such-distribution-here")
    assert scans == ["entry points", "celery", "no-such-distribution-here"]
    assert (importlib.metadata.version, importlib.metadata.entry_points) == (REAL_VERSION, REAL_ENTRY_POINTS)


@pytest.mark.parametrize("signal", [worker_ready, worker_process_init], ids=["worker ready", "pool child"])
def test_read_again_once_the_worker_is_ready_and_in_its_pool_children(scans: list[str], signal) -> None:
    with package_metadata_read_once() as forget_once_ready:
        version = importlib.metadata.version  # as a module that imported it by name keeps it
        forget_once_ready()
        version("celery")
        signal.send(sender=None)
        assert importlib.metadata.version is REAL_VERSION
        version("celery")
        assert scans == ["celery", "celery"]
    signal.send(sender=None)  # disconnected at the end: nothing happens


def test_ended_when_the_worker_stops_before_it_is_ready() -> None:
    with pytest.raises(RuntimeError):
        with package_metadata_read_once():
            raise RuntimeError("no app")
    assert (importlib.metadata.version, importlib.metadata.entry_points) == (REAL_VERSION, REAL_ENTRY_POINTS)
