"""Chat Completions end to end through the official openai SDK against a live server."""

import statistics
import time

import openai
import pytest

from llmsim.testing import run_server
from llmsim.tokens import count_chat_tokens, count_tokens, get_encoding

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Tell me about token streaming, please."}]


@pytest.fixture(scope="module")
def server():
    with run_server(latency_profile="fast", seed=7) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="sk-test", max_retries=0)


def test_stream_with_usage_equals_non_stream_and_tiktoken(client):
    full = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}))
    # role chunk first, usage chunk last with no choices
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == full.choices[0].message.content
    assert full.id.startswith("chatcmpl-") and full.object == "chat.completion"
    assert full.choices[0].finish_reason == "stop" and full.choices[0].logprobs is None
    expected_prompt = count_chat_tokens(MESSAGES, get_encoding("o200k_base"))
    for usage in (full.usage, chunks[-1].usage):
        assert usage.prompt_tokens == expected_prompt
        assert usage.completion_tokens == count_tokens(streamed, "gpt-4o")
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # one content chunk per BPE token
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == full.usage.completion_tokens == 100


def test_prompt_accounting_matches_openai_formula(client):
    enc = get_encoding("cl100k_base")
    msgs = [{"role": "user", "content": "hello world", "name": "bob"}]
    r = client.chat.completions.create(model="gpt-4", messages=msgs, max_tokens=1)
    # 3 per message + role + content + name (+1) + 3 reply priming
    assert r.usage.prompt_tokens == 3 + len(enc.encode("user")) + 2 + len(enc.encode("bob")) + 1 + 3


def test_stream_without_include_usage_has_no_usage_field(server):
    import requests

    r = requests.post(server + "/v1/chat/completions", stream=True, json={
        "model": "gpt-4o", "messages": MESSAGES, "stream": True, "max_tokens": 3})
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert "Content-Length" not in r.headers and r.headers["Cache-Control"] == "no-cache"
    lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == b"data: [DONE]"
    assert all(b'"usage"' not in ln for ln in lines)


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_honoured_exactly(client, param):
    r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, **{param: 7})
    assert r.usage.completion_tokens == 7 and r.choices[0].finish_reason == "length"
    assert count_tokens(r.choices[0].message.content, "gpt-4o") == 7
    s = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True, **{param: 7}))
    assert sum(1 for c in s if c.choices and c.choices[0].delta.content) == 7
    assert s[-1].choices[0].finish_reason == "length"


def test_stop_sequence_cuts_text():
    with run_server(latency_profile="instant", generator="fixed:alpha beta STOP gamma") as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x")
        r = c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stop=["STOP"])
        assert r.choices[0].message.content == "alpha beta " and r.choices[0].finish_reason == "stop"


def test_reasoning_model_reports_reasoning_tokens_and_spends_their_time():
    with run_server(seed=1) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x")
        # o-series: ttft ~2000 ms, itl 30 ms, 2 reasoning tokens per output token
        t0 = time.monotonic()
        r = c.chat.completions.create(model="o4-mini", messages=MESSAGES, max_completion_tokens=30,
                                      reasoning_effort="low")
        elapsed = time.monotonic() - t0
    details = r.usage.completion_tokens_details
    assert r.usage.completion_tokens == 30 and details.reasoning_tokens > 0
    visible = r.usage.completion_tokens - details.reasoning_tokens
    assert count_tokens(r.choices[0].message.content, "o4-mini") == visible
    # effort low = 0.5x of 2 per token: reasoning == visible
    assert details.reasoning_tokens == visible
    # TTFT (lognormal ~2 s) plus 30 tokens of ~30 ms: well above the no-reasoning floor
    assert elapsed > 0.5


def test_models_endpoints_both_prefixes(server):
    for prefix in ("/v1", "/openai/v1"):
        c = openai.OpenAI(base_url=server + prefix, api_key="x")
        ids = [m.id for m in c.models.list()]
        assert "gpt-5" in ids and "claude-sonnet-4.5" in ids
        assert c.models.retrieve("gpt-4o").id == "gpt-4o"
        with pytest.raises(openai.NotFoundError) as e:
            c.models.retrieve("no-such-model")
        assert e.value.body["code"] == "model_not_found"


def test_openai_prefix_serves_chat(server):
    c = openai.OpenAI(base_url=server + "/openai/v1", api_key="x")
    assert c.chat.completions.create(model="gpt-5-mini", messages=MESSAGES, max_tokens=2).usage.completion_tokens >= 2


def test_unknown_model_404_and_allow_unknown():
    with run_server() as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.NotFoundError) as e:
            c.chat.completions.create(model="my-llama", messages=MESSAGES)
        assert e.value.status_code == 404
        assert e.value.body == {"message": "The model `my-llama` does not exist or you do not have access to it.",
                                "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
    with run_server(config={"models": {"allow_unknown": True, "default_profile": "instant"}}) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        r = c.chat.completions.create(model="my-llama", messages=MESSAGES, max_tokens=4)
        assert r.model == "my-llama" and r.usage.completion_tokens == 4


def test_timing_constant_profile(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("profiles:\n  - name: c50\n    models: [timing-model]\n    ttft: {mean_ms: 50}\n"
                    "    itl: {mean_ms: 10}\n")
    with run_server(profile_files=[prof]) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x")
        ttfts, itls = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            last = None
            for chunk in c.chat.completions.create(model="timing-model", messages=MESSAGES, stream=True,
                                                   max_tokens=20):
                if chunk.choices and chunk.choices[0].delta.content:
                    now = time.perf_counter()
                    if last is None:
                        ttfts.append(now - t0)
                    else:
                        itls.append(now - last)
                    last = now
    # Loose on purpose: a busy 2-core CI box must never fail this.
    assert 0.045 <= statistics.median(ttfts) <= 0.090
    assert 0.008 <= statistics.median(itls) <= 0.016


def test_non_streaming_takes_the_whole_generation_time(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("profiles:\n  - name: slow\n    models: [slow-model]\n    ttft: {mean_ms: 100}\n"
                    "    itl: {mean_ms: 10}\n")
    with run_server(profile_files=[prof]) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x")
        t0 = time.perf_counter()
        c.chat.completions.create(model="slow-model", messages=MESSAGES, max_tokens=21)
        elapsed = time.perf_counter() - t0
    # TTFT + 20 ITL = 300 ms; TTFT alone would be 100 ms
    assert 0.28 <= elapsed <= 1.0


def test_first_request_does_not_pay_for_loading_encodings():
    from llmsim.tokens import get_encoding

    get_encoding.cache_clear()
    with run_server(latency_profile="instant") as url:
        assert get_encoding.cache_info().currsize == 2  # loaded at start-up, before any request
        c = openai.OpenAI(base_url=url + "/v1", api_key="x")
        t0 = time.perf_counter()
        c.chat.completions.create(model="gpt-4", messages=MESSAGES, max_tokens=1)
        assert time.perf_counter() - t0 < 1.0  # loose: the cache check above is the real one
