"""The load model (llmsim/scheduler.py), on a simulated clock: exact numbers, no sleeping.

Reference profile from issue 4: TTFT 100 ms, ITL 20 ms, zero spread,
max_concurrent 8, slowdown_at_full 2.0.
"""

from __future__ import annotations

import random
import time

import gevent
import pytest

from llmsim.latency import Distribution, LatencyProfile
from llmsim.profiles import Capacity, ModelProfile
from llmsim.scheduler import (
    NullScheduler,
    QueueFull,
    Scheduler,
    Schedulers,
    SimRequest,
    make_scheduler,
    simulate,
    simulate_closed_loop,
    slowdown_multiplier,
)
from llmsim.stream import Pacer, TokenPlan

TTFT, ITL = 0.100, 0.020
CAP = Capacity(max_concurrent=8, queue_limit=4, slowdown_at_full=2.0)
LAT = LatencyProfile.constant(100, 20)
PROFILE = ModelProfile(name="ref", latency=LAT, capacity=CAP)
UNLIMITED = ModelProfile(name="ref-unlimited", latency=LAT)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def mult(active: int) -> float:
    return 1 + (2.0 - 1) * (active - 1) / (8 - 1)


# --------------------------------------------------------------------------- formula


def test_multiplier_formula_at_1_4_8_active():
    assert slowdown_multiplier(1, 8, 2.0) == 1.0
    assert slowdown_multiplier(4, 8, 2.0) == pytest.approx(1 + 3 / 7, abs=1e-12)
    assert slowdown_multiplier(8, 8, 2.0) == 2.0
    assert slowdown_multiplier(0, 8, 2.0) == 1.0  # nobody decoding
    assert slowdown_multiplier(5, 1, 3.0) == 1.0  # a single slot never slows down


@pytest.mark.parametrize("active, itl_ms", [(1, 20.0), (4, 20 * (1 + 3 / 7)), (8, 40.0)])
def test_itl_at_n_active_streams_equals_formula(active, itl_ms):
    results = simulate(PROFILE, [SimRequest(0.0, output_tokens=50) for _ in range(active)])
    for r in results:
        assert r.queue_wait_s == 0
        assert r.ttft_s == pytest.approx(TTFT, abs=1e-12)
        assert len(r.itls_s) == 49
        for gap in r.itls_s:
            assert gap * 1000 == pytest.approx(itl_ms, abs=1e-9)


def test_multiplier_follows_streams_joining_and_leaving():
    # A streams alone; B arrives mid-gap at 0.31 s for 3 tokens. Each gap reads the multiplier when it starts.
    a, b = simulate(PROFILE, [SimRequest(0.0, output_tokens=30), SimRequest(0.31, output_tokens=3)])
    two = ITL * mult(2)
    assert a.token_times[:12] == pytest.approx([0.1 + i * ITL for i in range(12)], abs=1e-12)  # alone up to 0.32
    assert b.token_times == pytest.approx([0.41, 0.41 + two, 0.41 + 2 * two], abs=1e-12)
    b_end = b.end_s
    starts = a.token_times[:-1]
    for start, gap in zip(starts, a.itls_s):
        expected = two if 0.31 < start < b_end else ITL
        assert gap == pytest.approx(expected, abs=1e-12), start
    assert sum(1 for g in a.itls_s if g > ITL * 1.01) == 6  # gaps starting at 0.32 ... 0.434 s


# --------------------------------------------------------------------------- queueing


def test_ninth_concurrent_request_ttft_includes_its_queue_wait():
    n = 10
    results = simulate(PROFILE, [SimRequest(0.0, output_tokens=n) for _ in range(9)])
    first_eight, ninth = results[:8], results[8]
    end8 = TTFT + (n - 1) * ITL * mult(8)  # 0.1 + 9 * 0.040 = 0.46 s
    for r in first_eight:
        assert r.queue_wait_s == 0
        assert r.end_s == pytest.approx(end8, abs=1e-12)
    assert ninth.queue_wait_s == pytest.approx(end8, abs=1e-12)
    assert ninth.ttft_s == pytest.approx(end8 + TTFT, abs=1e-12)
    # it then decodes alone: base ITL
    assert all(g == pytest.approx(ITL, abs=1e-12) for g in ninth.itls_s)


