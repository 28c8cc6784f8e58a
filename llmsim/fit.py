"""`llmsim profile fit`: a profile YAML from measured traffic, with a report of how well each part fits.

Input: `llmsim record` lines (requests through the proxy, every SSE event
stamped) and the Locust toolkit's `--llm-records` lines (one per measured
request). Both become `Observation`s: TTFT, per-token ITL samples, E2E, token
counts, status, and the concurrency at the request's start (the proxy's
in-flight count; for Locust lines, the requests in flight at that instant,
counted from every line's start and end times).

The fit, in order (docs/record-replay-fit.md explains each step):
1. Load model, when the records span several concurrency levels: per level,
   the mean ITL and the mean TTFT. For each candidate max_concurrent M, ITL is
   fitted as b·(1 + (s−1)·(min(c, M)−1)/(M−1)) (the scheduler's
   `slowdown_multiplier`) and TTFT as flat up to M, then linear in the
   queue (c − M); the M with the least relative squared error wins. A metric
   whose level means differ no more than their noise does not vote.
2. ITL: per-token samples (an event of k tokens counts as k draws), divided
   by the fitted slowdown at each request's concurrency; normal or lognormal
   by the smaller Kolmogorov-Smirnov distance.
3. TTFT: requests that did not queue, less their hidden reasoning time
   (reasoning tokens × mean ITL); the prefill rate is the least-squares slope
   of TTFT on prompt tokens when prompt lengths vary enough and the slope is
   clear of its noise; the base TTFT (prefill removed) is normal or lognormal
   by KS.
4. Output length (reported; profiles have no key for it) and the reasoning
   ratio (reasoning tokens per visible output token, where usage reports them).
"""

from __future__ import annotations

import bisect
import datetime as _dt
import fnmatch
import math
import random
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import yaml

from .latency import REASONING_EFFORT_FACTORS
from .profiles import ProfileRegistry, default_registry, parse_profiles_document
from .record import RECORD_FORMAT, content_times, jsonl_lines
from .scheduler import slowdown_multiplier
from .validation import finite_float

__all__ = ["FitError", "FitResult", "Observation", "fit", "format_report", "load_observations", "profile_yaml"]

REQUESTS_FORMAT = "requests/1"
"""The Locust toolkit's --llm-records lines (llmsim/loadtest/records.py; not imported: no Locust here)."""
MIN_LEVEL_REQUESTS = 5
"""A concurrency level takes part in the load-model fit with at least this many successful streamed requests."""
MIN_LEVELS = 3
KS_MAX_SAMPLES = 50_000
LOGNORMAL_MAX_ZEROS = 0.01
"""Lognormal stays a candidate when at most this share of the samples is zero or less."""
PREFILL_MIN_CV = 0.1
"""Prompt lengths vary enough for a prefill fit when their coefficient of variation is at least this."""
PREFILL_MIN_T = 5.0
"""...and the slope is at least this many standard errors above zero."""
SPAN_MIN_REQUESTS = 100
"""From this many streamed requests on, the ITL spread comes from whole-request spans (robust to delivery jitter)."""
SIGNAL_RATIO = 3.0
LEVEL_SPAN = 2.0
"""A capacity test's levels span at least this factor (e.g. 4 to 8 in flight) for a load model to be fitted."""
MIN_LOAD_R2 = 0.7
"""...and the fitted load model explains at least this share of the level means' variance (each metric that votes)."""
"""A metric votes on max_concurrent when its level means spread at least this much beyond their noise."""
OVERLOAD_STATUSES = (429, 503, 529)


class FitError(ValueError):
    """The records cannot be fitted; str() is one line (file:line: reason, or what is missing)."""


@dataclass
class Observation:
    """One measured request, whatever file it came from."""

    source: str
    model: str | None = None
    api: str | None = None
    ok: bool = False
    status: int | None = None
    streamed: bool = False
    ttft_ms: float | None = None
    gaps: list[tuple[float, int]] = field(default_factory=list)
    """(gap ms, tokens the closing event carried) between consecutive content events."""
    e2e_ms: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    reasoning_streamed: bool = False
    effort: str | None = None
    max_tokens: int | None = None
    concurrency: float | None = None
    users: int | None = None
    start: float | None = None
    end: float | None = None

    @property
    def hidden_reasoning(self) -> int:
        """Reasoning tokens spent before the first visible token (0 when reasoning was streamed)."""
        return 0 if self.reasoning_streamed else (self.reasoning_tokens or 0)

    @property
    def visible_tokens(self) -> int | None:
        if self.output_tokens is None:
            return None
        return max(0, self.output_tokens - self.hidden_reasoning)

    @property
    def itl_mean(self) -> float | None:
        k = sum(n for _, n in self.gaps)
        return sum(g for g, _ in self.gaps) / k if k else None


