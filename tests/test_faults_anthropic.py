"""Faults, rate limits and auth on the Anthropic Messages API (official anthropic SDK) and the
OpenAI Responses API: the same fault plan, each provider's own envelopes, headers and stream errors."""

from __future__ import annotations

import json
import time

import anthropic
import openai
import pytest
import requests

pytest.importorskip("llmsim.anthropic.messages", reason="needs the Anthropic Messages and Responses APIs (branch apis)")

from llmsim.testing import run_server, start_server
from tests.rawhttp import raw_request

MESSAGES = "/v1/messages"
RESPONSES = "/v1/responses"
ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}


def msg_body(stream: bool = False, max_tokens: int = 20) -> dict:
    out = {"model": "claude-haiku-4-5", "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": "Say something."}]}
    if stream:
        out["stream"] = True
    return out


def claude(url: str, max_retries: int = 0, api_key: str = "sk-ant-test") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=api_key, max_retries=max_retries)


def serve(errors: dict | None = None, **kw):
    config = kw.pop("config", {})
    if errors is not None:
        config["errors"] = errors
    return run_server(config=config, latency_profile="fast", seed=1, **kw)


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """(event, data) pairs of an SSE body."""
    out = []
    for block in raw.decode().split("\n\n"):
        event = data = None
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if data is not None:
            out.append((event, data))
    return out


