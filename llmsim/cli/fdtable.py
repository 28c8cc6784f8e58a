"""The process's file descriptors: the limit raised and the table sized once at start-up, for the
connections to come.

Every open connection is a descriptor. Many systems (and container runtimes) start a process with a
soft limit of 1,024 and a much higher hard one; a server raises its soft limit to the hard one (as Go
programs do on their own, and Locust for its load generators), so a test with thousands of streams is
not refused at 1,021 connections.

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

MAX_FD_LIMIT = 1 << 20
"""The highest soft limit asked for when the hard limit is unlimited (Linux's default fs.nr_open)."""

FD_TABLE_RESERVE = 65536
"""Descriptor slots reserved at start-up, at most the soft RLIMIT_NOFILE (a process may not open
more). A server past this many connections grows its table again, once per doubling."""


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (at most MAX_FD_LIMIT); returns the soft limit now in
    force, 0 where there is none to read."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = MAX_FD_LIMIT if hard == resource.RLIM_INFINITY else min(hard, MAX_FD_LIMIT)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (OSError, ValueError):  # above fs.nr_open, or not allowed: keep what there is
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


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
