"""Visible and hidden reasoning: only reasoning the client did not receive is hidden (inside TTFT); streamed
reasoning (Chat `reasoning_content`, Anthropic thinking, a Responses summary) is timed at ITL like text, in the
records, in the scores' expected values and in the capacity prediction."""

from __future__ import annotations

import json
import statistics
from typing import Any

import pytest

from llmsim.latency import Distribution, LatencyProfile
from llmsim.loadtest.adapters import ChatCompletionsAdapter, MessagesAdapter, Prompt, ResponsesAdapter, Usage
from llmsim.loadtest.client import LlmClient
from llmsim.loadtest.metrics import build_stream_record, hidden_reasoning, streamed_reasoning
from llmsim.loadtest.prediction import TokenShape
from llmsim.loadtest.scoring import expected_hidden_reasoning, expected_values
from llmsim.loadtest.sse import SseEvent
from llmsim.profiles import ModelProfile, ProfileRegistry
from llmsim.testing import run_server
from llmsim.tokens import get_encoding

from .locust_helpers import MEDIAN_ITL_MS, within

TTFT_MS, ITL_MS = 60.0, 5.0
TTFT_EARLY_MS = 5.0
"""llmsim's first deadline can fire a little early (gevent times a sleep from the loop's cached clock, which
lags by the time the server spent on the request); later deadlines are absolute and catch up."""
# Constant-timing copies of the built-in profiles; their reasoning settings are checked against the originals.
CLONES = f"""
profiles:
  - name: lt-deepseek-reasoner
    models: [deepseek-reasoner-lt]
    encoding: o200k_base
    ttft: {{distribution: constant, mean_ms: {TTFT_MS:g}}}
    itl: {{distribution: constant, mean_ms: {ITL_MS:g}}}
    reasoning: {{tokens_per_output_token: 2, visible: true}}
  - name: lt-gpt-5
    models: [gpt-5-lt]
    encoding: o200k_base
    ttft: {{distribution: constant, mean_ms: {TTFT_MS:g}}}
    itl: {{distribution: constant, mean_ms: {ITL_MS:g}}}
    reasoning: {{tokens_per_output_token: 1}}
  - name: lt-claude-sonnet
    models: [claude-sonnet-lt]
    encoding: o200k_base
    ttft: {{distribution: constant, mean_ms: {TTFT_MS:g}}}
    itl: {{distribution: constant, mean_ms: {ITL_MS:g}}}
    reasoning: {{tokens_per_output_token: 2, visible: true, on_request: true}}
"""
ORIGINALS = {"deepseek-reasoner-lt": "deepseek-reasoner", "gpt-5-lt": "gpt-5", "claude-sonnet-lt": "claude-sonnet-4-5"}
ENC = get_encoding("o200k_base")
PROMPT = Prompt.of_text("Why is the sky blue?", 6)


def count(text: str) -> int:
    return len(ENC.encode_ordinary(text))


# ---------------------------------------------------------------- the rule

def test_hidden_reasoning_is_what_usage_reports_beyond_what_was_streamed():
    assert hidden_reasoning(None, 0) is None and hidden_reasoning(None, 7) is None
    assert hidden_reasoning(10, 0) == 10  # nothing streamed: all hidden (gpt-5)
    assert hidden_reasoning(10, 10) == 0  # all streamed: none hidden (DeepSeek reports streamed reasoning too)
    assert hidden_reasoning(10, 4) == 6  # a summary shorter than the reasoning
    assert hidden_reasoning(10, 12) == 0  # the client counted more than the server: never negative
    assert streamed_reasoning([], count) == 0
    assert streamed_reasoning(["The sky", " is blue"], count) == 4
    assert streamed_reasoning(["", "", ""], count) == 3  # at least one token per reasoning event


