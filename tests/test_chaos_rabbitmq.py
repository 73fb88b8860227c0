"""The chaos suite, bounded, on RabbitMQ: its own Postgres, RabbitMQ and
workers, ~60 workflows, 30 s of the faults that involve the broker or the
workers (RabbitMQ killed and restarted with its queues, or wiped; pool
children and workers killed or frozen while they hold delivered messages; a
step holding the GIL for 3 leases; a worker whose clock is 2 minutes ahead
replacing one that stops warmly), then every invariant.
The Postgres and memory faults are the broker's business in no way, and run
in tests/test_chaos.py. The full form: `python -m tests.chaos.driver
--broker rabbitmq --seconds 300 --workflows 1000` (tests/chaos/README.md)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.harness import REPO

SEED = int(os.environ.get("DURABLE_CHAOS_SEED", "20261129"))
KINDS = ("kill_child", "kill_worker", "freeze_worker", "gil_hold", "clock_ahead", "rabbitmq_restart",
         "rabbitmq_lose_data")


def test_chaos_bounded_on_rabbitmq():
    command = [
        sys.executable, "-m", "tests.chaos.driver", "--broker", "rabbitmq", "--kinds", ",".join(KINDS),
        "--seconds", "30", "--workflows", "60", "--faults", "7", "--workers", "2", "--seed", str(SEED),
        "--drain-timeout", "120",
    ]
    done = subprocess.run(command, cwd=str(REPO), capture_output=True, text=True, timeout=240)
    output = done.stdout + done.stderr
    print(output[-20000:])
    figures = done.stdout[done.stdout.find("=== chaos figures ==="):]
    assert "invariant violations      0" in figures, figures or output[-5000:]
    assert done.returncode == 0, output[-5000:]
    faults = next(line for line in figures.splitlines() if line.startswith("faults injected"))
    for kind in KINDS:
        assert f"{kind}=" in faults, faults
    assert "recoveries for live procs 0" in figures, figures
