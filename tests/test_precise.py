"""Precise waits: never early, on time within the loop's own latency, safe when a waiter is killed."""

from __future__ import annotations

import random
import statistics
import time

import gevent
import pytest

from llmsim.latency import Distribution, LatencyProfile
from llmsim.precise import SpinTimer, TimerfdTimer, precise_timer
from llmsim.stream import Pacer


def timers():
    out = [SpinTimer()]
    t = precise_timer()
    if isinstance(t, TimerfdTimer):
        out.append(t)
    return out


@pytest.mark.parametrize("timer", timers(), ids=lambda t: type(t).__name__)
def test_never_early_and_close(timer):
    late = []
    for _ in range(30):
        deadline = time.monotonic() + random.uniform(0.0005, 0.003)
        timer.until(deadline)
        now = time.monotonic()
        assert now >= deadline
        late.append(now - deadline)
    assert statistics.median(late) < 0.002, late  # generous: the loop's wake-up is tens of microseconds


def test_timerfd_wakes_many_waiters_in_deadline_order():
    timer = precise_timer()
    if not isinstance(timer, TimerfdTimer):
        pytest.skip("no timerfd here")
    woke: list[int] = []
    base = time.monotonic() + 0.01
    offsets = [5, 1, 4, 2, 3]

    def wait(i: int) -> None:
        timer.until(base + i * 0.002)
        woke.append(i)

    gevent.joinall([gevent.spawn(wait, i) for i in offsets], timeout=5)
    assert woke == sorted(offsets) and timer.waiting == 0


def test_a_killed_waiter_leaves_the_timer_working():
    timer = precise_timer()
    if not isinstance(timer, TimerfdTimer):
        pytest.skip("no timerfd here")
    victim = gevent.spawn(timer.until, time.monotonic() + 0.02)
    gevent.sleep(0.001)
    victim.kill()
    deadline = time.monotonic() + 0.03
    timer.until(deadline)  # the killed entry is skipped when its deadline comes, not switched into
    assert time.monotonic() >= deadline and victim.dead


def test_precise_pacer_is_closer_than_plain_sleeps():
    """Within one run: the same constant schedule, paced with and without precise waits."""
    latency = LatencyProfile(ttft=Distribution("constant", 5), itl=Distribution("constant", 3))

    def lateness(precise) -> list[float]:
        pacer = Pacer(latency, random.Random(1), precise=precise)
        pacer.planned = []
        start = time.monotonic()
        out = []
        for i in pacer.paced_indices([1] * 30, 0, start):
            out.append(time.monotonic() - pacer.planned[i])
        return out

    plain, precise = lateness(None), lateness(precise_timer())
    assert min(precise) >= 0
    assert statistics.median(precise) <= statistics.median([abs(x) for x in plain]) + 0.0005
