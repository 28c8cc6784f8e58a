"""Model profiles: the YAML schema, loading, validation and model-name matching.

profiles/*.yaml is the single source of truth for model names, encodings,
limits, latencies, load model and SLO. A malformed file raises ValidationError
(ProfileError is the same type), whose message names the file, the key and the
reason in one line.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .latency import DISTRIBUTIONS, LENGTH_DISTRIBUTIONS, Distribution, LatencyProfile, LengthDistribution
from .validation import ValidationError, integer, mapping, not_utf8, number

ENCODINGS = ("o200k_base", "cl100k_base")
PROVIDERS = ("openai", "anthropic", "google", "deepseek", "any")
_SLO_KEY = re.compile(r"^(ttft|itl|tpot|e2e)_p(50|90|95|99|999)_ms$")

ProfileError = ValidationError
"""A profile file is wrong; str() is one line: file: key: reason (the name predates llmsim.validation)."""


@dataclass(frozen=True)
class Capacity:
    """The load model of one deployment (see scheduler.py)."""

    max_concurrent: int
    queue_limit: int = 1024
    slowdown_at_full: float = 1.0

    def to_dict(self) -> dict:
        return {"max_concurrent": self.max_concurrent, "queue_limit": self.queue_limit,
                "slowdown_at_full": self.slowdown_at_full}


CACHE_RULES = ("vllm", "openai", "anthropic")
"""How a prefix cache reports and reuses hits (prefix_cache.py): vLLM's block-granular
automatic prefix caching, OpenAI's automatic caching (from 1,024 tokens in 128-token steps),
Anthropic's explicit `cache_control` breakpoints with TTLs."""


@dataclass(frozen=True)
class CacheSpec:
    """A deployment's prefix (KV) cache (`cache:`): see prefix_cache.py."""

    capacity_tokens: int
    """Prompt tokens the cache holds (least recently used blocks are evicted beyond it)."""
    block_tokens: int = 16
    """Tokens per cached block (vLLM's --block-size): only whole blocks are cached and hit."""
    min_prefix_tokens: int = 0
    """A shorter cached prefix is not reused (Anthropic: the model's minimum cacheable length)."""
    rule: str | None = None
    """One of CACHE_RULES; None: by the profile's provider (openai, anthropic, else vllm)."""

    def rule_for(self, provider: str) -> str:
        if self.rule is not None:
            return self.rule
        return provider if provider in ("openai", "anthropic") else "vllm"

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"capacity_tokens": self.capacity_tokens, "block_tokens": self.block_tokens,
                             "min_prefix_tokens": self.min_prefix_tokens}
        if self.rule is not None:
            d["rule"] = self.rule
        return d


@dataclass(frozen=True)
class EmbeddingSpec:
    """An embedding model (`embedding:`): its vector size, its latency and its input limit."""

    dimensions: int
    base_ms: float = 0.0
    per_token_ms: float = 0.0
    """An embeddings request takes base_ms + per_token_ms x its input tokens (times the batch slowdown)."""
    max_input_tokens: int = 8192
    dimensions_param: bool = False
    """Accepts the request's `dimensions` (shorter vectors), as OpenAI's text-embedding-3 models do."""

    def latency_ms(self, tokens: int) -> float:
        return self.base_ms + self.per_token_ms * tokens

    def to_dict(self) -> dict:
        return {"dimensions": self.dimensions, "base_ms": self.base_ms, "per_token_ms": self.per_token_ms,
                "max_input_tokens": self.max_input_tokens, "dimensions_param": self.dimensions_param}


@dataclass(frozen=True)
class SloCheck:
    """One SLO bound: the `pct` percentile of `metric` must be <= limit_ms."""

    metric: str
    pct: float
    limit_ms: float

    @property
    def key(self) -> str:
        return f"{self.metric}_p{'999' if self.pct == 99.9 else int(self.pct)}_ms"


