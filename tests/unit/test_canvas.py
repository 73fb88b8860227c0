"""Existing Celery canvases made durable: the same results Celery gives,
each task a dispatched step whose result is checkpointed."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from durable import Status, metrics
from durable.local_links import LocalLinks

from .conftest import Cluster, SimulatedCrash


@pytest.fixture
def tasks(cluster: Cluster) -> dict[str, Any]:
    app: Celery = cluster.dur.celery
    app.conf.task_routes = {"img.resize": {"queue": "images"}}
    calls: list[str] = []

    @app.task(name="img.resize", shared=False)
    def resize(image_id: str, width: int) -> str:
        calls.append(f"resize {image_id}")
        return f"{image_id}@{width}"

    @app.task(name="img.upload", shared=False)
    def upload(path: str, bucket: str = "b") -> str:
        calls.append(f"upload {path}")
        return f"{bucket}/{path}"

    @app.task(name="img.notify", shared=False)
    def notify(message: str) -> str:
        calls.append(f"notify {message}")
        return message.upper()

    @app.task(name="img.combine", shared=False)
    def combine(parts: list[str]) -> str:
        calls.append("combine")
        return "+".join(parts)

    return {"resize": resize, "upload": upload, "notify": notify, "combine": combine, "calls": calls}


def _crashing_once(app: Celery, name: str) -> Any:
    """A task whose first run is killed with its process (SimulatedCrash)."""
    crashed: list[bool] = []

    @app.task(name=name, shared=False)
    def fragile(path: str) -> str:
        if not crashed:
            crashed.append(True)
            raise SimulatedCrash()
        return f"ok {path}"

    return fragile


def test_a_chain_passes_results_as_celery_does(cluster: Cluster, tasks: dict[str, Any]) -> None:
    dur = cluster.dur
    ended = metrics.WORKFLOWS_ENDED.labels("durable.canvas", "SUCCESS")
    ended_before = ended._value.get()
    handle = dur.chain(
        tasks["resize"].s("img-1", 128), tasks["upload"].s(bucket="thumbs"), tasks["notify"].si("done")
    ).start(workflow_id="img-1")
    # each task's end starts the next, the last one's ends the canvas: its workflow never runs
    assert cluster.drive() == ["executed"] * 3
    assert handle.workflow_id == "img-1"
    assert handle.result(timeout=0) == "DONE"  # .si(): the previous result is not passed
    assert [(s.name, s.child_workflow_id) for s in dur.list_steps("img-1")] == [
        ("start:durable.task:img.resize", "img-1-0")  # as the canvas workflow would have recorded
    ]
    assert ended._value.get() == ended_before + 1  # ended by its last task's execution
    assert tasks["calls"] == ["resize img-1", "upload img-1@128", "notify done"]
    assert cluster.status("img-1-0").queue == "images"  # Celery's routing for img.resize
    upload = cluster.status("img-1-0-1")
    assert upload.name == "durable.task:img.upload" and upload.queue == "celery"
    assert upload.parent_workflow_id == "img-1"


def test_a_static_chain_survives_a_lost_message_between_links(cluster: Cluster, tasks: dict[str, Any]) -> None:
    dur = cluster.dur
    handle = dur.chain(tasks["resize"].s("m", 1), tasks["upload"].s(), tasks["notify"].si("x")).start()
    dur.runner.execute(*cluster.dispatcher.pending.pop(0))  # the first link; the second link's message...
    assert len(cluster.dispatcher.pending) == 1
    cluster.dispatcher.pending.clear()  # ...is lost with the broker
    cluster.clock.advance(dur.settings.redelivery_seconds + 1)
    cluster.sweep()  # the row is the truth: the sweeper publishes the link again
    cluster.drive()
    assert handle.result(timeout=0) == "X"
    assert tasks["calls"] == ["resize m", "upload m@1", "notify x"]


def test_a_chain_started_through_its_workflow_ends_with_its_last_task(
    cluster: Cluster, tasks: dict[str, Any]
) -> None:
    dur = cluster.dur
    # a queue (it may be limited) starts the canvas workflow, which starts the first task
    handle = dur.chain(tasks["resize"].s("w", 4), tasks["upload"].s()).start(workflow_id="w", queue="canvases")
    assert cluster.drive() == ["executed"] * 3  # the canvas once, then each task; the last ends the canvas
    assert handle.result(timeout=0) == "b/w@4"
    assert [s.name for s in dur.list_steps("w")] == ["start:durable.task:img.resize"]


def test_a_chain_started_again_with_its_id_is_not_run_twice(cluster: Cluster, tasks: dict[str, Any]) -> None:
    dur = cluster.dur
    first = dur.chain(tasks["notify"].si("once")).start(workflow_id="once")
    again = dur.chain(tasks["notify"].si("twice")).start(workflow_id="once")
    assert again.workflow_id == first.workflow_id == "once"
    assert cluster.drive() == ["executed"]
    assert first.result(timeout=0) == "ONCE"
    assert tasks["calls"] == ["notify once"]


def test_a_last_task_ending_while_its_canvas_runs_wakes_it(cluster: Cluster, tasks: dict[str, Any]) -> None:
    """A last task that ends while its canvas is running (a stray message
    made it run) wakes the canvas instead of ending it; the canvas's
    suspension sees the wake-up, and its next execution ends it with the
    task's result."""
    dur = cluster.dur
    handle = dur.chain(tasks["notify"].si("a")).start(workflow_id="busy")
    now = cluster.clock.now_ms()
    claim = dur.store.claim("busy", "elsewhere:1", now, 60_000, name_hint="durable.canvas")
    assert claim is not None  # the canvas runs meanwhile
    # the task; its wake-up's message finds the canvas's lease held
    assert cluster.drive() == ["executed", "skipped"]
    assert handle.status().status is Status.PENDING
    redispatch = dur.store.suspend("busy", claim.epoch, None, now)
    assert isinstance(redispatch, int) and redispatch <= cluster.clock.now_ms()  # woken while it ran
    assert dur.runner.execute("busy", "durable.canvas") == "executed"
    assert handle.result(timeout=0) == "A"
    assert [s.name for s in dur.list_steps("busy")] == ["start:durable.task:img.notify", "durable.chain.result"]