@pytest.mark.parametrize("kind, exc, status, error_type, message", [
    ("rate_limit", anthropic.RateLimitError, 429, "rate_limit_error", None),
    ("server_error", anthropic.InternalServerError, 500, "api_error", "Internal server error"),
    ("unavailable", anthropic.InternalServerError, 503, "api_error", "Service unavailable"),
    ("overloaded", anthropic.OverloadedError, 529, "overloaded_error", "Overloaded"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_status_kinds_through_the_anthropic_sdk(kind, exc, status, error_type, message, stream):
    with serve({kind: 1.0, "retry_after_ms": 2500}) as url:
        with pytest.raises(exc) as e:
            claude(url).messages.create(**msg_body(stream))
        err = e.value
        assert err.status_code == status
        body = err.response.json()
        assert set(body) == {"type", "error", "request_id"} and body["type"] == "error"
        assert body["error"]["type"] == error_type
        assert body["request_id"] == err.response.headers["request-id"]
        headers = err.response.headers
        if kind == "rate_limit":
            assert body["error"]["message"].startswith("This request would exceed the rate limit for your "
                                                       "organization")
            assert headers["retry-after"] == "3" and "retry-after-ms" not in headers
        else:
            assert body["error"]["message"] == message
            assert headers["x-should-retry"] == "true" and "retry-after" not in headers


def test_anthropic_sdk_retries_obey_retry_after():
    # retry-after: 1 between tries; the SDK's own backoff would wait at most 0.5 + 1.0 s in all.
    with serve({"rate_limit": 1.0, "retry_after_ms": 1000}) as url:
        t0 = time.monotonic()
        with pytest.raises(anthropic.RateLimitError):
            claude(url, max_retries=2).messages.create(**msg_body())
        elapsed = time.monotonic() - t0
        stats = requests.get(url + "/llmsim/stats").json()
    assert stats["requests"]["/v1/messages"] == {"429": 3}
    assert elapsed >= 2 * 1.0 - 0.05


def test_anthropic_midstream_drop_and_in_band_error():
    with serve({"midstream": 1.0, "midstream_mode": "drop"}) as url:
        resp = raw_request(url, "POST", MESSAGES, msg_body(stream=True), headers=ANTHROPIC_HEADERS)
        assert resp.status == 200 and resp.closed and not resp.terminated
        names = [e for e, _ in sse_events(resp.body)]
        assert "content_block_delta" in names and "message_stop" not in names
        got = []
        with pytest.raises(Exception) as e:  # noqa: PT011 - the SDK lets its transport's error through here
            for event in claude(url).messages.create(**msg_body(stream=True)):
                got.append(event)
        assert isinstance(e.value, anthropic.APIConnectionError) or "incomplete chunked read" in str(e.value)
        assert any(getattr(ev, "type", None) == "content_block_delta" for ev in got)
    with serve({"midstream": 1.0, "midstream_mode": "error"}) as url:
        resp = raw_request(url, "POST", MESSAGES, msg_body(stream=True), headers=ANTHROPIC_HEADERS)
        assert resp.status == 200 and resp.terminated
        events = sse_events(resp.body)
        assert events[-1] == ("error", '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
        assert "message_stop" not in [e for e, _ in events]
        with pytest.raises(anthropic.APIStatusError) as e:
            for _ in claude(url).messages.create(**msg_body(stream=True)):
                pass
        assert e.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        # Non-streaming: the failure comes before the answer, as Anthropic's 500.
        with pytest.raises(anthropic.InternalServerError) as e:
            claude(url).messages.create(**msg_body())
        assert e.value.status_code == 500


def test_responses_api_midstream_faults():
    body = {"model": "gpt-4o", "input": "Say something.", "max_output_tokens": 20, "stream": True}
    with serve({"midstream": 1.0, "midstream_mode": "error"}) as url:
        resp = raw_request(url, "POST", RESPONSES, body)
        assert resp.status == 200 and resp.terminated
        events = sse_events(resp.body)
        names = [e for e, _ in events]
        assert names[-2:] == ["error", "response.failed"] and "response.completed" not in names
        error = json.loads(events[-2][1])
        assert error["message"] == "The server had an error while processing your request. Sorry about that!"
        failed = json.loads(events[-1][1])["response"]
        assert failed["status"] == "failed" and failed["error"]["message"] == error["message"]
        sdk_events = list(openai.OpenAI(base_url=url + "/v1", api_key="sk", max_retries=0).responses.create(
            model="gpt-4o", input="Say something.", max_output_tokens=20, stream=True))
        assert [e.type for e in sdk_events][-2:] == ["error", "response.failed"]
    with serve({"midstream": 1.0}) as url:
        with pytest.raises(openai.APIConnectionError):
            for _ in openai.OpenAI(base_url=url + "/v1", api_key="sk", max_retries=0).responses.create(
                    model="gpt-4o", input="Say something.", max_output_tokens=20, stream=True):
                pass


def test_anthropic_rate_limit_headers_and_429():
    srv = start_server(config={"rate_limits": {"rpm": 2, "tpm": 100000}}, latency_profile="fast", seed=1)
    try:
        c = claude(srv.url)
        raw = c.messages.with_raw_response.create(**msg_body())
        h = raw.headers
        assert (h["anthropic-ratelimit-requests-limit"], h["anthropic-ratelimit-requests-remaining"]) == ("2", "1")
        assert h["anthropic-ratelimit-requests-reset"].endswith("Z")
        assert h["anthropic-ratelimit-tokens-limit"] == "100000"
        assert "x-ratelimit-limit-requests" not in h
        c.messages.create(**msg_body())
        with pytest.raises(anthropic.RateLimitError) as e:
            c.messages.create(**msg_body())
        err = e.value
        assert "of 2 requests per minute" in err.response.json()["error"]["message"]
        assert int(err.response.headers["retry-after"]) >= 29
        assert err.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
        # count_tokens is not a generation: it carries the headers but takes nothing.
        r = requests.post(srv.url + "/v1/messages/count_tokens", headers=ANTHROPIC_HEADERS,
                          json={"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.headers["anthropic-ratelimit-requests-remaining"] == "0"
    finally:
        srv.stop()


def test_anthropic_auth():
    with serve(config={"auth": {"api_keys": ["sk-ant-good-key-000000001"]}}) as url:
        assert claude(url, api_key="sk-ant-good-key-000000001").messages.create(**msg_body()).content
        with pytest.raises(anthropic.AuthenticationError) as e:
            claude(url, api_key="sk-ant-wrong").messages.create(**msg_body())
        assert e.value.response.json()["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
        r = requests.post(url + MESSAGES, json=msg_body(), headers={"anthropic-version": "2023-06-01"})
        assert r.status_code == 401
        assert r.json()["error"] == {"type": "authentication_error", "message": "x-api-key header is required"}