# --------------------------------------------------------------------------- reading

_ENCODINGS: dict[str, Any] = {}


def _counter(model: str | None, registry: ProfileRegistry) -> Any:
    from .tokens import get_encoding

    prof = registry.match(model) if model else None
    name = prof.encoding if prof else "o200k_base"
    if name not in _ENCODINGS:
        _ENCODINGS[name] = get_encoding(name)
    enc = _ENCODINGS[name]
    return lambda text: len(enc.encode_ordinary(text))


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _num(v: Any) -> float | None:
    return finite_float(v)


def _from_record(line: dict[str, Any], where: str, registry: ProfileRegistry) -> Observation:
    req = line.get("request") or {}
    body: dict[str, Any] = req["body"] if isinstance(req.get("body"), dict) else {}
    resp = line.get("response")
    usage = line.get("usage") or {}
    timing = line.get("timing") or {}
    reasoning = body.get("reasoning")
    effort = body.get("reasoning_effort") or (reasoning.get("effort") if isinstance(reasoning, dict) else None)
    max_tokens = _int(body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens"))
    obs = Observation(source=where, model=body.get("model") if isinstance(body.get("model"), str) else None,
                      api=line.get("api"), effort=effort if isinstance(effort, str) else None,
                      max_tokens=max_tokens, concurrency=_num(line.get("in_flight")),
                      start=_num(line.get("start_unix")), e2e_ms=_num(timing.get("e2e_ms")),
                      prompt_tokens=_int(usage.get("prompt_tokens")), output_tokens=_int(usage.get("output_tokens")),
                      reasoning_tokens=_int(usage.get("reasoning_tokens")))
    if obs.start is not None and obs.e2e_ms is not None:
        obs.end = obs.start + obs.e2e_ms / 1000.0
    if not isinstance(resp, dict):
        return obs
    obs.status = _int(resp.get("status"))
    obs.ok = obs.status is not None and 200 <= obs.status < 300 and line.get("end") == "complete"
    events = resp.get("events")
    if not isinstance(events, list):
        return obs
    obs.streamed = True
    content, _usage, obs.reasoning_streamed = content_times(obs.api, events)
    if not content:
        obs.ok = False
        return obs
    obs.ttft_ms = _num(timing.get("ttft_ms")) or content[0][0]
    if obs.output_tokens is None:
        count = _counter(obs.model, registry)
        obs.output_tokens = count("".join(t for _, t in content))
    # Tokens per event: one each when the count says so (the usual case), else tiktoken on the event text.
    if obs.visible_tokens == len(content):
        ks = [1] * len(content)
    else:
        count = _counter(obs.model, registry)
        ks = [max(1, count(t)) for _, t in content]
    obs.gaps = [(content[i][0] - content[i - 1][0], ks[i]) for i in range(1, len(content))]
    return obs


def _from_requests(line: dict[str, Any], where: str) -> Observation:
    itl = line.get("itl_ms") or []
    if not isinstance(itl, list):
        raise FitError(f"{where}: itl_ms must be a list of numbers")
    ok = bool(line.get("ok"))
    return Observation(source=where, model=line.get("model") if isinstance(line.get("model"), str) else None,
                       ok=ok, status=_int(line.get("status")), streamed=bool(line.get("stream", True)),
                       ttft_ms=_num(line.get("ttft_ms")), gaps=[(float(x), 1) for x in itl if _num(x) is not None],
                       e2e_ms=_num(line.get("e2e_ms")), prompt_tokens=_int(line.get("prompt_tokens")),
                       output_tokens=_int(line.get("output_tokens")),
                       reasoning_tokens=_int(line.get("reasoning_tokens")),
                       concurrency=_num(line.get("concurrency")), users=_int(line.get("users")),
                       start=_num(line.get("start_time")), end=_num(line.get("end_time")))


def load_observations(paths: Sequence[str], registry: ProfileRegistry | None = None
                      ) -> tuple[list[Observation], dict[str, int]]:
    """Every line of every file as an Observation; also the line count per file."""
    registry = registry or default_registry()
    out: list[Observation] = []
    counts: dict[str, int] = {}
    for path in paths:
        n_lines = 0
        requests_lines: list[Observation] = []
        for where, line in jsonl_lines(path, FitError):
            kind = line.get("llmsim") if isinstance(line, dict) else None
            if kind == RECORD_FORMAT:
                out.append(_from_record(line, where, registry))
            elif kind == REQUESTS_FORMAT:
                obs = _from_requests(line, where)
                requests_lines.append(obs)
                out.append(obs)
            else:
                raise FitError(f"{where}: neither an `llmsim record` line nor a --llm-records line "
                               f"(\"llmsim\": \"{RECORD_FORMAT}\" or \"{REQUESTS_FORMAT}\")")
            n_lines += 1
        counts[path] = n_lines
        in_flight_from_intervals(requests_lines)
    return out, counts


def in_flight_from_intervals(observations: Sequence[Observation]) -> None:
    """Set each request's concurrency to the requests in flight when it started (itself included),
    from the start and end times of all of them; lines without times keep their `users`."""
    timed = [(o, o.start, o.end) for o in observations
             if o.concurrency is None and o.start is not None and o.end is not None]
    if len(timed) >= 2:
        starts = sorted(start for _, start, _ in timed)
        ends = sorted(end for _, _, end in timed)
        for o, start, end in timed:
            # Started by then (itself included), less those ended by then (itself only if it took no time).
            ended = bisect.bisect_right(ends, start) - (1 if end <= start else 0)
            o.concurrency = float(bisect.bisect_right(starts, start) - ended)
    for o in observations:
        if o.concurrency is None and o.users is not None:
            o.concurrency = float(o.users)


# --------------------------------------------------------------------------- statistics

@dataclass
class DistFit:
    """A latency distribution fitted to samples, with the KS distance of both candidates."""

    kind: str
    mean: float
    sd: float
    n: int
    ks: dict[str, float] = field(default_factory=dict)
    per_gap_sd: float | None = None
    """ITL only: the spread of single gaps, when `sd` comes from request spans instead."""

    def to_yaml(self) -> dict[str, Any]:
        d: dict[str, Any] = {"distribution": self.kind, "mean_ms": _round_ms(self.mean)}
        if self.kind != "constant":
            d["stddev_ms"] = _round_ms(self.sd)
        return d

    def quality(self) -> str:
        if self.kind == "constant":
            return f"all {self.n} samples equal"
        other = "lognormal" if self.kind == "normal" else "normal"
        alt = f"; {other} {self.ks[other]:.3f}" if other in self.ks else f"; {other}: not applicable"
        return f"KS D {self.ks[self.kind]:.3f}{alt}; n {self.n}"


def _round_ms(v: float) -> float:
    if v == 0:
        return 0.0
    return round(v, max(0, 3 - int(math.floor(math.log10(abs(v))))))


def _ks(sorted_xs: Sequence[float], cdf: Any) -> float:
    n = len(sorted_xs)
    d = 0.0
    for i, x in enumerate(sorted_xs):
        f = cdf(x)
        d = max(d, f - i / n, (i + 1) / n - f)
    return d


def fit_distribution(samples: Sequence[float], seed: int = 0) -> DistFit:
    """Normal or lognormal, whichever has the smaller Kolmogorov-Smirnov distance (constant if all equal)."""
    xs = [float(x) for x in samples]
    n = len(xs)
    if n == 0:
        raise FitError("no samples")
    mean = statistics.fmean(xs)
    sd = statistics.stdev(xs) if n > 1 else 0.0
    if sd <= 1e-9 * max(1.0, abs(mean)):
        return DistFit("constant", max(0.0, mean), 0.0, n)
    test = xs if n <= KS_MAX_SAMPLES else random.Random(seed).sample(xs, KS_MAX_SAMPLES)
    test.sort()
    fits: dict[str, tuple[float, float]] = {"normal": (mean, sd)}
    ks = {"normal": _ks(test, NormalDist(mean, sd).cdf)}
    positive = [x for x in xs if x > 0]
    if len(positive) >= max(2, (1 - LOGNORMAL_MAX_ZEROS) * n):
        # A few zero gaps are events that arrived in one read (measurement), not the model's: not held against it.
        logs = [math.log(x) for x in positive]
        mu, sigma = statistics.fmean(logs), statistics.pstdev(logs)
        if sigma > 0:
            ln = NormalDist(mu, sigma)
            ks["lognormal"] = _ks(test, lambda x: ln.cdf(math.log(x)) if x > 0 else 0.0)
            lmean = math.exp(mu + sigma * sigma / 2)
            fits["lognormal"] = (lmean, lmean * math.sqrt(math.expm1(sigma * sigma)))
    kind = min(ks, key=lambda k: ks[k])
    m, s = fits[kind]
    return DistFit(kind, max(0.0, m), s, n, ks)


def _linear(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float, float]:
    """Least squares y = a + b·x: (a, b, standard error of b, R²)."""
    n = len(xs)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0:
        return my, 0.0, math.inf, 0.0
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=False)) / sxx
    a = my - b * mx
    sse = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=False))
    se = math.sqrt(sse / (n - 2) / sxx) if n > 2 else math.inf
    r2 = 1 - sse / syy if syy > 0 else 1.0
    return a, b, se, r2


