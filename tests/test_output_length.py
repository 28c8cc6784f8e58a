"""Output length: vLLM's ignore_eos and min_tokens, a profile's output-length distribution, --target-tokens."""

import statistics

import openai
import pytest
import requests

from llmsim.generator import GenerationRequest, LoremGenerator, fit_tokens, make_generator
from llmsim.latency import LengthDistribution
from llmsim.profiles import ProfileError, parse_profiles_document
from llmsim.testing import run_server
from llmsim.tokens import count_tokens
from tests.sse import parse_sse

PROFILES = """
profiles:
  - name: test-plain
    models: [test-plain]
    ttft: {distribution: constant, mean_ms: 0}
    itl: {distribution: constant, mean_ms: 0}
  - name: test-lengths
    models: [test-lengths]
    ttft: {distribution: constant, mean_ms: 0}
    itl: {distribution: constant, mean_ms: 0}
    output_tokens: {distribution: normal, mean: 200, stddev: 40, min: 10}
  - name: test-uniform
    models: [test-uniform]
    ttft: {distribution: constant, mean_ms: 0}
    itl: {distribution: constant, mean_ms: 0}
    output_tokens: {distribution: uniform, min: 20, max: 30}
  - name: test-hidden-reasoner
    models: [test-hidden-reasoner]
    ttft: {distribution: constant, mean_ms: 0}
    itl: {distribution: constant, mean_ms: 0}
    reasoning: {tokens_per_output_token: 1}
  - name: test-visible-reasoner
    models: [test-visible-reasoner]
    ttft: {distribution: constant, mean_ms: 0}
    itl: {distribution: constant, mean_ms: 0}
    reasoning: {tokens_per_output_token: 1, visible: true}
"""
USER = [{"role": "user", "content": "Tell me a story."}]


@pytest.fixture(scope="module")
def profile_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("profiles") / "lengths.yaml"
    path.write_text(PROFILES)
    return path


@pytest.fixture(scope="module")
def url(profile_file):
    with run_server(profile_files=[profile_file], seed=5) as u:
        yield u


@pytest.fixture(scope="module")
def oai(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)


def chat(oai, model="test-plain", **kwargs):
    return oai.chat.completions.create(model=model, messages=USER, **kwargs)


# ---------------------------------------------------------------- exact lengths from the generators

@pytest.mark.parametrize("spec", ["lorem", "random", "echo", "sequence", "fixed:東京 🙂 ok"])
@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_generators_reach_an_exact_token_count(spec, model):
    gen = make_generator(spec, 100)
    for n in (1, 2, 37, 100, 517):
        text = gen.generate(GenerationRequest(prompt="Hello there, 数据!", model=model, seed=2), tokens=n)
        assert count_tokens(text, model) == n, (spec, model, n)


def test_fit_tokens_pads_what_a_cut_cannot_reach():
    assert count_tokens(fit_tokens("", 7, "o200k_base"), "gpt-4o") == 7
    assert fit_tokens("one two three", 0, "o200k_base") == ""
    text = LoremGenerator().generate(GenerationRequest(prompt="x", model="gpt-4o", seed=1), tokens=300)
    assert count_tokens(fit_tokens(text, 120, "o200k_base"), "gpt-4o") == 120


# ---------------------------------------------------------------- ignore_eos and min_tokens

