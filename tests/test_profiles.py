import random

import pytest

from llmsim import LatencyProfile, ProfileError, ProfileRegistry
from llmsim.latency import Distribution
from llmsim.profiles import default_registry, load_profile_file

REQUIRED = {
    "gpt-5": "gpt-5", "gpt-5-mini": "gpt-5-mini", "gpt-5-codex": "gpt-5", "gpt-5.1": "gpt-5",
    "gpt-5.1-codex": "gpt-5", "gpt-5.1-codex-mini": "gpt-5-mini", "gpt-5.1-codex-max": "gpt-5", "gpt-5.2": "gpt-5",
    "gpt-5.3": "gpt-5", "o3": "o-series", "o3-mini": "o-series", "o4-mini": "o-series", "gpt-4": "gpt-4",
    "gpt-4-turbo": "gpt-4-turbo", "gpt-4o": "gpt-4o", "gpt-4o-mini": "gpt-4o-mini", "gpt-4.1": "gpt-4.1",
    "claude-3.5-sonnet": "claude-sonnet", "claude-3.7-sonnet": "claude-sonnet", "claude-sonnet-4": "claude-sonnet",
    "claude-sonnet-4.5": "claude-sonnet", "claude-opus-4": "claude-opus", "claude-opus-4.5": "claude-opus",
    "claude-haiku-4.5": "claude-haiku", "claude-sonnet-4-5": "claude-sonnet", "claude-opus-4-1": "claude-opus",
    "claude-haiku-4-5-20251001": "claude-haiku", "claude-3-5-sonnet-latest": "claude-sonnet",
    "gemini-2.5-pro": "gemini-pro", "gemini-2.5-flash": "gemini-flash", "gemini-2.0-flash-lite": "gemini-flash",
    "deepseek-chat": "deepseek-chat", "deepseek-reasoner": "deepseek-reasoner",
}


@pytest.mark.parametrize("model,profile", sorted(REQUIRED.items()))
def test_required_models_resolve(model, profile):
    assert default_registry().match(model).name == profile


def test_starting_values_and_limits():
    table = {"gpt-5": (600, 150, 40, 12), "gpt-5-mini": (300, 80, 20, 6), "gpt-4": (800, 200, 50, 15),
             "gpt-4o": (400, 100, 25, 8), "o-series": (2000, 500, 30, 10), "claude-opus": (1000, 250, 60, 20),
             "claude-sonnet": (500, 120, 30, 10), "claude-haiku": (200, 50, 15, 5), "gemini-pro": (600, 150, 35, 10),
             "gemini-flash": (200, 50, 15, 5), "instant": (0, 0, 0, 0), "fast": (10, 0, 1, 0)}
    reg = default_registry()
    for name, (tm, ts, im, is_) in table.items():
        p = reg.get(name)
        assert (p.ttft.mean_ms, p.ttft.stddev_ms, p.itl.mean_ms, p.itl.stddev_ms) == (tm, ts, im, is_), name
    for p in reg:
        assert p.context_window > 0 and p.max_output_tokens > 0


def test_from_model_and_profile_name():
    lp = LatencyProfile.from_model("gpt-5")
    assert lp.ttft == Distribution("lognormal", 600, 150) and lp.reasoning
    assert default_registry().resolve("fast").itl.mean_ms == 1
    with pytest.raises(KeyError):
        default_registry().resolve("unknown-model-x")


def test_exact_beats_glob_and_specific_glob_beats_loose():
    reg = ProfileRegistry.load()
    assert reg.match("gpt-5-mini-2025-08-07").name == "gpt-5-mini"
    assert reg.match("gpt-5-2025-08-07").name == "gpt-5"


def test_profiles_dir_overrides_by_name(tmp_path):
    (tmp_path / "x.yaml").write_text("profiles:\n  - name: gpt-4o\n    models: [gpt-4o]\n"
                                     "    ttft: {mean_ms: 1}\n    itl: {mean_ms: 2}\n")
    reg = ProfileRegistry.load(extra_dirs=[tmp_path])
    assert reg.match("gpt-4o").ttft.mean_ms == 1


@pytest.mark.parametrize("text,key", [
    ("profiles:\n  - models: [a]\n    ttft: {mean_ms: 1}\n    itl: {mean_ms: 1}\n", "profiles[0].name"),
    ("profiles:\n  - name: a\n    ttft: {mean_ms: 1}\n    itl: {mean_ms: 1}\n    colour: red\n", "profiles[a].colour"),
    ("profiles:\n  - name: a\n    ttft: {mean_ms: 1}\n    itl: {mean_ms: x}\n", "profiles[a].itl.mean_ms"),
    ("profiles:\n  - name: a\n    ttft: {mean_ms: 1}\n    itl: {mean_ms: 1}\n    capacity: {queue_limit: 3}\n",
     "profiles[a].capacity.max_concurrent"),
    ("profiles:\n  - name: a\n    ttft: {mean_ms: 1}\n    itl: {mean_ms: 1}\n    prefill: {tokens_per_s: 0}\n",
     "profiles[a].prefill.tokens_per_s"),
    ("profiles:\n  - name: a\n    ttft: {mean_ms: 1}\n    itl: {mean_ms: 1}\n    models: [1, 2]\n",
     "profiles[a].models"),
    ("just a string\n", "profiles"),
])
def test_malformed_profiles_name_file_and_key(tmp_path, text, key):
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(ProfileError) as e:
        load_profile_file(f)
    assert str(e.value).startswith(f"{f}: {key}: ") and "\n" not in str(e.value)


@pytest.mark.parametrize("dist", [Distribution("normal", 5, 10), Distribution("lognormal", 5, 10),
                                  Distribution("constant", 3)])
def test_samples_never_negative_and_seeded(dist):
    a = [dist.sample(random.Random(1)) for _ in range(3)]
    rng1, rng2 = random.Random(42), random.Random(42)
    s1 = [dist.sample(rng1) for _ in range(5000)]
    assert s1 == [dist.sample(rng2) for _ in range(5000)]
    assert min(s1) >= 0 and a[0] == a[1]


def test_lognormal_matches_its_mean_and_stddev():
    d = Distribution("lognormal", 600, 150)
    rng = random.Random(3)
    xs = [d.sample(rng) for _ in range(40000)]
    mean = sum(xs) / len(xs)
    sd = (sum((x - mean) ** 2 for x in xs) / len(xs)) ** 0.5
    assert abs(mean - 600) < 6 and abs(sd - 150) < 6
    xs.sort()
    assert abs(xs[int(0.99 * len(xs))] - d.quantile(0.99)) < 15


def test_prefill_and_reasoning():
    lp = LatencyProfile(ttft=Distribution("constant", 100), itl=Distribution("constant", 20),
                        prefill_tokens_per_s=20000, reasoning_tokens_per_output_token=2)
    assert lp.sample_ttft_ms(random.Random(), prompt_tokens=10000) == 600
    assert lp.reasoning_tokens(50) == 100 and lp.reasoning_tokens(50, "low") == 50
    assert lp.reasoning_tokens(50, "minimal") == 0
