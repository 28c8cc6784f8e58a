"""Scoring a run against a model profile: expected values, PASS/FAIL verdicts, SLO checks, goodput.

Expected values come from the profile's own distributions, the same objects
the simulator samples:
- ITL: closed-form quantiles of the profile's ITL distribution (Monte Carlo of
  the per-token mean when the profile streams chunk_tokens > 1 per event);
- TTFT: closed form (TTFT distribution + prefill) when every request had the
  same prompt length and no hidden reasoning; otherwise Monte Carlo;
- TPOT and E2E: Monte Carlo over the token shape the run actually had (prompt,
  visible and hidden reasoning tokens per request), so prefill and reasoning are in.
Hidden reasoning is generated before the first token, one ITL per token inside
TTFT; visible (streamed) reasoning is part of the visible tokens, at ITL after
the first token. When the server reports no reasoning count, the profile says
which (expected_hidden_reasoning).
When the profile has a load model (capacity), every ITL draw is multiplied by
the slowdown the scheduler applies at the run's mean concurrency (requests in
flight, from Little's law), using llmsim.scheduler's own formula.
A metric passes when |measured - expected| <= max(abs_ms, rel * expected).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..latency import Distribution, LatencyProfile
from ..profiles import ModelProfile, SloCheck
from ..scheduler import slowdown_multiplier
from .aggregate import METRICS, MixKey, RunStats, pct_label
from .histogram import percentile_of_sorted
from .metrics import RequestRecord

SCORED_STATS = ("mean", "p50", "p90", "p99")
MIN_TAIL_SAMPLES = 5
"""A percentile p is scored only when count × (1 − p) ≥ this (p99 needs 500 samples); the mean needs 2× this."""
MC_DRAWS = 20_000
MC_SEED = 20250501
CLT_DRAWS = 30
"""Sums of at least this many ITL draws are sampled from their normal approximation."""

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


class ToleranceError(ValueError):
    pass


@dataclass(frozen=True)
class Tolerance:
    """How far a measured value may be from the expected one: max(abs_ms, rel × expected)."""

    abs_ms: float = 5.0
    rel: float = 0.10

    def allowed(self, expected: float) -> float:
        return max(self.abs_ms, self.rel * abs(expected))

    @classmethod
    def parse(cls, text: str) -> Tolerance:
        """'10%,5ms', '15%', '2ms' or a bare fraction '0.1'; a part left out keeps its default."""
        default = cls()
        rel, abs_ms = default.rel, default.abs_ms
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        if not parts or len(parts) > 2:
            raise ToleranceError(f"expected like '10%,5ms', got {text!r}")
        for part in parts:
            m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(%|ms)?", part)
            if not m:
                raise ToleranceError(f"cannot read {part!r} (use e.g. '10%' for relative, '5ms' for absolute)")
            value, unit = float(m.group(1)), m.group(2)
            if unit == "%":
                rel = value / 100.0
            elif unit == "ms":
                abs_ms = value
            elif value < 1:
                rel = value
            else:
                raise ToleranceError(f"{part!r} needs a unit: '%' (relative) or 'ms' (absolute)")
        return cls(abs_ms=abs_ms, rel=rel)

    def __str__(self) -> str:
        return f"{self.rel * 100:g}%,{self.abs_ms:g}ms"


@dataclass
class Verdict:
    metric: str
    stat: str
    measured: float | None
    expected: float | None
    allowed: float | None
    verdict: str
    note: str = ""


@dataclass
class SloResult:
    key: str
    metric: str
    pct: float
    limit_ms: float
    measured: float | None
    verdict: str


@dataclass
class Scorecard:
    profile: str
    tolerance: Tolerance
    expected: dict[str, dict[str, float]]
    verdicts: list[Verdict]
    slo: list[SloResult]
    goodput: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    """Reasons the run fails as a whole."""
    load: dict[str, Any] = field(default_factory=dict)
    """Mean concurrency and the ITL multiplier the expected values include."""
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.notes and all(v.verdict != FAIL for v in self.verdicts) and all(
            s.verdict != FAIL for s in self.slo)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "tolerance": {"abs_ms": self.tolerance.abs_ms, "rel": self.tolerance.rel},
            "expected": self.expected,
            "verdicts": [asdict(v) for v in self.verdicts],
            "slo": [asdict(s) for s in self.slo],
            "goodput": self.goodput,
            "notes": self.notes,
            "load": self.load,
            "warnings": self.warnings,
            "verdict": PASS if self.passed else FAIL,
        }


# --------------------------------------------------------------------------- expected values

def _sum_draws(d: Distribution, n: int, rng: random.Random) -> float:
    """One draw of the sum of n independent ITLs."""
    if n <= 0:
        return 0.0
    if d.is_point:
        return n * d.mean_ms
    if n < CLT_DRAWS:
        return sum(d.sample(rng) for _ in range(n))
    return max(0.0, rng.gauss(n * d.mean_ms, math.sqrt(n) * d.stddev_ms))


def _stats_of(samples: list[float]) -> dict[str, float]:
    """mean and nearest-rank p50/p90/p99, the same definition the histograms use."""
    s = sorted(samples)
    out = {"mean": sum(s) / len(s)}
    for p in (50.0, 90.0, 99.0):
        out[pct_label(p)] = percentile_of_sorted(s, p)
    return out


def _closed_form(d: Distribution, shift: float = 0.0) -> dict[str, float]:
    return {"mean": d.mean_ms + shift, **{pct_label(p): d.quantile(p / 100.0) + shift for p in (50.0, 90.0, 99.0)}}


def expected_hidden_reasoning(lat: LatencyProfile, visible_tokens: int) -> int:
    """The hidden reasoning tokens the profile predicts for a request with `visible_tokens` streamed tokens.

    0 when the model streams its reasoning (`reasoning.visible`: those tokens are among the visible
    ones, timed at ITL) or reasons only when the request asks (`reasoning.on_request`: the toolkit's
    requests do not ask); else the profile's ratio times the answer.
    """
    if lat.reasoning_visible:
        return 0
    return lat.reasoning_tokens(visible_tokens)  # 0 for an on_request model: nothing asked for it


def load_multiplier(profile: ModelProfile, concurrency: float | None) -> float:
    """The ITL multiplier the profile's load model applies with `concurrency` requests in flight."""
    cap = profile.capacity
    if cap is None or not concurrency:
        return 1.0
    return slowdown_multiplier(max(concurrency, 1.0), cap.max_concurrent, cap.slowdown_at_full)


