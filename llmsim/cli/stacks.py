"""Helper stacks: a request's deep calls run off its connection's greenlet.

On CPython 3.11+ every greenlet has a frame stack of its own (a 16 KB chunk,
mapped when the greenlet first runs Python code), and it keeps each page of
it that was ever touched for as long as it lives. A connection's greenlet
lives as long as the connection, so an open stream keeps it. Routing,
parsing and planning a request (werkzeug's URL matcher, Flask, the engine)
reach about 5 KB deep: two pages. Streaming needs well under one.

`call_off_stack()` therefore runs the WSGI application call on a helper
greenlet, and the connection's greenlet only streams what it returned: one
page (4 KB) less per open stream (see bench/memory.py). A request that cannot
be asking for a stream (cli/plainrequest.py, answered_at_once) skips it: its
greenlet holds no stream afterwards. Helpers come from a
small pool per hub, so a call costs two greenlet switches, not a new frame
stack (about 9 µs to map and unmap). A helper serves one call at a time;
calls that overlap (a slow request body, a non-streamed answer's wait) take
more helpers, and at most IDLE_MAX idle ones are kept.

The call behaves as one made in place: the same return value or exception,
the caller's contextvars (its context is lent to the helper for the call),
and blocking inside it suspends only the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from greenlet import getcurrent, greenlet

__all__ = ["IDLE_MAX", "call_off_stack"]

IDLE_MAX = 32
"""Idle helpers kept per hub (each holds its frame stack's touched pages, 8-12 KB)."""

_ATTR = "_llmsim_helper_stacks"


def call_off_stack(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) on a helper greenlet of this thread's hub; returns or raises what the call did."""
    from gevent import get_hub

    hub = get_hub()
    pool: list[greenlet] | None = getattr(hub, _ATTR, None)
    if pool is None:
        pool = []
        setattr(hub, _ATTR, pool)
    caller = getcurrent()
    helper = pool.pop() if pool else greenlet(_serve)
    helper.parent = caller  # where the helper switches back to (or returns to, if it finishes)
    helper.gr_context = caller.gr_context
    job: list[Any] = [fn, args, pool]
    helper.switch(job)  # a new helper starts _serve(job); an idle one resumes with job
    ok, value = job
    job.clear()
    if not helper.dead:
        helper.gr_context = None
        helper.parent = hub  # holds no reference to this caller while idle
    if ok:
        return value
    raise value


def _serve(job: list[Any]) -> None:
    """A helper's life: run a job, leave its outcome in the job, switch back to the caller; repeat."""
    me = getcurrent()
    while True:
        fn, args, pool = job
        try:
            job[:] = (True, fn(*args))
        except BaseException as e:  # handed to the caller, which raises it
            job[:] = (False, e)
        del fn, args  # nothing of the call stays referenced while the helper waits
        if len(pool) >= IDLE_MAX:
            return  # finished: back to the parent, the caller; its frame stack is freed
        pool.append(me)
        job = me.parent.switch()
