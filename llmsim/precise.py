"""Precise waits: finish a sleep on its deadline instead of up to a millisecond after it.

gevent's default loop (libev, epoll backend) rounds every wait up to the next
whole millisecond, so `gevent.sleep(d)` returns about 0.25-0.6 ms late (p50)
and a TTFT or a token goes out that much after its deadline. The Pacer
therefore sleeps until `PRECISE_MARGIN_S` before a deadline and lets a
`PreciseTimer` finish the wait:

* On Linux, `TimerfdTimer` arms one kernel timer (timerfd, CLOCK_MONOTONIC,
  the clock `time.monotonic()` reads) for the earliest pending deadline and
  watches it with the event loop; when it fires, every waiter whose deadline
  has come is woken. No spinning: the loop blocks until the kernel wakes it,
  within tens of microseconds of the deadline.
* Elsewhere, `SpinTimer` yields (`gevent.sleep(0)`) until the deadline. That
  costs CPU for the whole margin, so the Pacer uses it for the first token
  (TTFT) only.

Waking on the deadline is not yet writing on it: building the chunk and
handing it to the socket take tens to hundreds of microseconds more. Each
timer therefore learns a `lead` (at most `MAX_LEAD_S`) from the streams it
serves: `observe()` gets how late a first chunk was written against its
deadline, and later waits end that much earlier, so written times centre on
the deadlines.

The same timer runs callbacks on their deadlines (`at()`): a stream with no
greenlet of its own is written from them (llmsim/cli/streamwriter.py), and
`run_due()` lets a request's set-up write the streams that fell due between
its steps.

A timer belongs to one gevent hub (one per thread); `precise_timer()` returns
the current hub's, creating it on first use, or None when precise waits are
switched off (`LLMSIM_PRECISE_WAITS=0`).
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import os
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

from gevent import get_hub

__all__ = ["MAX_LEAD_S", "PRECISE_MARGIN_S", "PreciseTimer", "SpinTimer", "TimerfdTimer", "hub_timer", "precise_timer",
           "precise_waits_on", "run_due"]

PRECISE_MARGIN_S = 0.002
"""The coarse sleep ends this long before the deadline; the precise wait does the rest.
Larger than the loop's worst usual overshoot (1 ms rounding plus a little scheduling)."""


MAX_LEAD_S = 0.0003
LEAD_GAIN = 0.1


