"""Legacy Completions (POST /v1/completions) through the official openai SDK and on the wire."""

from __future__ import annotations

import json
import time

import openai
import pytest
import requests

from llmsim.tokens import get_encoding
from llmsim.testing import run_server
from tests.rawhttp import raw_request

TEXT = ("Token streaming sends each piece of the answer as soon as the model has it, so the reader sees the "
        "first words at once. General advice: measure the first token and the gaps between tokens.")
PROMPT = "Explain token streaming."
MODEL = "gpt-3.5-turbo-instruct"
CL100K = get_encoding("cl100k_base")


@pytest.fixture(scope="module")
def server():
    with run_server(latency_profile="fast", generator=f"fixed:{TEXT}", seed=3) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="sk-test", max_retries=0)


def tokens(text: str) -> int:
    return len(CL100K.encode_ordinary(text))


def test_non_streaming_defaults_to_16_tokens_and_counts_the_prompt_raw(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == MODEL
    choice = r.choices[0]
    assert (choice.index, choice.logprobs, choice.finish_reason) == (0, None, "length")
    assert tokens(choice.text) == 16 and TEXT.startswith(choice.text)
    # A plain-text prompt: no chat framing, exactly its tokens.
    assert r.usage.prompt_tokens == tokens(PROMPT)
    assert (r.usage.completion_tokens, r.usage.total_tokens) == (16, tokens(PROMPT) + 16)


def test_whole_answer_finishes_with_stop(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=500)
    assert r.choices[0].text == TEXT and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == tokens(TEXT)


def test_stream_with_usage_equals_the_non_streamed_answer(client):
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30)
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, stream=True,
                                            stream_options={"include_usage": True}))
    assert all(c.object == "text_completion" for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == full.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0] is chunks[-2] and finish[0].choices[0].finish_reason == "length"
    content = [c for c in chunks[:-2]]
    assert len(content) == 30  # one chunk per token
    assert "".join(c.choices[0].text for c in content) == full.choices[0].text


def test_stream_without_usage_and_the_raw_event_order(server):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 5, "stream": True}
    resp = raw_request(server, "POST", "/v1/completions", body)
    assert resp.status == 200 and resp.terminated
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.body.startswith(b": \n\n")  # a comment sends the headers before the first token
    events = resp.events
    assert events[-1] == "[DONE]" and len(events) == 5 + 2
    chunks = [json.loads(e) for e in events[:-1]]
    for c in chunks:
        assert list(c) == ["id", "object", "created", "model", "system_fingerprint", "choices"]  # no usage key
        assert list(c["choices"][0]) == ["text", "index", "logprobs", "finish_reason"]
        assert c["object"] == "text_completion" and c["id"] == chunks[0]["id"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["length"]
    assert chunks[-1]["choices"][0]["text"] == ""
    with_usage = raw_request(server, "POST", "/openai/v1/completions",
                             {**body, "stream_options": {"include_usage": True}}).events
    usage = json.loads(with_usage[-2])
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": tokens(PROMPT), "completion_tokens": 5,
                                                         "total_tokens": tokens(PROMPT) + 5}
    assert all(json.loads(e)["usage"] is None for e in with_usage[:-2])


def test_stop_cuts_the_text(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=200, stop=["General", "zzz"])
    assert r.choices[0].text == TEXT[:TEXT.index("General")] and r.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=200, stop="General",
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text


def test_echo_prepends_the_prompt(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, echo=True)
    assert r.choices[0].text.startswith(PROMPT) and tokens(r.choices[0].text[len(PROMPT):]) == 4
    assert r.usage.completion_tokens == 4
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, echo=True, stream=True))
    assert chunks[0].choices[0].text.startswith(PROMPT)  # the prompt rides with the first token
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    # max_tokens 0 with echo: the prompt alone (scoring a text, as tools do with logprobs).
    zero = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0, echo=True)
    assert zero.choices[0].text == PROMPT and zero.usage.completion_tokens == 0
    zero_stream = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0, echo=True, stream=True))
    assert [c.choices[0].text for c in zero_stream] == [PROMPT]


def test_echo_with_logprobs_scores_the_prompt_too(client):
    """What scoring harnesses send (echo, logprobs, max_tokens 0 or more): every token of the returned text,
    the prompt's first, whose first token has no log-probability (nothing precedes it)."""
    prompt_tokens = [CL100K.decode([t]) for t in CL100K.encode_ordinary(PROMPT)]
    for max_tokens in (0, 3):
        r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=max_tokens, echo=True, logprobs=1)
        lp = r.choices[0].logprobs
        assert "".join(lp.tokens) == r.choices[0].text and lp.tokens[:len(prompt_tokens)] == prompt_tokens
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert all(v <= 0 for v in lp.token_logprobs[1:]) and len(lp.token_logprobs) == len(lp.tokens)
        assert lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(len(lp.tokens))]
        chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=max_tokens, echo=True,
                                                logprobs=1, stream=True))
        streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
        assert "".join(streamed) == "".join(c.choices[0].text for c in chunks if c.choices)
        assert streamed[:len(prompt_tokens)] == prompt_tokens
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, logprobs=1)  # no echo: no prompt
    assert plain.choices[0].logprobs.text_offset[0] == 0 and "".join(plain.choices[0].logprobs.tokens) == \
        plain.choices[0].text


