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

    # ------------------------------------------------------------------ building

    def add(self, rec: RequestRecord, good: bool = False) -> None:
        """Count one finished request; `good` is whether it met every SLO (goodput)."""
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
            "retries_429": self.retries_429, "retry_wait_ms": self.retry_wait_ms,
            "warmup": self.warmup, "kernel_stamped": self.kernel_stamped,
            "traced": self.traced, "trace_mismatch": self.trace_mismatch,
            "error": {m: h.to_wire() for m, h in self.error.items()},
            "pacing": {m: h.to_wire() for m, h in self.pacing.items()},
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
        s.kernel_stamped = int(d.get("kernel_stamped", 0))
        s.traced, s.trace_mismatch = int(d.get("traced", 0)), int(d.get("trace_mismatch", 0))
        if "error" in d:
            s.error = {m: SignedHistogram.from_wire(d["error"][m]) for m in TRACED}
            s.pacing = {m: SignedHistogram.from_wire(d["pacing"][m]) for m in TRACED}
        return s

    def __bool__(self) -> bool:
        return self.requests > 0 or self.retries_429 > 0 or self.warmup > 0


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
