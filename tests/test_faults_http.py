"""Injected faults end to end: exact statuses, bodies and headers through the official openai SDK,
real hangs and real cuts on the wire, seeded reproducibility."""

from __future__ import annotations

import time

import openai
import pytest
import requests

from llmsim.testing import run_server
from tests.rawhttp import raw_request
from tests.test_faults import binomial_bounds

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Say something."}]


def body(stream: bool = False, model: str = "gpt-4o", max_tokens: int = 20) -> dict:
    out = {"model": model, "messages": MESSAGES, "max_tokens": max_tokens}
    if stream:
        out["stream"] = True
    return out


def client(url: str, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=max_retries)


def serve(errors: dict, **kwargs):
    return run_server(config={"errors": errors}, latency_profile=kwargs.pop("latency_profile", "fast"), seed=1,
                      **kwargs)


@pytest.mark.parametrize("kind, exc, status, error", [
    ("rate_limit", openai.RateLimitError, 429, None),
    ("server_error", openai.InternalServerError, 500,
     {"message": "The server had an error while processing your request. Sorry about that!", "type": "server_error",
      "param": None, "code": None}),
    ("unavailable", openai.InternalServerError, 503,
     {"message": "The service is temporarily unavailable. Please try again later.",
      "type": "service_unavailable_error", "param": None, "code": None}),
    ("overloaded", openai.InternalServerError, 503,
     {"message": "Our servers are currently overloaded. Please try again later.",
      "type": "service_unavailable_error", "param": None, "code": "server_is_overloaded"}),
])
@pytest.mark.parametrize("stream", [False, True])
def test_status_kinds_through_the_openai_sdk(kind, exc, status, error, stream):
    with serve({kind: 1.0, "retry_after_ms": 2500}) as url:
        with pytest.raises(exc) as e:
            client(url).chat.completions.create(**body(stream))
        err = e.value
        assert err.status_code == status
        headers = err.response.headers
        assert headers["content-type"] == "application/json"
        if kind == "rate_limit":
            assert err.body["type"] == "requests" and err.body["code"] == "rate_limit_exceeded"
            assert err.body["message"].startswith("Rate limit reached for gpt-4o in organization org-llmsim on "
                                                  "requests per min (RPM)")
            assert "Please try again in 2.5s." in err.body["message"]
            assert (headers["retry-after"], headers["retry-after-ms"]) == ("3", "2500")
        else:
            assert err.body == error
            assert "retry-after" not in headers
        # The whole body is exactly the envelope, nothing more.
        assert err.response.json() == {"error": err.body}


def test_openai_sdk_retries_obey_retry_after():
    # retry-after-ms 1200 between tries; the SDK's own backoff would wait at most 0.5 + 1.0 s in all.
    with serve({"rate_limit": 1.0, "retry_after_ms": 1200}) as url:
        t0 = time.monotonic()
        with pytest.raises(openai.RateLimitError):
            client(url, max_retries=2).chat.completions.create(**body())
        elapsed = time.monotonic() - t0
        stats = requests.get(url + "/llmsim/stats").json()
    assert stats["requests"][CHAT] == {"429": 3}  # one try and two retries, counted server-side
    assert elapsed >= 2 * 1.2 - 0.05


def test_timeout_really_holds_the_request_then_closes():
    with serve({"timeout": 1.0, "timeout_after_ms": 600}) as url:
        resp = raw_request(url, "POST", CHAT, body())
        assert resp.raw == b"" and resp.closed  # no status line at all, then the socket closes
        assert resp.elapsed >= 0.55
        streamed = raw_request(url, "POST", CHAT, body(stream=True))
        assert streamed.raw == b"" and streamed.closed and streamed.elapsed >= 0.55
        t0 = time.monotonic()
        with pytest.raises(openai.APIConnectionError):
            client(url).chat.completions.create(**body())
        assert time.monotonic() - t0 >= 0.55
        # A client timeout shorter than the hold sees a timeout, as against a hung upstream.
        with pytest.raises(openai.APITimeoutError):
            client(url).with_options(timeout=0.2).chat.completions.create(**body())
        assert requests.get(url + "/llmsim/stats").json()["faults_injected"] == {"timeout": 4}


def test_a_stream_without_faults_ends_cleanly():
    # The control for the cut tests below: same reader, no fault.
    with serve({}) as url:
        resp = raw_request(url, "POST", CHAT, body(stream=True))
        assert resp.status == 200 and resp.terminated and not resp.closed
        assert resp.events[-1] == "[DONE]"


def test_midstream_drop_cuts_the_connection_without_a_terminator():
    with serve({"midstream": 1.0, "midstream_mode": "drop"}) as url:
        for _ in range(5):
            resp = raw_request(url, "POST", CHAT, body(stream=True))
            assert resp.status == 200 and resp.closed and not resp.terminated
            assert not resp.raw.endswith(b"0\r\n\r\n")
            events = resp.events
            assert "[DONE]" not in events
            assert not any('"finish_reason":"' in e for e in events)
            assert sum('"content":"' in e for e in events) >= 2  # the role chunk, then at least one token
        got = []
        with pytest.raises(openai.APIConnectionError):
            for chunk in client(url).chat.completions.create(**body(stream=True)):
                got.append(chunk)
        assert any(c.choices and c.choices[0].delta.content for c in got)  # tokens arrived before the cut