def test_group_and_chord(cluster: Cluster, tasks: dict[str, Any]) -> None:
    dur = cluster.dur
    group = dur.group(*[tasks["resize"].s(i, 64) for i in ("a", "b", "c")]).start()
    chord = dur.chord([tasks["resize"].s(i, 32) for i in ("x", "y")], tasks["combine"].s()).start()
    cluster.drive()
    assert group.result(timeout=0) == ["a@64", "b@64", "c@64"]
    assert chord.result(timeout=0) == "x@32+y@32"


def test_a_canvas_nested_in_a_group_runs_as_a_child_canvas(cluster: Cluster, tasks: dict[str, Any]) -> None:
    from celery import chain

    dur = cluster.dur
    handle = dur.group(
        chain(tasks["resize"].s("p", 1), tasks["upload"].s()), tasks["notify"].s("side")
    ).start()
    cluster.drive()
    assert handle.result(timeout=0) == ["b/p@1", "SIDE"]


def test_a_crash_mid_chain_does_not_run_completed_tasks_again(cluster: Cluster, tasks: dict[str, Any]) -> None:
    dur = cluster.dur
    fragile = _crashing_once(dur.celery, "img.fragile")

    handle = dur.chain(tasks["resize"].s("z", 8), fragile.s()).start()
    cluster.drive()
    cluster.recover()
    assert handle.result(timeout=0) == "ok z@8"
    assert tasks["calls"] == ["resize z"]  # resize ran once, before and after the crash


def test_bad_canvases_are_refused_before_anything_is_written(cluster: Cluster, tasks: dict[str, Any]) -> None:
    dur = cluster.dur
    with pytest.raises(TypeError, match="signature"):
        dur.chain(tasks["resize"].s("a", 1), "not a task")
    with pytest.raises(ValueError, match="countdown"):
        dur.chain(tasks["resize"].s("a", 1).set(countdown=10))
    with pytest.raises(Exception, match="serializ"):
        dur.chain(tasks["resize"].s(object(), 1)).start()
    assert dur.list_workflows() == []