@pytest.mark.parametrize("max_tokens", [1, 17, 500])
def test_ignore_eos_outputs_exactly_max_tokens(oai, max_tokens):
    r = chat(oai, max_tokens=max_tokens, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == max_tokens and r.choices[0].finish_reason == "length"


def test_ignore_eos_streaming_counts_every_token(url):
    body = {"model": "test-plain", "messages": USER, "max_tokens": 500, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    chunks = [d for _, d in parse_sse(requests.post(url + "/v1/chat/completions", json=body, timeout=30).text)
              if isinstance(d, dict)]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert sum(1 for t in contents if t) >= 495  # one chunk per token (a split character rides with the next)
    assert chunks[-1]["usage"]["completion_tokens"] == 500
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"


def test_ignore_eos_extends_a_short_generator(profile_file):
    with run_server(generator="echo", latency_profile="instant") as u:
        client = openai.OpenAI(base_url=u + "/v1", api_key="k", max_retries=0)
        r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=300, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 300 and r.choices[0].message.content.startswith("hi hi")


def test_ignore_eos_with_reasoning_fills_the_limit(oai):
    hidden = chat(oai, "test-hidden-reasoner", max_tokens=500, extra_body={"ignore_eos": True})
    # the reasoning is as long as the natural answer (100 tokens), the answer fills the rest
    assert hidden.usage.completion_tokens == 500 and hidden.usage.completion_tokens_details.reasoning_tokens == 100
    visible = chat(oai, "test-visible-reasoner", max_tokens=500, extra_body={"ignore_eos": True})
    assert visible.usage.completion_tokens == 500 and visible.usage.completion_tokens_details.reasoning_tokens == 100
    assert count_tokens(visible.choices[0].message.content, "gpt-4o") == 400


def test_min_tokens(oai):
    longer = chat(oai, extra_body={"min_tokens": 300})
    assert longer.usage.completion_tokens == 300 and longer.choices[0].finish_reason == "stop"
    natural = chat(oai, extra_body={"min_tokens": 50})  # below the natural 100: no effect
    assert natural.usage.completion_tokens == 100
    both = chat(oai, max_tokens=250, extra_body={"min_tokens": 250})
    assert both.usage.completion_tokens == 250


# ---------------------------------------------------------------- a profile's output-length distribution

def test_distribution_mean_within_sampling_error(oai):
    n = 150
    lengths = [chat(oai, "test-lengths").usage.completion_tokens for _ in range(n)]
    mean = statistics.fmean(lengths)
    assert abs(mean - 200) < 4 * 40 / n ** 0.5, mean  # 4 standard errors (and seeded: it never varies)
    assert 25 < statistics.stdev(lengths) < 55 and min(lengths) >= 10 and len(set(lengths)) > 30


def test_uniform_distribution_stays_in_bounds_and_max_tokens_cuts(oai):
    lengths = {chat(oai, "test-uniform").usage.completion_tokens for _ in range(60)}
    assert lengths <= set(range(20, 31)) and len(lengths) > 5
    cut = [chat(oai, "test-lengths", max_tokens=150) for _ in range(20)]
    assert {r.usage.completion_tokens for r in cut if r.choices[0].finish_reason == "length"} == {150}
    assert any(r.choices[0].finish_reason == "length" for r in cut)


def test_distribution_is_seeded(profile_file):
    runs = []
    for _ in range(2):
        with run_server(profile_files=[profile_file], seed=9) as u:
            client = openai.OpenAI(base_url=u + "/v1", api_key="k", max_retries=0)
            runs.append([chat(client, "test-lengths").usage.completion_tokens for _ in range(8)])
    assert runs[0] == runs[1] and len(set(runs[0])) > 1


def test_target_tokens_given_overrides_the_distribution(profile_file):
    with run_server(profile_files=[profile_file], target_tokens=30) as u:
        client = openai.OpenAI(base_url=u + "/v1", api_key="k", max_retries=0)
        assert {chat(client, "test-lengths").usage.completion_tokens for _ in range(5)} == {30}


def test_length_distribution_sampling():
    import random

    rng = random.Random(1)
    d = LengthDistribution("lognormal", 300, 100, 50, 600)
    draws = [d.sample(rng) for _ in range(4000)]
    assert 50 <= min(draws) and max(draws) <= 600 and abs(statistics.fmean(draws) - 300) < 10
    assert LengthDistribution("constant", 42).sample(rng) == 42
    assert LengthDistribution("uniform", 0, 0, 3, 3).sample(rng) == 3


@pytest.mark.parametrize("spec, key, words", [
    ("{distribution: poisson, mean: 3}", "output_tokens.distribution", "must be one of"),
    ("{distribution: uniform, min: 5}", "output_tokens.max", "required"),
    ("{distribution: normal, stddev: 5}", "output_tokens.mean", "required"),
    ("{distribution: normal, mean: 100, min: 0}", "output_tokens.min", ">= 1"),
    ("{distribution: normal, mean: 100, min: 50, max: 10}", "output_tokens.max", ">= 50"),
    ("{mean: 100, spread: 3}", "output_tokens.spread", "unknown key"),
])
def test_output_tokens_errors_name_the_key(spec, key, words):
    doc = f"profiles:\n  - name: x\n    ttft: {{mean_ms: 1}}\n    itl: {{mean_ms: 1}}\n    output_tokens: {spec}\n"
    with pytest.raises(ProfileError) as e:
        parse_profiles_document("p.yaml", doc)
    assert key in str(e.value) and words in str(e.value)


def test_reasoning_flags_parse_and_show():
    doc = ("profiles:\n  - name: x\n    ttft: {mean_ms: 1}\n    itl: {mean_ms: 1}\n"
           "    reasoning: {tokens_per_output_token: 2, visible: true, on_request: true}\n"
           "    output_tokens: {distribution: normal, mean: 80, stddev: 20, max: 400}\n")
    p = parse_profiles_document("p.yaml", doc)[0]
    assert p.latency.reasoning_visible and p.latency.reasoning_on_request
    assert p.latency.reasoning_tokens(10) == 0 and p.latency.reasoning_tokens(10, requested=True) == 20
    assert p.to_dict()["reasoning"] == {"tokens_per_output_token": 2.0, "visible": True, "on_request": True}
    assert p.to_dict()["output_tokens"] == {"distribution": "normal", "mean": 80.0, "stddev": 20.0, "max": 400}
    with pytest.raises(ProfileError, match="reasoning.visible: must be true or false"):
        parse_profiles_document("p.yaml", doc.replace("visible: true", "visible: 1"))


def test_a_distribution_is_each_generators_target(profile_file):
    for spec, check in (("sequence", lambda t: len(t.split()) >= 10),
                        ("fixed:always this", lambda t: t == "always this"),
                        ("echo", lambda t: t == USER[0]["content"])):
        with run_server(profile_files=[profile_file], generator=spec, seed=1) as u:
            client = openai.OpenAI(base_url=u + "/v1", api_key="k", max_retries=0)
            r = chat(client, "test-uniform")
            text = r.choices[0].message.content
            assert check(text), (spec, text)
            if spec == "sequence":
                assert 20 <= r.usage.completion_tokens <= 30


def test_sentence_forms_make_the_draws_random_choices_and_randint_would():
    """The per-request word and sentence-length draws are made in C; same seed, same text as the plain way."""
    import random

    from llmsim.generator import _LOREM, _sentence_forms

    def plain(rng: random.Random, count: int) -> list[str]:
        words = rng.choices(_LOREM, k=count)
        forms: list[str] = []
        i = 0
        while i < count:
            k = rng.randint(6, 14)
            forms.append((" " if forms else "") + words[i].capitalize())
            forms.extend(" " + w for w in words[i + 1:i + k])
            forms.append(".")
            i += k
        return forms

    for seed in range(200):
        count = random.Random(seed).randint(1, 400)
        assert _sentence_forms(random.Random(seed), _LOREM, count) == plain(random.Random(seed), count)


@pytest.mark.parametrize("tokens", [1, 2, 3, 17, 100, 999])
def test_lorem_from_token_pieces_is_the_tokenised_text(tokens):
    """The lorem answer built from its words' token ids counts (and encodes to) what tokenising it gives."""
    from llmsim.tokens import encode, get_encoding

    for seed in range(40):
        request = GenerationRequest(prompt=f"p{seed}", model="gpt-4o", seed=seed)
        exact = LoremGenerator().generate(request, tokens=tokens)
        assert count_tokens(exact, "gpt-4o") == tokens
        about = LoremGenerator(tokens).generate(request)
        assert count_tokens(about, "gpt-4o") <= tokens
        assert encode(about, get_encoding("o200k_base")) == get_encoding("o200k_base").encode_ordinary(about)


def test_unseeded_lorem_is_a_window_of_the_pool_exact_and_varied():
    """Unseeded answers come from a pool drawn at start-up, from a random word: exact counts, a capital
    first letter, and different texts (two start alike about once in POOL_WORDS)."""
    from llmsim.generator import POOL_WORDS, _lorem_pool

    generator = LoremGenerator(100)
    request = GenerationRequest(prompt="x", model="gpt-4o")
    texts = [generator.generate(request) for _ in range(300)]
    assert len(set(texts)) >= 290
    for text in texts[:50]:
        assert text[0].isupper() and count_tokens(text, "gpt-4o") <= 100
    for n in (1, 2, 3, 50, 513):
        for _ in range(30):
            exact = generator.generate(request, tokens=n)
            assert count_tokens(exact, "gpt-4o") == n and exact[0].isupper()
    pool = _lorem_pool("o200k_base")
    assert pool is not None
    assert len(pool.forms) > POOL_WORDS and pool.upto[-1] == len(pool.ids) == len(pool.pieces) > POOL_WORDS
    beyond = pool.upto[-1] + 10  # longer than the pool: drawn afresh, still exact
    assert count_tokens(generator.generate(request, tokens=beyond), "gpt-4o") == beyond


def test_unseeded_lorem_hands_the_stream_builder_its_tokens_as_a_fresh_encoding_gives_them():
    """A pool window comes with its ids and token texts (no tokenising per request); they must be exactly
    what encoding the text gives, and the plan built from them what the builder's own path builds,
    whether the n-th token ends a word or falls inside one."""
    from llmsim.generator import _LOREM, _pool_window
    from llmsim.stream import Block, TokenPlan, TokenStreamBuilder
    from llmsim.tokens import encode, get_encoding, known_pieces

    enc = get_encoding("o200k_base")
    generator = LoremGenerator(100)
    request = GenerationRequest(prompt="x", model="gpt-4o")
    builder = TokenStreamBuilder(enc)
    told = asked = 0
    for n in (*range(1, 40), 99, 100, 101, 250, 600):
        for _ in range(12):
            asked += 1
            text = generator.generate(request, tokens=n)
            truth = enc.encode_ordinary(text)
            assert encode(text, enc) == truth and len(truth) == n
            pieces = known_pieces(text, enc)
            if pieces is not None:
                told += 1
                assert pieces == [enc.decode([t]) for t in truth] and "".join(pieces) == text
            plan = builder.build_blocks([Block("text", text)], max_tokens=n - 1 if n > 1 else None)
            slow = TokenPlan()
            builder._chunk(truth[:n - 1] if n > 1 else truth, slow)
            assert plan.pieces == slow.pieces and list(plan.piece_tokens) == list(slow.piece_tokens)
            assert plan.blocks[0].text == "".join(slow.pieces)
            whole = builder.build_blocks([Block("text", text)])
            assert whole.blocks[0].text == text and whole.pieces == [enc.decode([t]) for t in truth]
    # Lorem is ASCII: every window says its tokens' texts, whether it ends at a word's end or inside one
    # (the rest: a first word longer than n, or a cut word that re-tokenises, drawn afresh).
    assert told > 0.9 * asked
    windows = [_pool_window("o200k_base", n, False) for n in (5, 37, 100) for _ in range(300)]
    cut = [w for w in windows if w is not None and not w[0].lower().endswith((*_LOREM, "."))]
    assert len(cut) > 30 and all(w[2] is not None and "".join(w[2]) == w[0] for w in windows if w is not None)


def test_a_target_past_the_models_limit_is_made_only_that_far():
    """--target-tokens 10,000,000 on gpt-4o (16,384 output tokens at most): an answer stops at the model's limit
    ("length"), a max_tokens cut is a prefix of it, and nothing makes the other 9,983,616 tokens (which took
    seconds and half a GB per request)."""
    with run_server(target_tokens=10_000_000, latency_profile="instant", seed=4) as url:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "seed": 9}
        whole = requests.post(url + "/v1/chat/completions", json=body, timeout=60).json()
        cut = requests.post(url + "/v1/chat/completions", json={**body, "max_tokens": 5}, timeout=60).json()
    assert whole["usage"]["completion_tokens"] == 16384 and whole["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 5
    assert whole["choices"][0]["message"]["content"].startswith(cut["choices"][0]["message"]["content"])


def test_visible_reasoning_is_prose_to_its_last_token_not_filler():
    """Reasoning of exactly n tokens (as before), made of its sentences to the end: the joining spaces were
    counted as tokens of their own, so the text came out short and was padded with ' the the the …'."""
    gen = LoremGenerator(100)
    for model, encoding in (("gpt-4o", "o200k_base"), ("claude-sonnet-4-5", "cl100k_base")):
        req = GenerationRequest.from_body({"model": model, "messages": [{"role": "user", "content": "Why blue?"}]})
        for n in (*range(20, 400, 13), 800, 1944, 2000):
            text = gen.reasoning(req, tokens=n)
            assert count_tokens(text, model) == n
            assert not text.endswith(" the the"), (model, n, text[-80:])
