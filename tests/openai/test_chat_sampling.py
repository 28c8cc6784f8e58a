"""Chat Completions sampling options through the official SDK and raw streams: logprobs/top_logprobs,
n choices (each one sequence in the batch, interleaved by index), and the request seed."""

import math
import time

import openai
import pytest
import requests

from llmsim.testing import run_server
from llmsim.tokens import get_encoding
from tests.sse import parse_sse

O200K = get_encoding("o200k_base")
USER = [{"role": "user", "content": "Say something."}]
PROFILES = """
profiles:
  - name: test-batch
    models: [test-batch]
    ttft: {distribution: constant, mean_ms: 20}
    itl: {distribution: normal, mean_ms: 3, stddev_ms: 1}
    capacity: {max_concurrent: 2, queue_limit: 16}
"""


@pytest.fixture(scope="module")
def url():
    # `random` words: multi-byte characters and emoji, so some tokens hold part of a character.
    with run_server(latency_profile="fast", generator="random", target_tokens=40, seed=4) as u:
        yield u


@pytest.fixture(scope="module")
def oai(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)


def check_logprobs(entries, k):
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == k
        assert bytes(e.bytes) == O200K.decode_single_token_bytes(O200K.encode_single_token(bytes(e.bytes)))
        if e.token.startswith("bytes:"):  # part of a character: OpenAI shows the bytes
            assert e.token == "bytes:" + "".join(f"\\x{b:02x}" for b in e.bytes)
        else:
            assert e.token.encode() == bytes(e.bytes)
        tops = [t.logprob for t in e.top_logprobs]
        assert tops == sorted(tops, reverse=True) and sum(math.exp(t) for t in tops) <= 1.0 + 1e-6
        if k:
            assert (e.token, e.logprob) in [(t.token, t.logprob) for t in e.top_logprobs]


# ---------------------------------------------------------------- logprobs

def test_logprobs_non_streaming(oai):
    r = oai.chat.completions.create(model="gpt-4o", messages=USER, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 40
    check_logprobs(content, 3)
    assert b"".join(bytes(e.bytes) for e in content).decode() == r.choices[0].message.content
    assert any(e.token.startswith("bytes:") for e in content) or all(e.token for e in content)
    assert r.choices[0].logprobs.refusal is None


def test_logprobs_streamed_in_every_content_chunk(oai):
    stream = oai.chat.completions.create(model="gpt-4o", messages=USER, logprobs=True, top_logprobs=2, stream=True)
    text, raw = "", b""
    for chunk in stream:
        choice = chunk.choices[0]
        if choice.delta.content:
            entries = choice.logprobs.content
            check_logprobs(entries, 2)
            chunk_bytes = b"".join(bytes(e.bytes) for e in entries)
            raw += chunk_bytes
            assert chunk_bytes.decode() == choice.delta.content  # a chunk never splits a character
            text += choice.delta.content
        else:
            assert choice.logprobs is None
    assert raw.decode() == text and len(O200K.encode_ordinary(text)) >= 30


def test_logprobs_off_top_zero_and_seeded(oai):
    r = oai.chat.completions.create(model="gpt-4o", messages=USER)
    assert r.choices[0].logprobs is None
    r = oai.chat.completions.create(model="gpt-4o", messages=USER, logprobs=True)
    assert all(e.top_logprobs == [] for e in r.choices[0].logprobs.content)
    a, b = (oai.chat.completions.create(model="gpt-4o", messages=USER, logprobs=True, top_logprobs=5, seed=8)
            for _ in range(2))
    assert a.choices[0].logprobs == b.choices[0].logprobs


def test_logprobs_raw_chunk_shape(url):
    body = {"model": "gpt-4o", "messages": USER, "stream": True, "logprobs": True, "top_logprobs": 1,
            "max_tokens": 3}
    chunks = [d for _, d in parse_sse(requests.post(url + "/v1/chat/completions", json=body, timeout=30).text)
              if isinstance(d, dict)]
    content = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    lp = content[0]["choices"][0]["logprobs"]
    assert set(lp) == {"content", "refusal"} and lp["refusal"] is None
    assert set(lp["content"][0]) == {"token", "logprob", "bytes", "top_logprobs"}
    assert set(lp["content"][0]["top_logprobs"][0]) == {"token", "logprob", "bytes"}
    assert chunks[0]["choices"][0]["logprobs"] is None and chunks[-1]["choices"][0]["logprobs"] is None


# ---------------------------------------------------------------- n choices

def test_n_non_streaming(oai):
    r = oai.chat.completions.create(model="gpt-4o", messages=USER, n=3, max_tokens=20, logprobs=True)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) == 3 and all(c.finish_reason == "length" for c in r.choices)
    assert r.usage.completion_tokens == 60 and r.usage.prompt_tokens < 20  # the prompt counted once
    assert all(len(c.logprobs.content) == 20 for c in r.choices)