def test_a_failing_task_fails_the_canvas_with_its_error(cluster: Cluster, tasks: dict[str, Any]) -> None:
    dur = cluster.dur

    @dur.celery.task(name="img.broken", shared=False)
    def broken(path: str) -> None:
        raise ValueError(f"cannot read {path}")

    handle = dur.chain(tasks["resize"].s("q", 2), broken.s(), tasks["notify"].si("never")).start()
    cluster.drive()
    with pytest.raises(ValueError, match="cannot read q@2"):
        handle.result(timeout=0)
    assert handle.status().status is Status.ERROR
    assert "notify never" not in tasks["calls"]


def _run_links_here(cluster: Cluster, queues: list[str], watched: list[bool] | None = None) -> None:
    """What a worker consuming `queues` sets (pool_watch.py), task events
    watched while `watched` holds True."""
    flags = watched if watched is not None else []
    cluster.dur.runner.local_links = LocalLinks(cluster.dur.celery, queues, lambda: any(flags))


def test_a_worker_runs_the_links_that_follow_on_queues_it_consumes(
    cluster: Cluster, tasks: dict[str, Any]
) -> None:
    dur = cluster.dur
    _run_links_here(cluster, ["celery"])
    handle = dur.chain(
        tasks["resize"].s("p", 1), tasks["upload"].s(), tasks["notify"].si("n"),  # images, celery, celery
        tasks["resize"].si("r", 2), tasks["upload"].s(),  # images, celery
    ).start(workflow_id="local")
    first = cluster.dispatcher.pending[0][0]
    # two messages: each link on "images" (not consumed here); each on "celery" ran in the delivery before
    assert cluster.drive() == ["executed", "executed"]
    assert handle.result(timeout=0) == "b/r@2"
    assert tasks["calls"] == ["resize p", "upload p@1", "notify n", "resize r", "upload r@2"]
    assert cluster.dispatcher.published == [first, "local-0-3"]
    links = [cluster.status(wid) for wid in ["local-0", "local-0-1", "local-0-2", "local-0-3", "local-0-4"]]
    assert [link.status for link in links] == [Status.SUCCESS] * 5
    assert len({link.executor for link in links}) == 1  # this process claimed each


def test_links_are_published_while_task_events_are_watched(cluster: Cluster, tasks: dict[str, Any]) -> None:
    dur = cluster.dur
    watched = [True]  # Flower turned task events on: each link shows as a task of its own
    _run_links_here(cluster, ["celery", "images"], watched)
    handle = dur.chain(tasks["resize"].s("w", 1), tasks["upload"].s(), tasks["notify"].si("x")).start()
    assert cluster.drive() == ["executed"] * 3
    assert handle.result(timeout=0) == "X"
    watched[0] = False
    handle = dur.chain(tasks["resize"].s("w", 1), tasks["upload"].s(), tasks["notify"].si("y")).start()
    assert cluster.drive() == ["executed"]
    assert handle.result(timeout=0) == "Y"


def test_a_task_with_a_time_limit_keeps_its_own_message(cluster: Cluster, tasks: dict[str, Any]) -> None:
    dur = cluster.dur
    app: Celery = dur.celery

    @app.task(name="img.slow", shared=False, time_limit=30)
    def slow(path: str) -> str:
        return f"slow {path}"

    _run_links_here(cluster, ["celery", "images"])
    handle = dur.chain(tasks["resize"].s("t", 1), slow.s(), tasks["notify"].si("z")).start()
    # Celery's time limit applies per message: slow's link is published, and runs
    # the link after it in its own delivery (limits of the carrier apply to it)
    assert cluster.drive() == ["executed", "executed", "executed"]
    assert handle.result(timeout=0) == "Z"


def test_a_crash_in_a_link_run_here_is_recovered_from_its_row(cluster: Cluster, tasks: dict[str, Any]) -> None:
    dur = cluster.dur
    fragile = _crashing_once(dur.celery, "img.fragile2")

    _run_links_here(cluster, ["celery", "images"])
    handle = dur.chain(tasks["resize"].s("c", 3), fragile.s(), tasks["notify"].si("done")).start(
        workflow_id="crash"
    )
    assert cluster.drive() == ["crashed"]
    assert cluster.dispatcher.pending == []  # the next link was never published: its row is the truth
    assert cluster.recover() == ["executed"]
    assert handle.result(timeout=0) == "DONE"
    assert tasks["calls"] == ["resize c", "notify done"]
    link = cluster.status("crash-0-1")
    assert link.recovery_attempts == 1


