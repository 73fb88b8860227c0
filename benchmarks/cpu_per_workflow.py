"""Where a workflow's CPU goes, process by process, and how each pool child
spends its time:

    .venv/bin/python -m benchmarks.cpu_per_workflow [--workflows 1000]

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

from benchmarks.run import Bench, child_pids, log

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
    a = p.parse_args(argv)
    bench = Bench(argparse.Namespace(quick=True, only="", systems="durable", dbos_concurrency=1,
                                     dbos_poll=0.1, keep=False))
    try:
        bench.start_servers()
        worker = bench.start_workers("durable")
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
        seconds = bench.run_batch("durable", a.workflows, 10, "cpu-")
        time.sleep(0.3)  # the last acks
        after = {k: sum(map(cpu_seconds, pids)) for k, pids in groups().items()}
        log(f"{a.workflows} workflows of 10 steps in {seconds:.2f} s = {a.workflows / seconds:.0f} wf/s")
        print("CPU per workflow (ms):")
        for k in before:
            print(f"  {k:18s} {(after[k] - before[k]) * 1000 / a.workflows:5.2f}")
        print(f"  {'total':18s} {sum(after[k] - before[k] for k in before) * 1000 / a.workflows:5.2f}"
              f"  (2 cores: at most {2000 / max(1e-9, sum(after[k] - before[k] for k in before) * 1000 / a.workflows):.0f} wf/s)")

        rows = bench.sql.execute(
            "SELECT executor, started_at_ms, completed_at_ms FROM durable_workflows "
            "WHERE workflow_id LIKE 'cpu-%' ORDER BY executor, started_at_ms").fetchall()
        by_child: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
        for executor, started, completed in rows:
            by_child[executor].append((started, completed))
        print("pool children: inside an execution (claim to end) / between executions (ms, median):")
        for executor, spans in sorted(by_child.items()):
            inside = [c - s for s, c in spans]
            between = [spans[i + 1][0] - spans[i][1] for i in range(len(spans) - 1)]
            print(f"  {executor}: {len(spans)} workflows, {statistics.median(inside):.1f} / "
                  f"{statistics.median(between):.1f}")
    finally:
        bench.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