def test_queue_is_fifo_and_grants_on_release():
    clock = FakeClock()
    s = Scheduler(CAP, clock=clock)
    held = [s.submit() for _ in range(8)]
    assert s.active == 8 and s.multiplier() == 2.0
    granted: list[int] = []
    q = [s.submit(on_grant=lambda slot, i=i: granted.append(i)) for i in range(3)]
    assert s.waiting == 3 and not any(x.granted for x in q)
    clock.t = 1.5
    held[3].release()
    assert granted == [0] and q[0].granted and q[0].queue_wait_s == 1.5
    assert s.active == 8 and s.waiting == 2
    clock.t = 2.0
    held[0].release()
    held[1].release()
    assert granted == [0, 1, 2] and s.waiting == 0 and s.active == 8
    assert q[2].queue_wait_s == 2.0


def test_queue_overflow_raises_queue_full_with_retry_hint():
    s = Scheduler(CAP, clock=FakeClock(), name="ref")
    for _ in range(8 + CAP.queue_limit):
        s.submit()
    assert s.active == 8 and s.waiting == 4
    with pytest.raises(QueueFull) as ei:
        s.submit()
    e = ei.value
    assert e.queue_limit == 4 and e.waiting == 4
    assert 1.0 <= e.retry_after_s <= 60.0
    assert e.retry_after_header.isdigit() and int(e.retry_after_header) >= 1
    assert "overloaded" in str(e) and "ref" in str(e)
    assert s.stats.rejected == 1 and s.waiting == 4  # the refused request left no trace in the queue


def test_queue_limit_zero_refuses_as_soon_as_slots_are_full():
    s = Scheduler(Capacity(2, queue_limit=0, slowdown_at_full=1.0), clock=FakeClock())
    s.submit(), s.submit()
    with pytest.raises(QueueFull):
        s.submit()


def test_overflow_in_simulation_is_rejected_immediately():
    results = simulate(PROFILE, [SimRequest(0.0, output_tokens=5) for _ in range(8 + 4 + 3)])
    assert [r.rejected for r in results] == [False] * 12 + [True] * 3
    assert all(r.token_times == [] and r.end_s == 0.0 for r in results[12:])
    # queued ones are served in arrival order, two "waves" of the batch
    waits = [r.queue_wait_s for r in results[8:12]]
    assert waits == sorted(waits) and waits[0] > 0


def test_retry_after_tracks_observed_hold_time():
    clock = FakeClock()
    s = Scheduler(Capacity(1, queue_limit=1), clock=clock, expected_hold_s=100.0)
    for _ in range(20):  # requests holding their slot for 0.2 s pull the estimate down
        slot = s.submit()
        clock.t += 0.2
        slot.release()
    s.submit(), s.submit()
    with pytest.raises(QueueFull) as ei:
        s.submit()
    assert ei.value.retry_after_s < 100.0 * 2


# --------------------------------------------------------------------------- prefill and reasoning


def test_prefill_10k_tokens_at_20k_per_s_adds_exactly_500_ms():
    lat = LatencyProfile(ttft=Distribution("constant", 100), itl=Distribution("constant", 20),
                         prefill_tokens_per_s=20000)
    assert lat.sample_ttft_ms(random.Random(0), 10_000) == 600.0
    assert lat.sample_ttft_ms(random.Random(0), 0) == 100.0
    profile = ModelProfile(name="p", latency=lat, capacity=CAP)
    short, long_ = simulate(profile, [SimRequest(0.0, 5, prompt_tokens=0), SimRequest(0.0, 5, prompt_tokens=10_000)])
    assert long_.ttft_s - short.ttft_s == pytest.approx(0.5, abs=1e-12)
    assert long_.ttft_s == pytest.approx(0.6, abs=1e-12)


def test_reasoning_tokens_hold_the_slot_and_delay_the_first_token():
    cap = Capacity(max_concurrent=1, queue_limit=4, slowdown_at_full=2.0)
    r1, r2 = simulate(LAT, [SimRequest(0.0, output_tokens=3, reasoning_tokens=100), SimRequest(0.0, output_tokens=3)],
                      capacity=cap)
    assert r1.ttft_s == pytest.approx(TTFT + 100 * ITL, abs=1e-9)  # 2.1 s
    assert r1.end_s == pytest.approx(TTFT + 102 * ITL, abs=1e-9)
    assert r2.queue_wait_s == pytest.approx(r1.end_s, abs=1e-12)  # waited through the reasoning too


