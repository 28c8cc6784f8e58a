"""Prefix caching end to end through the official SDKs: cached-token usage fields by each provider's
rule, Anthropic breakpoints and TTLs, prefill skipping the cached prefix, and the cache in the stats."""

from __future__ import annotations

import itertools
import time

import anthropic
import openai
import pytest
import requests

from llmsim.testing import start_server
from llmsim.tokens import get_encoding

PROFILES = """
profiles:
  - name: sim-openai-cache
    models: [sim-openai-cache]
    provider: openai
    encoding: o200k_base
    ttft: {distribution: constant, mean_ms: 5}
    itl: {distribution: constant, mean_ms: 1}
    cache: {capacity_tokens: 1000000}
  - name: sim-vllm-cache
    models: [sim-vllm-cache]
    provider: any
    encoding: o200k_base
    ttft: {distribution: constant, mean_ms: 5}
    itl: {distribution: constant, mean_ms: 1}
    cache: {capacity_tokens: 1000000, block_tokens: 16}
  - name: sim-claude-cache
    models: [sim-claude-cache]
    provider: anthropic
    encoding: cl100k_base
    ttft: {distribution: constant, mean_ms: 5}
    itl: {distribution: constant, mean_ms: 1}
    cache: {capacity_tokens: 1000000, min_prefix_tokens: 1024}
  - name: sim-prefill-cache
    models: [sim-prefill-cache]
    provider: any
    encoding: o200k_base
    ttft: {distribution: constant, mean_ms: 50}
    itl: {distribution: constant, mean_ms: 1}
    prefill: {tokens_per_s: 2000}
    cache: {capacity_tokens: 1000000}
  - name: sim-prefill-claude
    models: [sim-prefill-claude]
    provider: anthropic
    encoding: cl100k_base
    ttft: {distribution: constant, mean_ms: 50}
    itl: {distribution: constant, mean_ms: 1}
    prefill: {tokens_per_s: 2000}
    cache: {capacity_tokens: 1000000, min_prefix_tokens: 1024}
"""
O200K = get_encoding("o200k_base")
CL100K = get_encoding("cl100k_base")
_nonce = itertools.count()


