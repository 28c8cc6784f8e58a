"""The capacity test: step schedule, windows, merging, open loop, prediction, outputs, and real headless runs.

The headless runs use tests/loadtest/profiles/capacity.yaml: constant TTFT
50 ms and ITL 5 ms, 4 slots, ITL x3 when full, SLO itl_p99_ms 10. ITL with N
streams in flight is 5 * (1 + 2 * (N - 1) / 3) ms, so closed-loop users hold
the SLO up to 2 and break it from 3 on; the test predicts that knee from the
profile alone and requires the measured one within one step.
"""

from __future__ import annotations

import csv
import json
import math
import random
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import gevent
import pytest

from llmsim.loadtest.capacity import CapacityRun, CapacitySettings
from llmsim.loadtest.capacity_report import build_result, format_table, write_outputs
from llmsim.loadtest.chart import nice_ticks, render_svg
from llmsim.loadtest.metrics import RequestRecord
from llmsim.loadtest.openloop import OpenLoopSource, from_intended, poisson_arrivals, scheduled_delay_ms
from llmsim.loadtest.prediction import TokenShape, predict_step
from llmsim.loadtest.shapes import StepPlan, StepSchedule, capacity_step, spawn_rate
from llmsim.loadtest.steps import SLICE_S, InFlight, SliceBook, StepStats, activity, summarize, window_slices
from llmsim.profiles import SloCheck, load_profile_file
from llmsim.scheduler import simulate_closed_loop, slowdown_multiplier

from .locust_helpers import PROFILES, REPO, free_port

CAPACITY = str(REPO / "locustfiles" / "capacity.py")
PROFILE_FILE = PROFILES / "capacity.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rec(start: float, *, ttft: float = 50.0, itl: tuple[float, ...] = (5.0, 5.0), ok: bool = True,
        output_tokens: int = 3) -> RequestRecord:
    e2e = ttft + sum(itl)
    return RequestRecord(start_time=start, end_time=start + e2e / 1000, e2e_ms=e2e,
                         error_kind=None if ok else "http_429", ttft_ms=ttft if ok else None,
                         itl_ms=list(itl) if ok else [], tpot_ms=sum(itl) / (output_tokens - 1) if ok else None,
                         output_tokens=output_tokens if ok else 0, prompt_tokens=10)


# --------------------------------------------------------------------------- the step schedule

def test_ladder_steps_up_to_max_users():
    assert StepPlan(1, 1, 3.0, 4, 2).ladder() == [1, 2, 3, 4]
    assert StepPlan(8, 8, 3.0, 20, 2).ladder() == [8, 16, 20]
    assert StepPlan(5, 5, 3.0, 5, 2).ladder() == [5]


def test_spawn_rate_starts_a_steps_users_in_about_a_second():
    assert spawn_rate(1) == 1.0
    assert spawn_rate(8) == 8.0
    assert spawn_rate(1000) == 100.0  # Locust warns above 100/s: a large step ramps for longer


class Verdicts:
    """A scripted judge: records its calls and answers from a list."""

    def __init__(self, answers: list[bool]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, step, complete: bool) -> bool:
        self.calls.append((step.index, complete))
        return self.answers.pop(0)


def run_schedule(sched: StepSchedule, *, ramp_s: float = 0.5, dt: float = 0.25, limit_s: float = 1000.0):
    """Drive a schedule as Locust would (a tick every dt), reporting the users running after ramp_s."""
    now, target, ramp_started = 0.0, None, 0.0
    history = []
    while now < limit_s:
        tick = sched.tick(now)
        if tick is None:
            return history
        if tick != target:
            target, ramp_started = tick, now
            history.append((now, tick))
        if now - ramp_started >= ramp_s:
            sched.users_running(now, tick[0])
        now += dt
    raise AssertionError("the schedule never stopped")


def test_schedule_ramps_measures_drains_then_judges():
    judge = Verdicts([True, True])
    complete_at = {}

    def is_complete(step, now):
        # The window's last requests finish 0.75 s after it ends.
        return now >= step.window_end + 0.75 and complete_at.setdefault(step.index, now) is not None

    sched = StepSchedule(StepPlan(1, 1, 3.0, 2, 2), judge=judge, is_complete=is_complete, drain_limit_s=30)
    assert sched.tick(0.0) == (1, 1.0)
    step = sched.current
    assert step.index == 1 and step.window_start is None
    assert sched.tick(0.4) == (1, 1.0)  # ramping: no window yet
    sched.users_running(0.5, 0)  # not all users running yet
    assert step.window_start is None
    sched.users_running(0.6, 1)
    assert step.window_start == 0.6 and step.window_end == pytest.approx(3.6)
    assert sched.tick(3.5) == (1, 1.0)  # measuring
    assert sched.tick(3.7) == (1, 1.0)  # draining: requests of the window still running
    assert judge.calls == []
    assert sched.tick(4.4) == (2, 1.0)  # drained at 4.35: judged, next step
    assert judge.calls == [(1, True)] and step.met is True
    sched.users_running(5.0, 2)
    assert sched.tick(8.0) == (2, 1.0)
    assert sched.tick(8.8) is None  # judged; the step at --max-users was the last
    assert sched.stop_reason == "reached --max-users 2"
    assert [s.users for s in sched.steps] == [1, 2]


