"""Visible reasoning on every API: Anthropic thinking blocks, Responses reasoning summaries, Chat
`reasoning_content`; its bounds, usage and timing, through the official SDKs, raw streams and the
load tester's own client."""

import time
import warnings

import anthropic
import openai
import pytest
import requests

from llmsim.loadtest.adapters import ChatCompletionsAdapter, MessagesAdapter, Prompt, ResponsesAdapter
from llmsim.loadtest.client import LlmClient
from llmsim.testing import run_server
from llmsim.tokens import get_encoding
from tests.sse import parse_sse

CL100K = get_encoding("cl100k_base")
O200K = get_encoding("o200k_base")
TTFT_MS, ITL_MS = 40, 2
PROFILES = f"""
profiles:
  - name: test-thinker          # Claude-like: thinks only when asked, visibly
    models: [test-thinker]
    provider: anthropic
    encoding: cl100k_base
    context_window: 200000
    max_output_tokens: 64000
    ttft: {{distribution: constant, mean_ms: {TTFT_MS}}}
    itl: {{distribution: constant, mean_ms: {ITL_MS}}}
    reasoning: {{tokens_per_output_token: 2, visible: true, on_request: true}}
  - name: test-deep-thinker     # thinks far more than any budget allows
    models: [test-deep-thinker]
    provider: anthropic
    encoding: cl100k_base
    context_window: 200000
    max_output_tokens: 64000
    ttft: {{distribution: constant, mean_ms: 5}}
    itl: {{distribution: constant, mean_ms: 0}}
    reasoning: {{tokens_per_output_token: 30, visible: true, on_request: true}}
  - name: test-r1               # DeepSeek-R1-like: always streams its reasoning
    models: [test-r1]
    ttft: {{distribution: constant, mean_ms: {TTFT_MS}}}
    itl: {{distribution: constant, mean_ms: {ITL_MS}}}
    reasoning: {{tokens_per_output_token: 2, visible: true}}
  - name: test-o                # o-series-like: hidden reasoning unless a summary is asked for
    models: [test-o]
    ttft: {{distribution: constant, mean_ms: {TTFT_MS}}}
    itl: {{distribution: constant, mean_ms: {ITL_MS}}}
    reasoning: {{tokens_per_output_token: 2}}
"""
QUESTION = "Why is the sky blue?"
USER = [{"role": "user", "content": QUESTION}]
ANSWER_TOKENS = 50  # the server's --target-tokens: 100 reasoning tokens at ratio 2


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    path = tmp_path_factory.mktemp("profiles") / "reasoners.yaml"
    path.write_text(PROFILES)
    with run_server(profile_files=[path], target_tokens=ANSWER_TOKENS, seed=3) as u:
        yield u


@pytest.fixture(scope="module")
def claude(url):
    warnings.simplefilter("ignore", DeprecationWarning)
    return anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)


@pytest.fixture(scope="module")
def oai(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)


def cl100k(text: str) -> int:
    return len(CL100K.encode_ordinary(text))


def o200k(text: str) -> int:
    return len(O200K.encode_ordinary(text))


# ---------------------------------------------------------------- Anthropic extended thinking

def test_messages_stream_thinking_block_first(claude):
    with claude.messages.stream(model="test-thinker", max_tokens=4000, messages=USER,
                                thinking={"type": "enabled", "budget_tokens": 2000}) as stream:
        kinds = [e.type for e in stream]
        message = stream.get_final_message()
    thinking, text = message.content
    assert thinking.type == "thinking" and text.type == "text"
    assert thinking.thinking and thinking.signature and text.text
    assert QUESTION in thinking.thinking and thinking.thinking not in text.text  # prose about it, not the answer
    assert cl100k(thinking.thinking) == 2 * ANSWER_TOKENS and cl100k(text.text) == ANSWER_TOKENS
    assert message.usage.output_tokens == 3 * ANSWER_TOKENS  # thinking tokens are output tokens
    assert message.usage.output_tokens_details.thinking_tokens == 2 * ANSWER_TOKENS
    assert message.stop_reason == "end_turn"
    assert "thinking" in kinds and "signature" in kinds and "text" in kinds