def test_a_chain_task_that_calls_self_retry_is_retried_as_celery_would(cluster: Cluster, tasks: dict[str, Any]) -> None:
    app: Celery = cluster.dur.celery
    attempts: list[int] = []

    @app.task(name="img.flaky_store", bind=True, max_retries=5, shared=False)
    def flaky_store(self: Any, path: str) -> str:
        attempts.append(self.request.retries)
        if len(attempts) < 3:
            raise self.retry(countdown=0.01)
        return f"stored {path}"

    handle = cluster.dur.chain(tasks["resize"].s("r", 8), flaky_store.s()).start()
    cluster.drive()
    assert handle.result(timeout=0) == "stored r@8"
    assert attempts == [0, 1, 2]


def test_a_durable_canvas_is_started_and_awaited_with_celerys_names(cluster: Cluster, tasks: dict[str, Any]) -> None:
    """Code written against a Celery chain keeps its calls once `chain(` is
    `dur.chain(`: `apply_async(task_id=..., countdown=...)` or `delay()`
    start it, and the handle answers `get()`, `id`, `state`, `ready()`."""
    dur = cluster.dur
    handle = dur.chain(tasks["resize"].s("p", 2), tasks["notify"].si("ok")).apply_async(task_id="celery-style")
    assert handle.id == "celery-style" and not handle.ready()
    assert handle.state == "STARTED"  # the canvas waits on its first task (enqueued alone: PENDING)
    cluster.drive()
    assert handle.get(timeout=0) == "OK"
    assert handle.state == "SUCCESS" and handle.ready() and handle.successful() and not handle.failed()

    delayed = dur.chain(tasks["notify"].si("later")).apply_async(countdown=30)
    assert cluster.drive() == [] and delayed.state == "PENDING"  # a database timer, not yet due
    cluster.clock.advance(31)
    cluster.sweep()
    cluster.drive()
    assert delayed.get(timeout=0) == "LATER"
    assert dur.chain(tasks["notify"].si("d")).delay().id  # started, with a new ID

    @cluster.dur.celery.task(name="img.broken", shared=False)
    def broken() -> None:
        raise ValueError("no image")

    failing = dur.chain(broken.si()).apply_async()
    cluster.drive()
    assert failing.state == "FAILURE" and failing.failed() and failing.ready()
    error = failing.get(timeout=0, propagate=False)
    assert isinstance(error, ValueError) and "no image" in str(error)
    with pytest.raises(ValueError, match="no image"):
        failing.get(timeout=0)


def test_celery_options_durable_does_not_run_are_refused_at_apply_async(cluster: Cluster, tasks: dict[str, Any]) -> None:
    canvas = cluster.dur.chain(tasks["notify"].si("x"))
    with pytest.raises(TypeError, match="first signature"):
        canvas.apply_async(args=("extra",))
    with pytest.raises(TypeError, match="expires"):
        canvas.apply_async(expires=60)
    with pytest.raises(ValueError, match="link"):
        cluster.dur.chain(tasks["notify"].si("x").set(link=tasks["notify"].si("next")))
    assert cluster.dur.list_workflows() == []  # nothing written


@pytest.fixture
def errbacks(cluster: Cluster, tasks: dict[str, Any]) -> dict[str, Any]:
    """A task that fails, and errbacks in Celery's two conventions."""
    app: Celery = cluster.dur.celery
    called: list[tuple[str, Any]] = []

    @app.task(name="img.corrupt", shared=False)
    def corrupt(path: str) -> str:
        raise ValueError(f"{path} is corrupt")

    @app.task(name="img.report_id", shared=False)
    def report_id(task_id: str, *, label: str = "") -> None:  # old style: one positional, the failed task's ID
        called.append(("id", (task_id, label)))

    @app.task(name="img.report_request", shared=False)
    def report_request(request: Any, exc: BaseException, traceback: Any) -> None:  # new style
        called.append(("request", (request.id, request.task, list(request.args), repr(exc))))

    return {"corrupt": corrupt, "report_id": report_id, "report_request": report_request, "called": called}