@dataclass
class PrefillFit:
    tokens_per_s: float
    ms_per_token: float
    intercept_ms: float
    rel_se: float
    r2: float
    prompt_min: int
    prompt_max: int
    n: int

    def quality(self) -> str:
        return (f"slope ±{100 * self.rel_se:.1f}% (1 SE), R² {self.r2:.2f}, prompts {self.prompt_min}-"
                f"{self.prompt_max} tokens, n {self.n}")


def fit_prefill(prompts: Sequence[int], ttfts: Sequence[float]) -> tuple[PrefillFit | None, str]:
    """TTFT = a + P/rate by least squares, or None and why not."""
    n = len(prompts)
    if n < 10:
        return None, f"only {n} requests with prompt tokens"
    mp = statistics.fmean(prompts)
    cv = statistics.pstdev(prompts) / mp if mp > 0 else 0.0
    if cv < PREFILL_MIN_CV or len(set(prompts)) < 5:
        return None, (f"prompt lengths vary too little to fit a prefill rate ({min(prompts)}-{max(prompts)} tokens, "
                      f"CV {cv:.2f} < {PREFILL_MIN_CV})")
    a, b, se, r2 = _linear([float(p) for p in prompts], ttfts)
    if b <= 0 or b < PREFILL_MIN_T * se:
        return None, (f"TTFT does not grow clearly with prompt length (slope {b:.4f} ms/token ± {se:.4f}): "
                      f"no prefill section")
    return PrefillFit(1000.0 / b, b, a, se / b, r2, min(prompts), max(prompts), n), ""


