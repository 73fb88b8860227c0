"""Whether the process that holds a lease on this host is gone.

A lease's owner is "host:pid". On its own host a worker can tell that the
owner died (a whole worker SIGKILLed, OOM-killed or restarted) without
waiting for its lease to run out: that pid no longer exists, or it now
belongs to a process that started after the lease was last due to expire,
so it cannot be the process that renewed it.

The same check tells a claimer that a lease which ran out belonged to a
process still alive on this host: taking it over is then no recovery
(nothing crashed), see `owner_alive_here`.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path


def this_host() -> str:
    return socket.gethostname()


def owner_pid(owner: str, host: str) -> int | None:
    """The pid of an owner on `host`, or None for an owner elsewhere."""
    owner_host, _, pid = owner.rpartition(":")
    return int(pid) if owner_host == host and pid.isdigit() else None


def process_is_gone(pid: int, lease_expires_at_ms: int, now_ms: int | None = None) -> bool:
    """Whether the process that held a lease expiring at `lease_expires_at_ms`
    is gone. `now_ms` is the time in the lease's clock (the database's); the
    process's start is placed on that clock by its age, so a host clock set
    wrong moves neither. Without `now_ms`, this host's clock."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, as another user
    state, age_s = _state_and_age(pid)
    if state in ("Z", "X"):
        return True  # exited, not reaped yet
    if age_s is None:
        return False
    now = time.time() * 1000 if now_ms is None else now_ms
    # A process started after the lease's expiry cannot have renewed it:
    # the pid was reused. (Started earlier, it may be the owner: keep it.)
    return now - age_s * 1000 > lease_expires_at_ms


def owner_alive_here(owner: str, lease_expires_at_ms: int, now_ms: int) -> bool:
    """Whether a lease's owner is a live process on this host, other than this
    one: a lease it did not renew was not lost by a crash (its process froze,
    or whoever renews it could not). An owner elsewhere, or this very process
    (which runs nothing it would claim), is not known alive."""
    pid = owner_pid(owner, this_host())
    if pid is None or pid == os.getpid():
        return False
    return not process_is_gone(pid, lease_expires_at_ms, now_ms)


def _state_and_age(pid: int) -> tuple[str, float | None]:
    """A process's state letter and how long ago it started, from /proc
    (Linux); the age is measured on the kernel's clock since boot, no wall
    clock involved. ("", None) where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return "", None
    # the fields after the command name (which may hold spaces) in parentheses
    fields = stat.rpartition(")")[2].split()
    try:
        ticks = int(fields[19])  # starttime, field 22 of proc(5)
    except (IndexError, ValueError):
        return (fields[0] if fields else ""), None
    return fields[0], max(0.0, uptime_s - ticks / os.sysconf("SC_CLK_TCK"))