def expected_values(profile: ModelProfile, mix: dict[MixKey, int], *, concurrency: float | None = None,
                    draws: int = MC_DRAWS, seed: int = MC_SEED,
                    cached_share: float = 0.0) -> dict[str, dict[str, float]]:
    """Expected mean/p50/p90/p99 (ms) of each metric for this profile, this run's token shape and load.

    `cached_share` of the prompt tokens came from the server's prefix cache: they are not prefilled.
    """
    lat = profile.latency

    def prefill_ms(prompt: int) -> float:
        return lat.prefill_ms(round(prompt * (1.0 - cached_share)))

    itl = lat.itl.scaled(load_multiplier(profile, concurrency))
    out: dict[str, dict[str, float]] = {}
    k = profile.chunk_tokens
    rng = random.Random(seed)
    if k == 1:
        out["itl"] = _closed_form(itl)
    else:
        out["itl"] = _stats_of([_sum_draws(itl, k, rng) / k for _ in range(draws)])
    if not mix:
        out["ttft"] = _closed_form(lat.ttft)
        return out

    entries = [(key, n) for key, n in mix.items() if n > 0]

    def reasoning_of(key: MixKey) -> int:
        """Hidden reasoning tokens (inside TTFT): the client's figure, or the profile's when usage had none."""
        prompt, visible, _, reasoning = key
        return reasoning if reasoning >= 0 else expected_hidden_reasoning(lat, visible)

    prompts = {key[0] for key, _ in entries}
    if k == 1 and all(reasoning_of(key) == 0 for key, _ in entries) and (
            len(prompts) == 1 or not lat.prefill_tokens_per_s):
        out["ttft"] = _closed_form(lat.ttft, prefill_ms(next(iter(prompts))))
        closed_ttft = True
    else:
        closed_ttft = False

    keys = [key for key, _ in entries]
    chosen = rng.choices(keys, weights=[n for _, n in entries], k=draws)
    ttft_s, e2e_s, tpot_s = [], [], []
    for key in chosen:
        prompt, visible, output, _ = key
        # The first event carries the first chunk: k tokens (chunk_tokens), all made before it is sent.
        first = min(k, visible) if visible > 0 else 1
        ttft = lat.ttft.sample(rng) + prefill_ms(prompt) + _sum_draws(itl, reasoning_of(key) + first - 1, rng)
        gen = _sum_draws(itl, max(visible - first, 0), rng)
        ttft_s.append(ttft)
        e2e_s.append(ttft + gen)
        if visible >= 2:
            tpot_s.append(gen / (visible - 1))
    if not closed_ttft:
        out["ttft"] = _stats_of(ttft_s)
    out["e2e"] = _stats_of(e2e_s)
    if tpot_s:
        out["tpot"] = _stats_of(tpot_s)
    return out


