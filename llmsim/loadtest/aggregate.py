"""Run-level aggregation: histograms and counters that merge exactly across Locust workers.

Each process adds its request records to a RunStats; workers ship the delta
since their last report to the master (to_wire), which merges it. Counts and
histograms are integers, so the merged result equals what one process would
have built from every record.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from .histogram import Histogram, SignedHistogram
from .metrics import FAILURE_CLASSES, RequestRecord, failure_class
from .openloop import from_intended, scheduled_delay_ms

METRICS = ("ttft", "itl", "tpot", "e2e")
TRACED = ("ttft", "itl")
"""The metrics a server trace (--llm-trace) checks."""
SUMMARY_PCTS = (50.0, 90.0, 95.0, 99.0, 99.9)

MixKey = tuple[int, int, int, int]
"""(prompt_tokens, visible_tokens, output_tokens, reasoning_tokens) of one successful request;
reasoning_tokens are the hidden ones (reported minus streamed, metrics.hidden_reasoning), -1 when the
server reported no reasoning count."""


class RunStats:
    """Everything the summary and the scores need, for one process or merged over many."""

    def __init__(self) -> None:
        self.hist: dict[str, Histogram] = {m: Histogram() for m in METRICS}
        self.requests = 0
        self.ok = 0
        self.good = 0
        self.errors: Counter[str] = Counter()
        self.output_tokens = 0
        self.visible_tokens = 0
        """Output tokens minus the hidden reasoning tokens (reported beyond those streamed): the tokens that
        were streamed."""
        self.prompt_tokens = 0
        self.start = math.inf
        self.end = -math.inf
        self.busy_ns = 0
        """Sum of every request's E2E (ns): busy_ns / window is the mean number of requests in flight."""
        self.mix: Counter[MixKey] = Counter()
        """Token shape of successful requests, for the expected values (scoring.py)."""
        self.retries_429 = 0
        self.unfinished = 0
        """Requests still waiting for their answers when the run stopped: in no figure, but not silent."""
        """429 answers that --retry-429 retried (each one is counted here, never hidden)."""
        self.retry_wait_ms = 0
        self.warmup = 0
        """Warm-up requests (--llm-warmup): counted here only, left out of every other figure."""
        self.kernel_stamped = 0
        """Successful requests timed with kernel receive timestamps (the others with user-space stamps)."""
        self.traced = 0
        """Successful requests the server sent its own timings for (--llm-trace)."""
        self.trace_mismatch = 0
        self.error: dict[str, SignedHistogram] = {m: SignedHistogram() for m in TRACED}
        """Client minus server, per traced request (ttft) and per gap (itl)."""
        self.pacing: dict[str, SignedHistogram] = {m: SignedHistogram() for m in TRACED}
        """The server's emitted minus planned, from the same traces."""
        self.workload = WorkloadStats()
        """What the workload asked for and got: exact lengths, prefix cache, turns, trace lateness."""

    # ------------------------------------------------------------------ building

    def cached_share(self) -> float:
        """The share of prompt tokens the server's prefix cache held (usage's cached tokens), 0 when none:
        expected TTFT and the capacity prediction prefill only the rest."""
        w = self.workload
        return w.cached_tokens / w.cache_prompt_tokens if w.cache_prompt_tokens else 0.0

    def add(self, rec: RequestRecord, good: bool = False, work: Any = None) -> None:
        """Count one finished request; `good` is whether it met every SLO (goodput); `work` is the
        workload's Work it answered (workloads.py), if any."""
        self.workload.add(rec, work)
        self.requests += 1
        self.output_tokens += rec.output_tokens
        self.visible_tokens += rec.visible_tokens
        self.prompt_tokens += rec.prompt_tokens
        self.start = min(self.start, rec.start_time)
        self.end = max(self.end, rec.end_time)
        self.busy_ns += int(round(rec.e2e_ms * 1e6))
        if not rec.ok:
            self.errors[rec.error_kind or "unknown"] += 1
            return
        self.ok += 1
        self.good += bool(good)
        self.kernel_stamped += rec.kernel_stamps
        if rec.traced:
            self.traced += 1
            self.trace_mismatch += rec.trace_mismatch
            if rec.ttft_error_ms is not None:
                self.error["ttft"].record(rec.ttft_error_ms)
            self.error["itl"].record_many(rec.gap_errors_ms)
            if rec.server_ttft_vs_plan_ms is not None:
                self.pacing["ttft"].record(rec.server_ttft_vs_plan_ms)
            self.pacing["itl"].record_many(rec.server_gaps_vs_plan_ms)
        self.hist["e2e"].record(rec.e2e_ms)
        if rec.ttft_ms is not None:
            self.hist["ttft"].record(rec.ttft_ms)
            self.hist["itl"].record_many(rec.itl_ms)
        reasoning = rec.reasoning_tokens if rec.reasoning_tokens is not None else -1
        self.mix[(rec.prompt_tokens, rec.visible_tokens, rec.output_tokens, reasoning)] += 1
        if rec.tpot_ms is not None:
            self.hist["tpot"].record(rec.tpot_ms)

    def add_retry(self, wait_s: float) -> None:
        """Count one 429 that is retried after waiting `wait_s`."""
        self.retries_429 += 1
        self.retry_wait_ms += int(round(wait_s * 1000))

    def merge(self, other: RunStats) -> None:
        self.unfinished += other.unfinished
        for m in METRICS:
            self.hist[m].merge(other.hist[m])
        self.requests += other.requests
        self.ok += other.ok
        self.good += other.good
        self.errors.update(other.errors)
        self.output_tokens += other.output_tokens
        self.visible_tokens += other.visible_tokens
        self.prompt_tokens += other.prompt_tokens
        self.start = min(self.start, other.start)
        self.end = max(self.end, other.end)
        self.busy_ns += other.busy_ns
        self.mix.update(other.mix)
        self.retries_429 += other.retries_429
        self.retry_wait_ms += other.retry_wait_ms
        self.warmup += other.warmup
        self.kernel_stamped += other.kernel_stamped
        self.traced += other.traced
        self.trace_mismatch += other.trace_mismatch
        for m in TRACED:
            self.error[m].merge(other.error[m])
            self.pacing[m].merge(other.pacing[m])
        self.workload.merge(other.workload)

    # ------------------------------------------------------------------ reading

    @property
    def failures_by_class(self) -> dict[str, int]:
        """Failed requests by class (429, 4xx, 5xx, timeout, connection, midstream_cut, malformed_stream)."""
        out = dict.fromkeys(FAILURE_CLASSES, 0)
        for kind, n in self.errors.items():
            out[failure_class(kind)] += n
        return out

    @property
    def failed(self) -> int:
        return self.requests - self.ok

    @property
    def window_s(self) -> float:
        """From the first request's start to the last request's end, over all processes."""
        return max(0.0, self.end - self.start) if self.requests else 0.0

    @property
    def concurrency(self) -> float | None:
        """Mean requests in flight over the window (Little's law), all processes together."""
        w = self.window_s
        return self.busy_ns / 1e9 / w if w > 0 else None

    @property
    def timestamps(self) -> str | None:
        """Where the times of the successful requests come from: "kernel", "user-space", "mixed" (None: no request)."""
        if not self.ok:
            return None
        if self.kernel_stamped == self.ok:
            return "kernel"
        return "user-space" if self.kernel_stamped == 0 else "mixed"

    def rate(self, n: float) -> float | None:
        w = self.window_s
        return n / w if w > 0 else None

    def metric_summary(self, metric: str) -> dict[str, Any]:
        """count, mean, p50, p90, p95, p99, p99.9, min and max of one metric (ms)."""
        return histogram_summary(self.hist[metric])

    # ------------------------------------------------------------------ wire

    def to_wire(self) -> dict[str, Any]:
        """msgpack-safe form for events.report_to_master."""
        return {
            "hist": {m: h.to_wire() for m, h in self.hist.items()},
            "requests": self.requests, "ok": self.ok, "good": self.good,
            "errors": dict(self.errors),
            "output_tokens": self.output_tokens, "visible_tokens": self.visible_tokens,
            "prompt_tokens": self.prompt_tokens,
            "busy_ns": self.busy_ns,
            "start": self.start if self.requests else None, "end": self.end if self.requests else None,
            "mix": [[*k, n] for k, n in self.mix.items()],
            "retries_429": self.retries_429, "retry_wait_ms": self.retry_wait_ms, "unfinished": self.unfinished,
            "warmup": self.warmup, "kernel_stamped": self.kernel_stamped,
            "traced": self.traced, "trace_mismatch": self.trace_mismatch,
            "error": {m: h.to_wire() for m, h in self.error.items()},
            "pacing": {m: h.to_wire() for m, h in self.pacing.items()},
            "workload": self.workload.to_wire(),
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> RunStats:
        s = cls()
        s.hist = {m: Histogram.from_wire(d["hist"][m]) for m in METRICS}
        s.requests, s.ok, s.good = int(d["requests"]), int(d["ok"]), int(d["good"])
        s.errors = Counter({str(k): int(v) for k, v in d["errors"].items()})
        s.output_tokens, s.prompt_tokens = int(d["output_tokens"]), int(d["prompt_tokens"])
        s.visible_tokens = int(d.get("visible_tokens", s.output_tokens))
        s.busy_ns = int(d["busy_ns"])
        if d["start"] is not None:
            s.start, s.end = float(d["start"]), float(d["end"])
        s.mix = Counter({(int(a), int(b), int(c), int(r)): int(n) for a, b, c, r, n in d["mix"]})
        s.retries_429, s.retry_wait_ms = int(d.get("retries_429", 0)), int(d.get("retry_wait_ms", 0))
        s.warmup = int(d.get("warmup", 0))
        s.unfinished = int(d.get("unfinished", 0))
        s.kernel_stamped = int(d.get("kernel_stamped", 0))
        s.traced, s.trace_mismatch = int(d.get("traced", 0)), int(d.get("trace_mismatch", 0))
        if "error" in d:
            s.error = {m: SignedHistogram.from_wire(d["error"][m]) for m in TRACED}
            s.pacing = {m: SignedHistogram.from_wire(d["pacing"][m]) for m in TRACED}
        if "workload" in d:
            s.workload = WorkloadStats.from_wire(d["workload"])
        return s

    def __bool__(self) -> bool:
        return self.requests > 0 or self.retries_429 > 0 or self.warmup > 0 or self.unfinished > 0


class TurnStats:
    """One turn index of multi-turn sessions: its requests, their prompt sizes and TTFT."""

    def __init__(self) -> None:
        self.requests = 0
        self.ok = 0
        self.prompt_tokens = 0
        """Of the successful requests."""
        self.ttft = Histogram()

    def merge(self, other: TurnStats) -> None:
        self.requests += other.requests
        self.ok += other.ok
        self.prompt_tokens += other.prompt_tokens
        self.ttft.merge(other.ttft)

    def to_wire(self) -> dict[str, Any]:
        return {"requests": self.requests, "ok": self.ok, "prompt_tokens": self.prompt_tokens,
                "ttft": self.ttft.to_wire()}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> TurnStats:
        t = cls()
        t.requests, t.ok, t.prompt_tokens = int(d["requests"]), int(d["ok"]), int(d["prompt_tokens"])
        t.ttft = Histogram.from_wire(d["ttft"])
        return t


INTENDED = ("ttft", "e2e")
"""Metrics that change when measured from the intended send time (trace replay)."""


class WorkloadStats:
    """The workload's own figures, merged exactly across processes like the rest of RunStats.

    - exact output: successful requests with a requested length, how many got exactly that many output
      tokens, how many carried ignore_eos/min_tokens, and the server's refusal of them (if any);
    - prefix cache: successful requests whose usage reports cached prompt tokens, how many had some,
      the cached and prompt token sums, and TTFT of cached vs uncached requests;
    - turns: per turn index of multi-turn sessions;
    - trace replay: how late each request left, and TTFT/E2E from its intended send time.
    """

    def __init__(self) -> None:
        self.requested = 0
        self.exact = 0
        self.exact_sent = 0
        self.exact_refused: str | None = None
        """The first refusal of ignore_eos/min_tokens (then the run stopped sending them)."""
        self.cache_reported = 0
        self.cached_requests = 0
        self.cached_tokens = 0
        self.cache_prompt_tokens = 0
        self.ttft_cached = Histogram()
        self.ttft_uncached = Histogram()
        self.turns: dict[int, TurnStats] = {}
        self.scheduled = 0
        """Requests sent on a schedule (trace replay), failed ones included."""
        self.lateness = Histogram()
        self.intended: dict[str, Histogram] = {m: Histogram() for m in INTENDED}
        self.prompt_lengths: Counter[int] = Counter()
        """Prompt tokens of the successful requests, cached ones included (the realised prompt lengths)."""
        self.output_lengths: Counter[int] = Counter()

    def add(self, rec: RequestRecord, work: Any) -> None:
        if rec.ok:
            self.prompt_lengths[rec.prompt_tokens] += 1
            self.output_lengths[rec.output_tokens] += 1
        if work is not None:
            if work.turn:
                t = self.turns.setdefault(work.turn, TurnStats())
                t.requests += 1
                if rec.ok:
                    t.ok += 1
                    t.prompt_tokens += rec.prompt_tokens
                    if rec.ttft_ms is not None:
                        t.ttft.record(rec.ttft_ms)
            if work.intended is not None:
                self.scheduled += 1
                self.lateness.record(scheduled_delay_ms(rec.start_time, work.intended))
                if rec.ok:
                    seen = from_intended(rec, work.intended)
                    self.intended["e2e"].record(seen.e2e_ms)
                    if seen.ttft_ms is not None:
                        self.intended["ttft"].record(seen.ttft_ms)
            if rec.ok and rec.usage_reported:
                self.requested += 1
                self.exact += rec.output_tokens == work.max_tokens
            self.exact_sent += bool(getattr(work, "exact_sent", False))
        if not rec.ok or rec.cached_tokens is None:
            return
        self.cache_reported += 1
        self.cache_prompt_tokens += rec.prompt_tokens
        self.cached_tokens += rec.cached_tokens
        cached = rec.cached_tokens > 0
        self.cached_requests += cached
        if rec.ttft_ms is not None:
            (self.ttft_cached if cached else self.ttft_uncached).record(rec.ttft_ms)

    def refused(self, message: str) -> None:
        if self.exact_refused is None:
            self.exact_refused = message

    def merge(self, other: WorkloadStats) -> None:
        for name in ("requested", "exact", "exact_sent", "cache_reported", "cached_requests", "cached_tokens",
                     "cache_prompt_tokens", "scheduled"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.exact_refused is not None:
            self.refused(other.exact_refused)
        self.ttft_cached.merge(other.ttft_cached)
        self.ttft_uncached.merge(other.ttft_uncached)
        for k, t in other.turns.items():
            self.turns.setdefault(k, TurnStats()).merge(t)
        self.lateness.merge(other.lateness)
        for m in INTENDED:
            self.intended[m].merge(other.intended[m])
        self.prompt_lengths.update(other.prompt_lengths)
        self.output_lengths.update(other.output_lengths)

    def to_wire(self) -> dict[str, Any]:
        return {"requested": self.requested, "exact": self.exact, "exact_sent": self.exact_sent,
                "exact_refused": self.exact_refused, "cache_reported": self.cache_reported,
                "cached_requests": self.cached_requests, "cached_tokens": self.cached_tokens,
                "cache_prompt_tokens": self.cache_prompt_tokens, "ttft_cached": self.ttft_cached.to_wire(),
                "ttft_uncached": self.ttft_uncached.to_wire(),
                "turns": [[k, t.to_wire()] for k, t in self.turns.items()],
                "scheduled": self.scheduled, "lateness": self.lateness.to_wire(),
                "intended": {m: h.to_wire() for m, h in self.intended.items()},
                "prompt_lengths": [[k, n] for k, n in self.prompt_lengths.items()],
                "output_lengths": [[k, n] for k, n in self.output_lengths.items()]}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> WorkloadStats:
        s = cls()
        for name in ("requested", "exact", "exact_sent", "cache_reported", "cached_requests", "cached_tokens",
                     "cache_prompt_tokens", "scheduled"):
            setattr(s, name, int(d[name]))
        s.exact_refused = d["exact_refused"]
        s.ttft_cached = Histogram.from_wire(d["ttft_cached"])
        s.ttft_uncached = Histogram.from_wire(d["ttft_uncached"])
        s.turns = {int(k): TurnStats.from_wire(t) for k, t in d["turns"]}
        s.lateness = Histogram.from_wire(d["lateness"])
        s.intended = {m: Histogram.from_wire(d["intended"][m]) for m in INTENDED}
        s.prompt_lengths = Counter({int(k): int(n) for k, n in d.get("prompt_lengths", [])})
        s.output_lengths = Counter({int(k): int(n) for k, n in d.get("output_lengths", [])})
        return s

    def __bool__(self) -> bool:
        return bool(self.requested or self.exact_sent or self.exact_refused or self.cache_reported or self.turns
                    or self.scheduled)


def histogram_summary(h: Histogram) -> dict[str, Any]:
    """count, mean, p50, p90, p95, p99, p99.9, min and max of one histogram (ms)."""
    pcts = h.percentiles(SUMMARY_PCTS)
    out: dict[str, Any] = {"count": h.count, "mean": h.mean}
    for p in SUMMARY_PCTS:
        out[pct_label(p)] = pcts[p]
    out["min"] = h.min if h.count else None
    out["max"] = h.max if h.count else None
    return out


def pct_label(p: float) -> str:
    """50.0 -> "p50", 99.9 -> "p99.9"."""
    return f"p{p:g}"