def test_schedule_stops_after_n_consecutive_broken_steps():
    judge = Verdicts([True, False, True, False, False, True])
    sched = StepSchedule(StepPlan(1, 1, 2.0, 10, 2), judge=judge, is_complete=lambda s, now: True,
                         drain_limit_s=30)
    history = run_schedule(sched)
    # Step 3 met the SLO again, so step 2's breach does not count towards the two in a row.
    assert [users for _, (users, _) in history] == [1, 2, 3, 4, 5]
    assert [s.met for s in sched.steps] == [True, False, True, False, False]
    assert sched.stop_reason == "the SLO was broken for 2 consecutive steps"
    assert capacity_step(sched.steps).users == 3  # the largest step that met the SLO
    assert sched.broken_streak() == 2


def test_schedule_judges_an_undrained_step_after_the_drain_limit():
    judge = Verdicts([False])
    sched = StepSchedule(StepPlan(1, 1, 2.0, 1, 1), judge=judge, is_complete=lambda s, now: False,
                         drain_limit_s=5.0)
    run_schedule(sched)
    step = sched.steps[0]
    assert judge.calls == [(1, False)] and step.complete is False
    assert sched.stop_reason == "the SLO was broken for 1 consecutive step"


def test_no_step_met_means_no_capacity():
    sched = StepSchedule(StepPlan(1, 1, 1.0, 3, 1), judge=Verdicts([False]), is_complete=lambda s, n: True,
                         drain_limit_s=5)
    run_schedule(sched)
    assert capacity_step(sched.steps) is None


# --------------------------------------------------------------------------- windows and merging

def test_window_is_trimmed_inward_to_whole_slices():
    r = window_slices(100.05, 103.05)  # 3 s window starting mid-slice
    assert r[0] * SLICE_S == pytest.approx(100.1) and (r[-1] + 1) * SLICE_S == pytest.approx(103.0)
    assert len(r) * SLICE_S == pytest.approx(2.9)
    assert len(window_slices(100.0, 103.0)) == 30


def fake_environment(slo: tuple[SloCheck, ...]) -> SimpleNamespace:
    profile = SimpleNamespace(slo=slo, name="p", source="x")
    return SimpleNamespace(runner=None, llmsim=SimpleNamespace(settings=SimpleNamespace(profile=profile),
                                                               is_worker=False, is_master=False))


def capacity_settings(**kw) -> CapacitySettings:
    opts = SimpleNamespace(start_users=1, step_users=1, step_time=2.0, max_users=3, stop_after=1, min_capacity=None,
                           max_error_rate=1.0, arrival_rate=None, max_in_flight=10, capacity_report=None, **kw)
    return CapacitySettings.from_options(opts)


def test_only_requests_that_start_inside_the_window_count():
    cap = CapacityRun(fake_environment((SloCheck("itl", 99.0, 10.0),)), capacity_settings())
    cap.schedule.tick(1000.0)
    cap.schedule.users_running(1000.5, 1)  # window [1000.5, 1002.5)
    for t in (1000.0, 1000.45):  # during the ramp
        cap.record(rec(t, itl=(50.0,)))
    for t in (1000.5, 1001.0, 1002.0, 1002.45):  # in the window (the last ends after it)
        cap.record(rec(t))
    cap.record(rec(1002.6, itl=(50.0,)))  # drain: the users keep going, not counted
    cap.place(1003.0)
    stats = cap.stats[1]
    assert stats.run.requests == 4
    assert cap.judge(cap.schedule.current, True) is True
    r = cap.rows[1]
    assert r["requests"] == 4 and r["window_s"] == pytest.approx(2.0)
    assert r["itl_p99"] == pytest.approx(5.0, abs=0.01) and r["meets_slo"] and r["goodput"] == 1.0