@dataclass(frozen=True)
class ModelProfile:
    name: str
    models: tuple[str, ...] = ()
    provider: str = "any"
    encoding: str = "o200k_base"
    context_window: int = 128000
    max_output_tokens: int = 16384
    latency: LatencyProfile = field(default_factory=LatencyProfile)
    capacity: Capacity | None = None
    slo: tuple[SloCheck, ...] = ()
    chunk_tokens: int = 1
    tool_call_probability: float | None = None
    """How often a model with tools and tool_choice auto calls one (None: the server's setting)."""
    embedding: EmbeddingSpec | None = None
    """An embedding model: served by /v1/embeddings only, with no token timing."""
    output_tokens: LengthDistribution | None = None
    """How long its answers are (None: the generator's --target-tokens)."""
    cache: CacheSpec | None = None
    """The deployment's prefix (KV) cache; None: every prompt is prefilled in full."""
    source: str = "<built-in>"

    @property
    def ttft(self) -> Distribution:
        return self.latency.ttft

    @property
    def itl(self) -> Distribution:
        return self.latency.itl

    @property
    def reasoning(self) -> bool:
        return self.latency.reasoning

    def to_dict(self) -> dict:
        """The resolved profile in the YAML shape (what `llmsim profiles show` prints)."""
        d: dict[str, Any] = {
            "name": self.name,
            "models": list(self.models),
            "provider": self.provider,
            "encoding": self.encoding,
        }
        if self.embedding is not None:
            d["embedding"] = self.embedding.to_dict()
            if self.capacity:
                d["capacity"] = self.capacity.to_dict()
            return d
        d["context_window"] = self.context_window
        d["max_output_tokens"] = self.max_output_tokens
        d.update(self.latency.to_dict())
        if self.chunk_tokens != 1:
            d["chunk_tokens"] = self.chunk_tokens
        if self.capacity:
            d["capacity"] = self.capacity.to_dict()
        if self.slo:
            d["slo"] = {c.key: c.limit_ms for c in self.slo}
        if self.tool_call_probability is not None:
            d["tools"] = {"call_probability": self.tool_call_probability}
        if self.output_tokens is not None:
            d["output_tokens"] = self.output_tokens.to_dict()
        if self.cache is not None:
            d["cache"] = {**self.cache.to_dict(), "rule": self.cache.rule_for(self.provider)}
        return d


# --------------------------------------------------------------------------- parsing

_TOP_KEYS = {"name", "models", "provider", "encoding", "context_window", "max_output_tokens", "ttft", "itl",
             "prefill", "reasoning", "capacity", "slo", "chunk_tokens", "tools", "embedding",
             "output_tokens", "cache"}
_GENERATION_KEYS = ("context_window", "max_output_tokens", "ttft", "itl", "prefill", "reasoning", "slo",
                    "chunk_tokens", "tools", "output_tokens", "cache")
"""What an embedding profile cannot have: it generates no tokens."""
_EMBEDDING_KEYS = {"dimensions", "base_ms", "per_token_ms", "max_input_tokens", "dimensions_param"}


def parse_distribution(src: str, key: str, value: Any) -> Distribution:
    value = mapping(src, key, value, {"distribution", "mean_ms", "stddev_ms"})
    kind = value.get("distribution", "constant")
    if kind not in DISTRIBUTIONS:
        raise ValidationError(src, f"{key}.distribution", f"must be one of {', '.join(DISTRIBUTIONS)}, got {kind!r}")
    if "mean_ms" not in value:
        raise ValidationError(src, f"{key}.mean_ms", "is required")
    mean = number(src, f"{key}.mean_ms", value["mean_ms"])
    std = number(src, f"{key}.stddev_ms", value.get("stddev_ms", 0))
    if kind == "lognormal" and mean == 0 and std > 0:
        raise ValidationError(src, f"{key}.mean_ms", "a lognormal with a spread needs mean_ms > 0")
    return Distribution(kind, mean, std)


def _capacity(src: str, where: str, value: Any) -> Capacity | None:
    if value is None:
        return None
    c = mapping(src, f"{where}.capacity", value, {"max_concurrent", "queue_limit", "slowdown_at_full"})
    if "max_concurrent" not in c:
        raise ProfileError(src, f"{where}.capacity.max_concurrent", "is required")
    return Capacity(
        max_concurrent=integer(src, f"{where}.capacity.max_concurrent", c["max_concurrent"], minimum=1),
        queue_limit=integer(src, f"{where}.capacity.queue_limit", c.get("queue_limit", 1024)),
        slowdown_at_full=number(src, f"{where}.capacity.slowdown_at_full", c.get("slowdown_at_full", 1.0),
                                 minimum=1),
    )


