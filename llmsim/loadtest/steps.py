"""Per-step figures of a capacity run, kept so they merge exactly across Locust workers.

A worker cannot know where the master's step windows begin and end, so every
process files each finished request under the 100 ms slice of time in which it
started (its intended send time in open-loop mode). Slices travel to the
master with the toolkit's usual reports; the master places each whole slice in
the step whose measurement window contains it, once that slice lies in the
past (by then every window boundary up to it is known). A window therefore
counts the requests that started in it, trimmed inward to whole slices.

Throughput is measured as activity, not as whole requests: each request also
adds, to every slice it overlaps, the time it spent in flight there and the
output tokens it generated there. A window's tokens/s and mean requests in
flight are then exact whatever the requests' phase, and req/s follows from
Little's law (in flight / mean E2E). Counting whole requests that start in a
window would round every user to a whole number of requests, which matters
when a window holds only a few per user and the users started together.

`InFlight` tells when a step is complete: once no request that started before
the window's end is still running anywhere, every one of them has been filed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..profiles import SloCheck
from .aggregate import RunStats, histogram_summary
from .histogram import Histogram
from .metrics import RequestRecord
from .openloop import from_intended, scheduled_delay_ms
from .scoring import request_meets_slo

SLICE_S = 0.1
"""Width of a time slice (s): window edges are trimmed inward to whole slices."""
INTENDED_METRICS = ("ttft", "e2e")
"""Metrics that change when measured from the intended send time (open loop)."""


class StepStats:
    """The figures of one step (or one slice): the toolkit's RunStats plus latency from the intended send time.

    `run` holds service-time figures. `run.good` counts requests that met every
    SLO as seen from their intended send time (the same as service time in a
    closed loop). `intended` holds TTFT and E2E from the intended send time and
    `delay` how late requests left; both stay empty in a closed loop.
    """

    def __init__(self) -> None:
        self.run = RunStats()
        self.intended: dict[str, Histogram] = {m: Histogram() for m in INTENDED_METRICS}
        self.delay = Histogram()
        self.active_ns = 0
        """Time requests spent in flight inside this slice (or window), summed over requests."""
        self.token_micros = 0
        """Output tokens generated inside it, in millionths of a token (integers merge exactly)."""

    def add(self, rec: RequestRecord, slo: Sequence[SloCheck], intended: float | None = None) -> None:
        seen = rec if intended is None else from_intended(rec, intended)
        self.run.add(rec, request_meets_slo(seen, slo))
        if intended is None:
            return
        self.delay.record(scheduled_delay_ms(rec.start_time, intended))
        if rec.ok:
            self.intended["e2e"].record(seen.e2e_ms)
            if seen.ttft_ms is not None:
                self.intended["ttft"].record(seen.ttft_ms)

    def merge(self, other: StepStats) -> None:
        self.run.merge(other.run)
        for m in INTENDED_METRICS:
            self.intended[m].merge(other.intended[m])
        self.delay.merge(other.delay)
        self.active_ns += other.active_ns
        self.token_micros += other.token_micros

    def hist(self, metric: str, *, open_loop: bool) -> Histogram:
        """The histogram a step is judged on: from the intended send time in open loop where that differs."""
        if open_loop and metric in INTENDED_METRICS:
            return self.intended[metric]
        return self.run.hist[metric]

    def to_wire(self) -> dict[str, Any]:
        return {"run": self.run.to_wire(), "intended": {m: h.to_wire() for m, h in self.intended.items()},
                "delay": self.delay.to_wire(), "active_ns": self.active_ns, "token_micros": self.token_micros}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> StepStats:
        s = cls()
        s.run = RunStats.from_wire(d["run"])
        s.intended = {m: Histogram.from_wire(d["intended"][m]) for m in INTENDED_METRICS}
        s.delay = Histogram.from_wire(d["delay"])
        s.active_ns, s.token_micros = int(d["active_ns"]), int(d["token_micros"])
        return s


def slice_of(t: float) -> int:
    """The slice a start time (wall-clock s) falls in."""
    return math.floor(t / SLICE_S)


def slice_bounds(key: int) -> tuple[float, float]:
    return key * SLICE_S, (key + 1) * SLICE_S


def activity(rec: RequestRecord) -> Iterator[tuple[int, int, int]]:
    """(slice, ns in flight, output tokens in millionths) for every slice the request overlaps.

    In flight: from the request's write to its end. Its output tokens are
    spread evenly over its decode (first token to end), or put in its last
    slice when it had no decode time.
    """
    start, end = rec.start_time, rec.end_time
    first = start + rec.ttft_ms / 1000.0 if rec.ttft_ms is not None else start
    tokens = rec.output_tokens * 1_000_000
    decode = end - first
    given = 0
    last = slice_of(end) if end > start else slice_of(start)
    for key in range(slice_of(start), last + 1):
        lo, hi = slice_bounds(key)
        active = max(0.0, min(end, hi) - max(start, lo))
        if decode > 0:
            share = tokens * max(0.0, min(end, hi) - max(first, lo)) / decode
            micros = tokens - given if key == last else int(round(share))
        else:
            micros = tokens if key == last else 0
        given += micros
        yield key, int(round(active * 1e9)), micros


class SliceBook:
    """Requests filed by the slice they started in, not yet placed in a step (or sent to the master)."""

    def __init__(self) -> None:
        self.slices: dict[int, StepStats] = {}

    def add(self, rec: RequestRecord, slo: Sequence[SloCheck], intended: float | None = None) -> None:
        """File the request's latency under the slice it started in, and its activity where it happened."""
        self._slice(slice_of(rec.start_time if intended is None else intended)).add(rec, slo, intended)
        for key, active_ns, token_micros in activity(rec):
            part = self._slice(key)
            part.active_ns += active_ns
            part.token_micros += token_micros

    def _slice(self, key: int) -> StepStats:
        """The slice's stats, made the first time only (setdefault would build a StepStats, and its
        histograms, for every request that meets an existing slice)."""
        part = self.slices.get(key)
        if part is None:
            part = self.slices[key] = StepStats()
        return part

    def merge(self, key: int, stats: StepStats) -> None:
        mine = self.slices.get(key)
        if mine is None:
            self.slices[key] = stats
        else:
            mine.merge(stats)

    def take_wire(self) -> list[list[Any]]:
        """Every slice, msgpack-safe, emptying the book (a worker's report)."""
        wire = [[k, s.to_wire()] for k, s in self.slices.items()]
        self.slices = {}
        return wire

    def merge_wire(self, wire: list[list[Any]]) -> None:
        for key, d in wire:
            self.merge(int(key), StepStats.from_wire(d))

    def pop_past(self, now: float) -> Iterator[tuple[int, StepStats]]:
        """Remove and yield the slices that lie wholly before `now`, oldest first."""
        for key in sorted(k for k in self.slices if slice_bounds(k)[1] <= now):
            yield key, self.slices.pop(key)

    def __bool__(self) -> bool:
        return bool(self.slices)


