"""Latency distributions and sampling (and the output-length distribution of a profile).

A profile describes TTFT and ITL as distributions given by their own mean and
standard deviation in milliseconds. The same objects answer both sides of the
product: the simulator samples them, the load tester asks them for expected
percentiles to score a run.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from statistics import NormalDist

DISTRIBUTIONS = ("constant", "normal", "lognormal")

_STD_NORMAL = NormalDist()


@dataclass(frozen=True)
class Distribution:
    """A non-negative latency distribution in milliseconds.

    `normal` is truncated at zero by clamping (a real latency is never
    negative); `lognormal` is parametrised by its own mean and stddev, not by
    the underlying normal's, so YAML values read as what a dashboard shows.
    """

    kind: str = "constant"
    mean_ms: float = 0.0
    stddev_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, not {self.kind!r}")
        if self.mean_ms < 0:
            raise ValueError("mean_ms must be >= 0")
        if self.stddev_ms < 0:
            raise ValueError("stddev_ms must be >= 0")
        if self.kind == "lognormal" and self.mean_ms == 0 and self.stddev_ms > 0:
            raise ValueError("a lognormal with mean_ms 0 cannot have a spread")
        # Sampled once per token on the hot path: derive the parameters once.
        object.__setattr__(self, "_point", self.is_point)
        if self.kind == "lognormal" and not self.is_point:
            sigma2 = math.log1p((self.stddev_ms / self.mean_ms) ** 2)
            object.__setattr__(self, "_params", (math.log(self.mean_ms) - sigma2 / 2, math.sqrt(sigma2)))

    @property
    def is_point(self) -> bool:
        """Whether every draw is mean_ms (a constant, or no spread): sampling and quantiles need no maths."""
        return self.kind == "constant" or self.stddev_ms == 0

    def _lognormal_params(self) -> tuple[float, float]:
        return self._params  # type: ignore[attr-defined]

    def sample(self, rng: random.Random) -> float:
        """One draw in ms, never negative."""
        if self._point:  # type: ignore[attr-defined]
            return self.mean_ms
        if self.kind == "normal":
            return max(0.0, rng.gauss(self.mean_ms, self.stddev_ms))
        mu, sigma = self._params  # type: ignore[attr-defined]
        return rng.lognormvariate(mu, sigma)

    def quantile(self, p: float) -> float:
        """The p-quantile (0 < p < 1) in ms, in closed form."""
        if self.is_point:
            return self.mean_ms
        z = _STD_NORMAL.inv_cdf(p)
        if self.kind == "normal":
            return max(0.0, self.mean_ms + z * self.stddev_ms)
        mu, sigma = self._lognormal_params()
        return math.exp(mu + z * sigma)

    def scaled(self, factor: float) -> Distribution:
        """The distribution of factor·X (used for per-token costs)."""
        return Distribution(self.kind, self.mean_ms * factor, self.stddev_ms * factor)

    def to_dict(self) -> dict:
        d: dict = {"distribution": self.kind, "mean_ms": self.mean_ms}
        if self.kind != "constant":
            d["stddev_ms"] = self.stddev_ms
        return d


def constant(ms: float) -> Distribution:
    return Distribution("constant", float(ms), 0.0)


REASONING_EFFORT_FACTORS = {"none": 0.0, "minimal": 0.0, "low": 0.5, "medium": 1.0, "high": 2.0, "xhigh": 3.0}
"""How `reasoning_effort` / `reasoning.effort` scales a profile's reasoning ratio.