def test_n_streaming_interleaves_choices(oai, url):
    stream = oai.chat.completions.create(model="gpt-4o", messages=USER, n=3, stream=True,
                                         stream_options={"include_usage": True})
    order, texts, finish, usage = [], {0: "", 1: "", 2: ""}, {}, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            order.append(c.index)
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert order[:3] == [0, 1, 2]  # every choice's role chunk first
    body = order[3:]
    assert body != sorted(body)  # interleaved, not one choice after another
    assert finish == {0: "stop", 1: "stop", 2: "stop"} and len(set(texts.values())) == 3
    assert usage.completion_tokens == sum(len(O200K.encode_ordinary(t)) for t in texts.values()) == 120


def test_n_raw_event_order(url):
    body = {"model": "gpt-4o", "messages": USER, "n": 2, "max_tokens": 5, "stream": True,
            "stream_options": {"include_usage": True}}
    r = requests.post(url + "/v1/chat/completions", json=body, timeout=30)
    events = parse_sse(r.text)
    assert events[-1] == (None, "[DONE]")
    chunks = [d for _, d in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10
    assert len({c["id"] for c in chunks}) == 1
    per_choice = {0: [], 1: []}
    for c in chunks[:-1]:
        (choice,) = c["choices"]
        per_choice[choice["index"]].append(choice)
    for seq in per_choice.values():
        assert seq[0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
        assert seq[-1]["finish_reason"] == "length" and seq[-1]["delta"] == {}
        assert all(s["finish_reason"] is None for s in seq[:-1])


@pytest.mark.parametrize("stream", [False, True])
def test_each_choice_is_a_sequence_in_the_batch(tmp_path, stream):
    path = tmp_path / "batch.yaml"
    path.write_text(PROFILES)
    with run_server(profile_files=[path], target_tokens=20) as u:
        client = openai.OpenAI(base_url=u + "/v1", api_key="k", max_retries=0)
        # max_concurrent 2: three choices take two slots, the third queues until one of them ends
        t0 = time.monotonic()
        r = client.chat.completions.create(model="test-batch", messages=USER, n=3, stream=stream)
        indices = [c.index for chunk in r for c in chunk.choices] if stream else [c.index for c in r.choices]
        took = time.monotonic() - t0
        sched = requests.get(u + "/llmsim/stats").json()["schedulers"]["test-batch"]
    assert sched["admitted"] == 3 and sched["queued"] == 1 and sched["max_active"] == 2
    assert sched["active"] == 0 and sched["completed"] == 3 and set(indices) == {0, 1, 2}
    # two rounds of sequences, each a TTFT of 20 ms and 19 gaps: at least twice one round's TTFT
    assert took >= 2 * 0.020 * 0.95


# ---------------------------------------------------------------- the request seed

def test_same_seed_same_text(oai):
    def ask(seed, **kw):
        return oai.chat.completions.create(model="gpt-4o", messages=USER, seed=seed, **kw)

    a, b, c = ask(1), ask(1), ask(2)
    assert a.choices[0].message.content == b.choices[0].message.content != c.choices[0].message.content
    n1, n2 = ask(1, n=2), ask(1, n=2)
    assert [x.message.content for x in n1.choices] == [x.message.content for x in n2.choices]
    assert n1.choices[0].message.content != n1.choices[1].message.content
    assert n1.choices[0].message.content == a.choices[0].message.content
    stream = ask(1, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == a.choices[0].message.content


def test_request_seed_without_a_server_seed():
    with run_server(latency_profile="instant") as u:  # no --seed: every unseeded reply is new
        client = openai.OpenAI(base_url=u + "/v1", api_key="k", max_retries=0)

        def text(**kw):
            return client.chat.completions.create(model="gpt-4o", messages=USER, **kw).choices[0].message.content

        assert text() != text()
        assert text(seed=42) == text(seed=42)


@pytest.mark.parametrize("n", [1, 2])
def test_a_client_leaving_an_n_stream_frees_every_slot(tmp_path, n):
    path = tmp_path / "batch.yaml"
    path.write_text(PROFILES.replace("mean_ms: 3, stddev_ms: 1", "mean_ms: 20, stddev_ms: 0"))
    with run_server(profile_files=[path], target_tokens=200) as u:
        body = {"model": "test-batch", "messages": USER, "n": n, "stream": True}
        with requests.post(u + "/v1/chat/completions", json=body, stream=True, timeout=30) as r:
            lines = r.iter_lines()
            next(lines)
            busy = requests.get(u + "/llmsim/stats").json()["schedulers"]["test-batch"]["active"]
        deadline = time.monotonic() + 10  # the client left, some 4 s before the end of the stream
        while time.monotonic() < deadline:
            sched = requests.get(u + "/llmsim/stats").json()["schedulers"]["test-batch"]
            if sched["active"] == 0:
                break
            time.sleep(0.05)
    assert busy == n and sched["active"] == 0 and sched["waiting"] == 0 and sched["completed"] == n