def test_the_record_subtracts_only_hidden_reasoning():
    times = [0.1 + 0.01 * i for i in range(6)]
    common = dict(start_time=0.0, t_sent=0.0, t_end=0.2, status=200, event_times=times, event_texts=["x"] * 6,
                  prompt_tokens_local=0, count=lambda t: len(t))
    # 12 output tokens, 8 of them reasoning, 2 reasoning tokens streamed ("ab"): 6 hidden, 6 visible.
    rec = build_stream_record(usage=Usage(5, 12, 8), reasoning_texts=["ab"], **common)
    assert (rec.reasoning_tokens, rec.streamed_reasoning_tokens, rec.visible_tokens) == (6, 2, 6)
    assert len(rec.itl_ms) == 5 and rec.tpot_ms == pytest.approx((rec.e2e_ms - rec.ttft_ms) / 5)
    # All 8 streamed: nothing hidden, 12 tokens over 6 events.
    rec = build_stream_record(usage=Usage(5, 12, 8), reasoning_texts=["abcdefgh"], **common)
    assert (rec.reasoning_tokens, rec.visible_tokens) == (0, 12)
    assert rec.tpot_ms == pytest.approx((rec.e2e_ms - rec.ttft_ms) / 11)
    # No reasoning count in usage: nothing is known to be hidden.
    rec = build_stream_record(usage=Usage(5, 12), reasoning_texts=["ab"], **common)
    assert (rec.reasoning_tokens, rec.visible_tokens) == (None, 12)


def test_messages_usage_reads_thinking_tokens():
    final = {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
             "usage": {"output_tokens": 30, "output_tokens_details": {"thinking_tokens": 20}}}
    assert MessagesAdapter().read_event(SseEvent(None, json.dumps(final), 0.0)).usage == Usage(None, 30, 20)


# ---------------------------------------------------------------- against llmsim

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "reasoning.yaml"
    path.write_text(CLONES)
    with run_server(profile_files=[path], seed=7) as url:
        yield url


