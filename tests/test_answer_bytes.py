"""A non-streaming answer written from a template (ChatCompletions.answer_bytes) is byte for byte the JSON of
its body (Api.body), whatever the answer holds; the shapes the template does not cover go through the body."""

from __future__ import annotations

import json

import openai
import pytest

from llmsim.api import json_body
from llmsim.cli.config import resolve_config
from llmsim.cli.state import AppState
from llmsim.openai import chat
from llmsim.openai.chat import ChatCompletions
from llmsim.prefix_cache import CacheUsage
from llmsim.testing import run_server

MESSAGES = [{"role": "user", "content": "hello there"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture
def same_ids(monkeypatch):
    """Every id the same, so two writings of one answer can be compared as bytes."""
    monkeypatch.setattr(chat, "new_id", lambda prefix: prefix + "abc123")


def _both(state: AppState, body: dict) -> tuple[bytes, bytes]:
    api = ChatCompletions()
    gen = state.generate(api.parse(body))
    gen.release()  # the answer is planned: no need to wait the profile's time for it
    return api.answer_bytes(gen), json_body(api.body(gen))


@pytest.mark.parametrize("generator", ["lorem", "random"])
def test_the_template_writes_what_the_body_says(same_ids, generator):
    state = AppState(resolve_config({"generator": generator}, env={}))  # each model's own profile
    bodies = [
        {"model": "gpt-4o", "messages": MESSAGES},
        {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 3},  # "length"
        {"model": "gpt-4o", "messages": MESSAGES, "stop": [" ", "a", "e"]},  # cut by a stop sequence
        {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 1, "seed": 3},
        {"model": "o3-mini", "messages": MESSAGES, "reasoning_effort": "high"},  # hidden reasoning tokens
        {"model": "gpt-4o-mini", "messages": MESSAGES * 40, "seed": 11},
        # Not the template's: tool calls, n > 1, logprobs, a structured answer (text, so the template's)
        {"model": "gpt-4o", "messages": MESSAGES, "tools": [TOOL], "tool_choice": "required"},
        {"model": "gpt-4o", "messages": MESSAGES, "n": 3},
        {"model": "gpt-4o", "messages": MESSAGES, "logprobs": True, "top_logprobs": 2},
        {"model": "gpt-4o", "messages": MESSAGES, "response_format": {"type": "json_object"}},
    ]
    for body in bodies:
        fast, slow = _both(state, body)
        assert fast == slow, body
        answer = json.loads(fast)
        assert answer["object"] == "chat.completion" and answer["choices"]
    reasoned = json.loads(_both(state, bodies[4])[0])
    assert reasoned["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


def test_every_value_lands_in_its_place(same_ids):
    """Values the generated answers above never take: a cache hit, an odd model name, text that needs escapes."""
    state = AppState(resolve_config({"latency_profile": "instant"}, env={}))
    api = ChatCompletions()
    gen = state.generate(api.parse({"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 5}))
    gen.wait_all()
    gen.cache = CacheUsage(read=1234)
    gen.prompt_tokens = 2000
    gen.created = 1_700_000_000
    gen.request.model = 'my "model"\\é\u2028'
    gen.plan.blocks[0].text = 'line\n"quoted"\t\u00e9\U0001f600\x00'
    gen.plan.reasoning_tokens = 17
    fast = api.answer_bytes(gen)
    assert fast == json_body(api.body(gen))
    answer = json.loads(fast)
    assert answer["model"] == 'my "model"\\é\u2028' and answer["created"] == 1_700_000_000
    assert answer["choices"][0]["message"]["content"] == 'line\n"quoted"\t\u00e9\U0001f600\x00'
    usage = answer["usage"]
    assert usage["prompt_tokens"] == 2000 and usage["prompt_tokens_details"]["cached_tokens"] == 1234
    assert usage["completion_tokens"] == gen.plan.output_tokens + 17
    assert usage["total_tokens"] == 2000 + usage["completion_tokens"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 17


def test_the_sdk_reads_the_templated_answer():
    with run_server(latency_profile="instant") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)
        out = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=7)
        assert out.object == "chat.completion" and out.id.startswith("chatcmpl-") and out.model == "gpt-4o"
        assert out.choices[0].message.content and out.choices[0].finish_reason == "length"
        assert out.usage is not None and out.usage.completion_tokens == 7
        assert out.usage.total_tokens == out.usage.prompt_tokens + 7 and out.service_tier == "default"
        assert out.system_fingerprint == "fp_llmsim"