def test_a_failed_chain_task_calls_its_error_callbacks_as_celery_does(
    cluster: Cluster, tasks: dict[str, Any], errbacks: dict[str, Any]
) -> None:
    """`link_error` / `on_error`: a chain's errback is called for the task
    that failed, in either of Celery's conventions, once, and the chain
    still ends with the task's error; a chain that succeeds calls none."""
    from celery import chain as celery_chain

    dur = cluster.dur
    ok = dur.chain(tasks["resize"].s("fine", 1), tasks["notify"].si("x")).on_error(errbacks["report_id"].s())
    handle = ok.start(workflow_id="fine")
    cluster.drive()
    assert handle.result(timeout=0) == "X" and errbacks["called"] == []

    celery_style = celery_chain(
        tasks["resize"].s("bad", 2), errbacks["corrupt"].s(), tasks["notify"].si("never")
    ).on_error(errbacks["report_id"].s(label="chain"))
    failed = dur.chain(celery_style).on_error(errbacks["report_request"].s()).start(workflow_id="bad")
    cluster.drive()
    with pytest.raises(ValueError, match="bad@2 is corrupt"):
        failed.result(timeout=0)
    corrupt_id = "bad-0-1"  # the chain's second link
    assert cluster.status(corrupt_id).status is Status.ERROR
    assert errbacks["called"] == [
        ("id", (corrupt_id, "chain")),
        ("request", (corrupt_id, "img.corrupt", ["bad@2"], "ValueError('bad@2 is corrupt')")),
    ]
    assert "notify never" not in tasks["calls"]
    cluster.recover()  # the canvas replays: each errback is a recorded step, not called again
    assert len(errbacks["called"]) == 2


def test_a_single_task_canvas_calls_its_error_callback(
    cluster: Cluster, errbacks: dict[str, Any]
) -> None:
    handle = cluster.dur.chain(errbacks["corrupt"].si("one").on_error(errbacks["report_id"].si("fixed"))).start()
    cluster.drive()
    with pytest.raises(ValueError, match="one is corrupt"):
        handle.result(timeout=0)
    assert errbacks["called"] == [("id", ("fixed", ""))]  # .si(): its own arguments only, as in Celery
    again = cluster.dur.chain(errbacks["corrupt"].si("two")).apply_async(link_error=errbacks["report_id"].s())
    cluster.drive()
    with pytest.raises(ValueError, match="two is corrupt"):
        again.get(timeout=0)
    assert errbacks["called"][-1] == ("id", (f"{again.id}-0", ""))  # Celery's apply_async(link_error=...)



def test_a_task_before_a_group_calls_its_error_callback(
    cluster: Cluster, tasks: dict[str, Any], errbacks: dict[str, Any]
) -> None:
    """A chain with a group in it is walked by the canvas workflow (not a
    static chain): its failing task's errback is called the same way."""
    from celery import group as celery_group

    handle = cluster.dur.chain(
        errbacks["corrupt"].si("dyn").on_error(errbacks["report_request"].s()),
        celery_group(tasks["notify"].si("a"), tasks["notify"].si("b")),
    ).start(workflow_id="dyn")
    cluster.drive()
    with pytest.raises(ValueError, match="dyn is corrupt"):
        handle.result(timeout=0)
    [(kind, (failed_id, name, args, error))] = errbacks["called"]
    assert (kind, name, args) == ("request", "img.corrupt", ["dyn"]) and failed_id.startswith("dyn-")
    assert "notify a" not in tasks["calls"]


def test_error_callbacks_in_a_group_are_refused_before_anything_is_written(
    cluster: Cluster, tasks: dict[str, Any], errbacks: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="link_error in a group"):
        cluster.dur.group(errbacks["corrupt"].s("g").on_error(errbacks["report_id"].s()), tasks["notify"].s("y"))
    with pytest.raises(ValueError, match="on_error of a group"):
        cluster.dur.group(tasks["notify"].s("y")).on_error(errbacks["report_id"].s())
    assert cluster.dur.list_workflows() == []