def test_token_id_prompts(client):
    ids = CL100K.encode_ordinary("Hello world")
    for prompt in (ids, [ids], ["Hello world"]):
        r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, echo=True)
        assert r.usage.prompt_tokens == len(ids)
        assert r.choices[0].text.startswith("Hello world")
    # Counted as given, even where re-encoding the text would differ.
    odd = [CL100K.encode_single_token("Hello"), CL100K.encode_single_token(" world")] * 3
    assert client.completions.create(model=MODEL, prompt=odd, max_tokens=1).usage.prompt_tokens == 6


@pytest.mark.parametrize("body, param, fragment", [
    ({"prompt": ["one", "two"]}, "prompt", "one prompt per request"),
    ({"prompt": [[1, 2], [3]]}, "prompt", "one prompt per request"),
    ({"prompt": []}, "prompt", "empty array"),
    ({"prompt": 12}, "prompt", "expected a string, an array of strings"),
    ({"prompt": [1, "a"]}, "prompt[1]", "Invalid type for 'prompt[1]'"),
    ({"prompt": [[1, -2]]}, "prompt[0][1]", "token id"),
    ({"prompt": [10 ** 9]}, "prompt", "no token id of this model's encoding (cl100k_base"),
    ({"suffix": "end"}, "suffix", "Unrecognized request argument supplied: suffix"),
    ({"n": 2, "best_of": 3, "stream": True}, "best_of", "best_of must equal n when streaming"),
    ({"min_tokens": 20, "max_tokens": 10}, "min_tokens", "less than or equal to max_tokens"),
    ({"n": 2, "best_of": 1}, "best_of", "best_of must be greater than or equal to n"),
    ({"max_tokens": -1}, "max_tokens", "below minimum value"),
    ({"logprobs": 6}, "logprobs", "above maximum value"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "maximum length 4"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed when 'stream' is enabled"),
    ({"model": None}, "model", "Missing required parameter: 'model'"),
    ({"model": "text-embedding-3-small"}, "model", "is an embedding model"),
    ({"max_tokens": 4090, "prompt": "word " * 10}, "prompt", "in the prompt, 4090 in the completion"),
])
def test_validation_names_the_field(server, body, param, fragment):
    r = requests.post(server + "/v1/completions", json={"model": MODEL, "prompt": PROMPT, **body}, timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert fragment in err["message"], err["message"]


def test_suffix_null_or_empty_is_accepted(server):
    for suffix in (None, ""):
        r = requests.post(server + "/v1/completions", json={"model": MODEL, "prompt": PROMPT, "suffix": suffix,
                                                            "max_tokens": 1}, timeout=10)
        assert r.status_code == 200


def test_a_non_streamed_answer_takes_the_streams_time(client):
    t0 = time.monotonic()
    client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40)
    # fast profile: TTFT 10 ms, then 39 gaps of 1 ms; deadlines are never early.
    assert time.monotonic() - t0 >= 0.045


@pytest.fixture(scope="module")
def lorem():
    with run_server(latency_profile="instant", seed=5) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)


def test_ignore_eos_n_logprobs_and_seed(lorem):
    """vLLM's exact lengths, n choices, legacy logprobs and the request seed, as `vllm bench serve` sends them."""
    client = lorem
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=40, n=3, logprobs=2,
                                  seed=7, extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2] and r.usage.completion_tokens == 120
    assert all(c.finish_reason == "length" for c in r.choices)
    assert len({c.text for c in r.choices}) == 3  # each choice its own text
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 40 and "".join(lp.tokens) == r.choices[0].text
    assert all(v <= 0 for v in lp.token_logprobs) and all(len(t) >= 1 for t in lp.top_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    again = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=40, n=3, seed=7,
                                      extra_body={"ignore_eos": True})
    assert [c.text for c in again.choices] == [c.text for c in r.choices]
    streamed: dict[int, str] = {}
    chunks = list(client.completions.create(model=MODEL, prompt="x", max_tokens=30, n=2, stream=True, logprobs=1,
                                            extra_body={"ignore_eos": True}))
    for c in chunks:
        for ch in c.choices:
            streamed[ch.index] = streamed.get(ch.index, "") + ch.text
            if ch.text:
                assert "".join(ch.logprobs.tokens) == ch.text
    assert set(streamed) == {0, 1} and [ch.finish_reason for c in chunks for ch in c.choices
                                        if ch.finish_reason] == ["length", "length"]