This is API semantics (the effort names OpenAI accepts), not per-model data,
so it lives here rather than in profiles/.
"""


@dataclass(frozen=True)
class LatencyProfile:
    """The timing half of a model profile: what one request's stream costs."""

    ttft: Distribution = field(default_factory=lambda: constant(0))
    itl: Distribution = field(default_factory=lambda: constant(0))
    prefill_tokens_per_s: float | None = None
    reasoning_tokens_per_output_token: float = 0.0
    reasoning_visible: bool = False
    """The model streams its reasoning (Chat `reasoning_content`) unless the request hides it."""
    reasoning_on_request: bool = False
    """The model reasons only when the request asks (Anthropic `thinking`, a Responses summary)."""

    @classmethod
    def from_model(cls, model: str, profiles_dir: str | None = None) -> LatencyProfile:
        """The latency profile of a model name, from the built-in profiles (plus profiles_dir)."""
        from .profiles import ProfileRegistry

        return ProfileRegistry.load(extra_dirs=[profiles_dir] if profiles_dir else []).resolve(model).latency

    @classmethod
    def constant(cls, ttft_ms: float, itl_ms: float) -> LatencyProfile:
        return cls(ttft=constant(ttft_ms), itl=constant(itl_ms))

    @property
    def reasoning(self) -> bool:
        return self.reasoning_tokens_per_output_token > 0

    def reasoning_ratio(self, effort: str | None = None, requested: bool = False) -> float:
        """Reasoning tokens per answer token at this effort; 0 for a model that reasons only
        on request when the request did not ask."""
        if not self.reasoning or (self.reasoning_on_request and not requested):
            return 0.0
        return self.reasoning_tokens_per_output_token * REASONING_EFFORT_FACTORS.get(effort or "medium", 1.0)

    def reasoning_tokens(self, output_tokens: int, effort: str | None = None, requested: bool = False) -> int:
        """Reasoning tokens spent before `output_tokens` answer tokens."""
        return int(round(self.reasoning_ratio(effort, requested) * output_tokens))

    def prefill_ms(self, prompt_tokens: int) -> float:
        if not self.prefill_tokens_per_s or prompt_tokens <= 0:
            return 0.0
        return 1000.0 * prompt_tokens / self.prefill_tokens_per_s

    def sample_ttft_ms(self, rng: random.Random, prompt_tokens: int = 0) -> float:
        """Base TTFT plus prefill; reasoning time is added by whoever paces the stream."""
        return self.ttft.sample(rng) + self.prefill_ms(prompt_tokens)

    def sample_itl_ms(self, rng: random.Random) -> float:
        return self.itl.sample(rng)

    def to_dict(self) -> dict:
        d: dict = {"ttft": self.ttft.to_dict(), "itl": self.itl.to_dict()}
        if self.prefill_tokens_per_s:
            d["prefill"] = {"tokens_per_s": self.prefill_tokens_per_s}
        if self.reasoning:
            r: dict = {"tokens_per_output_token": self.reasoning_tokens_per_output_token}
            if self.reasoning_visible:
                r["visible"] = True
            if self.reasoning_on_request:
                r["on_request"] = True
            d["reasoning"] = r
        return d


LENGTH_DISTRIBUTIONS = ("constant", "normal", "lognormal", "uniform")


@dataclass(frozen=True)
class LengthDistribution:
    """How long a model's answers are, in tokens: a profile's `output_tokens`.

    `normal` and `lognormal` are given by their own mean and stddev (as latency
    distributions are), `uniform` by min and max; every draw is a whole number
    clamped to [min, max].
    """

    kind: str = "constant"
    mean: float = 100.0
    stddev: float = 0.0
    min: int = 1
    max: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in LENGTH_DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(LENGTH_DISTRIBUTIONS)}, not {self.kind!r}")
        if self.min < 1 or (self.max is not None and self.max < self.min):
            raise ValueError("need 1 <= min <= max")
        if self.kind == "uniform" and self.max is None:
            raise ValueError("a uniform distribution needs max")

    def sample(self, rng: random.Random) -> int:
        if self.kind == "uniform":
            assert self.max is not None
            return rng.randint(self.min, self.max)
        n = round(Distribution(self.kind, self.mean, self.stddev).sample(rng))
        n = max(self.min, n)
        return n if self.max is None else min(self.max, n)

    def to_dict(self) -> dict:
        d: dict = {"distribution": self.kind}
        if self.kind != "uniform":
            d["mean"] = self.mean
            if self.kind != "constant":
                d["stddev"] = self.stddev
        if self.min != 1 or self.kind == "uniform":
            d["min"] = self.min
        if self.max is not None:
            d["max"] = self.max
        return d