# --------------------------------------------------------------------------- load model

@dataclass
class Level:
    concurrency: int
    requests: int
    streamed_ok: int
    refused: int
    itl_mean: float | None
    itl_se: float
    ttft_mean: float | None
    ttft_se: float
    itl_model: float | None = None
    ttft_model: float | None = None


@dataclass
class LoadFit:
    max_concurrent: int
    slowdown_at_full: float
    base_itl_ms: float
    queue_limit: int | None
    itl_r2: float | None
    ttft_r2: float | None
    levels: list[Level]
    notes: list[str] = field(default_factory=list)

    def multiplier(self, concurrency: float | None) -> float:
        if concurrency is None:
            return 1.0
        return slowdown_multiplier(max(1, int(round(concurrency))), self.max_concurrent, self.slowdown_at_full)


def _se(xs: Sequence[float]) -> float:
    return statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.inf


def concurrency_levels(observations: Iterable[Observation]) -> list[Level]:
    groups: dict[int, list[Observation]] = {}
    for o in observations:
        if o.concurrency is not None:
            groups.setdefault(max(1, int(round(o.concurrency))), []).append(o)
    levels = []
    for c in sorted(groups):
        obs = groups[c]
        good = [o for o in obs if o.ok and o.streamed and o.ttft_ms is not None]
        itls = [m for m in (o.itl_mean for o in good) if m is not None]
        ttfts = [o.ttft_ms for o in good if o.ttft_ms is not None]
        k = sum(n for o in good for _, n in o.gaps)
        itl_mean = sum(g for o in good for g, _ in o.gaps) / k if k else None
        levels.append(Level(c, len(obs), len(good), sum(1 for o in obs if o.status in OVERLOAD_STATUSES),
                            itl_mean, _se(itls), statistics.fmean(ttfts) if ttfts else None, _se(ttfts)))
    return levels


def _signal(means: Sequence[float], ses: Sequence[float]) -> tuple[float, bool]:
    """Sum of squares between level means, and whether it stands clear of their noise."""
    m = statistics.fmean(means)
    sst = sum((y - m) ** 2 for y in means)
    noise = sum(se * se for se in ses if math.isfinite(se))
    return sst, sst > SIGNAL_RATIO * noise and sst > 0


def _itl_fit(cs: Sequence[int], ys: Sequence[float], m: int) -> tuple[float, float, float]:
    """ITL = b·(1 + (s−1)·x), x = (min(c,M)−1)/(M−1): (b, s, SSE), with s >= 1."""
    xs = [(min(c, m) - 1) / (m - 1) if m > 1 else 0.0 for c in cs]
    a, slope, _, _ = _linear(xs, ys) if len(set(xs)) > 1 else (statistics.fmean(ys), 0.0, 0.0, 0.0)
    if slope < 0 or a <= 0:
        a, slope = statistics.fmean(ys), 0.0
    sse = sum((y - a - slope * x) ** 2 for x, y in zip(xs, ys, strict=False))
    return a, 1.0 + slope / a, sse