def test_midstream_error_sends_the_in_band_error_chunk():
    with serve({"midstream": 1.0, "midstream_mode": "error"}) as url:
        resp = raw_request(url, "POST", CHAT, body(stream=True))
        assert resp.status == 200 and resp.terminated  # the body ends cleanly, but with an error, not [DONE]
        assert resp.events[-1] == ('{"error":{"message":"The server had an error while processing your request. '
                                   'Sorry about that!","type":"server_error","param":null,"code":null}}')
        assert "[DONE]" not in resp.events
        got = []
        with pytest.raises(openai.APIError) as e:
            for chunk in client(url).chat.completions.create(**body(stream=True)):
                got.append(chunk)
        assert "The server had an error" in e.value.message
        assert e.value.body["type"] == "server_error"
        assert any(c.choices and c.choices[0].delta.content for c in got)


def test_midstream_fault_on_a_non_streaming_request():
    with serve({"midstream": 1.0, "midstream_mode": "error"}) as url:
        with pytest.raises(openai.InternalServerError) as e:
            client(url).chat.completions.create(**body())
        assert e.value.status_code == 500 and e.value.body["type"] == "server_error"
    with serve({"midstream": 1.0, "midstream_mode": "drop"}) as url:
        resp = raw_request(url, "POST", CHAT, body())
        assert resp.raw == b"" and resp.closed
        with pytest.raises(openai.APIConnectionError):
            client(url).chat.completions.create(**body())


def statuses(url: str, n: int) -> list[int]:
    with requests.Session() as s:
        return [s.post(url + CHAT, json=body(max_tokens=3)).status_code for _ in range(n)]


def test_end_to_end_rates_and_same_seed_same_faults():
    errors = {"rate_limit": 0.2, "server_error": 0.1, "overloaded": 0.1}
    n = 300
    with serve(errors, latency_profile="instant") as url:
        first = statuses(url, n)
    for status, rate in ((429, 0.2), (500, 0.1), (503, 0.1), (200, 0.6)):
        lo, hi = binomial_bounds(n, rate)
        assert lo <= first.count(status) <= hi, (status, first.count(status))
    with serve(errors, latency_profile="instant") as url:
        assert statuses(url, n) == first


def test_per_model_overrides_end_to_end():
    with serve({"models": {"gpt-4o-mini": {"server_error": 1.0}}}) as url:
        assert requests.post(url + CHAT, json=body(model="gpt-4o")).status_code == 200
        assert requests.post(url + CHAT, json=body(model="gpt-4o-mini")).status_code == 500
        metrics = requests.get(url + "/metrics").text
        assert 'llmsim_faults_injected_total{kind="server_error"} 1' in metrics


def test_faults_leave_other_endpoints_alone():
    with serve({"server_error": 1.0}) as url:
        assert requests.get(url + "/v1/models").status_code == 200
        assert requests.get(url + "/health").status_code == 200


CAPACITY_YAML = """
profiles:
  - name: sim-one-slot
    models: [sim-one-slot]
    provider: openai
    encoding: o200k_base
    ttft: {distribution: constant, mean_ms: 5}
    itl: {distribution: constant, mean_ms: 1}
    capacity: {max_concurrent: 1, queue_limit: 1}
"""


def test_faults_never_leak_batch_slots(tmp_path):
    # One slot and a one-place queue: a leaked slot would turn every later request into a 429.
    path = tmp_path / "one.yaml"
    path.write_text(CAPACITY_YAML)
    errors = {"server_error": 0.2, "midstream": 0.3, "timeout": 0.1, "timeout_after_ms": 50}
    from llmsim.testing import start_server

    srv = start_server(profile_files=[path], seed=5, config={"errors": errors})
    try:
        outcomes = []
        for i in range(60):
            resp = raw_request(srv.url, "POST", CHAT, body(stream=i % 2 == 0, model="sim-one-slot", max_tokens=10))
            outcomes.append(resp.status)
        snap = requests.get(srv.url + "/llmsim/stats").json()["schedulers"]["sim-one-slot"]
    finally:
        srv.stop()
    assert 429 not in outcomes
    assert {200, 500, None} <= set(outcomes)  # served, failed, and held-then-dropped requests all happened
    assert snap["active"] == 0 and snap["waiting"] == 0 and snap["rejected"] == 0


def test_start_up_line_names_faults_and_quotas():
    from llmsim.cli.config import resolve_config
    from llmsim.cli.server import describe
    from llmsim.cli.state import AppState

    cfg = resolve_config({"error_rate": ["rate_limit=0.05"], "admin_token": "t"}, env={},
                         settings={"rate_limits": {"rpm": 10}, "auth": {"api_keys": ["sk-a"]}})
    line = describe(AppState(cfg))
    assert line.endswith("; errors rate_limit=0.05; rate limits (tiers: default); auth (1 key); /llmsim/config enabled")
    assert "sk-a" not in line
