"""Whether the process that holds a lease on this host is gone.

A lease's owner is "host:pid". On its own host a worker can tell that the
owner died (a whole worker SIGKILLed, OOM-killed or restarted) without
waiting for its lease to run out: that pid no longer exists, or it now
belongs to a process that started after the lease was last due to expire,
so it cannot be the process that renewed it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def this_host() -> str:
    return socket.gethostname()


def owner_pid(owner: str, host: str) -> int | None:
    """The pid of an owner on `host`, or None for an owner elsewhere."""
    owner_host, _, pid = owner.rpartition(":")
    return int(pid) if owner_host == host and pid.isdigit() else None


def process_is_gone(pid: int, lease_expires_at_ms: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, as another user
    started_ms = _start_time_ms(pid)
    # A process started after the lease's expiry cannot have renewed it:
    # the pid was reused. (Started earlier, it may be the owner: keep it.)
    return started_ms is not None and started_ms > lease_expires_at_ms


def _start_time_ms(pid: int) -> int | None:
    """When a process started, from /proc (Linux); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot_s = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        return None
    # the fields after the command name (which may hold spaces) in parentheses
    fields = stat.rpartition(")")[2].split()
    ticks = int(fields[19])  # starttime, field 22 of proc(5)
    return int((boot_s + ticks / os.sysconf("SC_CLK_TCK")) * 1000)