class InFlight:
    """The start times of the requests this process has in flight (started, not yet filed)."""

    def __init__(self) -> None:
        self._starts: dict[int, float] = {}
        self._ids = itertools.count()

    @contextmanager
    def track(self, start: float) -> Iterator[None]:
        """Bracket one request, from its (intended) start until it has been filed."""
        token = next(self._ids)
        self._starts[token] = start
        try:
            yield
        finally:
            del self._starts[token]

    def oldest(self) -> float | None:
        """Earliest start among requests in flight, or None."""
        return min(self._starts.values(), default=None)

    def __len__(self) -> int:
        return len(self._starts)


# --------------------------------------------------------------------------- verdict

def summarize(stats: StepStats, *, window_s: float, slo: Sequence[SloCheck], max_error_rate: float,
              open_loop: bool) -> dict[str, Any]:
    """One step's row: rates over its window, latency percentiles, errors, goodput and the SLO verdict.

    Rates use the window's activity: tokens/s is the tokens generated inside it,
    req/s is the mean number in flight divided by the mean E2E (Little's law).
    The step meets the SLO when at least one request succeeded, its error rate
    is at most `max_error_rate` (a fraction) and every `slo:` percentile,
    computed over all of the step's samples, is within its limit. In open loop
    TTFT and E2E are judged from the intended send time.
    """
    run = stats.run

    def rate(n: float) -> float | None:
        return n / window_s if window_s > 0 else None

    in_flight = rate(stats.active_ns / 1e9)
    mean_e2e_s = run.busy_ns / 1e9 / run.requests if run.requests else None
    rps = in_flight / mean_e2e_s if in_flight is not None and mean_e2e_s else None  # Little's law

    def pct(h: Histogram, p: float) -> float | None:
        return h.percentile(p)

    checks = []
    for check in slo:
        measured = pct(stats.hist(check.metric, open_loop=open_loop), check.pct)
        checks.append({"key": check.key, "measured": measured, "limit_ms": check.limit_ms,
                       "met": measured is not None and measured <= check.limit_ms})
    error_rate = run.failed / run.requests if run.requests else None
    broken = [c["key"] for c in checks if not c["met"]]
    if error_rate is not None and error_rate > max_error_rate:
        broken.append("error_rate")
    if run.ok == 0:
        broken.append("no_success")
    h = run.hist
    row: dict[str, Any] = {
        "window_s": window_s,
        "requests": run.requests, "ok": run.ok, "failed": run.failed,
        "errors_by_kind": dict(sorted(run.errors.items())),
        "error_rate": error_rate,
        "rps": rps,
        "output_tok_s": rate(stats.token_micros / 1e6),
        "in_flight": in_flight,
        "ttft_p50": pct(h["ttft"], 50), "ttft_p99": pct(h["ttft"], 99),
        "itl_p50": pct(h["itl"], 50), "itl_p99": pct(h["itl"], 99),
        "e2e_p50": pct(h["e2e"], 50), "e2e_p99": pct(h["e2e"], 99),
        "goodput": run.good / run.requests if run.requests else None,
        "goodput_rps": None if rps is None or not run.requests else rps * run.good / run.requests,
    }
    if open_loop:
        row.update({
            "ttft_intended_p50": pct(stats.intended["ttft"], 50), "ttft_intended_p99": pct(stats.intended["ttft"], 99),
            "e2e_intended_p50": pct(stats.intended["e2e"], 50), "e2e_intended_p99": pct(stats.intended["e2e"], 99),
            "send_delay_p99": pct(stats.delay, 99),
        })
    row["slo"] = checks
    row["broken"] = broken
    row["meets_slo"] = not broken
    row["metrics"] = {m: run.metric_summary(m) for m in run.hist}
    if open_loop:
        row["metrics"].update({f"{m}_intended": histogram_summary(stats.intended[m]) for m in INTENDED_METRICS})
    return row


def window_slices(start: float, end: float) -> range:
    """The slices that lie wholly inside [start, end): a window trimmed inward to whole slices."""
    return range(math.ceil(start / SLICE_S - 1e-9), math.floor(end / SLICE_S + 1e-9))