def test_reasoning_is_decode_work_that_slows_the_batch():
    # A thinks for 200 tokens while B streams: B's gaps see 2 active streams,
    # and A's reasoning runs at the batch's pace read when A starts (2 active).
    a, b = simulate(PROFILE, [SimRequest(0.0, output_tokens=1, reasoning_tokens=200), SimRequest(0.0, output_tokens=20)])
    assert all(g == pytest.approx(ITL * mult(2), abs=1e-12) for g in b.itls_s)
    assert a.ttft_s == pytest.approx(TTFT + 200 * ITL * mult(2), abs=1e-9)


def test_non_streaming_takes_as_long_as_its_stream():
    reqs_stream = [SimRequest(0.0, 40, reasoning_tokens=10, stream=True) for _ in range(4)]
    reqs_plain = [SimRequest(0.0, 40, reasoning_tokens=10, stream=False) for _ in range(4)]
    streamed = simulate(PROFILE, reqs_stream)
    plain = simulate(PROFILE, reqs_plain)
    for s, p in zip(streamed, plain):
        assert p.end_s == pytest.approx(s.end_s, abs=1e-9)
        assert p.token_times == [p.end_s] * 40  # the whole body at once


def test_seeded_runs_repeat_and_seeds_differ():
    lat = LatencyProfile(ttft=Distribution("lognormal", 300, 80), itl=Distribution("normal", 20, 6),
                         prefill_tokens_per_s=10000)
    profile = ModelProfile(name="noisy", latency=lat, capacity=CAP)
    reqs = [SimRequest(i * 0.013, 30 + i % 7, prompt_tokens=100 * i, reasoning_tokens=i % 3 * 20) for i in range(40)]

    def timeline(seed):
        return [(r.rejected, r.granted_s, tuple(r.token_times)) for r in simulate(profile, reqs, seed=seed)]

    assert timeline(7) == timeline(7)
    assert timeline(7) != timeline(8)


def test_no_capacity_behaves_as_before():
    # Any number of concurrent streams: base TTFT and ITL, no queue, no refusal.
    results = simulate(UNLIMITED, [SimRequest(0.0, output_tokens=10) for _ in range(500)])
    for r in results:
        assert not r.rejected and r.queue_wait_s == 0
        assert r.token_times == pytest.approx([TTFT + i * ITL for i in range(10)], abs=1e-12)
    s = make_scheduler(UNLIMITED)
    assert isinstance(s, NullScheduler)
    slots = [s.acquire() for _ in range(3)]
    assert s.active == 3 and s.waiting == 0 and slots[0].multiplier() == 1.0 and slots[0].queue_wait_s == 0.0
    for sl in slots:
        sl.release()
        sl.release()  # idempotent
    assert s.active == 0 and s.snapshot()["completed"] == 3


def test_null_scheduler_pacing_is_identical_to_full_speed():
    # The no-capacity path: a NullScheduler slot gives exactly the old timeline (same draws, x1.0).
    lat = LatencyProfile(ttft=Distribution("lognormal", 300, 80), itl=Distribution("normal", 20, 6),
                         prefill_tokens_per_s=5000, reasoning_tokens_per_output_token=2)
    plan = TokenPlan(pieces=["x"] * 30, piece_tokens=[1, 2, 3] * 10, reasoning_tokens=40)

    def timeline(slot):
        clock = FakeClock(5.0)
        kwargs = {} if slot is None else {"slot": slot}
        pacer = Pacer(lat, random.Random(42), prompt_tokens=1234, clock=clock, sleep=clock.sleep, **kwargs)
        return [clock.t for _ in pacer.paced(plan)]

    assert timeline(NullScheduler().acquire()) == timeline(None)


def test_stream_pacer_reads_the_slot_multiplier_when_each_gap_starts():
    clock = FakeClock()
    s = Scheduler(CAP, clock=clock)
    slot = s.submit()
    others = [s.submit() for _ in range(3)]  # 4 active
    times = []
    pacer = Pacer(LAT, random.Random(0), slot=slot, clock=clock, sleep=clock.sleep)
    plan = TokenPlan(pieces=["a"] * 4, piece_tokens=[1] * 4)
    for i, _ in enumerate(pacer.paced(plan, 0.0)):
        times.append(clock.t)
        if i == 1:
            for o in others:  # three streams leave: the next gap runs alone
                o.release()
    assert times == pytest.approx([0.1, 0.1 + ITL * mult(4), 0.1 + ITL * mult(4) + ITL, 0.1 + ITL * mult(4) + 2 * ITL])