def test_messages_raw_event_order(url):
    body = {"model": "test-thinker", "max_tokens": 4000, "messages": USER, "stream": True,
            "thinking": {"type": "enabled", "budget_tokens": 1024}}
    events = parse_sse(requests.post(url + "/v1/messages", json=body, timeout=30).text)
    names = [(n, d.get("delta", {}).get("type") or d.get("content_block", {}).get("type")) for n, d in events]
    first_text = names.index(("content_block_start", "text"))
    assert names[:3] == [("message_start", None), ("content_block_start", "thinking"), ("ping", None)]
    assert set(names[3:first_text - 2]) == {("content_block_delta", "thinking_delta")}
    assert names[first_text - 2:first_text] == [("content_block_delta", "signature_delta"),
                                                ("content_block_stop", None)]
    assert set(names[first_text + 1:-3]) == {("content_block_delta", "text_delta")}
    assert names[-3:] == [("content_block_stop", None), ("message_delta", None), ("message_stop", None)]
    assert [d["index"] for n, d in events if n == "content_block_start"] == [0, 1]
    signature = next(d["delta"]["signature"] for n, d in events if d.get("delta", {}).get("type") == "signature_delta")
    assert len(signature) > 100


def test_thinking_non_streaming_body(claude):
    m = claude.messages.create(model="test-thinker", max_tokens=4000, messages=USER,
                               thinking={"type": "enabled", "budget_tokens": 1024})
    assert [b.type for b in m.content] == ["thinking", "text"] and m.content[0].signature
    assert m.usage.output_tokens == cl100k(m.content[0].thinking) + cl100k(m.content[1].text)


def test_no_thinking_without_the_parameter_or_when_disabled(claude):
    for extra in ({}, {"thinking": {"type": "disabled"}}):
        m = claude.messages.create(model="test-thinker", max_tokens=4000, messages=USER, **extra)
        assert [b.type for b in m.content] == ["text"] and m.usage.output_tokens == ANSWER_TOKENS
        assert m.usage.output_tokens_details is None


def test_adaptive_thinking_and_display_omitted(claude):
    m = claude.messages.create(model="test-thinker", max_tokens=4000, messages=USER, thinking={"type": "adaptive"})
    assert m.content[0].type == "thinking" and cl100k(m.content[0].thinking) == 2 * ANSWER_TOKENS
    t0 = time.monotonic()
    m = claude.messages.create(model="test-thinker", max_tokens=4000, messages=USER,
                               thinking={"type": "enabled", "budget_tokens": 1024, "display": "omitted"})
    took = time.monotonic() - t0
    assert m.content[0].type == "thinking" and m.content[0].thinking == "" and m.content[0].signature
    assert m.usage.output_tokens == 3 * ANSWER_TOKENS  # the thinking still happened, and took its time
    assert took >= (TTFT_MS + (3 * ANSWER_TOKENS - 1) * ITL_MS) / 1000 * 0.95


def test_thinking_bounded_by_budget_and_by_max_tokens(claude):
    # 30 thinking tokens per answer token: 1500 wanted, the budget allows 1024
    m = claude.messages.create(model="test-deep-thinker", max_tokens=4000, messages=USER,
                               thinking={"type": "enabled", "budget_tokens": 1024})
    assert cl100k(m.content[0].thinking) == 1024 and m.usage.output_tokens == 1024 + ANSWER_TOKENS
    assert m.stop_reason == "end_turn"
    # max_tokens 1050: thinking comes first with its budget, the answer gets the 26 tokens left and is cut
    m = claude.messages.create(model="test-deep-thinker", max_tokens=1050, messages=USER,
                               thinking={"type": "enabled", "budget_tokens": 1024})
    assert m.usage.output_tokens == 1050 and m.stop_reason == "max_tokens"
    assert cl100k(m.content[0].thinking) == 1024 and cl100k(m.content[1].text) == 26


def test_thinking_blocks_pass_back_in_the_next_turn(claude):
    first = claude.messages.create(model="test-thinker", max_tokens=4000, messages=USER,
                                   thinking={"type": "enabled", "budget_tokens": 1024})
    history = USER + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                      {"role": "user", "content": "And at sunset?"}]
    second = claude.messages.create(model="test-thinker", max_tokens=4000, messages=history,
                                    thinking={"type": "enabled", "budget_tokens": 1024})
    assert second.content[0].type == "thinking"
    assert second.usage.input_tokens > first.usage.input_tokens + cl100k(first.content[0].thinking)