class PreciseTimer:
    """Wakes the calling greenlet at a monotonic deadline (less the learned lead)."""

    every_token = False
    """True when cheap enough for every token, not only the first (no spinning)."""
    lead = 0.0
    """Seconds before a deadline a wait ends, so the chunk is written on it (learned by observe())."""
    observed = 0

    def observe(self, late: float) -> None:
        """A chunk aimed at a deadline was written `late` seconds after it (negative: before).

        The lead moves by a share of it: the running mean over the first observations, then
        an exponential average (LEAD_GAIN), clipped so one stall cannot swing it."""
        late = max(-MAX_LEAD_S, min(MAX_LEAD_S, late))  # a stalled loop says nothing about the write path
        self.observed += 1
        gain = max(LEAD_GAIN, 1.0 / self.observed)
        self.lead = max(0.0, min(MAX_LEAD_S, self.lead + gain * late))

    @property
    def waiting(self) -> int:
        """Waits in progress right now (the Pacer stops using it for later tokens when busy)."""
        return 0

    def until(self, deadline: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SpinTimer(PreciseTimer):
    """Yield to other greenlets until the deadline: precise, but busy for the whole wait."""

    def __init__(self) -> None:
        import gevent

        self._sleep = gevent.sleep
        self._n = 0

    @property
    def waiting(self) -> int:
        return self._n

    def until(self, deadline: float) -> None:
        clock, sleep = time.monotonic, self._sleep
        deadline -= self.lead
        self._n += 1
        try:
            while clock() < deadline:
                sleep(0)
        finally:
            self._n -= 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = getattr(os, "O_CLOEXEC", 0o2000000)
_TFD_TIMER_ABSTIME = 1


class TimerfdTimer(PreciseTimer):
    """One Linux timerfd per hub, armed for the earliest pending deadline.

    Waiters (until()) and callbacks (at()) sit in two heaps; the loop watches
    the timerfd and, when it fires, wakes every waiter that is due (and any due
    within `SLACK_S`, so waiters a few microseconds apart share one wake-up)
    and runs every callback due within `CALL_SLACK_S`, in deadline order, then
    re-arms it for the next. Re-arming also clears the timer's readable state,
    so no read() is needed.
    """

    every_token = True
    SLACK_S = 20e-6
    CALL_SLACK_S = 300e-6
    """Callbacks (stream writes) due within this share a wake-up. A wake-up costs more than a write:
    arming a timer a few microseconds ahead takes about 13 µs on a virtual machine (the host reprograms
    its own), and the loop's round trip as much again. Against 0.1 ms, 0.3 ms cut a 50-stream server's
    CPU by a third. A chunk may so go out up to 0.3 ms before its deadline; call_lead, learned from
    the writes, centres them."""

    def __init__(self, libc: Any, hub: Any) -> None:
        from gevent.hub import Waiter

        self._waiter = Waiter
        self._settime = libc.timerfd_settime
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.fd = fd
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)
        self._heap: list[list[Any]] = []  # greenlets in until()
        self._calls: list[list[Any]] = []  # at()'s callbacks
        self._seq = itertools.count()
        self._armed: float | None = None
        self.call_lead = 0.0
        """The lead of at()'s callbacks, learned apart (observe_call): a callback writes sooner
        after its wake-up than a greenlet does."""
        self._call_observed = 0
        # Unreferenced while idle: an unused timer never keeps a finished loop alive. The loop's
        # default priority: waking a stream must not hold back reading a request that arrived in the
        # same iteration (the wait counts in that request's TTFT on the wire), and a request's set-up
        # writes the streams that fell due meanwhile (run_due). Measured with 100 keep-alive streams:
        # wire TTFT p99 2.1 ms at this priority, 11 ms at the highest.
        self._io = hub.loop.io(fd, 1, ref=False)
        self._io.start(self._fire)
        weakref.finalize(self, os.close, fd)

    @property
    def waiting(self) -> int:
        return len(self._heap)

    def _arm(self, deadline: float | None) -> None:
        value = self._spec.it_value
        if deadline is None:
            value.tv_sec = value.tv_nsec = 0  # disarm
        else:
            sec = int(deadline)
            value.tv_sec, value.tv_nsec = sec, max(1, int((deadline - sec) * 1e9))
        self._settime(self.fd, _TFD_TIMER_ABSTIME, self._spec_ref, None)
        self._armed = deadline
        self._io.ref = deadline is not None  # keep the loop alive only while someone waits

    def _next(self) -> float | None:
        heap, calls = self._heap, self._calls
        if heap and calls:
            return min(heap[0][0], calls[0][0])
        return heap[0][0] if heap else calls[0][0] if calls else None

    def _fire(self) -> None:
        heap, calls = self._heap, self._calls
        now = time.monotonic()
        due, calls_due = now + self.SLACK_S, now + self.CALL_SLACK_S
        while True:  # in deadline order across both heaps
            if calls and calls[0][0] <= calls_due and not (heap and heap[0][0] < calls[0][0]):
                _, _, fn, arg = heapq.heappop(calls)
            elif heap and heap[0][0] <= due:
                _, _, fn, arg = heapq.heappop(heap)
            else:
                break
            if fn is not None:
                fn(arg)
        # Re-arm (or disarm) even if nothing changed: it clears the readable state.
        self._arm(self._next())

    def _push(self, heap: list[list[Any]], deadline: float, fn: Callable[[Any], Any], arg: Any) -> list[Any]:
        entry = [deadline, next(self._seq), fn, arg]
        heapq.heappush(heap, entry)
        if self._armed is None or deadline < self._armed:
            self._arm(deadline)
        return entry

    def at(self, deadline: float, fn: Callable[[Any], Any], arg: Any = None) -> list[Any]:
        """Call fn(arg) at `deadline` less the callbacks' lead (at once if that has passed).

        For a stream with no greenlet of its own (cli/streamwriter.py). fn must not block: it
        runs from the event loop, or from whichever greenlet calls run_due(). The returned
        entry is cancelled by setting its third item to None."""
        return self._push(self._calls, deadline - self.call_lead, fn, arg)

    def observe_call(self, late: float) -> None:
        """A write woken by at() went out `late` seconds after its deadline: as observe(), for call_lead."""
        late = max(-MAX_LEAD_S, min(MAX_LEAD_S, late))
        self._call_observed += 1
        gain = max(LEAD_GAIN, 1.0 / self._call_observed)
        self.call_lead = max(0.0, min(MAX_LEAD_S, self.call_lead + gain * late))

    def run_due(self) -> None:
        """Run the callbacks that are due now, from the calling greenlet.

        A request's set-up (parsing, planning) runs for hundreds of microseconds
        without yielding; calling this between its steps writes the chunks that
        fell due meanwhile on time, instead of after the whole set-up."""
        calls = self._calls
        if calls and calls[0][0] <= time.monotonic():
            due = time.monotonic() + self.SLACK_S
            while calls and calls[0][0] <= due:
                _, _, fn, arg = heapq.heappop(calls)
                if fn is not None:
                    fn(arg)

    def until(self, deadline: float) -> None:
        deadline -= self.lead
        if deadline <= time.monotonic():
            return
        waiter = self._waiter()
        entry = self._push(self._heap, deadline, waiter.switch, None)
        try:
            waiter.get()
        finally:
            entry[2] = None  # killed while waiting: never switch into a finished greenlet


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create  # noqa: B018 - probe
        libc.timerfd_settime  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()
_ATTR = "_llmsim_precise_timer"


def run_due() -> None:
    """Write the streams that are due now (TimerfdTimer.run_due), if this hub has a timer; else nothing."""
    timer = getattr(get_hub(), _ATTR, None)
    if timer is not None and timer.__class__ is TimerfdTimer:
        timer.run_due()


def precise_waits_on() -> bool:
    """Whether precise waits are on (LLMSIM_PRECISE_WAITS is not 0, false, no or off)."""
    return os.environ.get("LLMSIM_PRECISE_WAITS", "1") not in ("0", "false", "no", "off")


def precise_timer() -> PreciseTimer | None:
    """The current hub's precise timer (timerfd on Linux, else spinning), or None when switched off."""
    return hub_timer() if precise_waits_on() else None


def hub_timer() -> PreciseTimer:
    """The current hub's precise timer, made on first use; for a caller that read the switch itself
    (precise_waits_on) once, rather than for every request."""
    hub = get_hub()
    timer = getattr(hub, _ATTR, None)
    if timer is None:
        if _LIBC is not None:
            try:
                timer = TimerfdTimer(_LIBC, hub)
            except OSError:
                timer = None
        if timer is None:
            timer = SpinTimer()
        setattr(hub, _ATTR, timer)
    return timer
