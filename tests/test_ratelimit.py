"""Per-key token buckets on an injected clock: charges, countdown, reset, 429s, tiers, headers."""

from __future__ import annotations

import pytest

from llmsim.errors import ApiError
from llmsim.profiles import ProfileError
from llmsim.ratelimit import RateLimitConfig, RateLimiter, mask_key, rfc3339

EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return EPOCH + self.t


def limiter(raw: dict) -> tuple[RateLimiter, Clock]:
    clock = Clock()
    return RateLimiter(RateLimitConfig.parse("t.yaml", raw), clock=clock, wall=clock.wall), clock


def test_request_headers_count_down_and_reset_as_documented():
    rl, clock = limiter({"rpm": 3})
    h = rl.headers("sk-a", "openai")
    assert h == {"x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "3",
                 "x-ratelimit-reset-requests": "0s"}
    for remaining, reset in ((2, "20s"), (1, "40s"), (0, "1m0s")):
        rl.admit("sk-a", "gpt-4o", 10, 10)
        h = rl.headers("sk-a", "openai")
        assert (h["x-ratelimit-remaining-requests"], h["x-ratelimit-reset-requests"]) == (str(remaining), reset)
    clock.t = 20.0  # one request refills every 60/3 s
    h = rl.headers("sk-a", "openai")
    assert (h["x-ratelimit-remaining-requests"], h["x-ratelimit-reset-requests"]) == ("1", "40s")
    clock.t = 60.0
    assert rl.headers("sk-a", "openai")["x-ratelimit-remaining-requests"] == "3"
    assert rl.headers("sk-a", "openai")["x-ratelimit-reset-requests"] == "0s"


def test_anthropic_headers_use_rfc3339_resets():
    rl, clock = limiter({"rpm": 60, "tpm": 6000, "itpm": 3000, "otpm": 1200})
    rl.admit("sk-ant", "claude", 100, 300)
    h = rl.headers("sk-ant", "anthropic")
    assert h == {
        "anthropic-ratelimit-requests-limit": "60", "anthropic-ratelimit-requests-remaining": "59",
        "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:01Z",
        # "tokens" is the most restrictive token limit in effect: output, 900 left
        "anthropic-ratelimit-tokens-limit": "1200", "anthropic-ratelimit-tokens-remaining": "900",
        "anthropic-ratelimit-tokens-reset": "2026-01-01T00:00:15Z",
        "anthropic-ratelimit-input-tokens-limit": "3000", "anthropic-ratelimit-input-tokens-remaining": "2900",
        "anthropic-ratelimit-input-tokens-reset": "2026-01-01T00:00:02Z",
        "anthropic-ratelimit-output-tokens-limit": "1200", "anthropic-ratelimit-output-tokens-remaining": "900",
        "anthropic-ratelimit-output-tokens-reset": "2026-01-01T00:00:15Z",
    }
    assert "x-ratelimit-limit-requests" in rl.headers("sk-ant", "openai")  # same buckets, OpenAI's names


def test_rfc3339_rounds_up_to_the_second():
    assert rfc3339(EPOCH) == "2026-01-01T00:00:00Z"
    assert rfc3339(EPOCH + 0.2) == "2026-01-01T00:00:01Z"


