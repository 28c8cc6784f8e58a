"""The Messages and Responses adapters: request shapes, event reading, and the measuring client end to end
against llmsim (timings from the profile, tokens from the server's usage, in-band errors)."""

from __future__ import annotations

import json

import pytest

from llmsim.anthropic.messages import Messages
from llmsim.errors import ApiError
from llmsim.loadtest.adapters import MessagesAdapter, Prompt, ResponsesAdapter, StreamDelta, Usage
from llmsim.loadtest.client import LlmClient
from llmsim.loadtest.metrics import STREAM_ERROR
from llmsim.loadtest.sse import SseEvent
from llmsim.openai.responses import Responses
from llmsim.testing import run_server
from llmsim.tokens import count_tokens
from tests.sse import canned_stream, opening_and_first_token

PROMPT = Prompt(({"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}), 12)
CONSTANT = """
profiles:
  - name: lt-apis
    models: [claude-lt, gpt-lt]
    encoding: cl100k_base
    ttft: {distribution: constant, mean_ms: 40}
    itl: {distribution: constant, mean_ms: 4}
"""


def ev(data: dict | str, event: str | None = None) -> SseEvent:
    return SseEvent(event, data if isinstance(data, str) else json.dumps(data), 0.0)


# ---------------------------------------------------------------- request shapes

def test_messages_request_moves_system_to_the_top_level_and_always_sends_max_tokens():
    a = MessagesAdapter()
    req = a.build_request(PROMPT, model="claude-lt", max_tokens=None, stream=True)
    assert req.path == "/v1/messages"
    assert req.body == {"model": "claude-lt", "max_tokens": 4096, "stream": True, "system": "Be brief.",
                        "messages": [{"role": "user", "content": "hello"}]}
    assert a.build_request(PROMPT, model="m", max_tokens=7, stream=False).body["max_tokens"] == 7
    assert a.auth_headers("sk-ant") == {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant"}
    assert a.auth_headers(None) == {"anthropic-version": "2023-06-01"}
    assert a.api_key_env == "ANTHROPIC_API_KEY"


def test_responses_request_sends_messages_as_input_items():
    req = ResponsesAdapter().build_request(PROMPT, model="gpt-lt", max_tokens=20, stream=True)
    assert req.path == "/v1/responses"
    assert req.body == {"model": "gpt-lt", "input": list(PROMPT.messages), "stream": True, "max_output_tokens": 20}
    assert "max_output_tokens" not in ResponsesAdapter().build_request(PROMPT, model="m", max_tokens=None,
                                                                       stream=True).body
    assert ResponsesAdapter().auth_headers("sk") == {"Authorization": "Bearer sk"}


# ---------------------------------------------------------------- event reading

def test_messages_events():
    a = MessagesAdapter()
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}}
    assert a.read_event(ev(start, "message_start")) == StreamDelta(usage=Usage(9, None))  # output 1 is a placeholder
    assert a.read_event(ev({"type": "ping"}, "ping")) == StreamDelta()
    assert a.read_event(ev({"type": "content_block_start", "index": 0,
                            "content_block": {"type": "text", "text": ""}})) == StreamDelta()
    text = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}
    assert a.read_event(ev(text)) == StreamDelta(text="Hi")
    thinking = {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}}
    assert a.read_event(ev(thinking)) == StreamDelta(reasoning="hm")
    final = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}}
    assert a.read_event(ev(final)) == StreamDelta(usage=Usage(None, 5))
    assert a.read_event(ev({"type": "message_stop"})) == StreamDelta(done=True)
    err = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert a.read_event(ev(err, "error")) == StreamDelta(error="Overloaded")


def test_responses_events():
    a = ResponsesAdapter()
    assert a.read_event(ev({"type": "response.created", "response": {}})) == StreamDelta()
    assert a.read_event(ev({"type": "response.output_text.delta", "delta": "Hi"})) == StreamDelta(text="Hi")
    assert a.read_event(ev({"type": "response.reasoning_summary_text.delta", "delta": "hm"})) == \
        StreamDelta(reasoning="hm")
    usage = {"input_tokens": 8, "output_tokens": 30, "output_tokens_details": {"reasoning_tokens": 10}}
    for terminal in ("response.completed", "response.incomplete"):
        assert a.read_event(ev({"type": terminal, "response": {"usage": usage}})) == \
            StreamDelta(done=True, usage=Usage(8, 30, 10))
    assert a.read_event(ev({"type": "error", "code": "server_error", "message": "boom"})) == \
        StreamDelta(error="boom")
    assert a.read_event(ev({"type": "response.failed", "response": {"error": {"message": "bad"}}})) == \
        StreamDelta(error="bad")


def test_bodies():
    text, reasoning, usage = MessagesAdapter().read_body(
        {"content": [{"type": "thinking", "thinking": "x"}, {"type": "text", "text": "Hi"}],
         "usage": {"input_tokens": 3, "output_tokens": 2}})
    assert (text, reasoning, usage) == ("Hi", "x", Usage(3, 2))
    text, reasoning, usage = ResponsesAdapter().read_body(
        {"output": [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "s"}]},
                    {"type": "message", "content": [{"type": "output_text", "text": "Hi"}]}],
         "usage": {"input_tokens": 3, "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 2}}})
    assert (text, reasoning, usage) == ("Hi", "s", Usage(3, 4, 2))


# ---------------------------------------------------------------- the client against llmsim

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "lt.yaml"
    path.write_text(CONSTANT)
    with run_server(profile_files=[path], seed=4) as url:
        yield url


@pytest.mark.parametrize("adapter, model", [(MessagesAdapter(), "claude-lt"), (ResponsesAdapter(), "gpt-lt")])
@pytest.mark.parametrize("stream", [True, False])
def test_client_measures_llmsim(server, adapter, model, stream):
    client = LlmClient(server, adapter, model=model, count_tokens=lambda t: count_tokens(t, "gpt-4"), timeout=10)
    try:
        rec = client.run(PROMPT, max_tokens=20, stream=stream)
    finally:
        client.close()
    assert rec.ok, rec.error_message
    assert rec.status == 200 and rec.usage_reported
    assert rec.output_tokens == 20 and rec.prompt_tokens > 0
    assert rec.e2e_ms >= 40 + 19 * 4 - 1  # deadlines only overshoot
    if stream:
        assert rec.ttft_ms >= 40 - 1 and len(rec.itl_ms) == 19
        assert sorted(rec.itl_ms)[9] == pytest.approx(4.0, abs=1.5)


def messages_cut_stream() -> list[bytes]:
    e, events = opening_and_first_token(Messages(), "claude-haiku-4-5")
    return events + [e.error_event(ApiError("overloaded", "Overloaded"))]


def responses_cut_stream() -> list[bytes]:
    e, events = opening_and_first_token(Responses(), "gpt-4o")
    return events + [e.error_event(ApiError("server_error", "boom"))]


@pytest.mark.parametrize("adapter, chunks, message", [(MessagesAdapter(), messages_cut_stream, "Overloaded"),
                                                      (ResponsesAdapter(), responses_cut_stream, "boom")])
def test_in_band_errors_are_stream_errors(adapter, chunks, message):
    """What the fault injector sends mid-stream (each encoder's error_event) is a stream_error, not a success."""
    with canned_stream(chunks()) as url:
        client = LlmClient(url, adapter, model="m", count_tokens=len, timeout=10)
        try:
            rec = client.run(PROMPT, max_tokens=5)
        finally:
            client.close()
    assert not rec.ok and rec.error_kind == STREAM_ERROR and rec.error_message == message