def _ttft_fit(cs: Sequence[int], ys: Sequence[float], m: int) -> tuple[float, float, float]:
    """TTFT = a + d·max(0, c−M), d >= 0: (a, d, SSE)."""
    hs = [float(max(0, c - m)) for c in cs]
    a, d = statistics.fmean(ys), 0.0
    if len(set(hs)) > 1:
        a2, d2, _, _ = _linear(hs, ys)
        if d2 > 0:
            a, d = a2, d2
    sse = sum((y - a - d * h) ** 2 for h, y in zip(hs, ys, strict=False))
    return a, d, sse


def fit_load_model(observations: Sequence[Observation]) -> tuple[LoadFit | None, str, list[Level]]:
    """max_concurrent and slowdown_at_full from ITL and TTFT against concurrency, or None and why not."""
    levels = concurrency_levels(observations)
    used = [lv for lv in levels if lv.streamed_ok >= MIN_LEVEL_REQUESTS and lv.itl_mean is not None
            and lv.ttft_mean is not None]
    if len(used) < MIN_LEVELS:
        seen = ", ".join(str(lv.concurrency) for lv in used) or "none"
        return None, (f"no load model: needs {MIN_LEVELS}+ concurrency levels with {MIN_LEVEL_REQUESTS}+ successful "
                      f"streamed requests each (levels seen: {seen})"), levels
    cs = [lv.concurrency for lv in used]
    if cs[-1] < LEVEL_SPAN * cs[0]:
        return None, (f"no load model: the concurrency levels ({cs[0]}-{cs[-1]} in flight) span less than a factor "
                      f"of {LEVEL_SPAN:g}: not a capacity test"), levels
    itl_y = [lv.itl_mean or 0.0 for lv in used]  # `used` levels have both means
    ttft_y = [lv.ttft_mean or 0.0 for lv in used]
    itl_sst, itl_votes = _signal(itl_y, [lv.itl_se for lv in used])
    ttft_sst, ttft_votes = _signal(ttft_y, [lv.ttft_se for lv in used])
    if not itl_votes and not ttft_votes:
        return None, (f"no load model: neither ITL nor TTFT changes with concurrency beyond noise across levels "
                      f"{cs[0]}-{cs[-1]} (capacity not reached, or not limited)"), levels
    best: tuple[float, int] | None = None
    for m in range(cs[0], cs[-1] + 1):  # cs[-1]: no knee inside the tested range
        score = 0.0
        if itl_votes:
            score += _itl_fit(cs, itl_y, m)[2] / itl_sst
        if ttft_votes:
            score += _ttft_fit(cs, ttft_y, m)[2] / ttft_sst
        if best is None or score < best[0] - 1e-12:
            best = (score, m)
    assert best is not None
    m = best[1]
    b, s, itl_sse = _itl_fit(cs, itl_y, m)
    a, d, ttft_sse = _ttft_fit(cs, ttft_y, m)
    for lv in used:
        lv.itl_model = b * slowdown_multiplier(lv.concurrency, m, s)
        lv.ttft_model = a + d * max(0, lv.concurrency - m)
    if m >= cs[-1]:
        return None, (f"no load model: no queueing knee up to {cs[-1]} in flight (max_concurrent is at least "
                      f"{cs[-1]}; test higher concurrency)"), levels
    itl_r2 = 1 - itl_sse / itl_sst if itl_sst > 0 else None
    ttft_r2 = 1 - ttft_sse / ttft_sst if ttft_sst > 0 else None
    poor = [f"{name} R² {r2:.2f}" for name, r2, votes in (("ITL", itl_r2, itl_votes), ("TTFT", ttft_r2, ttft_votes))
            if votes and (r2 is None or r2 < MIN_LOAD_R2)]
    if poor:
        return None, (f"no load model: the best knee ({m} in flight) explains the levels poorly ({', '.join(poor)} "
                      f"< {MIN_LOAD_R2}): the changes with concurrency do not follow the load model"), levels
    notes = []
    # A request admitted with c in flight says queue_limit >= c - M; refusals say the test went past it.
    refused = sum(lv.refused for lv in levels)
    queue_limit = None
    if refused > 0.01 * sum(lv.requests for lv in levels):
        admitted = max(lv.concurrency for lv in levels if lv.streamed_ok >= MIN_LEVEL_REQUESTS)
        queue_limit = max(0, admitted - m)
        notes.append(f"{refused} requests refused; admitted up to {admitted} in flight: queue_limit {queue_limit}")
    else:
        notes.append(f"no refusal up to {levels[-1].concurrency} in flight: queue_limit is at least "
                     f"{max(0, levels[-1].concurrency - m)} (1024 written)")
    if not itl_votes:
        notes.append("ITL does not change with concurrency beyond noise: slowdown_at_full 1")
        s = 1.0
    if not ttft_votes:
        notes.append("TTFT shows no queueing knee beyond noise: max_concurrent from the ITL plateau alone")
    return LoadFit(m, s, b, queue_limit, itl_r2, ttft_r2, used, notes), "", levels