def parse_cache(src: str, key: str, value: Any) -> CacheSpec:
    """A `cache:` section -> CacheSpec, or ProfileError naming the key."""
    c = mapping(src, key, value, {"capacity_tokens", "block_tokens", "min_prefix_tokens", "rule"})
    if "capacity_tokens" not in c:
        raise ProfileError(src, f"{key}.capacity_tokens", "is required (how many prompt tokens the cache holds)")
    block = integer(src, f"{key}.block_tokens", c.get("block_tokens", 16), minimum=1)
    capacity = integer(src, f"{key}.capacity_tokens", c["capacity_tokens"], minimum=1)
    if capacity < block:
        raise ProfileError(src, f"{key}.capacity_tokens", f"must hold at least one block ({block} tokens), "
                                                          f"got {capacity}")
    rule = c.get("rule")
    if rule is not None and rule not in CACHE_RULES:
        raise ProfileError(src, f"{key}.rule", f"must be one of {', '.join(CACHE_RULES)}, got {rule!r}")
    return CacheSpec(capacity_tokens=capacity, block_tokens=block,
                     min_prefix_tokens=integer(src, f"{key}.min_prefix_tokens", c.get("min_prefix_tokens", 0)),
                     rule=rule)


def parse_embedding(src: str, key: str, value: Any) -> EmbeddingSpec:
    """An `embedding:` section -> EmbeddingSpec, or ProfileError naming the key."""
    e = mapping(src, key, value, _EMBEDDING_KEYS)
    if "dimensions" not in e:
        raise ProfileError(src, f"{key}.dimensions", "is required")
    shortens = e.get("dimensions_param", False)
    if not isinstance(shortens, bool):
        raise ProfileError(src, f"{key}.dimensions_param", f"must be true or false, got {shortens!r}")
    return EmbeddingSpec(
        dimensions=integer(src, f"{key}.dimensions", e["dimensions"], minimum=1),
        base_ms=number(src, f"{key}.base_ms", e.get("base_ms", 0)),
        per_token_ms=number(src, f"{key}.per_token_ms", e.get("per_token_ms", 0)),
        max_input_tokens=integer(src, f"{key}.max_input_tokens", e.get("max_input_tokens", 8192), minimum=1),
        dimensions_param=shortens,
    )


