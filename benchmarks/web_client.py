"""The web-app client (issue 13): how soon a result wait wakes, and what an
enqueue costs, against Celery's `apply_async` in the same run.

    .venv/bin/python -m benchmarks.web_client            # ~1 minute
    .venv/bin/python -m benchmarks.web_client --waits 100 --enqueues 300
    .venv/bin/python -m benchmarks.web_client --notify-cost 400   # + the end trigger's cost

Starts its own Postgres and Redis on loopback and one durable worker
(prefork, 2 children); every process it starts is stopped by its PID.

- wake: `n` workflows of one no-op step, one at a time: enqueue, then
  `handle.result()`. The figure is the time from the workflow's end
  (`completed_at_ms`, written by the worker with the same host's clock)
  to `result()` returning, in ms. Measured with the LISTEN/NOTIFY wait and,
  for contrast, with the notification ignored (backed-off polling, as on
  SQLite).
- enqueue: p50/p99 of `n` calls each, interleaved (A B C ..., then again),
  no worker consuming meanwhile, each call timed alone (durable's thread
  that publishes after a start has returned is idle when each call begins): `wf.start()` (a `Durable` app in this
  process), `DurableClient.enqueue()`, `await client.enqueue_async()` (on
  one event loop, timed inside it), `enqueue(..., transaction=session)`
  timed alone inside a SQLAlchemy Session's open transaction (which the
  request has anyway, for its own write), and Celery's
  `task.apply_async()` of a no-op task on the same Redis (with
  `ignore_result=True`, and as Celery is mostly run, with a Redis result
  backend); and, for scale,
  durable's INSERT statement alone through psycopg (the one commit a start
  waits for), and the same with its commit not waiting for the disk (what
  the WAL flush costs; durable never starts that way), and awaited on a
  psycopg AsyncConnection (what the event loop's wait adds). Then a request's
  whole write both ways: an order row and its workflow in one transaction,
  against the order committed and then `apply_async()` (what
  `transaction.on_commit` does).
- concurrent: `--concurrency` threads (default 4) each make calls back to
  back, as a threaded web server's requests do: `start()`, `enqueue()` and
  `apply_async()` (ignore_result), per-call p50/p99, alternating rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.run import QuietWorker, pct  # noqa: E402
from tests.servers import Postgres, Redis  # noqa: E402


def _summary(values: list[float]) -> str:
    return f"p50 {pct(values, 0.5):8.2f}  p99 {pct(values, 0.99):8.2f}  (n={len(values)})"


def wake(client: Any, sql: Any, n: int, notify: bool) -> list[float]:
    if not notify:
        client.ended_listener = lambda: None  # as on SQLite: backed-off polling
    figures = []
    for _ in range(n):
        handle = client.enqueue("bench.steps", args=[1])
        handle.result(timeout=60)
        returned_ms = time.time() * 1000
        (completed_ms,) = sql.execute(
            "SELECT completed_at_ms FROM durable_workflows WHERE workflow_id = %s", (handle.workflow_id,)
        ).fetchone()
        figures.append(returned_ms - completed_ms)
    if not notify:
        del client.ended_listener
    return figures


def notify_cost(client: Any, sql: Any, n: int, rounds: int) -> dict[str, list[float]]:
    """Workflows per second with the end's NOTIFY trigger on and off
    (alternating rounds): `n` workflows of 10 no-op steps enqueued at once,
    first enqueue to last completion."""
    figures: dict[str, list[float]] = {"trigger on": [], "trigger off": []}
    for r in range(rounds * 2):
        on = (r % 2 == 0) if (r // 2) % 2 == 0 else (r % 2 == 1)
        verb = "ENABLE" if on else "DISABLE"
        sql.execute(f"ALTER TABLE durable_workflows {verb} TRIGGER durable_workflow_ended")
        prefix = f"nc{r}-"
        started = time.time() * 1000
        for i in range(n):
            client.enqueue("bench.steps", args=[10], workflow_id=f"{prefix}{i}")
        while True:
            done, last = sql.execute(
                "SELECT count(*), max(completed_at_ms) FROM durable_workflows "
                "WHERE workflow_id LIKE %s AND status = 'SUCCESS'", (prefix + "%",),
            ).fetchone()
            if done == n:
                break
            time.sleep(0.05)
        figures["trigger on" if on else "trigger off"].append(n / ((last - started) / 1000))
    sql.execute("ALTER TABLE durable_workflows ENABLE TRIGGER durable_workflow_ended")
    return figures


def enqueue_latencies(
    dur: Any, client: Any, engine: Any, celery_task: Any, celery_default_task: Any, n: int
) -> dict[str, list[float]]:
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    order_sql = text("INSERT INTO bench_orders (id, total) VALUES (:id, 10.0)")  # the request's own write
    workflow = dur.registry["bench.steps"]
    loop = asyncio.new_event_loop()
    # the commit a start waits for, alone: durable's own INSERT through psycopg
    import psycopg
    from durable.starting import new_workflow_row
    raw = psycopg.connect(str(engine.url).replace("+psycopg", ""), autocommit=True)
    from durable.store.base import insert_params
    columns = tuple(sorted(k[2:] for k in insert_params(new_workflow_row(client.settings, "x", [1], {}))))
    sql, constants = client.store._insert_statement(columns)._driver_sql()

    def sql_insert() -> None:
        row = new_workflow_row(client.settings, "bench.steps", [1], {}, clock=client.clock)
        raw.execute(sql, {**constants, **insert_params(row)}).fetchone()

    # the same INSERT, its commit not waiting for the disk (what the WAL flush
    # costs; not how durable starts: a start returns once its row is durable)
    unflushed = psycopg.connect(str(engine.url).replace("+psycopg", ""), autocommit=True)
    unflushed.execute("SET synchronous_commit = off")

    def sql_insert_unflushed() -> None:
        row = new_workflow_row(client.settings, "bench.steps", [1], {}, clock=client.clock)
        unflushed.execute(sql, {**constants, **insert_params(row)}).fetchone()

    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS bench_orders (id text PRIMARY KEY, total float)")

    def in_session() -> None:
        # the enqueue call alone, in a transaction the request has open anyway
        with Session(engine) as session, session.begin():
            session.execute(order_sql, {"id": str(uuid.uuid4())})
            started = time.perf_counter()
            client.enqueue("bench.steps", args=[1], transaction=session)
            awaited.append((time.perf_counter() - started) * 1e6)

    def order_with_enqueue() -> None:
        # a request's whole write: its order and its workflow, one commit
        with Session(engine) as session, session.begin():
            session.execute(order_sql, {"id": str(uuid.uuid4())})
            client.enqueue("bench.steps", args=[1], transaction=session)

    def order_then_apply_async() -> None:
        # the same with Celery, as a careful user writes it: the task is sent
        # once the order has committed (Django's transaction.on_commit)
        with Session(engine) as session, session.begin():
            session.execute(order_sql, {"id": str(uuid.uuid4())})
        celery_task.apply_async(args=[0])

    # the same INSERT awaited on a psycopg AsyncConnection (what the event loop's wait adds)
    async_raw = loop.run_until_complete(
        psycopg.AsyncConnection.connect(str(engine.url).replace("+psycopg", ""), autocommit=True))

    async def timed_async_insert() -> None:
        row = new_workflow_row(client.settings, "bench.steps", [1], {}, clock=client.clock)
        started = time.perf_counter()
        await (await async_raw.execute(sql, {**constants, **insert_params(row)})).fetchone()
        awaited.append((time.perf_counter() - started) * 1e6)

    calls: dict[str, Callable[[], Any]] = {
        "start()": lambda: workflow.start(1),
        "enqueue()": lambda: client.enqueue("bench.steps", args=[1]),
        "enqueue_async()": lambda: loop.run_until_complete(timed_await()),
        "enqueue(transaction=session), the call": in_session,
        "celery apply_async()": lambda: celery_task.apply_async(args=[0]),
        "celery apply_async(), result backend": lambda: celery_default_task.apply_async(args=[0]),
        "request: order + enqueue, one commit": order_with_enqueue,
        "request: order commit, then apply_async": order_then_apply_async,
        "psycopg INSERT alone": lambda: sql_insert(),
        "psycopg INSERT alone, commit not flushed": sql_insert_unflushed,
        "psycopg INSERT alone, awaited (asyncio)": lambda: loop.run_until_complete(timed_async_insert()),
    }
    if not hasattr(client, "enqueue_async"):
        del calls["enqueue_async()"]
    awaited: list[float] = []

    async def timed_await() -> None:
        # timed inside the running loop, as a server awaits it (starting and
        # stopping the loop around each call is the benchmark's, not the call's)
        started = time.perf_counter()
        await client.enqueue_async("bench.steps", args=[1])
        awaited.append((time.perf_counter() - started) * 1e6)

    def settle() -> None:
        # Each call is timed alone: durable's publish thread (background_publish.py)
        # finishes the previous call's publish first, so that work, done after
        # the call returned, lands in no call's time (durable's, or Celery's).
        for publisher in (dur.start_dispatcher, client.start_dispatcher):
            if hasattr(publisher, "flush"):
                publisher.flush()

    for call in calls.values():  # warm up: connections, compiled statements
        for _ in range(20):
            call()
    awaited.clear()
    figures: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for i in range(n):
        for name in order if i % 2 == 0 else reversed(order):
            settle()
            started = time.perf_counter()
            calls[name]()
            figures[name].append(awaited.pop() if awaited else (time.perf_counter() - started) * 1e6)
    loop.run_until_complete(async_raw.close())
    loop.close()
    return figures


def concurrent_latencies(
    dur: Any, client: Any, celery_task: Any, threads: int, calls: int, rounds: int = 4
) -> dict[str, list[float]]:
    """Latency per call when `threads` threads each make `calls` calls back
    to back, as a threaded web server's concurrent requests do (the GIL,
    the connections and durable's publishing thread shared). Systems
    alternate round by round."""
    workflow = dur.registry["bench.steps"]
    systems: dict[str, Callable[[], Any]] = {
        "start()": lambda: workflow.start(1),
        "enqueue()": lambda: client.enqueue("bench.steps", args=[1]),
        "celery apply_async()": lambda: celery_task.apply_async(args=[0]),
    }
    figures: dict[str, list[float]] = {name: [] for name in systems}
    for r in range(rounds):
        for name in list(systems) if r % 2 == 0 else list(reversed(systems)):
            for publisher in (dur.start_dispatcher, client.start_dispatcher):
                publisher.flush()
            call, barrier = systems[name], threading.Barrier(threads)
            samples: list[list[float]] = [[] for _ in range(threads)]

            def make_calls(out: list[float]) -> None:
                barrier.wait()
                for _ in range(calls):
                    started = time.perf_counter()
                    call()
                    out.append((time.perf_counter() - started) * 1e6)

            running = [threading.Thread(target=make_calls, args=(out,)) for out in samples]
            for thread in running:
                thread.start()
            for thread in running:
                thread.join()
            figures[name].extend(v for out in samples for v in out)
    for publisher in (dur.start_dispatcher, client.start_dispatcher):
        publisher.flush(timeout=60)  # the last round's messages, before the servers stop
    return figures


def _noop(i: int) -> int:
    return i


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waits", type=int, default=100)
    parser.add_argument("--enqueues", type=int, default=300)
    parser.add_argument("--notify-cost", type=int, default=0, metavar="N",
                        help="also: throughput of N workflows with the end trigger on and off, 3 rounds each")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="threads enqueueing at once in the concurrent comparison (1: skip it)")
    parser.add_argument("--concurrent-calls", type=int, default=100, help="calls per thread per round")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="durable-webbench-"))
    os.chmod(tmp, 0o755)
    pg = redis = worker = None
    try:
        pg = Postgres(tmp / "pg").start()
        redis = Redis(tmp / "redis").start()
        url = pg.create_database("bench_web")
        broker = redis.url.rsplit("/", 1)[0] + "/0"
        for k in [k for k in os.environ if k.startswith("DURABLE_")]:
            del os.environ[k]
        os.environ.update(
            DURABLE_HOME=str(tmp / "home"), DURABLE_DATABASE_URL=url, DURABLE_BROKER_URL=broker,
            DURABLE_IMPORTS="benchmarks.workloads", DURABLE_AUTO_MIGRATE="1", PYTHONPATH=str(REPO),
            BENCH_DIR=str(tmp),
        )
        import psycopg
        from celery import Celery
        from sqlalchemy import create_engine

        from durable import DurableClient
        from workers.app import dur

        __import__("benchmarks.workloads")
        dur.migrate()
        client = DurableClient(database_url=url, broker_url=broker)
        sql = psycopg.connect(url.replace("+psycopg", ""), autocommit=True)
        worker = QuietWorker(dict(os.environ), tmp / "worker.log")
        worker.start()
        wake(client, sql, 10, notify=True)  # warm-up
        woken = wake(client, sql, args.waits, notify=True)
        polled = wake(client, sql, args.waits, notify=False)
        cost = notify_cost(client, sql, args.notify_cost, 3) if args.notify_cost else None
        worker.stop()
        worker = None
        celery = Celery("bench_web_celery", broker=redis.url.rsplit("/", 1)[0] + "/1")
        noop = celery.task(name="bench.web_noop", ignore_result=True)(_noop)
        # as Celery is mostly run: a result backend, the task's result kept
        celery_default = Celery("bench_web_celery_default", broker=redis.url.rsplit("/", 1)[0] + "/1",
                                backend=redis.url.rsplit("/", 1)[0] + "/2")
        noop_default = celery_default.task(name="bench.web_noop_default")(_noop)
        engine = create_engine(url)
        latencies = enqueue_latencies(dur, client, engine, noop, noop_default, args.enqueues)
        concurrent = (concurrent_latencies(dur, client, noop, args.concurrency, args.concurrent_calls)
                      if args.concurrency > 1 else None)
        client.close()
        print(f"\nresult wake, ms from the workflow's end to result() returning ({args.waits} waits, one at a time)")
        print(f"  LISTEN/NOTIFY          {_summary(woken)}")
        print(f"  backed-off polling     {_summary(polled)}")
        if cost:
            print(f"\nthroughput, workflows/s ({args.notify_cost} workflows of 10 steps, 1 worker x 2 children, "
                  "alternating rounds)")
            for name, values in cost.items():
                print(f"  {name:22s} median {statistics.median(values):7.1f}  rounds {[round(v, 1) for v in values]}")
        print(f"\nenqueue latency, us ({args.enqueues} calls each, interleaved, nothing consuming)")
        for name, values in latencies.items():
            print(f"  {name:40s} {_summary(values)}")
        celery_p50 = pct(latencies["celery apply_async()"], 0.5)
        default_p50 = pct(latencies["celery apply_async(), result backend"], 0.5)
        print("\np50 against Celery's apply_async() p50 (<= 1.0: durable's is no slower): "
              "ignore_result / with a result backend")
        for name in ("start()", "enqueue()", "enqueue_async()", "enqueue(transaction=session), the call"):
            p50 = pct(latencies[name], 0.5)
            print(f"  {name:40s} {p50 / celery_p50:5.2f}x  {p50 / default_p50:5.2f}x")
        request = pct(latencies["request: order + enqueue, one commit"], 0.5)
        print(f"  {'request: order + enqueue, one commit':40s} "
              f"{request / pct(latencies['request: order commit, then apply_async'], 0.5):5.2f}x"
              " (against: order commit, then apply_async)")
        if concurrent:
            print(f"\n{args.concurrency} threads, each {args.concurrent_calls} calls back to back, 4 alternating "
                  "rounds (us per call)")
            for name, values in concurrent.items():
                print(f"  {name:40s} {_summary(values)}")
            concurrent_p50 = pct(concurrent["celery apply_async()"], 0.5)
            for name in ("start()", "enqueue()"):
                print(f"  {name + ' / apply_async()':40s} {pct(concurrent[name], 0.5) / concurrent_p50:5.2f}x")
        return 0
    finally:
        if worker is not None:
            worker.stop()
        if redis is not None:
            redis.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