@pytest.mark.parametrize("extra, param, words", [
    ({"thinking": {"type": "enabled", "budget_tokens": 1023}}, "thinking.budget_tokens", "1024"),
    ({"thinking": {"type": "enabled", "budget_tokens": 4000}}, "thinking.budget_tokens", "`max_tokens` must be"),
    ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens", "Field required"),
    ({"thinking": {"type": "enabled", "budget_tokens": "2000"}}, "thinking.budget_tokens", "valid integer"),
    ({"thinking": {"type": "sometimes"}}, "thinking", "does not match"),
    ({"thinking": {"budget_tokens": 2000}}, "thinking.type", "Field required"),
    ({"thinking": "on"}, "thinking", "valid dictionary"),
    ({"thinking": {"type": "adaptive", "display": "full"}}, "thinking.display", "'summarized' or 'omitted'"),
    ({"thinking": {"type": "adaptive"}, "temperature": 0.5}, "temperature", "may only be set to 1"),
    ({"thinking": {"type": "adaptive"}, "top_k": 5}, "top_k", "must be unset"),
    ({"thinking": {"type": "adaptive"}, "tool_choice": {"type": "any"},
      "tools": [{"name": "f", "input_schema": {"type": "object"}}]}, "tool_choice", "forces tool use"),
])
def test_thinking_validation(url, extra, param, words):
    body = {"model": "test-thinker", "max_tokens": 4000, "messages": USER, **extra}
    r = requests.post(url + "/v1/messages", json=body, timeout=10)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and param in error["message"] and words in error["message"]


# ---------------------------------------------------------------- Responses reasoning summaries