# --------------------------------------------------------------------------- the whole fit

@dataclass
class OutputStats:
    n: int
    mean: float
    sd: float
    p50: float
    p90: float
    max: int
    at_limit: float | None

    def describe(self) -> str:
        limit = f", {100 * self.at_limit:.0f}% stopped at max_tokens" if self.at_limit is not None else ""
        return (f"mean {self.mean:.1f}, sd {self.sd:.1f}, p50 {self.p50:g}, p90 {self.p90:g}, max {self.max}"
                f"{limit}; n {self.n}")


@dataclass
class FitResult:
    files: dict[str, int]
    requests: int
    ok: int
    streamed_ok: int
    models: list[str]
    provider: str
    ttft: DistFit
    ttft_requests: int
    itl: DistFit
    prefill: PrefillFit | None
    prefill_note: str
    reasoning_ratio: float | None
    reasoning_note: str
    output: OutputStats | None
    load: LoadFit | None
    load_note: str
    levels: list[Level]
    itl_note: str = ""
    ttft_note: str = ""


def _percentile(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(math.ceil(p / 100 * len(s))) - 1))]


def _select(observations: list[Observation], models: Sequence[str] | None) -> list[Observation]:
    if not models:
        return observations
    picked = [o for o in observations if o.model is None or any(fnmatch.fnmatchcase(o.model, m) for m in models)]
    if not any(o.model is not None for o in picked):
        seen = sorted({o.model for o in observations if o.model})
        raise FitError(f"--models {','.join(models)}: no records of these models (the records hold: "
                       f"{', '.join(seen) or 'no model names'})")
    return picked


