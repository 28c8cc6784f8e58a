"""Where a server process runs: the core it is pinned to (`--pin-workers`) and its CPU scheduling policy
(`--realtime`).

A stream's chunks are due every few milliseconds, and a server process that is runnable but not
running writes none of them. Two ways that happens on a shared machine, both traced with the kernel's
scheduler events at 1,000 streams on two workers and two cores (docs/benchmarks.md):

- Unpinned, Linux's scheduler sometimes queues both workers on one core while the other runs an
  idle-priority task or nothing: each worker waited 105-116 ms per ramp to run, 35-45 ms pinned.
- At normal priority, the scheduler's tick (4 ms here) hands the core to another task whenever the
  worker has run past its fair share, even to an idle-priority load generator, and the worker waits
  out the whole tick: 3-4 ms stalls, several per ramp, and 29-65 ms of waiting per worker in all.
  Under the real-time round-robin policy (SCHED_RR) no ordinary task runs on the core while a worker
  is runnable, and a worker that wakes takes the core at once: 4-7 ms of waiting per ramp. The kernel
  still keeps 5 % of each second for ordinary tasks (sched_rt_runtime_us), so an overloaded server
  cannot lock the machine up.
"""

from __future__ import annotations

import os

REALTIME_PRIORITY = 1
"""The lowest real-time priority: above every ordinary task, below the kernel's own real-time threads."""


def pin_to_cpu(index: int) -> int | None:
    """Pin this process to the index-th CPU it may use (round robin); the CPU, or None where affinity
    cannot be set."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        cpu = cpus[index % len(cpus)]
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        return None
    return cpu


def run_realtime() -> str | None:
    """Put this process (and the threads it starts later) under SCHED_RR at REALTIME_PRIORITY.

    None when done; else why not, in words a user can act on (the server then runs at normal priority)."""
    policy = getattr(os, "SCHED_RR", None)
    if policy is None or not hasattr(os, "sched_setscheduler"):
        return "this system has no real-time scheduling policy (Linux has)"
    try:
        os.sched_setscheduler(0, policy, os.sched_param(REALTIME_PRIORITY))
    except PermissionError:
        return ("not permitted: it needs an RLIMIT_RTPRIO of 1 or more (ulimit -r; Docker: --ulimit rtprio=1) "
                "or the CAP_SYS_NICE capability")
    except OSError as e:
        return f"the system refused it ({e.strerror or e})"
    return None