def test_ctrl_c_while_predicting_keeps_the_steps_predicted_so_far(monkeypatch):
    """Ctrl-C lands in whichever greenlet runs: during the prediction, it stops predicting, and the report is
    written with the measured steps (no traceback, and no second prediction on the way out)."""
    import llmsim.loadtest.capacity as capacity

    profile = load_profile_file(str(PROFILE_FILE))[0]
    env = SimpleNamespace(runner=None, host="http://x", llmsim=SimpleNamespace(
        is_worker=False, is_master=False,
        settings=SimpleNamespace(profile=profile, max_tokens=20, stream=True, model="m", workload=None,
                                 prompts=[SimpleNamespace(prompt_tokens=10)])))
    cap = CapacityRun(env, capacity_settings())
    measured = summarize(StepStats(), window_s=2.0, slo=profile.slo, max_error_rate=1.0, open_loop=False)
    cap.rows = {i: {"step": i, "users": i, **measured, "complete": True} for i in (1, 2, 3)}
    calls = []

    def predict_step(*args, **kw):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return StepStats()

    monkeypatch.setattr(capacity, "predict_step", predict_step)
    monkeypatch.setattr(capacity, "write_outputs", lambda result, prefix: {})
    predicted = cap.predict()
    assert list(predicted) == [1] and cap.prediction_interrupted and calls == [1, 2]
    cap.prediction_interrupted = False
    calls.clear()
    result = cap.finish()
    assert result["prediction_interrupted"] is True and calls == [1, 2]
    assert "predicted" in result["steps"][0] and "predicted" not in result["steps"][1]
    assert "(prediction interrupted: only the steps predicted before Ctrl-C)" in format_table(result)
    assert cap.finish() is result and calls == [1, 2]  # on the way out (quitting): the same result, not again


def test_activity_spreads_time_in_flight_and_tokens_over_slices():
    r = rec(10.05, ttft=50.0, itl=(50.0,) * 5, output_tokens=5)  # in flight 10.05-10.35, decoding from 10.10
    got = {key: (ns / 1e9, micros / 1e6) for key, ns, micros in activity(r)}
    assert sorted(got) == [100, 101, 102, 103]
    assert [got[k][0] for k in sorted(got)] == pytest.approx([0.05, 0.1, 0.1, 0.05])
    assert [got[k][1] for k in sorted(got)] == pytest.approx([0.0, 2.0, 2.0, 1.0])
    assert sum(micros for _, _, micros in activity(r)) == 5_000_000  # exactly the request's tokens
    failed = rec(20.0, ok=False)
    assert [(k, m) for k, _, m in activity(failed)] == [(200, 0)]


def test_a_slice_book_makes_each_slice_once(monkeypatch):
    """A slice's StepStats (dozens of histograms) is built when the slice first appears, not for every
    request that meets it: predicting a 200-user step went from 3.7 to 1.5 s."""
    import llmsim.loadtest.steps as steps

    made = []
    real = steps.StepStats
    monkeypatch.setattr(steps, "StepStats", lambda: made.append(1) or real())
    book = SliceBook()
    for i in range(200):
        book.add(rec(100.0 + i * 0.001, ttft=100.0, itl=(100.0,) * 6), ())
    assert len(made) == len(book.slices) and len(book.slices) < 20


def test_throughput_is_exact_whatever_the_users_phase():
    """Users that all start just before the window: counting whole requests gives each 2 in 2 s, not 2.857."""
    book = SliceBook()
    users, period, window = (3, 0.7, (100.0, 102.0))
    for _ in range(users):
        t = 99.99
        while t < 103.0:
            book.add(rec(t, ttft=100.0, itl=(100.0,) * 6, output_tokens=7), ())  # E2E 0.7 s
            t += period
    stats = StepStats()
    slices = window_slices(*window)
    for key, part in book.pop_past(200.0):
        if key in slices:
            stats.merge(part)
    assert stats.run.requests == users * 2  # each user started 2 inside: at 100.69 and 101.39
    row = summarize(stats, window_s=2.0, slo=(), max_error_rate=0.01, open_loop=False)
    assert row["in_flight"] == pytest.approx(users)
    assert row["rps"] == pytest.approx(users / period)
    # Tokens actually generated in the window: decodes 100.09-100.69 and 100.79-101.39, and 0.51 s of 101.49-102.09.
    assert row["output_tok_s"] == pytest.approx(users * (7 + 7 + 7 * 0.51 / 0.6) / 2.0, rel=1e-6)
    assert stats.run.requests / 2.0 == pytest.approx(0.7 * users / period)  # what counting would have said


def test_a_slice_is_placed_only_once_it_lies_in_the_past():
    cap = CapacityRun(fake_environment(()), capacity_settings())
    cap.schedule.tick(1000.0)
    cap.schedule.users_running(1000.0, 1)
    cap.record(rec(1001.01))
    cap.place(1001.05)  # its slice [1001.0, 1001.1) is not over yet: a boundary could still fall in it
    assert 1 not in cap.stats and cap.book
    cap.place(1001.1)
    assert cap.stats[1].run.requests == 1 and not cap.book


