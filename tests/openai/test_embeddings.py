"""Embeddings (POST /v1/embeddings) through the official openai SDK: vectors, formats, limits, latency, load."""

from __future__ import annotations

import base64
import math
import struct
import time

import gevent
import openai
import pytest
import requests

from llmsim.embeddings import embedding_vector
from llmsim.testing import run_server
from llmsim.tokens import get_encoding

CL100K = get_encoding("cl100k_base")
SMALL, LARGE, ADA = "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"


@pytest.fixture(scope="module")
def server():
    with run_server(seed=5) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="sk-test", max_retries=0)


def norm(v) -> float:
    return math.sqrt(math.fsum(x * x for x in v))


def test_native_dimensions_unit_length_and_usage(client):
    for model, dims in ((SMALL, 1536), (LARGE, 3072), (ADA, 1536)):
        r = client.embeddings.create(model=model, input="The food was delicious.", encoding_format="float")
        assert r.object == "list" and r.model == model
        (item,) = r.data
        assert item.object == "embedding" and item.index == 0 and len(item.embedding) == dims
        assert abs(norm(item.embedding) - 1) < 1e-5
        n = len(CL100K.encode_ordinary("The food was delicious."))
        assert (r.usage.prompt_tokens, r.usage.total_tokens) == (n, n)


def test_base64_decodes_to_the_float_answer(client, server):
    floats = client.embeddings.create(model=SMALL, input="hello", encoding_format="float").data[0].embedding
    raw = requests.post(server + "/v1/embeddings", json={"model": SMALL, "input": "hello",
                                                         "encoding_format": "base64"}, timeout=10).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert len(packed) == 4 * 1536
    assert list(struct.unpack("<1536f", packed)) == floats  # little-endian float32, exactly equal
    # The SDK asks for base64 by default and decodes it: the same numbers.
    assert client.embeddings.create(model=SMALL, input="hello").data[0].embedding == floats


def test_deterministic_across_calls_servers_and_seeds(client):
    a = client.embeddings.create(model=SMALL, input=["alpha", "beta"], encoding_format="float")
    b = client.embeddings.create(model=SMALL, input=["beta", "alpha"], encoding_format="float")
    assert a.data[0].embedding == b.data[1].embedding and a.data[1].embedding == b.data[0].embedding
    assert [d.index for d in b.data] == [0, 1]
    with run_server(seed=99) as other:
        c = openai.OpenAI(base_url=other + "/v1", api_key="x", max_retries=0)
        assert c.embeddings.create(model=SMALL, input="alpha",
                                   encoding_format="float").data[0].embedding == a.data[0].embedding
    # Different texts and different models: nearly orthogonal vectors.
    dot = math.fsum(x * y for x, y in zip(a.data[0].embedding, a.data[1].embedding))
    assert abs(dot) < 0.2
    ada = client.embeddings.create(model=ADA, input="alpha", encoding_format="float").data[0].embedding
    assert abs(math.fsum(x * y for x, y in zip(ada, a.data[0].embedding))) < 0.2


def test_token_arrays_embed_like_their_text(client):
    ids = CL100K.encode_ordinary("hello world")
    text = client.embeddings.create(model=SMALL, input="hello world", encoding_format="float").data[0].embedding
    one = client.embeddings.create(model=SMALL, input=ids, encoding_format="float")
    many = client.embeddings.create(model=SMALL, input=[ids, ids[:1]], encoding_format="float")
    assert one.data[0].embedding == text == many.data[0].embedding
    assert len(one.data) == 1 and one.usage.prompt_tokens == len(ids)
    assert len(many.data) == 2 and many.usage.prompt_tokens == len(ids) + 1


def test_dimensions_shorten_and_renormalise(client):
    full = client.embeddings.create(model=LARGE, input="shorten me", encoding_format="float").data[0].embedding
    for dims in (1, 256, 1024, 3072):
        short = client.embeddings.create(model=LARGE, input="shorten me", dimensions=dims).data[0].embedding
        assert len(short) == dims and abs(norm(short) - 1) < 1e-5
        # The leading components of the full vector, rescaled: same direction.
        scale = norm(full[:dims])
        assert all(abs(s - f / scale) < 1e-5 for s, f in zip(short, full[:dims]))
    assert embedding_vector(LARGE, [1, 2], 3072, 8) == embedding_vector(LARGE, [1, 2], 3072, 8)


