"""Profile durable's hot path in-process with cProfile:

    .venv/bin/python -m benchmarks.profile_hotpath [--workflows 200] [--steps 10]

Starts its own Postgres and Redis (tests/servers.py), then in this one process:
1. start()s the workflows on a queue no worker consumes (profiles enqueue);
2. runs each through `dur.runner.execute(workflow_id, name)` -- exactly what
   the Celery task `durable.run_workflow` calls in a worker child -- under
   cProfile (profiles claim, steps and checkpoints, finish).
Prints the top functions by own time and by cumulative time, and a per-step
wall figure next to a bare psycopg INSERT autocommit round trip.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.servers import Postgres, Redis  # noqa: E402


def top(prof: cProfile.Profile, key: str, n: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats(key).print_stats(n)
    text = out.getvalue()
    # drop the header noise up to the table
    return text[text.find("   ncalls"):] if "   ncalls" in text else text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--workflows", type=int, default=200)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="durable-prof-"))
    os.chmod(tmp, 0o755)
    pg = redis = None
    try:
        pg = Postgres(tmp / "pg").start()
        url = pg.create_database("prof")
        redis = Redis(tmp / "redis").start()
        for k in [k for k in os.environ if k.startswith("DURABLE_")]:
            del os.environ[k]
        os.environ.update(DURABLE_DATABASE_URL=url, DURABLE_BROKER_URL=redis.url,
                          DURABLE_HOME=str(tmp / "home"), BENCH_DIR=str(tmp))
        from workers.app import dur
        importlib.import_module("benchmarks.workloads")  # registers the bench.* workflows
        import psycopg

        dur.migrate()
        wf = dur.registry["bench.steps"]
        # warm-up: connections, statement caches
        for i in range(5):
            wf.options(workflow_id=f"warm-{i}", queue="nobody").start(args.steps)
            dur.runner.execute(f"warm-{i}", wf.name)

        prof_enqueue = cProfile.Profile()
        t = time.perf_counter()
        prof_enqueue.enable()
        for i in range(args.workflows):
            wf.options(workflow_id=f"p-{i}", queue="nobody").start(args.steps)
        prof_enqueue.disable()
        enqueue_us = (time.perf_counter() - t) * 1e6 / args.workflows

        # wall time without the profiler first, then with it
        for i in range(args.workflows):
            wf.options(workflow_id=f"q-{i}", queue="nobody").start(args.steps)
        t = time.perf_counter()
        for i in range(args.workflows):
            dur.runner.execute(f"q-{i}", wf.name)
        wall = time.perf_counter() - t

        prof = cProfile.Profile()
        prof.enable()
        for i in range(args.workflows):
            dur.runner.execute(f"p-{i}", wf.name)
        prof.disable()

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as c:
            c.execute("CREATE TABLE IF NOT EXISTS rtt (id bigserial PRIMARY KEY, v text)")
            samples = []
            for _ in range(300):
                t = time.perf_counter()
                c.execute("INSERT INTO rtt (v) VALUES ('x')")
                samples.append((time.perf_counter() - t) * 1e6)
        rtt = statistics.median(samples)

        n_steps = args.workflows * args.steps
        print(f"in-process, no profiler: {args.workflows} workflows x {args.steps} steps in {wall:.2f} s = "
              f"{args.workflows / wall:.0f} wf/s, {wall * 1e6 / n_steps:.0f} us per step incl. claim+finish; "
              f"psycopg INSERT autocommit {rtt:.0f} us; start() {enqueue_us:.0f} us (profiled)")
        print("\n=== execute(): top by own time ===")
        print(top(prof, "tottime", args.top))
        print("=== execute(): top by cumulative time ===")
        print(top(prof, "cumulative", args.top))
        print("=== start(): top by cumulative time ===")
        print(top(prof_enqueue, "cumulative", 25))
        out = REPO / "benchmarks" / "results"
        out.mkdir(exist_ok=True)
        prof.dump_stats(str(out / "hotpath-execute.prof"))
        prof_enqueue.dump_stats(str(out / "hotpath-start.prof"))
        print(f"pstats files: {out}/hotpath-execute.prof, hotpath-start.prof")
    finally:
        if redis:
            redis.stop()
        if pg:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