def test_slices_merge_exactly_across_workers():
    slo = (SloCheck("itl", 99.0, 6.0),)
    rng = random.Random(7)
    records = [(rec(1000 + rng.random() * 5, ttft=rng.uniform(40, 60), itl=tuple(rng.uniform(4, 7) for _ in range(5)),
                    output_tokens=6), rng.random() < 0.5) for _ in range(200)]
    whole, workers = SliceBook(), [SliceBook(), SliceBook()]
    for i, (r, _) in enumerate(records):
        whole.add(r, slo)
        workers[i % 2].add(r, slo)
    master = SliceBook()
    for w in workers:
        master.merge_wire(json.loads(json.dumps(w.take_wire())))  # what travels, msgpack-safe
    assert not workers[0] and sorted(master.slices) == sorted(whole.slices)
    for key, part in whole.slices.items():
        got = master.slices[key]
        assert got.run.hist == part.run.hist and got.run.good == part.run.good
        assert got.run.requests == part.run.requests and got.run.output_tokens == part.run.output_tokens


def test_in_flight_tracks_the_oldest_start():
    f = InFlight()
    assert f.oldest() is None
    with f.track(10.0):
        with f.track(5.0):
            assert f.oldest() == 5.0 and len(f) == 2
        assert f.oldest() == 10.0
    assert f.oldest() is None


def test_step_verdict_error_rate_and_slo():
    slo = (SloCheck("ttft", 99.0, 100.0), SloCheck("itl", 99.0, 10.0))
    s = StepStats()
    for i in range(98):
        s.add(rec(i * 0.01, itl=(8.0, 9.0)), slo)
    row = summarize(s, window_s=1.0, slo=slo, max_error_rate=0.01, open_loop=False)
    assert row["meets_slo"] and row["broken"] == [] and row["error_rate"] == 0.0
    s.add(rec(1.0, ok=False), slo)
    s.add(rec(1.1, ok=False), slo)
    row = summarize(s, window_s=1.0, slo=slo, max_error_rate=0.01, open_loop=False)
    assert row["error_rate"] == pytest.approx(0.02) and row["broken"] == ["error_rate"]
    s.add(rec(1.2, itl=(30.0, 30.0, 30.0)), slo)  # 3 of 199 ITL samples: the p99 is 30
    row = summarize(s, window_s=1.0, slo=slo, max_error_rate=0.05, open_loop=False)
    assert row["broken"] == ["itl_p99_ms"]
    assert {c["key"]: c["met"] for c in row["slo"]} == {"ttft_p99_ms": True, "itl_p99_ms": False}
    empty = summarize(StepStats(), window_s=1.0, slo=slo, max_error_rate=0.01, open_loop=False)
    assert not empty["meets_slo"] and "no_success" in empty["broken"]


# --------------------------------------------------------------------------- open loop

def test_poisson_arrivals_are_seeded_and_have_the_rate():
    a = poisson_arrivals(5.0, random.Random(42), 100.0)
    b = poisson_arrivals(5.0, random.Random(42), 100.0)
    first = [next(a) for _ in range(10)]
    assert first == [next(b) for _ in range(10)] and first == sorted(first) and first[0] > 100.0
    rng, rate, horizon = random.Random(1), 5.0, 2000.0
    times = []
    for t in poisson_arrivals(rate, rng, 0.0):
        if t >= horizon:
            break
        times.append(t)
    n, mean = len(times), rate * horizon  # Poisson: variance = mean
    assert abs(n - mean) < 4 * math.sqrt(mean)
    gaps = [b - a for a, b in zip(times, times[1:])]
    gmean = sum(gaps) / len(gaps)
    gsd = math.sqrt(sum((g - gmean) ** 2 for g in gaps) / len(gaps))
    assert abs(gmean - 1 / rate) < 4 * (1 / rate) / math.sqrt(len(gaps))
    assert abs(gsd / gmean - 1.0) < 0.05  # exponential gaps: coefficient of variation 1
    with pytest.raises(ValueError):
        next(poisson_arrivals(0.0, rng, 0.0))