def test_responses_stream_reasoning_summary_events(oai):
    with oai.responses.stream(model="test-o", input=QUESTION, reasoning={"effort": "medium", "summary": "auto"},
                              include=["reasoning.encrypted_content"]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    names = [e.type for e in events]
    first_text = names.index("response.output_text.delta")
    assert names[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.reasoning_summary_part.added"]
    deltas = [e for e in events if e.type == "response.reasoning_summary_text.delta"]
    k = names.index("response.reasoning_summary_text.done")
    assert set(names[4:k]) == {"response.reasoning_summary_text.delta"} and len(deltas) == k - 4
    assert names[k:first_text] == ["response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
                                   "response.output_item.done", "response.output_item.added",
                                   "response.content_part.added"]
    assert names[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    reasoning, message = final.output
    summary = reasoning.summary[0].text
    assert reasoning.type == "reasoning" and reasoning.summary[0].type == "summary_text"
    assert summary == "".join(d.delta for d in deltas) == events[k].text
    assert all(d.item_id == reasoning.id and d.output_index == 0 and d.summary_index == 0 for d in deltas)
    assert reasoning.encrypted_content and reasoning.encrypted_content == events[k + 2].item.encrypted_content
    assert message.type == "message" and events[first_text].output_index == 1
    usage = final.usage
    assert usage.output_tokens_details.reasoning_tokens == o200k(summary) == 2 * ANSWER_TOKENS
    assert usage.output_tokens == 3 * ANSWER_TOKENS and final.reasoning.summary == "auto"


def test_responses_summary_non_streaming_and_hidden_reasoning(oai):
    r = oai.responses.create(model="test-o", input=QUESTION, reasoning={"summary": "concise"})
    assert [o.type for o in r.output] == ["reasoning", "message"] and r.output[0].summary
    assert r.output[0].encrypted_content is None  # only with include
    hidden = oai.responses.create(model="test-o", input=QUESTION, include=["reasoning.encrypted_content"])
    assert hidden.output[0].summary == [] and hidden.output[0].encrypted_content
    assert hidden.usage.output_tokens_details.reasoning_tokens == 2 * ANSWER_TOKENS


def test_responses_reasoning_text_of_a_model_that_streams_it(url):
    events = parse_sse(requests.post(url + "/v1/responses", timeout=30,
                                     json={"model": "test-r1", "input": QUESTION, "stream": True}).text)
    names = [n for n, _ in events]
    assert names[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert events[3][1]["part"]["type"] == "reasoning_text" and "response.reasoning_text.done" in names
    final = events[-1][1]["response"]
    assert final["output"][0]["content"][0]["type"] == "reasoning_text"


def test_responses_include_is_validated(url):
    r = requests.post(url + "/v1/responses", json={"model": "test-o", "input": "x", "include": ["reasoning.all"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "include[0]"


# ---------------------------------------------------------------- Chat reasoning_content

def test_chat_reasoning_content_before_content(url, oai):
    r = oai.chat.completions.create(model="test-r1", messages=USER)
    message = r.choices[0].message
    assert message.reasoning_content and message.content and QUESTION in message.reasoning_content
    details = r.usage.completion_tokens_details
    assert details.reasoning_tokens == o200k(message.reasoning_content) == 2 * ANSWER_TOKENS
    assert r.usage.completion_tokens == 3 * ANSWER_TOKENS
    body = {"model": "test-r1", "messages": USER, "stream": True}
    chunks = [d for _, d in parse_sse(requests.post(url + "/v1/chat/completions", json=body, timeout=30).text)
              if isinstance(d, dict)]
    kinds = [next((k for k in ("reasoning_content", "content") if c["choices"][0]["delta"].get(k)), None)
             for c in chunks]
    first_content = kinds.index("content")
    assert kinds[0] is None and set(kinds[1:first_content]) == {"reasoning_content"}
    assert set(kinds[first_content:-1]) == {"content"} and kinds[-1] is None
    assert "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks) == \
        message.reasoning_content  # seeded server: the same request gets the same text


def test_a_hidden_reasoner_shows_nothing_on_chat(oai):
    r = oai.chat.completions.create(model="test-o", messages=USER)
    assert getattr(r.choices[0].message, "reasoning_content", None) is None
    assert r.usage.completion_tokens_details.reasoning_tokens == 2 * ANSWER_TOKENS


# ---------------------------------------------------------------- timing, measured by the load tester

class ThinkingMessages(MessagesAdapter):
    def build_request(self, prompt, *, model, max_tokens, stream):
        req = super().build_request(prompt, model=model, max_tokens=max_tokens, stream=stream)
        req.body["thinking"] = {"type": "enabled", "budget_tokens": 1024}
        return req


class SummaryResponses(ResponsesAdapter):
    def build_request(self, prompt, *, model, max_tokens, stream):
        req = super().build_request(prompt, model=model, max_tokens=max_tokens, stream=stream)
        req.body["reasoning"] = {"summary": "auto"}
        return req


@pytest.mark.parametrize("adapter, model", [(ChatCompletionsAdapter(), "test-r1"),
                                            (ThinkingMessages(), "test-thinker"),
                                            (SummaryResponses(), "test-o")])
def test_ttft_is_measured_to_the_first_reasoning_delta(url, adapter, model):
    count = (lambda t: cl100k(t)) if model == "test-thinker" else o200k
    client = LlmClient(url, adapter, model=model, count_tokens=count, timeout=30)
    hidden = LlmClient(url, ChatCompletionsAdapter(), model="test-o", count_tokens=o200k, timeout=30)
    try:
        visible = client.run(Prompt.of_text(QUESTION), max_tokens=4000)
        unseen = hidden.run(Prompt.of_text(QUESTION), max_tokens=4000)
    finally:
        client.close()
        hidden.close()
    assert visible.ok and unseen.ok, (visible.error_message, unseen.error_message)
    reasoning = 2 * ANSWER_TOKENS
    # The same reasoning, hidden: the first visible token waits for all of it.
    assert unseen.ttft_ms >= (TTFT_MS + reasoning * ITL_MS) * 0.95
    # Streamed: the first reasoning delta arrives at TTFT, and the reasoning streams at ITL.
    assert TTFT_MS * 0.95 <= visible.ttft_ms < unseen.ttft_ms - reasoning * ITL_MS * 0.5
    assert visible.output_tokens == 3 * ANSWER_TOKENS
    assert visible.e2e_ms - visible.ttft_ms >= (3 * ANSWER_TOKENS - 1) * ITL_MS * 0.95