def test_exhausted_requests_bucket_429_with_retry_after():
    rl, clock = limiter({"rpm": 2})
    rl.admit("k", "gpt-4o", 1, 1)
    rl.admit("k", "gpt-4o", 1, 1)
    clock.t = 5.0
    with pytest.raises(ApiError) as e:
        rl.admit("k", "gpt-4o", 1, 1)
    err = e.value
    assert err.http_status("openai") == 429
    assert err.openai_body()["error"] == {
        "message": "Rate limit reached for gpt-4o in organization org-llmsim on requests per min (RPM): Limit 2, "
                   "Used 2, Requested 1. Please try again in 25s. Visit https://platform.openai.com/account/"
                   "rate-limits to learn more.",
        "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    assert err.headers_for("openai") == {"retry-after": "25", "retry-after-ms": "25000"}
    assert err.headers_for("anthropic") == {"retry-after": "25"}
    assert "of 2 requests per minute" in err.anthropic_body()["error"]["message"]
    # A rejected request takes nothing: after the advertised wait it gets in.
    clock.t = 30.0
    assert rl.admit("k", "gpt-4o", 1, 1) is not None


def test_tpm_charges_prompt_plus_max_tokens_then_corrects_to_actual():
    rl, clock = limiter({"tpm": 1000})
    charge = rl.admit("k", "gpt-4o", 100, 500)  # OpenAI's estimate: prompt + max_tokens
    assert rl.headers("k", "openai")["x-ratelimit-remaining-tokens"] == "400"
    rl.settle(charge, 120)  # generated 120, not 500
    assert rl.headers("k", "openai")["x-ratelimit-remaining-tokens"] == "780"
    rl.settle(charge, 0)  # settling twice changes nothing
    assert rl.headers("k", "openai")["x-ratelimit-remaining-tokens"] == "780"
    with pytest.raises(ApiError) as e:
        rl.admit("k", "gpt-4o", 300, 500)
    body = e.value.openai_body()["error"]
    assert body["type"] == "tokens"
    assert "Limit 1000, Used 220, Requested 800. Please try again in 1.2s." in body["message"]
    assert e.value.headers_for("openai") == {"retry-after": "2", "retry-after-ms": "1200"}


def test_a_request_larger_than_the_limit_cannot_wait_it_out():
    rl, _ = limiter({"tpm": 1000})
    with pytest.raises(ApiError) as e:
        rl.admit("k", "gpt-4o", 600, 600)
    assert e.value.openai_body()["error"]["message"].startswith("Request too large for gpt-4o")
    assert e.value.headers_for("openai") == {}


def test_tiers_keys_and_the_default_tier():
    raw = {"tiers": {"free": {"rpm": 1}, "pro": {"rpm": 100, "tpm": 100000}},
           "keys": {"sk-pro-0000000001": "pro"}, "default_tier": "free"}
    rl, _ = limiter(raw)
    assert rl.headers("sk-pro-0000000001", "openai")["x-ratelimit-limit-requests"] == "100"
    assert rl.headers("sk-unknown", "openai") == {"x-ratelimit-limit-requests": "1",
                                                  "x-ratelimit-remaining-requests": "1",
                                                  "x-ratelimit-reset-requests": "0s"}
    rl.admit("sk-unknown", "m", 1, 1)
    with pytest.raises(ApiError):
        rl.admit("sk-unknown", "m", 1, 1)
    rl.admit("sk-other", "m", 1, 1)  # each unknown key has its own buckets
    rl.admit(None, "m", 1, 1)  # so does "no key"
    # Without a default tier, keys not listed are not limited at all.
    rl2, _ = limiter({"tiers": {"pro": {"rpm": 1}}, "keys": {"sk-pro-0000000001": "pro"}})
    assert rl2.headers("sk-x", "openai") == {}
    assert rl2.admit("sk-x", "m", 1, 1) is None


def test_shorthand_is_the_default_tier():
    cfg = RateLimitConfig.parse("t", {"rpm": 10, "tpm": 1000})
    assert cfg.default_tier == "default" and cfg.tier_for("anything").rpm == 10


@pytest.mark.parametrize("raw, key, reason", [
    ({"rpm": 0}, "rate_limits.rpm", ">= 1"),
    ({"rpm": 1.5}, "rate_limits.rpm", "whole number"),
    ({"rmp": 10}, "rate_limits.rmp", "unknown key"),
    ({}, "rate_limits", "define limits"),
    ({"tiers": {"a": {}}}, "rate_limits.tiers.a", "at least one"),
    ({"tiers": {"a": {"rpm": 1}}, "keys": {"sk-secret-value-123": "b"}}, "rate_limits.keys[0]", "names no defined tier (known: a)"),
    ({"tiers": {"a": {"rpm": 1}}, "default_tier": "z"}, "rate_limits.default_tier", "names no defined tier"),
    ({"tiers": {"a": {"rpm": 1}}, "keys": {"sk-secret-value-123": ["a"]}}, "rate_limits.keys[0]", "got a list"),
    ({"tiers": {"a": {"rpm": 1}}, "keys": {"sk-secret-value-123": {"a": 1}}}, "rate_limits.keys[0]", "got a mapping"),
    ({"tiers": {"a": {"rpm": 1}}, "default_tier": ["a"]}, "rate_limits.default_tier", "got a list"),
    ({"tiers": {"a": {"rpm": 1}}, "default_tier": {"a": 1}}, "rate_limits.default_tier", "got a mapping"),
    ({"rpm": 1, "sk-secret-value-123": "default"}, "rate_limits", "unknown key at position 2"),
    ({"tiers": {"sk-secret-value-123": "a"}}, "rate_limits.tiers[0]", "must be a mapping"),
    ({"tiers": {"a": {"sk-secret-value-123": 1}}}, "rate_limits.tiers.a", "unknown key at position 1"),
    ({"tiers": {"a": {"rpm": "sk-secret-value-123"}}}, "rate_limits.tiers.a.rpm", "must be a number, got a string"),
    ({"rpm": 1, "tiers": {"default": {"rpm": 2}}}, "rate_limits", "keep one"),
    ({"rpm": 1e300}, "rate_limits.rpm", "must be at most 1e+12"),
])
def test_bad_rate_limits_section(raw, key, reason):
    with pytest.raises(ProfileError) as e:
        RateLimitConfig.parse("limits.yaml", raw)
    assert (e.value.source, e.value.key) == ("limits.yaml", key) and reason in e.value.reason
    assert "sk-secret" not in str(e.value)  # keys are named by position, never by value


def test_keys_are_masked_when_shown():
    assert mask_key("sk-proj-abcdefghijklmnop1234") == "sk-*********************1234"
    assert mask_key("short") == "*****"
    cfg = RateLimitConfig.parse("t", {"rpm": 1, "keys": {"sk-proj-abcdefghijklmnop1234": "default"}})
    assert "abcdefgh" not in str(cfg.to_dict())


def test_idle_keys_are_forgotten_when_many(monkeypatch):
    import llmsim.ratelimit as rlmod

    monkeypatch.setattr(rlmod, "_PRUNE_AT", 10)
    rl, clock = limiter({"rpm": 60})
    for i in range(10):
        rl.admit(f"k{i}", "m", 1, 1)
    clock.t = 61.0  # all full again
    rl.headers("new", "openai")
    assert len(rl._keys) == 1


def test_non_finite_limits_are_refused():
    with pytest.raises(ProfileError, match="rate_limits.rpm: must be a number"):
        RateLimitConfig.parse("t", {"rpm": float("nan")})