def test_latency_from_the_intended_send_time():
    r = rec(10.080, ttft=50.0, itl=(5.0, 7.0))
    assert scheduled_delay_ms(10.080, 10.0) == pytest.approx(80.0)
    assert scheduled_delay_ms(10.0, 10.080) == 0.0  # early never counts as negative
    seen = from_intended(r, 10.0)
    assert seen.ttft_ms == pytest.approx(130.0) and seen.e2e_ms == pytest.approx(r.e2e_ms + 80.0)
    assert seen.itl_ms == r.itl_ms and seen.tpot_ms == r.tpot_ms  # decoding is not delayed
    assert seen.start_time == 10.0 and seen.end_time == pytest.approx(r.end_time)
    assert from_intended(r, 10.080) is r

    slo = (SloCheck("ttft", 99.0, 100.0),)
    s = StepStats()
    s.add(r, slo, intended=10.0)  # 50 ms service TTFT, 130 ms from the intended send: not good
    s.add(rec(11.0, ttft=50.0), slo, intended=11.0)  # sent on time: good
    assert s.run.good == 1
    assert s.run.hist["ttft"].percentile(100) == pytest.approx(50.0, abs=0.01)
    assert s.intended["ttft"].percentile(100) == pytest.approx(130.0, abs=0.01)
    assert s.delay.percentile(100) == pytest.approx(80.0, abs=0.01)
    closed = summarize(s, window_s=1.0, slo=slo, max_error_rate=0.0, open_loop=False)
    opened = summarize(s, window_s=1.0, slo=slo, max_error_rate=0.0, open_loop=True)
    assert closed["meets_slo"] and not opened["meets_slo"]
    assert opened["ttft_intended_p99"] == pytest.approx(130.0, abs=0.01) and opened["ttft_p99"] < 51


def test_open_loop_source_sends_every_arrival_and_queues_beyond_max_in_flight():
    """Arrivals every ~10 ms, each request takes 30 ms, one may be in flight: requests queue, none is dropped."""
    sent: list[tuple[float, float]] = []
    tracked = InFlight()
    busy, most = [], []

    def send(client, intended):
        busy.append(1)
        most.append(len(busy))
        sent.append((intended, time.time()))
        gevent.sleep(0.03)
        busy.pop()

    clients, closed = [], []

    def new_client():
        clients.append(SimpleNamespace(close=lambda: closed.append(1)))
        return clients[-1]

    source = OpenLoopSource(100.0, 1, new_client=new_client, send=send, track=tracked.track, rng=random.Random(3))
    g = gevent.spawn(source.run)
    gevent.sleep(0.5)
    g.kill()
    backlog = len(tracked)
    source.stop()
    assert len(sent) >= 5 and max(most) == 1 and len(clients) == 1  # one in flight, one connection reused
    assert all(actual >= intended for intended, actual in sent)
    # Arrivals outpace service, so requests wait for the one slot: some much longer than the first did.
    # (Not "the last waited longest": a new arrival may take a slot just freed before older waiters wake.)
    assert max(actual - intended for intended, actual in sent) > 0.05 > sent[0][1] - sent[0][0]
    assert backlog > 0  # arrivals still waiting were tracked in flight, not dropped
    assert closed == [1]


def test_capacity_user_runs_only_its_tracked_task():
    from llmsim.loadtest.capacity import CapacityUser

    class Sub(CapacityUser):
        pass

    # Not LlmUser.complete as well: every request must be tracked in flight and filed by step.
    assert CapacityUser.tasks == [CapacityUser.run_requests] and Sub.tasks == [CapacityUser.run_requests]


def test_importing_the_capacity_module_leaves_other_locust_runs_alone():
    from llmsim.loadtest.capacity import CapacityUser, is_capacity_test
    from llmsim.loadtest.users import ChatCompletionsUser

    class Chat(ChatCompletionsUser):
        pass

    class Cap(CapacityUser):
        pass

    assert not is_capacity_test(SimpleNamespace(user_classes=[Chat]))
    assert is_capacity_test(SimpleNamespace(user_classes=[Chat, Cap]))


# --------------------------------------------------------------------------- prediction

@pytest.fixture(scope="module")
def profile():
    return load_profile_file(str(PROFILE_FILE))[0]


def formula_itl_ms(profile, users: int) -> float:
    cap = profile.capacity
    return profile.latency.itl.mean_ms * slowdown_multiplier(min(users, cap.max_concurrent), cap.max_concurrent,
                                                             cap.slowdown_at_full)


def predicted_knee(profile, ladder: list[int], window_s: float) -> int:
    """The largest step whose ITL p99, simulated with llmsim's scheduler, meets the SLO (the formula agrees)."""
    limit = {c.key: c.limit_ms for c in profile.slo}["itl_p99_ms"]
    knee = 0
    for users in ladder:
        results = simulate_closed_loop(profile, users, window_s, output_tokens=64)
        itls = sorted(g * 1000 for r in results for g in r.itls_s)
        p99 = itls[math.ceil(0.99 * len(itls)) - 1]
        assert p99 == pytest.approx(formula_itl_ms(profile, users), rel=1e-6)
        if p99 <= limit:
            knee = users
    return knee


def test_the_profile_predicts_the_knee_at_two_users(profile):
    assert [round(formula_itl_ms(profile, n), 2) for n in (1, 2, 3, 4, 5)] == [5.0, 8.33, 11.67, 15.0, 15.0]
    assert predicted_knee(profile, [1, 2, 3, 4, 5, 6], 3.0) == 2


