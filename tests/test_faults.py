"""The fault plan: config validation, the per-request decision, reproducibility, cut points."""

from __future__ import annotations

import math
import random

import pytest

from llmsim.cli.config import ConfigError, resolve_config
from llmsim.cli.state import AppState
from llmsim.errors import (FAULT_KINDS, Cut, FaultPlan, FaultSettings, decide, go_duration, midstream_error,
                           overloaded, rate_limited, retry_after_headers, server_error, unavailable)
from llmsim.profiles import ProfileError

N = 2000


def binomial_bounds(n: int, p: float, z: float = 5.0) -> tuple[float, float]:
    """n·p ± z·σ: with z = 5 a correct decision fails this about once in 3.5 million runs."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - z * sd, n * p + z * sd


def test_rates_over_2000_seeded_requests_fall_within_binomial_bounds():
    rates = {"rate_limit": 0.1, "server_error": 0.05, "unavailable": 0.02, "overloaded": 0.08, "timeout": 0.01,
             "midstream": 0.2}
    settings = FaultSettings(rates)
    counts = {k: 0 for k in (*FAULT_KINDS, None)}
    for n in range(N):
        fault = decide(settings, random.Random(f"42:faults:{n}"))
        counts[fault.kind if fault else None] += 1
    for kind, rate in rates.items():
        lo, hi = binomial_bounds(N, rate)
        assert lo <= counts[kind] <= hi, (kind, counts[kind], lo, hi)
    lo, hi = binomial_bounds(N, 1 - sum(rates.values()))
    assert lo <= counts[None] <= hi


def test_rate_zero_never_and_rate_one_always():
    for n in range(500):
        assert decide(FaultSettings({}), random.Random(n)) is None
        assert decide(FaultSettings({"server_error": 1.0}), random.Random(n)).kind == "server_error"


def test_same_seed_same_faults_by_arrival_order():
    cfg = resolve_config(settings={"seed": 7, "errors": {"server_error": 0.3, "midstream": 0.3}}, env={})

    def sequence() -> list:
        state = AppState(cfg)
        out = []
        for _ in range(300):
            f = state.faults.decide("gpt-4o", "gpt-4o", state.fault_rng())
            out.append((f.kind, f.position) if f else None)
        return out

    first = sequence()
    assert first == sequence()
    assert any(first) and None in first
    other = AppState(resolve_config(settings={"seed": 8, "errors": {"server_error": 0.3, "midstream": 0.3}}, env={}))
    assert [(f.kind, f.position) if (f := other.faults.decide("gpt-4o", "gpt-4o", other.fault_rng())) else None
            for _ in range(300)] != first


def test_cut_falls_after_at_least_one_piece_and_at_most_all():
    plan = FaultPlan.parse("t", {"midstream": 1.0})
    seen = set()
    for n in range(400):
        fault = plan.decide("m", None, random.Random(n))
        cut = fault.cut(10)
        assert 1 <= cut.after_pieces <= 10
        assert cut.error is None  # default midstream_mode: drop
        seen.add(cut.after_pieces)
    assert seen == set(range(1, 11))  # every token position is possible
    assert plan.decide("m", None, random.Random(1)).cut(0) == Cut(0, None)
    errplan = FaultPlan.parse("t", {"midstream": 1.0, "midstream_mode": "error"})
    assert errplan.decide("m", None, random.Random(1)).cut(5).error == midstream_error()


def test_overrides_by_model_exact_then_glob_then_profile():
    plan = FaultPlan.parse("f.yaml", {
        "rate_limit": 0.1, "timeout_after_ms": 500,
        "models": {"gpt-4o*": {"server_error": 0.5}, "gpt-4o-mini": {"rate_limit": 0.0}},
        "profiles": {"claude-sonnet-4": {"overloaded": 0.2, "midstream_mode": "error"}},
    })
    assert plan.settings_for("gpt-4o-mini", "gpt-4o").rates == {}
    assert plan.settings_for("gpt-4o-2024", "gpt-4o").rates == {"rate_limit": 0.1, "server_error": 0.5}
    s = plan.settings_for("claude-sonnet-4-5", "claude-sonnet-4")
    assert s.rates == {"rate_limit": 0.1, "overloaded": 0.2}
    assert (s.midstream_mode, s.timeout_after_ms) == ("error", 500)
    assert plan.settings_for("other", "other") == plan.base


@pytest.mark.parametrize("raw, key, reason", [
    ({"server_eror": 0.1}, "errors.server_eror", "unknown key"),
    ({"rate_limit": 1.5}, "errors.rate_limit", "between 0 and 1"),
    ({"rate_limit": -0.1}, "errors.rate_limit", ">= 0"),
    ({"rate_limit": "often"}, "errors.rate_limit", "must be a number"),
    ({"rate_limit": 0.6, "server_error": 0.5}, "errors", "add up to 1.1"),
    ({"midstream_mode": "explode"}, "errors.midstream_mode", "drop, error"),
    ({"models": {"gpt-4o": {"server_error": 0.99}}, "timeout": 0.02}, "errors.models.gpt-4o", "add up to 1.01"),
    ({"models": ["gpt-4o"]}, "errors.models", "mapping"),
    ({"profiles": {"fast": {"bogus": 1}}}, "errors.profiles.fast.bogus", "unknown key"),
])
def test_bad_errors_section_names_file_key_and_reason(raw, key, reason):
    with pytest.raises(ProfileError) as e:
        FaultPlan.parse("faults.yaml", raw)
    assert e.value.source == "faults.yaml" and e.value.key == key and reason in e.value.reason
    assert "\n" not in str(e.value)


def test_bad_errors_section_stops_start_up_with_config_error(tmp_path):
    path = tmp_path / "llmsim.yaml"
    path.write_text("errors:\n  rate_limit: 2\n")
    with pytest.raises(ConfigError, match=rf"^{path}: errors.rate_limit: must be a probability"):
        AppState(resolve_config({"config": str(path)}, env={}))


def test_error_rate_flags_and_env_override_the_file():
    cfg = resolve_config({"error_rate": ["rate_limit=0.25", "midstream=0.5"]},
                         env={"LLMSIM_ERROR_RATE": "rate_limit=0.1,server_error=0.2"},
                         settings={"errors": {"rate_limit": 0.9, "timeout_after_ms": 100}})
    assert cfg.sections["errors"] == {"rate_limit": 0.25, "server_error": 0.2, "midstream": 0.5,
                                      "timeout_after_ms": 100}
    assert AppState(cfg).faults.base.rates == {"rate_limit": 0.25, "server_error": 0.2, "midstream": 0.5}


@pytest.mark.parametrize("spec, reason", [("rate_limit", "KIND=RATE"), ("nope=0.1", "KIND=RATE"),
                                          ("timeout=x", "must be a number"), ("timeout=1.5", "between 0 and 1")])
def test_bad_error_rate_flag(spec, reason):
    with pytest.raises(ConfigError, match=f"^command line: --error-rate: .*{reason}"):
        resolve_config({"error_rate": [spec]}, env={})


def test_admin_token_option():
    assert resolve_config({"admin_token": "s3cret"}, env={}).admin_token == "s3cret"
    assert resolve_config(env={"LLMSIM_ADMIN_TOKEN": "t"}).admin_token == "t"
    assert resolve_config(settings={"admin_token": "f"}, env={}).admin_token == "f"


# --------------------------------------------------------------------------- exact envelopes


def test_status_kinds_render_each_providers_envelope():
    cases = [
        (server_error(), 500, {"message": "The server had an error while processing your request. Sorry about that!",
                               "type": "server_error", "param": None, "code": None},
         500, {"type": "api_error", "message": "Internal server error"}),
        (unavailable(), 503, {"message": "The service is temporarily unavailable. Please try again later.",
                              "type": "service_unavailable_error", "param": None, "code": None},
         503, {"type": "api_error", "message": "Service unavailable"}),
        (overloaded(), 503, {"message": "Our servers are currently overloaded. Please try again later.",
                             "type": "service_unavailable_error", "param": None, "code": "server_is_overloaded"},
         529, {"type": "overloaded_error", "message": "Overloaded"}),
    ]
    for err, o_status, o_body, a_status, a_error in cases:
        assert err.http_status("openai") == o_status and err.openai_body() == {"error": o_body}
        assert err.http_status("anthropic") == a_status
        assert err.anthropic_body("req_1") == {"type": "error", "error": a_error, "request_id": "req_1"}
        assert err.headers_for("openai") == {}
        assert err.headers_for("anthropic") == {"x-should-retry": "true"}


def test_injected_rate_limit_envelopes_and_retry_headers():
    err = FaultPlan.parse("t", {"rate_limit": 1, "retry_after_ms": 1500}).decide("gpt-4o", None, random.Random())
    err = err.error("gpt-4o")
    assert err.http_status("openai") == 429 == err.http_status("anthropic")
    body = err.openai_body()["error"]
    assert (body["type"], body["code"], body["param"]) == ("requests", "rate_limit_exceeded", None)
    assert body["message"].startswith("Rate limit reached for gpt-4o in organization org-llmsim on requests per min "
                                      "(RPM): injected fault") and "Please try again in 1.5s." in body["message"]
    assert err.headers_for("openai") == {"retry-after": "2", "retry-after-ms": "1500"}
    assert err.headers_for("anthropic") == {"retry-after": "2"}
    a = err.anthropic_body()["error"]
    assert a["type"] == "rate_limit_error"
    assert a["message"].startswith("This request would exceed the rate limit for your organization")


def test_rate_limited_wording_matches_openai():
    err = rate_limited("gpt-4o", "tokens", limit=30000, used=29937, requested=385, wait_s=0.644)
    assert err.openai_body()["error"] == {
        "message": "Rate limit reached for gpt-4o in organization org-llmsim on tokens per min (TPM): Limit 30000, "
                   "Used 29937, Requested 385. Please try again in 644ms. Visit "
                   "https://platform.openai.com/account/rate-limits to learn more.",
        "type": "tokens", "param": None, "code": "rate_limit_exceeded"}
    assert "of 30,000 tokens per minute" in err.anthropic_body()["error"]["message"]
    too_big = rate_limited("gpt-4o", "tokens", limit=30000, requested=31538)
    assert too_big.openai_body()["error"]["message"].startswith(
        "Request too large for gpt-4o in organization org-llmsim on tokens per min (TPM): Limit 30000, "
        "Requested 31538. The input or output tokens must be reduced")
    assert too_big.headers_for("openai") == {} == too_big.headers_for("anthropic")


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (0.02, "20ms"), (0.0004, "1ms"), (1, "1s"), (1.5, "1.5s"),
                                           (9.816, "9.816s"), (60, "1m0s"), (360, "6m0s"), (61.25, "1m1.25s"),
                                           (3600, "1h0m0s"), (3723.5, "1h2m3.5s")])
def test_go_duration(seconds, text):
    assert go_duration(seconds) == text


def test_retry_after_rounds_up_whole_seconds_and_keeps_exact_ms():
    assert retry_after_headers(0.2) == ({"retry-after": "1", "retry-after-ms": "200"}, {"retry-after": "1"})
    assert retry_after_headers(20) == ({"retry-after": "20", "retry-after-ms": "20000"}, {"retry-after": "20"})
    assert retry_after_headers(20.001)[0] == {"retry-after": "21", "retry-after-ms": "20001"}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ProfileError, match="must be a number"):
        FaultPlan.parse("f", {"rate_limit": value})
    with pytest.raises(ProfileError, match="must be a number"):
        FaultPlan.parse("f", {"timeout_after_ms": value})


def test_fault_times_longer_than_a_day_are_refused():
    """A retry hint or timeout past a day is a typo; every 429 would carry its digits in retry-after."""
    from llmsim.errors import FaultPlan
    from llmsim.profiles import ProfileError

    for key in ("retry_after_ms", "timeout_after_ms"):
        with pytest.raises(ProfileError, match=rf"^c.yaml: errors.{key}: must be at most 8.64e\+07, got 1e\+300$"):
            FaultPlan.parse("c.yaml", {"rate_limit": 0.1, key: 1e300})