@pytest.mark.parametrize("body, param, fragment", [
    ({"input": ""}, "input", "empty string"),
    ({"input": ["ok", ""]}, "input[1]", "empty string"),
    ({"input": []}, "input", "empty array"),
    ({"input": [[1, 2], []]}, "input[1]", "empty array"),
    ({"input": ["a"] * 2049}, "input", "maximum length 2048"),
    ({"input": ["a", 1]}, "input[1]", "expected a string, an array of strings"),
    ({"input": [[1, "x"]]}, "input[0][1]", "token id"),
    ({"input": [10 ** 9]}, "input", "no token id of this model's encoding"),
    ({"input": {"text": "x"}}, "input", "Invalid type for 'input'"),
    ({"input": None}, "input", "Missing required parameter: 'input'"),
    ({"model": None}, "model", "Missing required parameter: 'model'"),
    ({"encoding_format": "int8"}, "encoding_format", "Supported values are: 'float', 'base64'"),
    ({"dimensions": 0}, "dimensions", "below minimum value"),
    ({"dimensions": 2000}, "dimensions", "returns at most 1536 dimensions"),
    ({"model": ADA, "dimensions": 512}, "dimensions", "does not support specifying dimensions"),
    ({"model": "gpt-4o"}, "model", "does not support embeddings"),
    ({"input": [100] * 8193}, "input", "maximum context length is 8192 tokens, however you requested 8193"),
    ({"input": ["x", "hello " * 8200]}, "input[1]", "maximum context length is 8192 tokens"),
    ({"input": [[100] * 8000] * 38}, "input", "Requested 304000 tokens, max 300000 tokens per request"),
])
def test_validation_names_the_field(server, body, param, fragment):
    r = requests.post(server + "/v1/embeddings", json={"model": SMALL, "input": "x", **body}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert fragment in err["message"], err["message"]


def test_the_limits_themselves_are_allowed(server):
    r = requests.post(server + "/v1/embeddings", json={"model": SMALL, "input": [[100] * 8192],
                                                       "encoding_format": "base64"}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 8192
    r = requests.post(server + "/openai/v1/embeddings", json={"model": SMALL, "input": ["a"] * 2048,
                                                              "encoding_format": "base64"}, timeout=30)
    assert r.status_code == 200 and len(r.json()["data"]) == 2048


EMBED_PROFILE = """
profiles:
  - name: emb-slow
    models: [emb-slow]
    encoding: cl100k_base
    embedding: {dimensions: 8, base_ms: 150, per_token_ms: 1}
    capacity: {max_concurrent: 1, queue_limit: 1}
"""


def test_latency_follows_the_profile_and_requests_take_batch_slots(tmp_path):
    path = tmp_path / "emb.yaml"
    path.write_text(EMBED_PROFILE)
    with run_server(profile_files=[path]) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        ids = [100] * 100  # 150 + 100 x 1 ms = 250 ms

        def timed(*args):
            t0 = time.monotonic()
            c.embeddings.create(model="emb-slow", input=ids)
            return time.monotonic() - t0

        one = timed()
        assert 0.24 <= one < 2.0
        # max_concurrent 1: a second request queues behind the first and takes twice as long;
        # queue_limit 1: a third is refused with the overloaded 429 at once.
        jobs = [gevent.spawn(timed) for _ in range(2)]
        gevent.sleep(0.05)
        with pytest.raises(openai.RateLimitError) as e:
            c.embeddings.create(model="emb-slow", input="x")
        assert e.value.response.headers["retry-after"]
        gevent.joinall(jobs, raise_error=True)
        first, second = sorted(j.value for j in jobs)
        assert first >= 0.24 and second >= 0.48 and second > first + 0.2
        sched = requests.get(url + "/llmsim/stats").json()["schedulers"]["emb-slow"]
        assert (sched["admitted"], sched["queued"], sched["rejected"], sched["active"]) == (3, 1, 1, 0)


def test_rate_limits_charge_the_input_tokens():
    with run_server(config={"rate_limits": {"rpm": 100, "tpm": 1000}}) as url:
        r = requests.post(url + "/v1/embeddings", json={"model": SMALL, "input": [[100] * 300]}, timeout=10)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-remaining-tokens"] == "700"
        r = requests.post(url + "/v1/embeddings", json={"model": SMALL, "input": [[100] * 800]}, timeout=10)
        assert r.status_code == 429 and r.json()["error"]["type"] == "tokens"


def test_the_fault_header_applies_to_embeddings(server, client):
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model=SMALL, input="x", extra_headers={"x-llmsim-fault": "rate_limit"})
    with pytest.raises(openai.InternalServerError) as e:
        client.embeddings.create(model=SMALL, input="x", extra_headers={"x-llmsim-fault": "midstream:error"})
    assert e.value.status_code == 500
    with pytest.raises(openai.APIConnectionError):
        client.embeddings.create(model=SMALL, input="x", extra_headers={"x-llmsim-fault": "midstream:drop"})
    r = requests.post(server + "/v1/embeddings", json={"model": SMALL, "input": "x"},
                      headers={"x-llmsim-fault": "nope"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-llmsim-fault"


def test_generation_apis_refuse_an_embedding_model(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=SMALL, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["param"] == "model" and "embedding model" in e.value.body["message"]


def test_a_forced_latency_profile_leaves_embedding_models_alone():
    with run_server(latency_profile="instant") as url:
        r = requests.post(url + "/v1/embeddings", json={"model": LARGE, "input": "x", "encoding_format": "base64"},
                          timeout=10)
        assert r.status_code == 200
        assert len(base64.b64decode(r.json()["data"][0]["embedding"])) == 4 * 3072
        sched = requests.get(url + "/llmsim/stats", timeout=10).json()["schedulers"]
        assert sched[LARGE]["max_concurrent"] == 256  # its own deployment, not the forced profile's