def test_schedulers_keeps_one_per_profile():
    reg = Schedulers(clock=FakeClock())
    assert reg.get(PROFILE) is reg.get(PROFILE)
    assert isinstance(reg.get(PROFILE), Scheduler) and isinstance(reg.get(UNLIMITED), NullScheduler)
    assert set(reg.snapshot()) == {"ref", "ref-unlimited"}


# --------------------------------------------------------------------------- release paths


def test_release_is_idempotent_and_early_exit_wakes_the_next_waiter():
    clock = FakeClock()
    s = Scheduler(Capacity(1, queue_limit=2), clock=clock)
    woken: list[object] = []
    first = s.submit()
    second = s.submit(on_grant=woken.append)

    def stream():  # a streaming generator that holds the slot, as the server's does
        with first:
            for i in range(100):
                yield i

    gen = stream()
    next(gen)
    clock.t = 0.25
    gen.close()  # the client disconnects: GeneratorExit releases the slot
    assert first.released and woken == [second] and second.queue_wait_s == 0.25
    first.release()
    assert s.active == 1  # a second release changed nothing
    second.release()
    assert s.active == 0 and s.stats.completed == 2


def test_leaving_the_queue_frees_the_place():
    s = Scheduler(Capacity(1, queue_limit=1), clock=FakeClock())
    holder = s.submit()
    waiter = s.submit()
    with pytest.raises(QueueFull):
        s.submit()
    waiter.release()  # gave up while queued
    assert s.waiting == 0 and s.stats.cancelled == 1 and s.active == 1
    again = s.submit()
    holder.release()
    assert again.granted and s.active == 1


def test_gevent_acquire_blocks_until_release():
    """Real greenlets and real time; bounds are loose so a busy machine cannot fail it."""
    s = Scheduler(Capacity(1, queue_limit=4, slowdown_at_full=1.0))
    order: list[str] = []

    def holder():
        with s.acquire():
            order.append("a-start")
            gevent.sleep(0.05)
            order.append("a-end")

    def waiter():
        slot = s.acquire()
        order.append("b-start")
        slot.release()
        return slot

    ga = gevent.spawn(holder)
    gevent.sleep(0)
    gb = gevent.spawn(waiter)
    gevent.joinall([ga, gb], timeout=10)
    assert order == ["a-start", "a-end", "b-start"]
    assert 0.03 <= gb.value.queue_wait_s < 5
    assert s.active == 0 and s.waiting == 0


def test_gevent_killed_waiter_leaves_the_queue_and_disconnect_wakes_next():
    s = Scheduler(Capacity(1, queue_limit=4, slowdown_at_full=1.0))
    first = s.acquire()
    started: list[str] = []

    def wait_for(tag):
        with s.acquire():
            started.append(tag)

    g1 = gevent.spawn(wait_for, "killed")
    g2 = gevent.spawn(wait_for, "next")
    gevent.sleep(0.01)
    assert s.waiting == 2
    g1.kill()  # a waiting client goes away
    assert s.waiting == 1
    first.release()
    g2.join(timeout=10)
    assert started == ["next"] and s.active == 0 and s.waiting == 0
    with pytest.raises(TimeoutError):
        held = s.acquire()
        try:
            s.acquire(timeout=0.01)
        finally:
            held.release()
    assert s.waiting == 0 and s.active == 0


# --------------------------------------------------------------------------- closed loop (capacity prediction)


def test_closed_loop_below_and_above_the_batch():
    below = [r for r in simulate_closed_loop(PROFILE, users=4, duration_s=3.0, output_tokens=20) if r.end_s]
    assert below and all(r.queue_wait_s == 0 for r in below)
    assert all(g == pytest.approx(ITL * mult(4), abs=1e-9) for r in below for g in r.itls_s)
    above = [r for r in simulate_closed_loop(PROFILE, users=12, duration_s=3.0, output_tokens=20) if r.end_s]
    assert not any(r.rejected for r in above)  # 12 users <= 8 slots + 4 queue places
    assert max(r.queue_wait_s for r in above) > 0.5
    over = simulate_closed_loop(PROFILE, users=14, duration_s=3.0, output_tokens=20)
    assert any(r.rejected for r in over)