# --------------------------------------------------------------------------- verdicts

def min_samples(stat: str) -> int:
    """Samples needed before a statistic is scored (a p99 from 50 samples is just the max)."""
    if stat == "mean":
        return 2 * MIN_TAIL_SAMPLES
    p = float(stat[1:]) / 100.0
    return math.ceil(MIN_TAIL_SAMPLES / (1.0 - p) - 1e-9)


def judge(measured: float | None, expected: float | None, tol: Tolerance, count: int, stat: str
          ) -> tuple[str, float | None, str]:
    if expected is None:
        return SKIP, None, "no expected value"
    if measured is None or count == 0:
        return SKIP, tol.allowed(expected), "no samples"
    need = min_samples(stat)
    if count < need:
        return SKIP, tol.allowed(expected), f"n<{need}"
    allowed = tol.allowed(expected)
    return (PASS if abs(measured - expected) <= allowed else FAIL), allowed, ""


def _request_value(rec: RequestRecord, check: SloCheck) -> float | None:
    if check.metric == "ttft":
        return rec.ttft_ms
    if check.metric == "tpot":
        return rec.tpot_ms
    if check.metric == "e2e":
        return rec.e2e_ms
    if not rec.itl_ms:
        return None
    return percentile_of_sorted(sorted(rec.itl_ms), check.pct)


def request_meets_slo(rec: RequestRecord, slo: Sequence[SloCheck]) -> bool:
    """A request is good when it succeeded and each SLO metric, computed over that request alone, is in bounds.

    For ITL the request's own percentile at the SLO's pct is used; a metric the
    request does not have (a one-token reply has no ITL) does not count against it.
    """
    if not rec.ok:
        return False
    for check in slo:
        v = _request_value(rec, check)
        if v is not None and v > check.limit_ms:
            return False
    return True


def score(stats: RunStats, profile: ModelProfile, tol: Tolerance, *, stream: bool = True,
          expected: dict[str, dict[str, float]] | None = None) -> Scorecard:
    """Verdicts for every metric × statistic, one check per SLO entry, and goodput."""
    if expected is None:
        expected = expected_values(profile, stats.mix, concurrency=stats.concurrency,
                                   cached_share=stats.cached_share())
    metrics: Iterable[str] = METRICS if stream else ("e2e",)
    verdicts = []
    for m in metrics:
        h = stats.hist[m]
        exp = expected.get(m, {})
        pcts = h.percentiles([50.0, 90.0, 99.0])
        for stat in SCORED_STATS:
            measured = h.mean if stat == "mean" else pcts[float(stat[1:])]
            verdict, allowed, note = judge(measured, exp.get(stat), tol, h.count, stat)
            verdicts.append(Verdict(m, stat, measured, exp.get(stat), allowed, verdict, note))
    slo = []
    for check in profile.slo:
        h = stats.hist[check.metric]
        measured = h.percentile(check.pct)
        if measured is None:
            verdict = SKIP
        else:
            verdict = PASS if measured <= check.limit_ms else FAIL
        slo.append(SloResult(check.key, check.metric, check.pct, check.limit_ms, measured, verdict))
    goodput = {
        "good_requests": stats.good,
        "requests": stats.requests,
        "share": stats.good / stats.requests if stats.requests else None,
        "rate_per_s": stats.rate(stats.good),
    }
    notes = []
    if stats.ok == 0:
        notes.append("no request succeeded")
    load = {"concurrency": stats.concurrency, "itl_multiplier": load_multiplier(profile, stats.concurrency)}
    card = Scorecard(profile.name, tol, expected, verdicts, slo, goodput, notes, load)
    cap = profile.capacity
    if cap is not None and stats.concurrency and stats.concurrency > cap.max_concurrent:
        card.warnings.append(f"mean concurrency {stats.concurrency:.1f} exceeds capacity.max_concurrent "
                             f"{cap.max_concurrent}: queue waits are not in the expected TTFT and E2E")
    return card