def fit(observations: list[Observation], files: dict[str, int] | None = None,
        models: Sequence[str] | None = None) -> FitResult:
    """Fit a profile (latency, prefill, reasoning, load model) to measured requests."""
    obs = _select(observations, models)
    streamed_ok = [o for o in obs if o.ok and o.streamed and o.ttft_ms is not None]
    if not streamed_ok:
        raise FitError(f"no successful streamed request among {len(obs)} records: TTFT and ITL need streams "
                       "(record streaming requests, or run Locust without --no-stream)")
    load, load_note, levels = fit_load_model(obs)

    # ITL: per-token samples; a k-token event's gap is k draws: centre it on k·mean and scale by 1/sqrt(k).
    per_request: list[list[tuple[float, int]]] = []
    for o in streamed_ok:
        mult = load.multiplier(o.concurrency) if load else 1.0
        gaps = [(g / mult, k) for g, k in o.gaps if k > 0]
        if gaps:
            per_request.append(gaps)
    if not per_request:
        raise FitError("no request streamed two or more content events: no ITL to fit")
    mu = sum(g for r in per_request for g, _ in r) / sum(k for r in per_request for _, k in r)
    itl = fit_distribution([g if k == 1 else mu + (g - k * mu) / math.sqrt(k) for r in per_request for g, k in r])
    notes = ["divided by the fitted slowdown at each request's concurrency"] if load else []
    if itl.kind != "constant" and len(per_request) >= SPAN_MIN_REQUESTS:
        # Delivery jitter (a late event lengthens one gap and shortens the next) widens the spread of
        # single gaps, but hardly that of a whole stream: take the spread from each request's span.
        spans = [(sum(g for g, _ in r), sum(k for _, k in r)) for r in per_request]
        itl.per_gap_sd = itl.sd
        itl.sd = math.sqrt(sum((span - n * mu) ** 2 for span, n in spans) / sum(n for _, n in spans))
        notes.append(f"sd from {len(spans)} request spans; single gaps spread {itl.per_gap_sd:.2f} ms")
    itl_note = "; ".join(notes)

    # TTFT: requests that did not queue, less their hidden reasoning time.
    calm = [o for o in streamed_ok if load is None or o.concurrency is None or o.concurrency <= load.max_concurrent]
    ttft_vals = [(o.ttft_ms or 0.0) - o.hidden_reasoning * itl.mean * (load.multiplier(o.concurrency) if load else 1.0)
                 for o in calm]  # streamed_ok: every one has a TTFT
    ttft_note = f"requests with at most {load.max_concurrent} in flight" if load else ""
    if any(o.hidden_reasoning for o in calm):
        ttft_note += ("; " if ttft_note else "") + "hidden reasoning time (tokens × ITL) removed"
    with_prompt = [(o.prompt_tokens, t) for o, t in zip(calm, ttft_vals, strict=False) if o.prompt_tokens is not None]
    prefill, prefill_note = fit_prefill([p for p, _ in with_prompt], [t for _, t in with_prompt])
    if prefill is not None:
        ttft_vals = [t - prefill.ms_per_token * (o.prompt_tokens or 0) for o, t in zip(calm, ttft_vals, strict=False)]
        ttft_note += ("; " if ttft_note else "") + "prefill removed"
    ttft = fit_distribution(ttft_vals)
    if any(o.hidden_reasoning for o in calm) and ttft.kind != "constant":
        # Each hidden reasoning token added one ITL draw: take their spread out of the TTFT's.
        extra = statistics.fmean(o.hidden_reasoning * (itl.sd * (load.multiplier(o.concurrency) if load else 1.0)) ** 2
                                 for o in calm)
        ttft.sd = math.sqrt(max(0.0, ttft.sd ** 2 - extra))
        ttft_note += " (and the spread of those ITLs)"

    # Output length and reasoning.
    ok = [o for o in obs if o.ok]
    vis = [o.visible_tokens for o in ok if o.visible_tokens is not None]
    output = None
    if vis:
        limited = [o for o in ok if o.max_tokens and o.visible_tokens is not None]
        at_limit = (sum(1 for o in limited if (o.output_tokens or 0) >= (o.max_tokens or 0)) / len(limited)
                    if limited else None)
        output = OutputStats(len(vis), statistics.fmean(vis), statistics.pstdev(vis), _percentile(vis, 50),
                             _percentile(vis, 90), max(vis), at_limit)
    reported = [o for o in ok if o.reasoning_tokens is not None and o.visible_tokens is not None]
    ratio, reasoning_note = None, "usage reports no reasoning tokens"
    if reported:
        num = den = 0.0
        for o in reported:
            factor = REASONING_EFFORT_FACTORS.get(o.effort or "medium", 1.0)
            if factor > 0:
                num += (o.reasoning_tokens or 0) / factor
                den += o.visible_tokens or 0
        if num > 0 and den > 0:
            ratio = num / den
            reasoning_note = f"{len(reported)} requests report reasoning tokens (effort factors divided out)"
        else:
            reasoning_note = f"{len(reported)} requests report 0 reasoning tokens: no reasoning section"
    names = Counter(o.model for o in obs if o.model)
    apis = Counter(o.api for o in obs if o.api)
    provider = ("anthropic" if apis.most_common(1)[0][0] == "messages" else "openai") if apis else "any"
    return FitResult(files=files or {}, requests=len(obs), ok=len(ok), streamed_ok=len(streamed_ok),
                     models=list(models) if models else [m for m, _ in names.most_common()], provider=provider,
                     ttft=ttft, ttft_requests=len(calm), itl=itl, prefill=prefill, prefill_note=prefill_note,
                     reasoning_ratio=ratio, reasoning_note=reasoning_note, output=output, load=load,
                     load_note=load_note, levels=levels, itl_note=itl_note, ttft_note=ttft_note)


# --------------------------------------------------------------------------- output

def _sig(v: float, digits: int = 4) -> float | int:
    if v == 0:
        return 0.0
    r = round(v, max(0, digits - 1 - int(math.floor(math.log10(abs(v))))))
    return int(r) if abs(r) >= 10 ** (digits - 1) else r


def profile_dict(result: FitResult, name: str, registry: ProfileRegistry | None = None) -> dict[str, Any]:
    """The fitted profile in the profiles/*.yaml shape; encoding and limits from the built-in profile of the model."""
    registry = registry or default_registry()
    base = next((p for p in (registry.match(m) for m in result.models if "*" not in m) if p), None)
    d: dict[str, Any] = {"name": name, "models": list(result.models),
                         "provider": result.provider if result.provider != "any" or base is None else base.provider,
                         "encoding": base.encoding if base else "o200k_base",
                         "context_window": base.context_window if base else 128000,
                         "max_output_tokens": base.max_output_tokens if base else 16384,
                         "ttft": result.ttft.to_yaml(), "itl": result.itl.to_yaml()}
    if result.prefill is not None:
        d["prefill"] = {"tokens_per_s": _sig(result.prefill.tokens_per_s)}
    if result.reasoning_ratio is not None:
        d["reasoning"] = {"tokens_per_output_token": _sig(result.reasoning_ratio, 3)}
    if result.load is not None:
        d["capacity"] = {"max_concurrent": result.load.max_concurrent,
                         "queue_limit": result.load.queue_limit if result.load.queue_limit is not None else 1024,
                         "slowdown_at_full": _sig(result.load.slowdown_at_full, 3)}
    return d


