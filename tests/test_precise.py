"""Precise waits: never early, on time within the loop's own latency, safe when a waiter is killed."""

from __future__ import annotations

import random
import statistics
import time

import gevent
import pytest

from llmsim.latency import Distribution, LatencyProfile
from gevent import get_hub

from llmsim import precise as precise_module
from llmsim.precise import MAX_LEAD_S, SpinTimer, TimerfdTimer, precise_timer
from llmsim.stream import Pacer


def fresh_timerfd() -> TimerfdTimer | None:
    """A timer of its own (the hub's shared one may have learned a lead from earlier tests' servers)."""
    return None if precise_module._LIBC is None else TimerfdTimer(precise_module._LIBC, get_hub())


def timers():
    return [SpinTimer()] + ([fresh_timerfd()] if precise_module._LIBC is not None else [])


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
    timer = fresh_timerfd()
    if timer is None:
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
    timer = fresh_timerfd()
    if timer is None:
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

    plain, precise = lateness(None), lateness(fresh_timerfd() or SpinTimer())
    assert min(precise) >= 0
    assert statistics.median(precise) <= statistics.median([abs(x) for x in plain]) + 0.0005


def test_the_lead_is_learned_from_late_writes_and_bounded():
    timer = SpinTimer()
    timer.observe(0.0001)  # the first observation sets it
    assert timer.lead == pytest.approx(0.0001)
    timer.observe(-0.00005)  # written early: back off by a share
    assert timer.lead == pytest.approx(0.0001 - 0.00005 / 2)
    for _ in range(200):
        timer.observe(0.5)  # a stalled loop: clipped, and the lead stays bounded
    assert timer.lead == pytest.approx(MAX_LEAD_S)
    for _ in range(200):
        timer.observe(-0.5)
    assert timer.lead == 0.0
    timer.lead = 0.0002
    deadline = time.monotonic() + 0.005
    timer.until(deadline)
    assert time.monotonic() >= deadline - 0.0002


def test_the_hub_has_one_timer():
    assert precise_timer() is precise_timer()


def test_callbacks_run_in_deadline_order_never_before_their_slack_and_cancelled_ones_never():
    timer = fresh_timerfd()
    if timer is None:
        pytest.skip("no timerfd here")
    ran: list[tuple[int, float]] = []
    base = time.monotonic() + 0.01
    entries = {i: timer.at(base + i * 0.002, lambda i: ran.append((i, time.monotonic())), i) for i in [4, 0, 3, 1, 2]}
    entries[3][2] = None  # cancelled
    gevent.sleep(0.03)
    assert [i for i, _ in ran] == [0, 1, 2, 4]
    # A callback may run within CALL_SLACK_S before its deadline (wake-ups are shared), never earlier.
    assert all(at >= base + i * 0.002 - timer.CALL_SLACK_S for i, at in ran)
    assert timer.waiting == 0  # callbacks are not greenlets waiting


def test_run_due_runs_only_the_callbacks_that_are_due():
    timer = fresh_timerfd()
    if timer is None:
        pytest.skip("no timerfd here")
    ran: list[str] = []
    now = time.monotonic()
    timer.at(now - 0.001, ran.append, "due")
    timer.at(now + 0.5, ran.append, "later")
    timer.run_due()  # from this greenlet, not the loop
    assert ran == ["due"]


def test_the_callbacks_lead_is_learned_apart_and_bounded():
    timer = fresh_timerfd()
    if timer is None:
        pytest.skip("no timerfd here")
    for _ in range(50):
        timer.observe_call(0.050)  # a stall: clipped
    assert timer.call_lead == pytest.approx(MAX_LEAD_S) and timer.lead == 0.0
    for _ in range(200):
        timer.observe_call(-0.0001)  # now early: the lead shrinks, never below zero
    assert 0.0 <= timer.call_lead < MAX_LEAD_S / 2
