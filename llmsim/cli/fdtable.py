"""The process's file-descriptor table, sized once at start-up for the connections to come.

Linux grows a process's descriptor table by doubling it (64, 256, 512, 1024, ...)
when a new descriptor does not fit. In a process with more than one thread (a
server's gevent thread pool starts one), each growth waits for an RCU grace
period inside the accept() that needed the room: the whole server sleeps, every
open stream with it. Measured on a 2-vCPU VM with 250 streams arriving over a
second: 8-30 ms of stall once the connections passed 256, the first time only
(the table never shrinks), so a freshly started server was late where a warm one
was not (bench/arrival_fidelity.py). Growing the table once, before serving,
costs 8 bytes of kernel memory per slot (512 KB for FD_TABLE_RESERVE) and no
stall afterwards.
"""

from __future__ import annotations

import os

FD_TABLE_RESERVE = 65536
"""Descriptor slots reserved at start-up, at most the soft RLIMIT_NOFILE (a process may not open
more). A server past this many connections grows its table again, once per doubling."""


def reserve_fd_table(slots: int = FD_TABLE_RESERVE) -> int:
    """Make the descriptor table hold `slots` descriptors (capped by RLIMIT_NOFILE) by opening one
    at the top and closing it again; returns the slots now reserved, 0 where it cannot.

    F_DUPFD takes the lowest free descriptor at or above the one asked for, so no open descriptor
    is ever replaced."""
    try:
        import fcntl
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 0
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        slots = min(slots, soft)
    if slots <= 64:
        return 0
    try:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        top = fcntl.fcntl(fd, getattr(fcntl, "F_DUPFD_CLOEXEC", fcntl.F_DUPFD), slots - 1)
        os.close(top)
    except OSError:  # every slot up there is taken, or the limit is lower than it said
        return 0
    finally:
        os.close(fd)
    return slots