def test_predict_step_judges_the_simulation_like_a_measured_step(profile):
    shape = TokenShape(prompt_tokens=0, visible_tokens=64, reasoning_tokens=0)
    rows = {}
    for users in (1, 2, 3, 6):
        stats = predict_step(profile, users, 3.0, shape)
        rows[users] = summarize(stats, window_s=3.0, slo=profile.slo, max_error_rate=0.01, open_loop=False)
    for users in (1, 2, 3):
        assert rows[users]["itl_p99"] == pytest.approx(formula_itl_ms(profile, users), abs=0.01)
        assert rows[users]["ttft_p99"] == pytest.approx(50.0, abs=0.01)
    assert [rows[u]["meets_slo"] for u in (1, 2, 3, 6)] == [True, True, False, False]
    assert rows[6]["ttft_p99"] > 500  # 6 users on 4 slots: the queue wait is in TTFT
    # One user: back to back requests of 50 + 63 * 5 ms, always one in flight.
    assert rows[1]["in_flight"] == pytest.approx(1.0) and rows[1]["rps"] == pytest.approx(1 / 0.365)
    assert rows[1]["output_tok_s"] == pytest.approx(64 / 0.365, rel=0.02)  # the window cuts one decode
    open_stats = predict_step(profile, 2, 3.0, shape, arrival_rate=1.0)
    assert open_stats.intended["ttft"].count == open_stats.run.ok > 0


def test_token_shape_comes_from_the_runs_most_common_request(profile):
    assert TokenShape.from_mix({(10, 64, 64, -1): 3, (10, 5, 5, -1): 1}, profile, default_visible=1,
                               default_prompt=0) == TokenShape(10, 64, 0)
    assert TokenShape.from_mix({}, profile, default_visible=32, default_prompt=7) == TokenShape(7, 32, 0)


# --------------------------------------------------------------------------- outputs

def sample_result(profile, *, open_loop: bool = False, min_capacity: int | None = None) -> dict:
    settings = capacity_settings()
    if open_loop or min_capacity:
        settings = CapacitySettings(settings.plan, min_capacity, settings.max_error_rate,
                                    1.0 if open_loop else None, 10, "x")
    rows, predicted = {}, {}
    shape = TokenShape(0, 64, 0)
    for i, users in enumerate((1, 2, 3), 1):
        stats = predict_step(profile, users, 3.0, shape, arrival_rate=settings.arrival_rate)
        row = summarize(stats, window_s=3.0, slo=profile.slo, max_error_rate=0.01, open_loop=open_loop)
        rows[i] = {"step": i, "users": users, "offered_rps": users * 1.0 if open_loop else None, **row,
                   "complete": True}
        predicted[i] = row
    return build_result(rows, predicted, settings=settings, profile=profile, model="m", host="h",
                        stop_reason="reached --max-users 3")


def test_result_table_csv_json_and_charts(tmp_path, profile):
    result = sample_result(profile, min_capacity=3)
    assert result["capacity"]["users"] == 2 and result["predicted_capacity"] == {"users": 2}
    assert result["min_capacity_met"] is False
    files = write_outputs(result, str(tmp_path / "out" / "cap"))
    rows = list(csv.DictReader(open(files["csv"])))
    assert [r["users"] for r in rows] == ["1", "2", "3"]
    assert [r["meets_slo"] for r in rows] == ["true", "true", "false"] and rows[2]["broken"] == "itl_p99_ms"
    assert float(rows[1]["itl_p99_ms"]) == pytest.approx(8.333, abs=0.01)
    assert rows[0]["ttft_intended_p99_ms"] == ""  # closed loop
    data = json.loads(Path(files["json"]).read_text())
    assert data["capacity"]["users"] == 2 and data["files"] == files
    assert Path(files["png"]).read_bytes().startswith(PNG_SIGNATURE)
    svg = ET.parse(files["svg"]).getroot()
    assert svg.tag.endswith("svg") and len(svg.findall(".//{http://www.w3.org/2000/svg}polyline")) == 6
    table = format_table(result)
    assert "capacity: 2 users (step 2" in table and "BROKEN (itl_p99_ms)" in table
    assert "--min-capacity 3: NOT met (exit code 3)" in table


def test_open_loop_table_shows_both_latencies(profile):
    result = sample_result(profile, open_loop=True)
    table = format_table(result)
    assert "offered" in table and "svc p99" in table and "from the intended send time" in table
    assert result["mode"] == "open" and result["steps"][0]["ttft_intended_p99"] is not None
    assert "from intended send" in render_svg(result)


def test_nice_ticks():
    assert nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(0, 16.2) == [0, 5, 10, 15, 20]
    assert nice_ticks(1, 3) == [1, 1.5, 2, 2.5, 3]
    assert nice_ticks(1, 3, integer=True) == [1, 2, 3]  # users


