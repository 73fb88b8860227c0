"""Workflows for the failure-semantics tests: retries, fallbacks, memory
exhaustion, workers that die, children that never finish."""

from __future__ import annotations

import os
import signal
import time

from celery.signals import worker_process_init

import durable
from durable.errors import MaxStepRetriesExceededError
from tests.workflows import effects, record
from workers.app import dur


@worker_process_init.connect
def _join_memory_cgroup(**_kwargs) -> None:
    """Put each pool child under the test's memory limit, so exhausting it
    gets the child killed by the kernel's OOM killer, as in production."""
    cgroup = os.environ.get("DURABLE_TEST_MEMORY_CGROUP")
    if cgroup:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    limit_mb = os.environ.get("DURABLE_TEST_MEMORY_RLIMIT_MB")
    if limit_mb:  # where no memory cgroup can be made: an address-space limit
        import resource

        limit = int(limit_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@dur.step(retries=3, interval=0.5, backoff=2.0)
def flaky(failures: int) -> str:
    attempt = durable.context().attempt
    record("flaky")
    if attempt < failures:
        raise ConnectionError(f"attempt {attempt} failed")
    return f"ok after {attempt + 1} attempts"


@dur.workflow()
def retry_then_succeed(failures: int) -> str:
    return flaky(failures)


@dur.step(retries=2, interval=0.1, backoff=1.0)
def gateway_down() -> str:
    record("gateway")
    raise ConnectionError(f"gateway down (attempt {durable.context().attempt})")


@dur.workflow()
def charge_with_fallback() -> dict:
    try:
        return {"charged": gateway_down()}
    except MaxStepRetriesExceededError as exc:
        return {"fallback": True, "step": exc.step_name, "attempts": exc.attempts,
                "errors": [e["message"] for e in exc.errors]}


@dur.step()
def prepare() -> str:
    record("prepare")
    return "prepared"


@dur.step()
def hungry(megabytes: int, fed_after_recoveries: int) -> str:
    record("hungry")
    if durable.context().recovery_attempts < fed_after_recoveries:
        try:
            hog = b"\x01" * (megabytes * 1024 * 1024)  # written, so really resident
        except MemoryError:
            # under an address-space limit the allocation fails instead of the
            # kernel killing us: die the way the OOM killer would
            os.kill(os.getpid(), signal.SIGKILL)
        return f"survived {len(hog)} bytes"
    return "fed"


@dur.workflow(max_recovery_attempts=2)
def memory_hog(megabytes: int, fed_after_recoveries: int) -> list:
    return [prepare(), hungry(megabytes, fed_after_recoveries)]


@dur.step()
def segfault() -> None:
    record("segfault")
    os.kill(os.getpid(), signal.SIGKILL)


@dur.workflow(max_recovery_attempts=1)
def poison_child(n: int) -> None:
    for i in range(n):
        prepare()
    segfault()


@dur.workflow()
def limbo_parent(children: int) -> list:
    handles = [poison_child.start(5) for _ in range(children)]
    return durable.gather(*handles)


@dur.step(retries=5, interval=0.2, backoff=1.0)
def killed_mid_retries() -> int:
    attempt = durable.context().attempt
    record("mid_retry")
    if attempt < 2:
        raise ConnectionError(f"attempt {attempt} failed")
    previous = [a for kind, _, a in effects(durable.context().workflow_id) if kind == "mid_retry"]
    if previous.count(2) == 1:  # the first time attempt 2 runs, the worker dies
        os.kill(os.getpid(), signal.SIGKILL)
    return attempt


@dur.workflow()
def retries_interrupted() -> int:
    return killed_mid_retries()


@dur.step(retries=1, interval=4.0)
def slow_retry() -> str:
    record("slow_retry")
    if durable.context().attempt == 0:
        raise ConnectionError("try again in 4 s")
    return "second attempt"


@dur.workflow()
def long_backoff() -> str:
    return slow_retry()


@dur.step(retries=1, interval=0.1, timeout=0.5)
def too_slow() -> str:
    record("too_slow")
    time.sleep(5)
    return "never"


@dur.workflow()
def times_out_step() -> str:
    try:
        return too_slow()
    except MaxStepRetriesExceededError as exc:
        return " | ".join(e["type"].rsplit(".", 1)[-1] for e in exc.errors)


@dur.workflow()
def sleeper(seconds: float) -> str:
    durable.sleep(seconds)
    return "woke"


@dur.workflow()
def awaits_sleeper(seconds: float) -> str:
    return sleeper.start(seconds).result()
