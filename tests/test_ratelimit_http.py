"""Rate limits end to end: headers on every API response, countdown, 429 through the SDK,
the TPM estimate corrected to actual usage, tiers by key."""

from __future__ import annotations

from contextlib import contextmanager

import openai
import pytest
import requests

from llmsim.testing import start_server

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Say something."}]
EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return EPOCH + self.t


@contextmanager
def limited(rate_limits: dict, **kwargs):
    """A server whose buckets run on a clock the test moves (no sleeping, exact numbers)."""
    server = start_server(config={"rate_limits": rate_limits}, latency_profile="instant", seed=1, **kwargs)
    clock = Clock()
    server.state.limiter.clock, server.state.limiter.wall = clock, clock.wall
    try:
        yield server.url, clock
    finally:
        server.stop()


def chat(url: str, key: str = "sk-test", **extra) -> requests.Response:
    return requests.post(url + CHAT, json={"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 50, **extra},
                         headers={"Authorization": f"Bearer {key}"})


def test_headers_on_every_api_response():
    with limited({"rpm": 100, "tpm": 100000}) as (url, _):
        auth = {"Authorization": "Bearer sk-test"}
        answers = [
            chat(url),  # 200
            chat(url, max_tokens=-1),  # 400
            requests.get(url + "/v1/models/no-such-model", headers=auth),  # 404
            requests.get(url + "/v1/models", headers=auth),
            requests.get(url + "/v1/nope", headers=auth),
        ]
        assert [r.status_code for r in answers] == [200, 400, 404, 200, 404]
        for r in answers:
            for name in ("limit", "remaining", "reset"):
                assert f"x-ratelimit-{name}-requests" in r.headers and f"x-ratelimit-{name}-tokens" in r.headers
        assert "x-ratelimit-limit-requests" not in requests.get(url + "/health").headers


def test_requests_count_down_then_429_through_the_sdk():
    with limited({"rpm": 3}) as (url, clock):
        remaining = [chat(url).headers["x-ratelimit-remaining-requests"] for _ in range(3)]
        assert remaining == ["2", "1", "0"]
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)
        clock.t = 5.0
        with pytest.raises(openai.RateLimitError) as e:
            sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
        err = e.value
        assert (err.body["type"], err.body["code"]) == ("requests", "rate_limit_exceeded")
        assert "Limit 3, Used 3, Requested 1. Please try again in 15s." in err.body["message"]
        h = err.response.headers
        assert (h["retry-after"], h["retry-after-ms"]) == ("15", "15000")
        assert (h["x-ratelimit-remaining-requests"], h["x-ratelimit-reset-requests"]) == ("0", "55s")
        clock.t = 20.0  # the advertised wait is over: one request has refilled
        r = chat(url)
        assert r.status_code == 200 and r.headers["x-ratelimit-remaining-requests"] == "0"
        clock.t = 80.0  # a full minute after the last request: back to the limit
        assert chat(url).headers["x-ratelimit-remaining-requests"] == "2"


def test_tpm_estimate_is_corrected_to_actual_usage():
    with limited({"tpm": 10000}) as (url, _):
        r = chat(url, max_tokens=500)  # non-streaming: the answer already carries the corrected charge
        usage = r.json()["usage"]
        assert usage["completion_tokens"] < 500
        assert int(r.headers["x-ratelimit-remaining-tokens"]) == 10000 - usage["total_tokens"]
        before = 10000 - usage["total_tokens"]
        stream = requests.post(url + CHAT, json={"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 500,
                                                 "stream": True, "stream_options": {"include_usage": True}},
                               headers={"Authorization": "Bearer sk-test"})
        # A stream's headers leave before its tokens: they show OpenAI's estimate, prompt + max_tokens.
        prompt = usage["prompt_tokens"]
        assert int(stream.headers["x-ratelimit-remaining-tokens"]) == before - prompt - 500
        last = [ln for ln in stream.text.splitlines() if ln.startswith("data: {")][-1]
        completion = requests.models.complexjson.loads(last[6:])["usage"]["completion_tokens"]
        after = requests.get(url + "/v1/models", headers={"Authorization": "Bearer sk-test"})
        assert int(after.headers["x-ratelimit-remaining-tokens"]) == before - prompt - completion


def test_tokens_429_and_request_too_large():
    with limited({"tpm": 1000}) as (url, _):
        assert chat(url, max_tokens=900).status_code == 200  # charged ~ prompt + actual ~ 110
        r = chat(url, max_tokens=950)
        assert r.status_code == 429 and r.json()["error"]["type"] == "tokens"
        assert r.headers["retry-after"] and r.headers["retry-after-ms"]
        big = chat(url, max_tokens=5000)
        assert big.status_code == 429
        assert big.json()["error"]["message"].startswith("Request too large for gpt-4o")
        assert "retry-after" not in big.headers


def test_tiers_by_key_and_unknown_keys_get_the_default_tier():
    with limited({"tiers": {"free": {"rpm": 2}, "pro": {"rpm": 1000}}, "keys": {"sk-pro-key-000001": "pro"},
                  "default_tier": "free"}) as (url, _):
        assert chat(url, key="sk-pro-key-000001").headers["x-ratelimit-limit-requests"] == "1000"
        assert chat(url, key="sk-someone").headers["x-ratelimit-limit-requests"] == "2"
        assert chat(url, key="sk-someone").status_code == 200
        assert chat(url, key="sk-someone").status_code == 429
        assert chat(url, key="sk-someone-else").status_code == 200  # a bucket per key
        assert chat(url, key="sk-pro-key-000001").status_code == 200


def test_anthropic_clients_get_anthropic_headers():
    with limited({"rpm": 50, "tpm": 40000}) as (url, clock):
        clock.t = 30.0
        r = requests.get(url + "/v1/models", headers={"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"})
        assert r.headers["anthropic-ratelimit-requests-limit"] == "50"
        assert r.headers["anthropic-ratelimit-requests-remaining"] == "50"
        assert r.headers["anthropic-ratelimit-requests-reset"] == "2026-01-01T00:00:30Z"
        assert r.headers["anthropic-ratelimit-tokens-limit"] == "40000"
        assert "x-ratelimit-limit-requests" not in r.headers