def doc(words: int) -> str:
    """A long text no other test shares (its first word differs), of about `words` tokens."""
    return f"Document {next(_nonce)}: " + " ".join(f"w{i % 97}" for i in range(words // 2))


def n(text: str, enc=O200K) -> int:
    return len(enc.encode(text))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("profiles") / "cache.yaml"
    path.write_text(PROFILES)
    srv = start_server(profile_files=[path], seed=3)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def oai(server):
    return openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)


@pytest.fixture()
def claude(server):
    return anthropic.Anthropic(base_url=server.url, api_key="sk-ant-test", max_retries=0)


def chat(client, model: str, system: str, question: str, **kw):
    return client.chat.completions.create(model=model, max_tokens=8, messages=[
        {"role": "system", "content": system}, {"role": "user", "content": question}], **kw)


def shared_prefix(system: str, enc=O200K) -> int:
    """Tokens two chat prompts share when only the user's text differs (from its first token):
    framing (3) + role + the system text, then the user message's framing (3) + role."""
    return 3 + n("system", enc) + n(system, enc) + 3 + n("user", enc)


def openai_rule(tokens: int) -> int:
    return 0 if tokens < 1024 else 1024 + (tokens - 1024) // 128 * 128


# ------------------------------------------------------------------ OpenAI

def test_chat_reports_cached_tokens_by_openai_rule(oai):
    system = doc(3000)
    first = chat(oai, "sim-openai-cache", system, "Alpha: what is this?")
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    second = chat(oai, "sim-openai-cache", system, "Beta: summarise it.")
    blocks = shared_prefix(system) // 16 * 16
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached == openai_rule(blocks) and cached % 128 == 0 and cached >= 1024
    assert second.usage.prompt_tokens == n(system) + n("Beta: summarise it.") + 3 + 2 * (3 + 1)
    # Streamed, the usage chunk says the same.
    stream = chat(oai, "sim-openai-cache", system, "Gamma: stream it.", stream=True,
                  stream_options={"include_usage": True})
    usage = [c.usage for c in stream if c.usage is not None][-1]
    assert usage.prompt_tokens_details.cached_tokens == cached


def test_short_prompts_report_no_cached_tokens_on_openai(oai):
    system = doc(600)
    for q in ("One?", "Two?"):
        assert chat(oai, "sim-openai-cache", system, q).usage.prompt_tokens_details.cached_tokens == 0


def test_responses_reports_input_tokens_details_cached(oai):
    instructions = doc(2500)
    first = oai.responses.create(model="sim-openai-cache", instructions=instructions, input="Alpha?",
                                 max_output_tokens=16)
    second = oai.responses.create(model="sim-openai-cache", instructions=instructions, input="Beta?",
                                  max_output_tokens=16)
    assert first.usage.input_tokens_details.cached_tokens == 0
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached == openai_rule(shared_prefix(instructions) // 16 * 16)
    assert second.usage.input_tokens == first.usage.input_tokens


def test_legacy_completions_report_cached_tokens(oai):
    prompt = doc(2000)
    oai.completions.create(model="sim-openai-cache", prompt=prompt + " Alpha", max_tokens=4)
    second = oai.completions.create(model="sim-openai-cache", prompt=prompt + " Beta", max_tokens=4)
    # A legacy prompt is its text alone: the shared part is the document's tokens.
    assert second.usage.prompt_tokens_details.cached_tokens == openai_rule(n(prompt) // 16 * 16)


def test_vllm_profile_reports_the_block_granular_hit(oai):
    system = doc(700)
    chat(oai, "sim-vllm-cache", system, "Alpha?")
    second = chat(oai, "sim-vllm-cache", system, "Beta?")
    assert second.usage.prompt_tokens_details.cached_tokens == shared_prefix(system) // 16 * 16


def test_multi_turn_reuses_the_previous_turn(oai):
    messages = [{"role": "system", "content": doc(1500)}, {"role": "user", "content": "First question?"}]
    first = oai.chat.completions.create(model="sim-vllm-cache", max_tokens=20, messages=messages)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And a second one?"}]
    second = oai.chat.completions.create(model="sim-vllm-cache", max_tokens=20, messages=messages)
    # Turn 1's whole prompt (its reply priming opens the assistant message) is reused, block-granular.
    assert second.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens // 16 * 16


def test_anthropic_profiles_cache_nothing_without_breakpoints(oai):
    system = doc(3000)
    for q in ("One?", "Two?"):
        assert chat(oai, "sim-claude-cache", system, q).usage.prompt_tokens_details.cached_tokens == 0


# ------------------------------------------------------------------ Anthropic

def cached_system(text: str, ttl: str | None = None) -> list[dict]:
    control = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
    return [{"type": "text", "text": text, "cache_control": control}]


def system_prefix(text: str) -> int:
    """The tokens through a system block: its message framing (3) + role + its text."""
    return 3 + n("system", CL100K) + n(text, CL100K)


def test_messages_write_then_read_a_breakpoint(claude):
    text = doc(3000)
    kw = {"model": "sim-claude-cache", "max_tokens": 8, "system": cached_system(text)}
    first = claude.messages.create(messages=[{"role": "user", "content": "Alpha?"}], **kw)
    total = claude.messages.count_tokens(model="sim-claude-cache", system=text,
                                         messages=[{"role": "user", "content": "Alpha?"}]).input_tokens
    u = first.usage
    assert u.cache_read_input_tokens == 0 and u.cache_creation_input_tokens == system_prefix(text)
    assert u.cache_creation.ephemeral_5m_input_tokens == system_prefix(text)
    assert u.cache_creation.ephemeral_1h_input_tokens == 0
    assert u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens == total
    second = claude.messages.create(messages=[{"role": "user", "content": "Beta, please?"}], **kw)
    u2 = second.usage
    assert u2.cache_read_input_tokens == system_prefix(text) and u2.cache_creation_input_tokens == 0
    assert u2.input_tokens == 3 + 3 + n("user", CL100K) + n("Beta, please?", CL100K)


def test_big_prompts_are_keyed_off_the_event_loop(oai, claude):
    # Past tokens.OFFLOAD_CHARS the token ids and hashes are worked out in gevent's threadpool.
    text = " ".join(f"item{i}" for i in range(8000))
    assert len(text) > 40_000
    chat(oai, "sim-vllm-cache", text, "Alpha?")
    assert chat(oai, "sim-vllm-cache", text, "Beta?").usage.prompt_tokens_details.cached_tokens == \
        shared_prefix(text) // 16 * 16
    kw = {"model": "sim-claude-cache", "max_tokens": 8, "system": cached_system(text)}
    claude.messages.create(messages=[{"role": "user", "content": "Alpha?"}], **kw)
    u = claude.messages.create(messages=[{"role": "user", "content": "Beta?"}], **kw).usage
    assert u.cache_read_input_tokens == system_prefix(text)


def test_messages_stream_usage_carries_the_cache(claude):
    text = doc(2500)
    kw = {"model": "sim-claude-cache", "max_tokens": 8, "system": cached_system(text, "1h"),
          "messages": [{"role": "user", "content": "Alpha?"}]}
    for expect_read in (False, True):
        with claude.messages.stream(**kw) as stream:
            events = list(stream)
            final = stream.get_final_message()
        start = next(e for e in events if e.type == "message_start").message.usage
        delta = next(e for e in events if e.type == "message_delta").usage
        written = 0 if expect_read else system_prefix(text)
        read = system_prefix(text) if expect_read else 0
        assert (start.cache_creation_input_tokens, start.cache_read_input_tokens) == (written, read)
        assert start.cache_creation.ephemeral_1h_input_tokens == written
        assert (delta.cache_creation_input_tokens, delta.cache_read_input_tokens) == (written, read)
        assert delta.input_tokens == start.input_tokens == final.usage.input_tokens
        assert final.usage.cache_read_input_tokens == read


def test_messages_below_the_minimum_are_not_cached(claude):
    kw = {"model": "sim-claude-cache", "max_tokens": 8, "system": cached_system(doc(500))}
    for q in ("One?", "Two?"):
        u = claude.messages.create(messages=[{"role": "user", "content": q}], **kw).usage
        assert u.cache_creation_input_tokens == 0 and u.cache_read_input_tokens == 0


def test_automatic_caching_follows_a_growing_conversation(claude):
    messages = [{"role": "user", "content": doc(2000)}]
    kw = {"model": "sim-claude-cache", "max_tokens": 16, "cache_control": {"type": "ephemeral"}}
    first = claude.messages.create(messages=messages, **kw)
    assert first.usage.cache_creation_input_tokens > 1024 and first.usage.cache_read_input_tokens == 0
    messages += [{"role": "assistant", "content": first.content[0].text},
                 {"role": "user", "content": "Go on."}]
    second = claude.messages.create(messages=messages, **kw)
    u = second.usage
    # The breakpoint moved to the new last block; the previous one is within the lookback: read.
    assert u.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert u.cache_creation_input_tokens > 0 and u.input_tokens == 3  # only the reply priming is left


def test_messages_ttl_expires_on_the_cache_clock(server, claude):
    cache = server.state.schedulers.cache(server.state.registry.get("sim-claude-cache"))
    now = [time.monotonic()]
    cache.clock = lambda: now[0]
    try:
        for ttl, life in (("5m", 300), ("1h", 3600)):
            kw = {"model": "sim-claude-cache", "max_tokens": 8, "system": cached_system(doc(2000), ttl),
                  "messages": [{"role": "user", "content": "Hi"}]}
            written = claude.messages.create(**kw).usage.cache_creation_input_tokens
            now[0] += life - 1
            assert claude.messages.create(**kw).usage.cache_read_input_tokens == written  # and refreshed
            now[0] += life - 1
            assert claude.messages.create(**kw).usage.cache_read_input_tokens == written
            now[0] += life + 1
            u = claude.messages.create(**kw).usage
            assert u.cache_read_input_tokens == 0 and u.cache_creation_input_tokens == written
    finally:
        cache.clock = time.monotonic


def test_cache_control_errors_name_the_field(server):
    base = {"model": "sim-claude-cache", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    five = [{"type": "text", "text": f"part {i}", "cache_control": {"type": "ephemeral"}} for i in range(5)]
    r = requests.post(server.url + "/v1/messages", json={**base, "system": five}, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "A maximum of 4 blocks with cache_control may be provided. Found 5."
    bad_ttl = [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "10m"}}]
    r = requests.post(server.url + "/v1/messages", json={**base, "system": bad_ttl}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("system.0.cache_control.ttl: ")
    r = requests.post(server.url + "/v1/messages", json={**base, "cache_control": {"type": "persistent"}},
                      timeout=10)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("cache_control.type: ")


# ------------------------------------------------------------------ prefill and the stats

def ttft_chat(client, system: str, question: str) -> tuple[float, int]:
    t0 = time.monotonic()
    stream = chat(client, "sim-prefill-cache", system, question, stream=True,
                  stream_options={"include_usage": True})
    ttft, cached = None, 0
    for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.monotonic() - t0
        if chunk.usage is not None:
            cached = chunk.usage.prompt_tokens_details.cached_tokens
    assert ttft is not None
    return ttft, cached


def test_cached_prefix_is_not_prefilled(oai):
    # TTFT = 50 ms + prompt tokens not in the cache / 2,000 per second: a 4,000-token system prompt
    # takes 2 s the first time, and about nothing once it is cached.
    system = doc(4000)
    assert 3900 < n(system) < 4100
    uncached, none = ttft_chat(oai, system, "Alpha?")
    cached_ttft, cached = ttft_chat(oai, system, "Beta?")
    assert none == 0 and cached == shared_prefix(system) // 16 * 16
    assert uncached >= 1.8
    assert cached_ttft <= uncached - 1.5


def test_multi_turn_ttft_is_what_the_profile_predicts(oai):
    # Each turn resends the history: only its new tokens are prefilled, as usage's cached_tokens says.
    messages = [{"role": "system", "content": doc(2000)}, {"role": "user", "content": "First?"}]
    for turn in range(3):
        t0 = time.monotonic()
        stream = oai.chat.completions.create(model="sim-prefill-cache", max_tokens=30, messages=messages,
                                             stream=True, stream_options={"include_usage": True})
        ttft, text, usage = None, "", None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                ttft = ttft if ttft is not None else time.monotonic() - t0
                text += chunk.choices[0].delta.content
            usage = chunk.usage or usage
        predicted = 0.050 + (usage.prompt_tokens - usage.prompt_tokens_details.cached_tokens) / 2000
        assert (usage.prompt_tokens_details.cached_tokens > 0) == (turn > 0)
        assert predicted - 0.01 <= ttft <= predicted + 0.4, (turn, ttft, predicted)
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": f"Turn {turn + 2}?"}]


def test_anthropic_cache_write_is_prefilled_and_a_read_is_not(claude):
    text = doc(2000)
    times, usages = [], []
    for q in ("Alpha?", "Beta?"):
        t0 = time.monotonic()
        with claude.messages.stream(model="sim-prefill-claude", max_tokens=8, system=cached_system(text),
                                    messages=[{"role": "user", "content": q}]) as stream:
            for event in stream:
                if event.type == "content_block_delta":
                    times.append(time.monotonic() - t0)
                    break
            usages.append(stream.get_final_message().usage)
    assert usages[0].cache_creation_input_tokens == usages[1].cache_read_input_tokens == system_prefix(text)
    assert times[0] >= 0.9 and times[1] <= times[0] - 0.6


def test_stats_and_metrics_show_the_cache(tmp_path):
    path = tmp_path / "cache.yaml"
    path.write_text(PROFILES)
    srv = start_server(profile_files=[path], seed=3)
    try:
        client = openai.OpenAI(base_url=srv.openai_base_url, api_key="sk-test", max_retries=0)
        system = doc(2000)
        a = chat(client, "sim-vllm-cache", system, "Alpha?").usage
        b = chat(client, "sim-vllm-cache", system, "Beta?").usage
        stats = requests.get(srv.url + "/llmsim/stats", timeout=10).json()
        pc = stats["schedulers"]["sim-vllm-cache"]["prefix_cache"]
        hits = b.prompt_tokens_details.cached_tokens
        assert pc["queries_total"] == a.prompt_tokens + b.prompt_tokens and pc["hits_total"] == hits
        assert pc["hit_rate"] == round(hits / (a.prompt_tokens + b.prompt_tokens), 6)
        assert pc["rule"] == "vllm" and pc["capacity_tokens"] == 1_000_000 and pc["block_tokens"] == 16
        assert pc["requests_total"] == 2 and pc["hit_requests_total"] == 1
        # Every whole block of both prompts is held: the shared ones once.
        held = a.prompt_tokens // 16 + b.prompt_tokens // 16 - hits // 16
        assert pc["entries"] == held and pc["cached_tokens"] == held * 16
        top = stats["prefix_cache"]
        assert top["models"]["sim-vllm-cache"] == {"queries_total": pc["queries_total"], "hits_total": hits}
        assert "prefix_cache" not in stats["schedulers"].get("sim-openai-cache", {})
        metrics = requests.get(srv.url + "/metrics", timeout=10).text
        from prometheus_client.parser import text_string_to_metric_families

        samples = {(s.name, s.labels.get("model_name")): s.value
                   for fam in text_string_to_metric_families(metrics) for s in fam.samples}
        assert samples[("vllm:prefix_cache_queries_total", "sim-vllm-cache")] == pc["queries_total"]
        assert samples[("vllm:prefix_cache_hits_total", "sim-vllm-cache")] == hits
        assert "# TYPE vllm:prefix_cache_hits_total counter" in metrics
    finally:
        srv.stop()