# --------------------------------------------------------------------------- docs

def capacity_docs() -> str:
    """The docs page on capacity tests (docs/capacity.md)."""
    return (REPO / "docs" / "capacity.md").read_text(encoding="utf-8")


def test_docs_option_table_matches_the_parser():
    import argparse

    from llmsim.loadtest.capacity import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.dest != "help"}
    rows = [line.split("|")[1:3] for line in capacity_docs().splitlines() if line.startswith("| `--")]
    documented = {}
    for cell, default in rows:
        documented[cell.strip().strip("`").split()[0]] = default.strip()
    assert set(documented) == set(actions)
    for name, default in documented.items():
        value = actions[name].default
        if value is None:
            assert default == "—" or name == "--capacity-report", name
        elif name == "--step-time":
            assert default == "30s" and value == 30.0
        else:
            assert default == f"{value:g}", name


def test_docs_example_profile_predicts_what_the_docs_show():
    """docs/capacity-example.yaml: 8 slots; the table and chart in docs/capacity.md show capacity 8."""
    example = load_profile_file(str(REPO / "docs" / "capacity-example.yaml"))[0]
    shape = TokenShape(prompt_tokens=140, visible_tokens=64, reasoning_tokens=0)
    met = {users: summarize(predict_step(example, users, 60.0, shape), window_s=60.0, slo=example.slo,
                            max_error_rate=0.01, open_loop=False)["meets_slo"] for users in (2, 4, 6, 8, 10, 12)}
    assert met == {2: True, 4: True, 6: True, 8: True, 10: False, 12: False}
    text = capacity_docs()
    assert "capacity: 8 users" in text and "profile my-deployment predicts: 8 users" in text
    assert (REPO / "docs" / "capacity-example.png").read_bytes().startswith(PNG_SIGNATURE)


# --------------------------------------------------------------------------- real headless runs

def run_capacity(tmp_path: Path, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, dict | None]:
    prefix = tmp_path / "cap"
    cmd = [sys.executable, "-m", "locust", "-f", CAPACITY, "--headless", "--capacity-report", str(prefix), *args]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    out = prefix.with_suffix(".json")
    return proc, (json.loads(out.read_text()) if out.exists() else None)


STEPS = ["--llm-profile", str(PROFILE_FILE), "--start-users", "1", "--step-users", "1", "--step-time", "3",
         "--max-users", "6", "--stop-after", "2"]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("capacity-local")
    return tmp, *run_capacity(tmp, *STEPS)


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory):
    """Two worker processes on a private master port, so concurrent Locust runs on the machine do not join."""
    tmp = tmp_path_factory.mktemp("capacity-processes")
    port = str(free_port())
    return tmp, *run_capacity(tmp, *STEPS, "--processes", "2", "--master-port", port, "--master-bind-port", port,
                              "--min-capacity", "5")


def check_knee(report: dict, profile) -> None:
    ladder = [s["users"] for s in report["steps"]]
    assert ladder == list(range(1, len(ladder) + 1))
    predicted = predicted_knee(profile, ladder, 3.0)
    assert predicted == 2
    assert abs(report["capacity"]["users"] - predicted) <= 1, report["steps"]
    assert report["predicted_capacity"] == {"users": predicted}
    assert report["capacity"]["users"] == max(s["users"] for s in report["steps"] if s["meets_slo"])
    # It stopped because the last two steps broke the SLO, and they are the ones past the knee.
    assert report["stop_reason"] == "the SLO was broken for 2 consecutive steps"
    assert [s["meets_slo"] for s in report["steps"][-2:]] == [False, False]
    for s in report["steps"]:
        assert s["complete"] and 2.8 <= s["window_s"] <= 3.0 + 1e-9
        assert s["requests"] > 0 and s["failed"] == 0
        # Closed loop: every user is in flight but for the moments between two requests; Little's law.
        assert 0.85 * s["users"] <= s["in_flight"] <= s["users"] + 1e-6
        assert s["rps"] == pytest.approx(s["in_flight"] / (s["metrics"]["e2e"]["mean"] / 1000))
        if s["users"] > 2:
            assert "itl_p99_ms" in s["broken"]
        assert s["itl_p50"] == pytest.approx(formula_itl_ms(profile, s["users"]), rel=0.25)
        assert s["predicted"]["itl_p99"] == pytest.approx(formula_itl_ms(profile, s["users"]), abs=0.01)


@pytest.mark.slow
def test_local_run_finds_the_predicted_knee(local_run, profile):
    tmp, proc, report = local_run
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_knee(report, profile)
    assert report["mode"] == "closed" and report["profile"] == "lt-capacity"
    assert report["host"].startswith("http://127.0.0.1:")  # the embedded server served the profile


