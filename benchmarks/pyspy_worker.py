"""Sample a real worker child with py-spy while it runs the throughput workload:

    .venv/bin/python -m benchmarks.pyspy_worker [--workflows 500] [--workload chains]

Starts Postgres/Redis and one durable worker (prefork 2) like benchmarks.run,
records one pool child with `py-spy record --format raw` (collapsed stacks)
for the whole batch, and prints where the samples fall: leaf functions, and
the share of stacks passing through each frame. `--process main` samples
the worker's main process (Celery's consumer: broker, pool dispatch, acks).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.run import Bench, child_pids, log, wait_until

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--workflows", type=int, default=500)
    p.add_argument("--workload", choices=("workflows", "chains"), default="workflows",
                   help="10-step workflows, or dur.chain of 10 no-op tasks (each a dispatched step)")
    p.add_argument("--process", choices=("child", "main"), default="child",
                   help="sample a pool child (runs workflows) or the worker's main process (Celery's consumer)")
    a = p.parse_args(argv)
    ns = argparse.Namespace(quick=True, only="", systems="durable", dbos_concurrency=1, dbos_poll=0.1, keep=False,
                            durable_command="durable")
    b = Bench(ns)
    b.systems = ["durable"]
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    raw = out / f"pyspy-worker-{a.workload}-{a.process}.txt"
    spy = None
    try:
        b.start_servers()
        w = b.start_workers("durable")
        b.run_batch("durable", 4, 10, "warm-")
        target = child_pids(w.pid)[0] if a.process == "child" else w.pid
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(target), "-r", "250",
                                "--format", "raw", "-o", str(raw), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        if a.workload == "chains":
            from benchmarks.workloads import noop_task

            t0 = time.time()
            for i in range(a.workflows):
                b.dur.chain(*[noop_task.si(k) for k in range(10)]).start(workflow_id=f"spy-{i}")
            wait_until(lambda: b.canvases_done("spy-")[0] >= a.workflows, 300, "chains", 0.05)
            secs = time.time() - t0
        else:
            secs = b.run_batch("durable", a.workflows, 10, "spy-")
        log(f"{a.workflows} {a.workload} in {secs:.2f} s under py-spy")
        spy.send_signal(2)
        spy.wait(timeout=30)
        b.stop_workers(w)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait()
        b.shutdown()
    leaf = collections.Counter()
    through = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        n = int(n)
        frames = stack.split(";")
        total += n
        leaf[frames[-1].split(" (")[0] + " (" + frames[-1].split(" (")[-1]] += n
        for f in set(frames):
            through[f] += n
    print(f"{total} samples")
    print("top leaf frames:")
    for f, n in leaf.most_common(20):
        print(f"  {100 * n / total:5.1f}%  {f}")
    print("share of samples under each frame (inclusive):")
    for f, n in through.most_common(40):
        print(f"  {100 * n / total:5.1f}%  {f}")
    print(f"collapsed stacks: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
