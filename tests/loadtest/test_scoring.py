"""Expected values from profiles, tolerance parsing, verdicts, SLO checks and goodput."""

from __future__ import annotations

import pytest

from llmsim.latency import Distribution, LatencyProfile
from llmsim.loadtest.aggregate import RunStats
from llmsim.loadtest.metrics import RequestRecord
from llmsim.loadtest.scoring import (FAIL, PASS, SKIP, Tolerance, ToleranceError, expected_values, judge,
                                     min_samples, request_meets_slo, score)
from llmsim.profiles import ModelProfile, SloCheck


def profile(ttft=Distribution("constant", 200.0), itl=Distribution("constant", 20.0), prefill=None, reasoning=0.0,
            slo=(), chunk=1) -> ModelProfile:
    return ModelProfile(name="t", latency=LatencyProfile(ttft=ttft, itl=itl, prefill_tokens_per_s=prefill,
                                                         reasoning_tokens_per_output_token=reasoning),
                        slo=tuple(slo), chunk_tokens=chunk)


@pytest.mark.parametrize("text, abs_ms, rel", [
    ("10%,5ms", 5.0, 0.10), ("5ms,10%", 5.0, 0.10), ("15%", 5.0, 0.15), ("2ms", 2.0, 0.10), ("0.2", 5.0, 0.2),
    (" 1.5 ms , 0.5% ", 1.5, 0.005),
])
def test_tolerance_parse(text, abs_ms, rel):
    t = Tolerance.parse(text)
    assert (t.abs_ms, t.rel) == (abs_ms, pytest.approx(rel))


@pytest.mark.parametrize("bad", ["", "abc", "5", "10%,5ms,1", "-3ms", "5s"])
def test_tolerance_rejects(bad):
    with pytest.raises(ToleranceError):
        Tolerance.parse(bad)


def test_allowed_is_the_larger_of_abs_and_rel():
    t = Tolerance(abs_ms=5.0, rel=0.1)
    assert t.allowed(20.0) == 5.0
    assert t.allowed(200.0) == pytest.approx(20.0)


def test_constant_profile_expected_values_are_exact():
    # 10 visible tokens, prompt 100, no reasoning: TTFT 200, ITL 20, E2E 200 + 9*20, TPOT 20.
    exp = expected_values(profile(), {(100, 10, 10, 0): 5})
    assert exp["ttft"] == {"mean": 200.0, "p50": 200.0, "p90": 200.0, "p99": 200.0}
    assert exp["itl"]["p99"] == 20.0
    assert exp["e2e"]["p50"] == pytest.approx(380.0)
    assert exp["tpot"]["mean"] == pytest.approx(20.0)


def test_prefill_and_reasoning_shift_ttft():
    p = profile(prefill=1000.0, reasoning=1.0)  # 1 ms per prompt token; one hidden token per visible one
    # usage reported 8 reasoning tokens: TTFT = 200 + 100 (prefill) + 8*20.
    exp = expected_values(p, {(100, 8, 16, 8): 3})
    assert exp["ttft"]["p50"] == pytest.approx(460.0)
    assert exp["e2e"]["p50"] == pytest.approx(460.0 + 7 * 20)
    # TPOT divides the visible stream time by the visible tokens after the first, as the definition says:
    # hidden reasoning is inside TTFT, so here TPOT is the ITL.
    assert exp["tpot"]["p50"] == pytest.approx(7 * 20 / 7)
    # Reasoning not reported (-1): the profile's own ratio gives it.
    assert expected_values(p, {(100, 8, 8, -1): 1})["ttft"]["p50"] == pytest.approx(460.0)


def test_lognormal_closed_form_and_monte_carlo_agree():
    ttft = Distribution("lognormal", 600.0, 150.0)
    p = profile(ttft=ttft, itl=Distribution("normal", 40.0, 12.0))
    closed = expected_values(p, {(50, 20, 20, 0): 1})["ttft"]
    assert closed["p50"] == pytest.approx(ttft.quantile(0.5))
    assert closed["mean"] == pytest.approx(600.0)
    p2 = profile(ttft=ttft, itl=Distribution("normal", 40.0, 12.0), prefill=1e6)
    mc = expected_values(p2, {(50, 20, 20, 0): 1, (60, 20, 20, 0): 1})["ttft"]  # two prompt lengths -> MC
    for stat in ("mean", "p50", "p90"):
        assert mc[stat] == pytest.approx(closed[stat], rel=0.02)


def test_chunked_profile_itl_is_the_mean_of_k_draws():
    p = profile(itl=Distribution("normal", 40.0, 12.0), chunk=4)
    exp = expected_values(p, {})
    assert exp["itl"]["mean"] == pytest.approx(40.0, rel=0.01)
    assert exp["itl"]["p99"] == pytest.approx(40.0 + 2.326 * 6.0, rel=0.03)  # stddev 12/sqrt(4)


def test_a_chunked_profiles_first_event_waits_for_its_first_chunk():
    """chunk_tokens 4: the first event carries 4 tokens, so TTFT holds 3 ITLs; E2E is unchanged, and TPOT
    divides what is left after the first event by the visible tokens after the first (DESIGN.md)."""
    exp = expected_values(profile(chunk=4), {(100, 10, 10, 0): 5})
    assert exp["ttft"]["p50"] == pytest.approx(200.0 + 3 * 20)
    assert exp["e2e"]["p50"] == pytest.approx(200.0 + 9 * 20)
    assert exp["tpot"]["p50"] == pytest.approx(6 * 20 / 9)
    short = expected_values(profile(chunk=4), {(100, 2, 2, 0): 5})  # fewer tokens than a chunk: one event
    assert short["ttft"]["p50"] == pytest.approx(220.0) and short["e2e"]["p50"] == pytest.approx(220.0)


