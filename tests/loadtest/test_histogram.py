"""Histogram resolution, percentile math and exact merging."""

from __future__ import annotations

import random

import pytest

from llmsim.loadtest.aggregate import RunStats
from llmsim.loadtest.histogram import Histogram, bucket_bounds, bucket_index
from llmsim.loadtest.metrics import RequestRecord


def exact_nearest_rank(values, pct):
    s = sorted(values)
    rank = max(1, round(pct * len(s) * 1000) // 100000 + (round(pct * len(s) * 1000) % 100000 > 0))  # exact ceil
    return s[rank - 1]


def test_resolution_below_and_above_100ms():
    for v in (0.0, 0.004, 1.2345, 19.999, 20.0, 99.99):
        lo, hi = bucket_bounds(bucket_index(v))
        assert lo <= v + 1e-9 and v < hi + 1e-9
        assert hi - lo <= 0.1  # the requirement: <= 0.1 ms below 100 ms
    for v in (100.0, 250.0, 12345.6):
        lo, hi = bucket_bounds(bucket_index(v))
        assert lo <= v * (1 + 1e-12) and v < hi * (1 + 1e-12)
        assert (hi - lo) / lo <= 0.0011


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_match_exact_nearest_rank(seed):
    rng = random.Random(seed)
    values = [rng.lognormvariate(3.0, 1.0) for _ in range(5000)]  # spans 1 ms .. seconds
    h = Histogram()
    h.record_many(values)
    for p in (50, 90, 95, 99, 99.9):
        exact = exact_nearest_rank(values, p)
        got = h.percentile(p)
        assert abs(got - exact) <= (0.005 if exact < 100 else exact * 0.0006), (p, got, exact)
    assert h.mean == pytest.approx(sum(values) / len(values), rel=1e-9)
    assert h.percentiles([50, 99]) == {50: h.percentile(50), 99: h.percentile(99)}


def test_constant_values_are_exact():
    h = Histogram()
    for _ in range(100):
        h.record(20.0)
    assert h.percentile(50) == 20.0 and h.percentile(99.9) == 20.0 and h.mean == pytest.approx(20.0)


def test_empty_histogram():
    h = Histogram()
    assert h.percentile(50) is None and h.mean is None
    assert Histogram.from_wire(h.to_wire()) == h


def test_merge_is_exact_and_order_free():
    rng = random.Random(7)
    values = [rng.uniform(0, 3000) for _ in range(3000)]
    whole = Histogram()
    whole.record_many(values)
    parts = [Histogram() for _ in range(3)]
    for i, v in enumerate(values):
        parts[i % 3].record(v)
    merged = Histogram()
    for p in reversed(parts):
        merged.merge(Histogram.from_wire(p.to_wire()))  # through the wire form, as workers send it
    assert merged == whole
    assert merged.count == 3000 and merged.sum_ns == whole.sum_ns
    for p in (50, 99, 99.9):
        assert merged.percentile(p) == whole.percentile(p)


def _rec(i: int, ok: bool = True) -> RequestRecord:
    rec = RequestRecord(start_time=1000.0 + i, end_time=1000.5 + i, e2e_ms=500.0 + i, status=200,
                        error_kind=None if ok else "http_500", ttft_ms=100.0 + i if ok else None,
                        itl_ms=[10.0, 11.0] if ok else [], tpot_ms=10.5 if ok else None,
                        output_tokens=3 if ok else 0, prompt_tokens=8, reasoning_tokens=None,
                        kernel_stamps=i % 3 == 0)
    if ok and i % 4:
        from llmsim.loadtest.metrics import apply_trace

        apply_trace(rec, [0.1, 0.11, 0.121], {"ttft_ms": 99.9 + i - 0.01 * i, "gaps_ms": [10.0 - 0.01 * i, 11.0],
                                              "planned_ttft_ms": 99.9, "planned_gaps_ms": [10.0, 10.0]})
    return rec


def test_runstats_merge_equals_single_process():
    records = [_rec(i, ok=i % 5 != 0) for i in range(40)]
    whole = RunStats()
    parts = [RunStats(), RunStats()]
    for i, r in enumerate(records):
        whole.add(r, good=i % 2 == 0)
        parts[i % 2].add(r, good=i % 2 == 0)
    merged = RunStats()
    for p in parts:
        merged.merge(RunStats.from_wire(p.to_wire()))
    assert merged.requests == 40 and merged.ok == 32 and merged.errors == {"http_500": 8}
    assert merged.output_tokens == whole.output_tokens == 96
    assert merged.good == whole.good
    assert merged.window_s == whole.window_s == pytest.approx(39.5)
    assert merged.busy_ns == whole.busy_ns
    assert merged.concurrency == pytest.approx(sum(500.0 + i for i in range(40)) / 1000 / 39.5)
    assert merged.mix == whole.mix == {(8, 3, 3, -1): 32}
    for m in ("ttft", "itl", "tpot", "e2e"):
        assert merged.hist[m] == whole.hist[m]
    assert merged.metric_summary("itl")["p50"] == pytest.approx(10.0, abs=0.01)
    assert merged.kernel_stamped == whole.kernel_stamped and merged.timestamps == "mixed"
    assert merged.traced == whole.traced == 24
    for m in ("ttft", "itl"):
        assert merged.error[m] == whole.error[m] and merged.pacing[m] == whole.pacing[m]
    assert merged.error["itl"].count == 48 and merged.error["itl"].percentile(100) <= 0.4 + 0.01


def test_trace_that_does_not_fit_compares_ttft_only():
    from llmsim.loadtest.metrics import apply_trace

    rec = _rec(1)
    rec.traced, rec.ttft_error_ms, rec.gap_errors_ms = False, None, []
    apply_trace(rec, [0.1, 0.11, 0.121], {"ttft_ms": 95.0, "gaps_ms": [10.0], "planned_ttft_ms": 90.0,
                                          "planned_gaps_ms": [10.0]})
    assert rec.traced and rec.trace_mismatch and rec.gap_errors_ms == []
    assert rec.ttft_error_ms == pytest.approx(6.0) and rec.server_ttft_vs_plan_ms == pytest.approx(5.0)
    rec = _rec(1)
    rec.traced = False
    apply_trace(rec, [0.1], {"ttft_ms": "soon", "gaps_ms": []})  # not a trace: ignored
    assert not rec.traced


def test_record_many_equals_record_one_by_one():
    import random

    rng = random.Random(3)
    values = [rng.choice([0.0, -1.0, 99.999, 100.0, 5000.0]) if rng.random() < 0.1 else rng.expovariate(0.05)
              for _ in range(5000)]
    one, many = Histogram(), Histogram()
    for v in values:
        one.record(v)
    many.record_many(values[:10])
    many.record_many(iter(values[10:]))
    assert one == many and one.sum_ns == many.sum_ns


def test_signed_histogram_percentiles_and_merge():
    from llmsim.loadtest.histogram import SignedHistogram

    values = [-3.0, -1.0, -0.5, 0.0, 0.2, 0.4, 2.0, 7.0]
    h = SignedHistogram()
    h.record_many(values)
    assert h.count == 8 and h.mean == pytest.approx(sum(values) / 8)
    assert h.percentile(1) == pytest.approx(-3.0, abs=0.01)
    assert h.percentile(25) == pytest.approx(-1.0, abs=0.01)  # nearest rank 2
    assert h.percentile(50) == pytest.approx(0.0, abs=0.01)  # rank 4
    assert h.percentile(100) == pytest.approx(7.0, abs=0.01)
    assert h.abs_percentile(50) == pytest.approx(0.5, abs=0.01)  # |values| sorted: 0, .2, .4, .5, ...
    a, b = SignedHistogram(), SignedHistogram()
    a.record_many(values[:3])
    b.record_many(values[3:])
    a.merge(SignedHistogram.from_wire(b.to_wire()))
    assert a == h


def test_one_nearest_rank_definition():
    from llmsim.loadtest.histogram import nearest_rank, percentile_of_sorted
    from llmsim.loadtest.scoring import _stats_of

    assert [nearest_rank(p, 10) for p in (0, 10, 50, 90, 99, 100)] == [1, 1, 5, 9, 10, 10]
    assert nearest_rank(99, 100) == 99 and nearest_rank(99.9, 1000) == 999 and nearest_rank(29, 100) == 29
    rng = random.Random(7)
    values = [rng.lognormvariate(3, 0.5) for _ in range(2001)]
    s = sorted(values)
    h = Histogram()
    h.record_many(values)
    stats = _stats_of(values)
    for p in (50.0, 90.0, 99.0, 99.9):
        assert percentile_of_sorted(s, p) == exact_nearest_rank(values, p)
        lo, hi = bucket_bounds(bucket_index(percentile_of_sorted(s, p)))
        assert h.percentile(p) == pytest.approx(percentile_of_sorted(s, p), abs=(hi - lo) / 2 + 1e-9)
        assert h.percentiles([p])[p] == h.percentile(p)
    assert (stats["p50"], stats["p90"], stats["p99"]) == tuple(percentile_of_sorted(s, p) for p in (50, 90, 99))


def test_one_point_distribution_test():
    from llmsim.latency import Distribution
    from llmsim.loadtest.scoring import _sum_draws

    rng = random.Random(1)
    for d in (Distribution("constant", 5.0), Distribution("normal", 5.0, 0.0), Distribution("lognormal", 5.0, 0.0),
              Distribution("lognormal", 0.0, 0.0)):
        assert d.is_point and d.sample(rng) == 5.0 * (d.mean_ms > 0) and d.quantile(0.99) == d.mean_ms
        assert _sum_draws(d, 1000, rng) == 1000 * d.mean_ms
    for d in (Distribution("normal", 5.0, 1.0), Distribution("lognormal", 5.0, 1.0)):
        assert not d.is_point and d.quantile(0.99) > d.mean_ms