def test_the_clones_reason_like_the_built_in_profiles(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(CLONES)
    registry = ProfileRegistry.load(extra_files=[path])
    for clone, original in ORIGINALS.items():
        a, b = registry.resolve(clone).latency, registry.resolve(original).latency
        assert (a.reasoning_tokens_per_output_token, a.reasoning_visible, a.reasoning_on_request) == \
            (b.reasoning_tokens_per_output_token, b.reasoning_visible, b.reasoning_on_request), original


class ThinkingMessages(MessagesAdapter):
    def __init__(self, display: str | None = None) -> None:
        self.display = display

    def build_request(self, prompt, **kw):
        req = super().build_request(prompt, **kw)
        req.body["thinking"] = {"type": "enabled", "budget_tokens": 1024,
                                **({"display": self.display} if self.display else {})}
        return req


class SummaryResponses(ResponsesAdapter):
    def build_request(self, prompt, **kw):
        req = super().build_request(prompt, **kw)
        req.body["reasoning"] = {"summary": "auto"}
        return req


def measure(url: str, adapter: Any, model: str, max_tokens: int = 400):
    client = LlmClient(url, adapter, model=model, count_tokens=count, timeout=20)
    try:
        rec = client.run(PROMPT, max_tokens=max_tokens)
    finally:
        client.close()
    assert rec.ok, rec.error_message
    assert rec.usage_reported
    return rec


def assert_timing(rec, hidden: int) -> None:
    """TTFT holds the hidden reasoning only; every visible token (streamed reasoning too) is one ITL sample, and
    TPOT divides by them."""
    assert rec.reasoning_tokens == hidden
    assert rec.visible_tokens == rec.output_tokens - hidden
    assert len(rec.itl_ms) == rec.visible_tokens - 1
    assert within(rec.ttft_ms, TTFT_MS + hidden * ITL_MS, TTFT_EARLY_MS), rec.ttft_ms
    assert within(statistics.median(rec.itl_ms), ITL_MS, MEDIAN_ITL_MS, MEDIAN_ITL_MS)
    assert within(rec.tpot_ms, ITL_MS, MEDIAN_ITL_MS, 3.0), rec.tpot_ms


def test_deepseek_reasoner_streams_its_reasoning(server):
    """Chat `reasoning_content`: usage counts it in completion_tokens_details.reasoning_tokens too (as DeepSeek
    does), and none of it is hidden."""
    rec = measure(server, ChatCompletionsAdapter(), "deepseek-reasoner-lt")
    assert rec.streamed_reasoning_tokens > 0 and rec.output_tokens > rec.streamed_reasoning_tokens
    assert_timing(rec, hidden=0)


def test_gpt_5_hides_its_reasoning(server):
    for adapter in (ChatCompletionsAdapter(), ResponsesAdapter()):
        rec = measure(server, adapter, "gpt-5-lt", max_tokens=40)
        assert rec.streamed_reasoning_tokens == 0 and rec.reasoning_tokens == 20  # ratio 1: half of 40
        assert_timing(rec, hidden=20)


def test_a_responses_reasoning_summary_is_streamed(server):
    rec = measure(server, SummaryResponses(), "gpt-5-lt", max_tokens=40)
    assert rec.streamed_reasoning_tokens > 0
    assert_timing(rec, hidden=0)


def test_anthropic_thinking_visible_and_omitted(server):
    rec = measure(server, ThinkingMessages(), "claude-sonnet-lt", max_tokens=2000)
    assert rec.streamed_reasoning_tokens > 0
    assert_timing(rec, hidden=0)
    # display "omitted": the thinking block is empty and its tokens are spent before the answer.
    rec = measure(server, ThinkingMessages("omitted"), "claude-sonnet-lt", max_tokens=2000)
    assert rec.streamed_reasoning_tokens == 0 and rec.reasoning_tokens and rec.reasoning_tokens > 0
    assert_timing(rec, hidden=rec.reasoning_tokens)


# ---------------------------------------------------------------- expected values and the capacity prediction

def built_in(name: str) -> ModelProfile:
    return ProfileRegistry.load().resolve(name)


def constant_timing(p: ModelProfile, ttft: float = 200.0, itl: float = 20.0) -> ModelProfile:
    from dataclasses import replace

    lat = p.latency
    return replace(p, capacity=None, latency=LatencyProfile(
        Distribution("constant", ttft), Distribution("constant", itl),
        reasoning_tokens_per_output_token=lat.reasoning_tokens_per_output_token,
        reasoning_visible=lat.reasoning_visible, reasoning_on_request=lat.reasoning_on_request))


@pytest.mark.parametrize("name, hidden_per_token", [("deepseek-reasoner", 0), ("gpt-5", 1), ("claude-sonnet-4-5", 0)])
def test_expected_values_put_only_hidden_reasoning_inside_ttft(name, hidden_per_token):
    """A mix whose reasoning count is unknown (-1: the server reported none) takes the profile's word: visible
    reasoning (deepseek-reasoner) and reasoning on request only (Claude: the toolkit does not ask) add nothing
    to TTFT; gpt-5's hidden reasoning adds one ITL per token."""
    p = constant_timing(built_in(name))
    assert expected_hidden_reasoning(p.latency, 60) == 60 * hidden_per_token
    exp = expected_values(p, {(0, 60, 60 + 60 * hidden_per_token, -1): 10})
    assert exp["ttft"]["p50"] == pytest.approx(200.0 + 60 * hidden_per_token * 20.0)
    assert exp["tpot"]["p50"] == pytest.approx(20.0) and exp["e2e"]["p50"] == pytest.approx(
        exp["ttft"]["p50"] + 59 * 20.0)
    # What the client measured (the hidden count it worked out) wins over the profile.
    exp = expected_values(p, {(0, 60, 90, 30): 10})
    assert exp["ttft"]["p50"] == pytest.approx(200.0 + 30 * 20.0)


def test_deepseek_reasoner_run_expects_its_streamed_reasoning_at_itl():
    """A deepseek-reasoner record: 300 output tokens, 200 of them streamed reasoning, none hidden. Expected TTFT
    is the profile's alone; E2E spreads all 300 tokens at ITL."""
    p = constant_timing(built_in("deepseek-reasoner"))
    exp = expected_values(p, {(0, 300, 300, 0): 10})
    assert exp["ttft"]["p50"] == pytest.approx(200.0)
    assert exp["e2e"]["p50"] == pytest.approx(200.0 + 299 * 20.0)


@pytest.mark.parametrize("name, hidden_per_token", [("deepseek-reasoner", 0), ("gpt-5", 1), ("claude-sonnet-4-5", 0)])
def test_capacity_prediction_shape(name, hidden_per_token):
    p = built_in(name)
    assert TokenShape.from_mix({}, p, default_visible=64, default_prompt=100) == \
        TokenShape(100, 64, 64 * hidden_per_token)
    assert TokenShape.from_mix({(100, 50, 50, -1): 3}, p, default_visible=64, default_prompt=1) == \
        TokenShape(100, 50, 50 * hidden_per_token)
    assert TokenShape.from_mix({(100, 50, 80, 30): 3}, p, default_visible=64, default_prompt=1) == \
        TokenShape(100, 50, 30)