@pytest.mark.slow
def test_local_run_exits_0_although_the_slo_broke(local_run):
    tmp, proc, report = local_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["min_capacity"] is None and report["min_capacity_met"] is None


@pytest.mark.slow
def test_local_run_writes_csv_json_and_charts(local_run):
    tmp, proc, report = local_run
    rows = list(csv.DictReader(open(tmp / "cap.csv")))
    assert [int(r["users"]) for r in rows] == [s["users"] for s in report["steps"]]
    assert [r["meets_slo"] == "true" for r in rows] == [s["meets_slo"] for s in report["steps"]]
    assert [float(r["itl_p99_ms"]) for r in rows] == pytest.approx([s["itl_p99"] for s in report["steps"]],
                                                                   abs=1e-3)
    assert (tmp / "cap.png").read_bytes().startswith(PNG_SIGNATURE)
    assert ET.parse(tmp / "cap.svg").getroot().tag.endswith("svg")
    out = proc.stdout
    for needle in ("Capacity test: model gpt-5, profile lt-capacity", "TTFT p99", "ITL p99", "goodput",
                   f"capacity: {report['capacity']['users']} users", "profile lt-capacity predicts: 2 users",
                   "stopped: the SLO was broken for 2 consecutive steps", "cap.png"):
        assert needle in out, needle
    assert "Predicting the" in proc.stderr and "Predicted in" in proc.stderr  # no silent minute at the end
    # The whole-run summary is printed, but not the chat-style verdict table (it would mix every step's load).
    assert "LLM load test:" in out and "RESULT" not in out


@pytest.mark.slow
def test_processes_merge_steps_and_min_capacity_sets_the_exit_code(distributed_run, profile):
    tmp, proc, report = distributed_run
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_knee(report, profile)
    assert proc.returncode == 3  # --min-capacity 5 not reached
    assert report["min_capacity"] == 5 and report["min_capacity_met"] is False
    assert "--min-capacity 5: NOT met (exit code 3)" in proc.stdout


@pytest.mark.slow
def test_open_loop_run_reports_latency_from_the_intended_send_time(tmp_path):
    """Poisson arrivals against an uncapped profile: the step meets its SLO; --min-capacity 1 is reached (exit 0)."""
    proc, report = run_capacity(tmp_path, "--llm-profile", str(PROFILES / "steady.yaml"), "--start-users", "1",
                                "--max-users", "1", "--step-time", "3", "--arrival-rate", "3", "--min-capacity", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["mode"] == "open" and report["arrival_rate_per_user"] == 3.0
    (step,) = report["steps"]
    assert step["offered_rps"] == 3.0 and step["requests"] > 0 and step["meets_slo"]
    assert step["ttft_intended_p50"] >= step["ttft_p50"] and step["ttft_intended_p99"] >= step["ttft_p99"]
    assert step["metrics"]["ttft_intended"]["count"] == step["metrics"]["ttft"]["count"]
    assert report["capacity"]["users"] == 1 and report["min_capacity_met"] is True
    assert "svc p99" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("args, needle", [
    (["--start-users", "5", "--max-users", "2"], "--start-users 5 is more than --max-users 2"),
    (["--step-time", "soon"], "--step-time"),
    (["--llm-profile", str(PROFILES / "mini.yaml")], "has no slo: section"),
])
def test_bad_options_give_one_line_errors(tmp_path, args, needle):
    proc, report = run_capacity(tmp_path, *args, timeout=30)
    assert proc.returncode == 2 and report is None
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and needle in errors[0], proc.stderr


@pytest.mark.slow
def test_run_time_ends_the_run_with_the_steps_judged_so_far(tmp_path):
    """-t/--run-time is read by the step shape: with 3 s steps up to 50 users, a 7 s run stops after about two
    steps, reports them, and says it was interrupted (Locust alone would ignore -t for a shape)."""
    started = time.monotonic()
    proc, report = run_capacity(tmp_path, "--llm-profile", str(PROFILE_FILE), "--start-users", "1", "--step-users",
                                "1", "--step-time", "3", "--max-users", "50", "-t", "7s", timeout=60)
    took = time.monotonic() - started
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["stop_reason"] == "interrupted before the last verdict"
    # Steps judged so far: about two (none, if a busy machine was slow to judge the first); never the 50 asked.
    assert len(report["steps"]) <= 3 and took < 45
    assert "will be ignored: --run-time" not in proc.stderr


def test_an_unwritable_capacity_report_stops_the_run_before_it_starts(tmp_path):
    (tmp_path / "afile").write_text("a file, where the report's directory would go")
    proc, _ = run_capacity(tmp_path, "--llm-profile", str(PROFILE_FILE), "--capacity-report", "afile/cap",
                           timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--capacity-report: cannot write afile/cap.json" in errors[0], proc.stderr
