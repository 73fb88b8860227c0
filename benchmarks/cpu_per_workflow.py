"""Where a workflow's CPU goes, process by process, and how each pool child
spends its time:

    .venv/bin/python -m benchmarks.cpu_per_workflow [--workflows 1000]
    .venv/bin/python -m benchmarks.cpu_per_workflow --workload chains [--system celery-careful]

`--workload chains`: `dur.chain` of 10 no-op Celery tasks (or, with
`--system celery` / `celery-careful`, Celery's own chain of them, as
benchmarks.run's chains workload runs it), CPU per chain.

Starts Postgres/Redis and one durable worker (prefork 2) like benchmarks.run,
runs the throughput workload (workflows of 10 no-op steps) and reads CPU time
(user + system, /proc) of every process before and after: Postgres (all its
backends), Redis, the worker's main process, its pool children, and this
client process (which enqueues). Then, from the workflow rows, each child's
time inside executions (claim to end) and between them (Celery handing the
next message over).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

from benchmarks.run import Bench, celery_chains, child_pids, log, wait_until

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def process_tree(pid: int) -> list[int]:
    found = [pid]
    for child in child_pids(pid):
        found += process_tree(child)
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--workflows", type=int, default=1000)
    p.add_argument("--workload", choices=("workflows", "chains"), default="workflows")
    p.add_argument("--system", choices=("durable", "celery", "celery-careful"), default="durable")
    a = p.parse_args(argv)
    if a.system != "durable" and a.workload != "chains":
        p.error("--system celery / celery-careful: only with --workload chains")
    bench = Bench(argparse.Namespace(quick=True, only="", systems=a.system, dbos_concurrency=1,
                                     dbos_poll=0.1, keep=False, durable_command="durable"))
    try:
        bench.start_servers()
        worker = bench.start_workers(a.system)
        if a.workload == "chains":
            run_chains(bench, a.system, 20, "warm-")
        else:
            bench.run_batch("durable", 20, 10, "warm-")

        def groups() -> dict[str, list[int]]:
            return {
                "postgres": process_tree(bench.pg.proc.pid),
                "redis": [bench.redis.proc.pid],
                "worker main": [worker.pid],
                "pool children": child_pids(worker.pid),
                "client (enqueues)": [os.getpid()],
            }

        before = {k: sum(map(cpu_seconds, pids)) for k, pids in groups().items()}
        if a.workload == "chains":
            seconds = run_chains(bench, a.system, a.workflows, "cpu-")
        else:
            seconds = bench.run_batch("durable", a.workflows, 10, "cpu-")
        time.sleep(0.3)  # the last acks
        after = {k: sum(map(cpu_seconds, pids)) for k, pids in groups().items()}
        log(f"{a.workflows} {a.workload} of 10 in {seconds:.2f} s = {a.workflows / seconds:.1f}/s ({a.system})")
        print(f"CPU per {'chain' if a.workload == 'chains' else 'workflow'} (ms):")
        for k in before:
            print(f"  {k:18s} {(after[k] - before[k]) * 1000 / a.workflows:5.2f}")
        print(f"  {'total':18s} {sum(after[k] - before[k] for k in before) * 1000 / a.workflows:5.2f}"
              f"  (2 cores: at most {2000 / max(1e-9, sum(after[k] - before[k] for k in before) * 1000 / a.workflows):.0f} wf/s)")

        if a.system != "durable":
            return 0
        rows = bench.sql.execute(
            "SELECT executor, started_at_ms, completed_at_ms FROM durable_workflows "
            "WHERE workflow_id LIKE 'cpu-%' AND name <> 'durable.canvas' ORDER BY executor, started_at_ms").fetchall()
        by_child: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
        for executor, started, completed in rows:
            by_child[executor].append((started, completed))
        print("pool children: executions, inside one (claim to end) / between two (ms, median):")
        for executor, spans in sorted(by_child.items()):
            inside = [c - s for s, c in spans]
            between = [spans[i + 1][0] - spans[i][1] for i in range(len(spans) - 1)]
            print(f"  {executor}: {len(spans)}, {statistics.median(inside):.1f} / "
                  f"{statistics.median(between):.1f}")
    finally:
        bench.shutdown()
    return 0


def run_chains(bench: Bench, system: str, count: int, prefix: str) -> float:
    """`count` chains of 10 no-op tasks, as benchmarks.run's chains workload
    runs them; seconds from the first start to the last chain's end."""
    t0 = time.time()
    if system == "durable":
        from benchmarks.workloads import noop_task

        for i in range(count):
            bench.dur.chain(*[noop_task.si(k) for k in range(10)]).start(workflow_id=f"{prefix}{i}")
        _, last_ms = wait_until(
            lambda: (lambda c: c if c[0] >= count else None)(bench.canvases_done(prefix)), 300, "chains", 0.05)
        return float(last_ms) / 1000 - t0
    celery_chains(system, count)
    return time.time() - t0


if __name__ == "__main__":
    sys.exit(main())