def report_rows(result: FitResult) -> list[tuple[str, str, str]]:
    """(parameter, value, fit quality) rows of the printed report."""
    rows = [("ttft", f"{result.ttft.kind} {result.ttft.mean:.1f}±{result.ttft.sd:.1f} ms",
             result.ttft.quality() + (f" ({result.ttft_note})" if result.ttft_note else ""))]
    if result.prefill is not None:
        rows.append(("prefill.tokens_per_s", f"{result.prefill.tokens_per_s:.0f}", result.prefill.quality()))
    else:
        rows.append(("prefill", "-", result.prefill_note))
    rows.append(("itl", f"{result.itl.kind} {result.itl.mean:.2f}±{result.itl.sd:.2f} ms",
                 result.itl.quality() + (f" ({result.itl_note})" if result.itl_note else "")))
    rows.append(("reasoning.tokens_per_output_token",
                 f"{result.reasoning_ratio:.3f}" if result.reasoning_ratio is not None else "-",
                 result.reasoning_note))
    rows.append(("output tokens (not in profiles)", f"{result.output.mean:.1f}" if result.output else "-",
                 result.output.describe() if result.output else "no successful request reports output tokens"))
    if result.load is not None:
        ld = result.load
        r2 = ", ".join(f"{k} R² {v:.3f}" for k, v in (("ITL", ld.itl_r2), ("TTFT", ld.ttft_r2)) if v is not None)
        rows.append(("capacity.max_concurrent", str(ld.max_concurrent),
                     f"queueing knee and ITL plateau over {len(ld.levels)} levels; {r2}"))
        rows.append(("capacity.slowdown_at_full", f"{ld.slowdown_at_full:.3f}",
                     f"ITL {ld.base_itl_ms:.2f} ms alone, {ld.base_itl_ms * ld.slowdown_at_full:.2f} ms when full"))
        rows.append(("capacity.queue_limit", str(ld.queue_limit if ld.queue_limit is not None else 1024),
                     "; ".join(ld.notes)))
    else:
        rows.append(("capacity", "-", result.load_note))
    return rows


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)


def format_report(result: FitResult) -> str:
    files = ", ".join(f"{p} ({n} lines)" for p, n in result.files.items())
    head = (f"llmsim profile fit: {result.requests} requests from {files or 'memory'}: {result.ok} ok, "
            f"{result.streamed_ok} streamed ok; models: {', '.join(result.models) or '(none named)'}")
    out = [head, "", _table([("PARAMETER", "VALUE", "FIT QUALITY"), *report_rows(result)])]
    shown = [lv for lv in result.levels if lv.requests >= MIN_LEVEL_REQUESTS]
    if result.load is not None or len(shown) > 1:
        rows = [("IN FLIGHT", "REQUESTS", "ITL ms", "MODEL", "TTFT ms", "MODEL", "REFUSED")]
        fitted = {lv.concurrency: lv for lv in (result.load.levels if result.load else [])}
        for lv in shown:
            f = fitted.get(lv.concurrency)
            rows.append((str(lv.concurrency), str(lv.requests), _fmt(lv.itl_mean), _fmt(f.itl_model if f else None),
                         _fmt(lv.ttft_mean), _fmt(f.ttft_model if f else None), str(lv.refused)))
        hidden = len(result.levels) - len(shown)
        note = f"; {hidden} levels with fewer than {MIN_LEVEL_REQUESTS} requests not shown" if hidden else ""
        out += ["", f"Per concurrency level (in flight at the request's start{note}):", _table(rows)]
    return "\n".join(out) + "\n"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def profile_yaml(result: FitResult, name: str, *, when: str | None = None,
                 registry: ProfileRegistry | None = None) -> str:
    """The profile YAML, with a comment block saying what it was fitted from and how well."""
    when = when or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    lines = [f"# Fitted by `llmsim profile fit` on {when}",
             "# from: " + ", ".join(f"{p} ({n} lines)" for p, n in result.files.items()),
             f"# requests: {result.requests} ({result.ok} ok, {result.streamed_ok} streamed ok)"]
    for param, value, quality in report_rows(result):
        lines.append(f"# {param}: {value}: {quality}")
    if result.output is not None:
        lines.append(f"# `llmsim serve --target-tokens {round(result.output.mean)}` gives the mean output length "
                     "to requests that set no limit")
    text = "\n".join(lines) + "\n" + yaml.safe_dump({"profiles": [profile_dict(result, name, registry)]},
                                                     sort_keys=False, allow_unicode=True, default_flow_style=None)
    parse_profiles_document("<fitted>", text)  # what --profiles-dir will load: fail here, not there
    return text