def test_min_samples_and_judge():
    assert (min_samples("p50"), min_samples("p90"), min_samples("p99"), min_samples("mean")) == (10, 50, 500, 10)
    t = Tolerance(5.0, 0.1)
    assert judge(204.0, 200.0, t, 1000, "p99")[0] == PASS
    assert judge(221.0, 200.0, t, 1000, "p99")[0] == FAIL
    assert judge(300.0, 200.0, t, 499, "p99") == (SKIP, 20.0, "n<500")
    assert judge(None, 200.0, t, 0, "p50")[0] == SKIP


def rec(ttft=200.0, itl=(20.0,) * 9, ok=True, e2e=None) -> RequestRecord:
    itl = list(itl)
    e2e = e2e if e2e is not None else ttft + sum(itl)
    return RequestRecord(start_time=0.0, end_time=e2e / 1000, e2e_ms=e2e, status=200,
                         error_kind=None if ok else "http_500", ttft_ms=ttft if ok else None, itl_ms=itl,
                         tpot_ms=sum(itl) / len(itl) if itl else None, output_tokens=len(itl) + 1, prompt_tokens=100,
                         reasoning_tokens=None)


def test_request_meets_slo():
    slo = [SloCheck("ttft", 99.0, 250.0), SloCheck("itl", 99.0, 30.0)]
    assert request_meets_slo(rec(), slo)
    assert not request_meets_slo(rec(ttft=260.0), slo)
    assert not request_meets_slo(rec(itl=[20.0] * 8 + [35.0]), slo)  # its own p99 ITL is the 35 ms gap
    assert request_meets_slo(rec(itl=[]), slo)  # a one-token reply has no ITL to hold against it
    assert not request_meets_slo(rec(ok=False), slo)


def test_score_pass_fail_slo_and_goodput():
    slo = [SloCheck("ttft", 99.0, 250.0), SloCheck("e2e", 50.0, 100.0)]
    p = profile(slo=slo)
    stats = RunStats()
    for i in range(60):
        r = rec(ttft=201.0)
        stats.add(r, good=request_meets_slo(r, slo))
    card = score(stats, p, Tolerance(5.0, 0.1))
    by = {(v.metric, v.stat): v for v in card.verdicts}
    assert by[("ttft", "p50")].verdict == PASS and by[("ttft", "p50")].measured == pytest.approx(201.0)
    assert by[("ttft", "p99")].verdict == SKIP  # 60 samples cannot score a p99
    assert by[("itl", "p99")].verdict == PASS  # 540 ITL samples can
    assert [s.verdict for s in card.slo] == [PASS, FAIL]  # E2E p50 381 ms > 100 ms
    assert not card.passed
    assert card.goodput["good_requests"] == 0 and card.goodput["share"] == 0.0

    slow = score(stats, profile(ttft=Distribution("constant", 400.0)), Tolerance(5.0, 0.1))
    assert {(v.metric, v.stat): v.verdict for v in slow.verdicts}[("ttft", "p50")] == FAIL
    assert not slow.passed
    ok = score(stats, profile(), Tolerance(5.0, 0.1))
    assert ok.passed  # goodput was counted against the first SLO set when the requests were added


def test_no_successful_request_fails():
    stats = RunStats()
    stats.add(rec(ok=False))
    card = score(stats, profile(), Tolerance())
    assert not card.passed and card.notes == ["no request succeeded"]


def test_load_model_scales_itl_at_the_runs_concurrency():
    from llmsim.profiles import Capacity

    p = ModelProfile(name="t", latency=LatencyProfile(ttft=Distribution("constant", 200.0),
                                                      itl=Distribution("constant", 20.0)),
                     capacity=Capacity(max_concurrent=8, slowdown_at_full=2.0))
    # docs/load-model.md, "Decode slowdown": ITL 20 ms, 8 slots, 2.0 at full -> 28.57 ms with 4 streams active.
    exp = expected_values(p, {(10, 5, 5, 0): 1}, concurrency=4.0)
    assert exp["itl"]["p50"] == pytest.approx(20.0 * (1 + 3 / 7))
    assert exp["ttft"]["p50"] == 200.0  # TTFT itself is not slowed
    assert exp["e2e"]["p50"] == pytest.approx(200.0 + 4 * 20.0 * (1 + 3 / 7))
    assert expected_values(p, {(10, 5, 5, 0): 1}, concurrency=1.0)["itl"]["p50"] == 20.0

    stats = RunStats()
    for _ in range(20):  # 20 requests of 380 ms, all in flight at once
        r = rec()
        r.start_time, r.end_time = 0.0, r.e2e_ms / 1000
        stats.add(r)
    assert stats.concurrency == pytest.approx(20.0)
    card = score(stats, p, Tolerance())
    assert card.load["itl_multiplier"] == pytest.approx(2.0)
    assert card.warnings and "exceeds capacity.max_concurrent 8" in card.warnings[0]


def test_cached_prompt_tokens_are_not_prefilled_in_expected_ttft():
    """The share of prompt tokens the server's prefix cache held is not prefilled in the expected TTFT."""
    p = profile(prefill=1000.0)  # 1 ms per prefilled token
    mix = {(400, 9, 10, 0): 10}
    assert expected_values(p, mix)["ttft"]["mean"] == pytest.approx(200 + 400)
    assert expected_values(p, mix, cached_share=0.75)["ttft"]["mean"] == pytest.approx(200 + 100)
    stats = RunStats()
    for cached in (0, 300):
        r = rec()
        r.prompt_tokens, r.cached_tokens = 400, cached
        stats.add(r, True)
    assert stats.cached_share() == pytest.approx(300 / 800)