def _flag(src: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ProfileError(src, key, f"must be true or false, got {value!r}")
    return value


def parse_length_distribution(src: str, key: str, value: Any) -> LengthDistribution:
    """`output_tokens: {distribution, mean, stddev, min, max}` (uniform: min and max)."""
    value = mapping(src, key, value, {"distribution", "mean", "stddev", "min", "max"})
    kind = value.get("distribution", "constant")
    if kind not in LENGTH_DISTRIBUTIONS:
        raise ProfileError(src, f"{key}.distribution", f"must be one of {', '.join(LENGTH_DISTRIBUTIONS)}, "
                                                       f"got {kind!r}")
    lo = integer(src, f"{key}.min", value.get("min", 1), minimum=1)
    hi = None if value.get("max") is None else int(number(src, f"{key}.max", value["max"], minimum=lo,
                                                           integer=True))
    if kind == "uniform":
        if hi is None:
            raise ProfileError(src, f"{key}.max", "is required for a uniform distribution")
        return LengthDistribution("uniform", (lo + hi) / 2, 0.0, lo, hi)
    if "mean" not in value:
        raise ProfileError(src, f"{key}.mean", "is required")
    mean = number(src, f"{key}.mean", value["mean"], minimum=1)
    std = number(src, f"{key}.stddev", value.get("stddev", 0))
    return LengthDistribution(kind, mean, std, lo, hi)


def parse_profile(src: str, value: Any, index: int = 0) -> ModelProfile:
    """One `profiles:` entry -> ModelProfile, or ValidationError naming the key."""
    if not isinstance(value, dict):
        raise ValidationError(src, f"profiles[{index}]", "must be a mapping")
    name = value.get("name")
    where = f"profiles[{index}]" if not isinstance(name, str) else f"profiles[{name}]"
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(src, f"{where}.name", "is required and must be a non-empty string")
    for k in value:
        if k not in _TOP_KEYS:
            raise ValidationError(src, f"{where}.{k}", f"unknown key (expected one of: {', '.join(sorted(_TOP_KEYS))})")
    models = value.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise ValidationError(src, f"{where}.models", "must be a list of model names or globs")
    provider = value.get("provider", "any")
    if provider not in PROVIDERS:
        raise ValidationError(src, f"{where}.provider", f"must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    encoding = value.get("encoding", "o200k_base")
    if encoding not in ENCODINGS:
        raise ProfileError(src, f"{where}.encoding", f"must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    capacity = _capacity(src, where, value.get("capacity"))
    if value.get("embedding") is not None:
        for k in _GENERATION_KEYS:
            if k in value:
                raise ProfileError(src, f"{where}.{k}", "an embedding profile generates no tokens: give its "
                                                        "latency in embedding.base_ms and embedding.per_token_ms")
        spec = parse_embedding(src, f"{where}.embedding", value["embedding"])
        return ModelProfile(name=name, models=tuple(models), provider=provider, encoding=encoding,
                            context_window=spec.max_input_tokens, max_output_tokens=1, capacity=capacity,
                            embedding=spec, source=src)
    for req in ("ttft", "itl"):
        if req not in value:
            raise ValidationError(src, f"{where}.{req}", "is required")
    ttft = parse_distribution(src, f"{where}.ttft", value["ttft"])
    itl = parse_distribution(src, f"{where}.itl", value["itl"])
    prefill = None
    if value.get("prefill") is not None:
        p = mapping(src, f"{where}.prefill", value["prefill"], {"tokens_per_s"})
        prefill = number(src, f"{where}.prefill.tokens_per_s", p.get("tokens_per_s"), strict=True)
    ratio, visible, on_request = 0.0, False, False
    if value.get("reasoning") is not None:
        r = mapping(src, f"{where}.reasoning", value["reasoning"], {"tokens_per_output_token", "visible",
                                                                     "on_request"})
        ratio = number(src, f"{where}.reasoning.tokens_per_output_token", r.get("tokens_per_output_token"))
        visible = _flag(src, f"{where}.reasoning.visible", r.get("visible", False))
        on_request = _flag(src, f"{where}.reasoning.on_request", r.get("on_request", False))
    output_tokens = None
    if value.get("output_tokens") is not None:
        output_tokens = parse_length_distribution(src, f"{where}.output_tokens", value["output_tokens"])
    slo: list[SloCheck] = []
    if value.get("slo") is not None:
        s = value["slo"]
        if not isinstance(s, dict):
            raise ValidationError(src, f"{where}.slo", "must be a mapping like {ttft_p99_ms: 1500}")
        for k, v in s.items():
            m = _SLO_KEY.match(str(k))
            if not m:
                raise ValidationError(src, f"{where}.slo.{k}",
                                   "unknown SLO key (expected <ttft|itl|tpot|e2e>_p<50|90|95|99|999>_ms)")
            pct = 99.9 if m.group(2) == "999" else float(m.group(2))
            slo.append(SloCheck(m.group(1), pct, number(src, f"{where}.slo.{k}", v, strict=True)))
    context_window = integer(src, f"{where}.context_window", value.get("context_window", 128000), minimum=1)
    max_out = integer(src, f"{where}.max_output_tokens", value.get("max_output_tokens", 16384), minimum=1)
    chunk = integer(src, f"{where}.chunk_tokens", value.get("chunk_tokens", 1), minimum=1)
    call_probability = None
    if value.get("tools") is not None:
        t = mapping(src, f"{where}.tools", value["tools"], {"call_probability"})
        if "call_probability" in t:
            call_probability = number(src, f"{where}.tools.call_probability", t["call_probability"])
            if call_probability > 1:
                raise ProfileError(src, f"{where}.tools.call_probability", f"must be <= 1, got {call_probability!r}")
    cache = None if value.get("cache") is None else parse_cache(src, f"{where}.cache", value["cache"])
    return ModelProfile(
        name=name, models=tuple(models), provider=provider, encoding=encoding,
        context_window=context_window, max_output_tokens=max_out,
        latency=LatencyProfile(ttft=ttft, itl=itl, prefill_tokens_per_s=prefill,
                               reasoning_tokens_per_output_token=ratio, reasoning_visible=visible,
                               reasoning_on_request=on_request),
        capacity=capacity, slo=tuple(slo), chunk_tokens=chunk, tool_call_probability=call_probability,
        output_tokens=output_tokens, cache=cache, source=src,
    )


def parse_profiles_document(src: str, text: str) -> list[ModelProfile]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "yaml"
        raise ValidationError(src, where, f"invalid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(doc, dict) or "profiles" not in doc:
        raise ValidationError(src, "profiles", "the file must be a mapping with a top-level 'profiles:' list")
    items = doc["profiles"]
    if not isinstance(items, list):
        raise ValidationError(src, "profiles", "must be a list of profiles")
    return [parse_profile(src, item, i) for i, item in enumerate(items)]


def load_profile_file(path: str | os.PathLike) -> list[ModelProfile]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValidationError(str(path), "file", f"cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ValidationError(str(path), "file", not_utf8(e)) from None
    return parse_profiles_document(str(path), text)


def _builtin_files() -> list[tuple[str, str]]:
    base = resources.files("llmsim._profiles")
    out = []
    for entry in sorted(base.iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yaml", ".yml")):
            out.append((f"profiles/{entry.name}", entry.read_text(encoding="utf-8")))
    return out


def _specificity(pattern: str) -> int:
    return sum(1 for ch in pattern if ch not in "*?[]")


class ProfileRegistry:
    """All known profiles, and the rule that maps a model name to one."""

    def __init__(self, profiles: Iterable[ModelProfile]) -> None:
        self._by_name: dict[str, ModelProfile] = {}
        for p in profiles:
            self._by_name[p.name] = p  # later sources override earlier ones by name
        self._exact: dict[str, ModelProfile] = {}
        self._globs: list[tuple[int, str, ModelProfile]] = []
        for p in self._by_name.values():
            for m in p.models:
                if any(ch in m for ch in "*?["):
                    self._globs.append((_specificity(m), m, p))
                else:
                    self._exact[m] = p
        self._globs.sort(key=lambda t: -t[0])

    @classmethod
    def load(cls, extra_dirs: str | os.PathLike | Iterable[str | os.PathLike] = (),
             extra_files: str | os.PathLike | Iterable[str | os.PathLike] = ()) -> ProfileRegistry:
        """Built-in profiles, then each extra dir's *.yaml, then extra files; later wins by name. One path
        given as a string counts as one path, not as its characters."""
        if isinstance(extra_dirs, (str, os.PathLike)):
            extra_dirs = [extra_dirs]
        if isinstance(extra_files, (str, os.PathLike)):
            extra_files = [extra_files]
        profiles: list[ModelProfile] = []
        for src, text in _builtin_files():
            profiles.extend(parse_profiles_document(src, text))
        for extra in extra_dirs:
            d = Path(extra)
            if not d.is_dir():
                raise ValidationError(str(d), "profiles_dir", "is not a directory")
            for path in sorted(d.iterdir()):
                if path.suffix in (".yaml", ".yml"):
                    profiles.extend(load_profile_file(path))
        for file in extra_files:
            profiles.extend(load_profile_file(file))
        return cls(profiles)

    def __iter__(self) -> Iterator[ModelProfile]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> ModelProfile:
        """A profile by its own name; KeyError if there is none."""
        return self._by_name[name]

    def match(self, model: str) -> ModelProfile | None:
        """The profile covering a model name: exact names first, then the most specific glob."""
        p = self._exact.get(model)
        if p is not None:
            return p
        for _, pattern, prof in self._globs:
            if fnmatch.fnmatchcase(model, pattern):
                return prof
        return None

    def resolve(self, model: str) -> ModelProfile:
        """Like match(), but a profile's own name also works; KeyError if nothing covers it."""
        p = self.match(model) or self._by_name.get(model)
        if p is None:
            raise KeyError(model)
        return p

    def model_names(self) -> list[str]:
        """Every exact model name the profiles list (what /v1/models shows)."""
        return sorted(self._exact)


_default_registry: ProfileRegistry | None = None


def default_registry() -> ProfileRegistry:
    """The built-in profiles, loaded once per process."""
    global _default_registry
    if _default_registry is None:
        _default_registry = ProfileRegistry.load()
    return _default_registry
