"""A sparse latency histogram that merges exactly across processes.

Locust's own response-time buckets are 1 ms wide (10 ms above 100 ms), too
coarse to score a 20 ms ITL. This histogram keeps 10 µs buckets below 100 ms
and buckets 0.1 % wide above, stores only the buckets it has seen, and keeps
every count and the sum as integers, so merging the histograms of N workers
gives exactly the histogram one process would have built from all samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

LINEAR_LIMIT_MS = 100.0
"""Below this, buckets are linear."""
LINEAR_WIDTH_MS = 0.01
"""Width of a linear bucket: 10 µs (the requirement is ≤ 0.1 ms)."""
LOG_RATIO = 1.001
"""Above LINEAR_LIMIT_MS each bucket is 0.1 % wider than the one before."""

_N_LINEAR = int(round(LINEAR_LIMIT_MS / LINEAR_WIDTH_MS))
_LOG_BASE = math.log(LOG_RATIO)


def nearest_rank(pct: float, count: int) -> int:
    """The 1-based rank of the nearest-rank `pct` percentile (pct in 0..100) among `count` samples.

    The one definition every percentile in llmsim uses (histograms, scoring, reports):
    the smallest value with at least pct % of the samples at or below it.
    """
    return max(1, math.ceil(pct / 100.0 * count - 1e-9))


def percentile_of_sorted(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile of samples already sorted ascending (at least one)."""
    return values[nearest_rank(pct, len(values)) - 1]


def bucket_index(ms: float) -> int:
    """The bucket a value (in ms) falls into."""
    if ms < LINEAR_LIMIT_MS:
        return int(max(ms, 0.0) / LINEAR_WIDTH_MS)
    return _N_LINEAR + int(math.log(ms / LINEAR_LIMIT_MS) / _LOG_BASE)


def bucket_bounds(index: int) -> tuple[float, float]:
    """[low, high) of a bucket, in ms."""
    if index < _N_LINEAR:
        return index * LINEAR_WIDTH_MS, (index + 1) * LINEAR_WIDTH_MS
    k = index - _N_LINEAR
    return LINEAR_LIMIT_MS * LOG_RATIO**k, LINEAR_LIMIT_MS * LOG_RATIO ** (k + 1)


class Histogram:
    """Counts of latency samples (ms) in fixed buckets, plus exact count, sum, min and max."""

    __slots__ = ("counts", "count", "sum_ns", "min", "max")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.sum_ns = 0  # integer nanoseconds, so sums merge exactly
        self.min = math.inf
        self.max = -math.inf

    def record(self, ms: float, n: int = 1) -> None:
        """Add `n` samples of value `ms`."""
        i = bucket_index(ms)
        self.counts[i] = self.counts.get(i, 0) + n
        self.count += n
        self.sum_ns += int(round(ms * 1e6)) * n
        if ms < self.min:
            self.min = ms
        if ms > self.max:
            self.max = ms

    def record_many(self, values: Iterable[float]) -> None:
        """record() each value (the same buckets and sums), in one tight loop: a request's ITL samples."""
        values = values if isinstance(values, (list, tuple)) else list(values)
        if not values:
            return
        counts = self.counts
        width = LINEAR_WIDTH_MS
        sum_ns = 0
        for ms in values:
            i = (int(ms / width) if ms > 0 else 0) if ms < LINEAR_LIMIT_MS else bucket_index(ms)
            counts[i] = counts.get(i, 0) + 1
            sum_ns += int(round(ms * 1e6))
        self.count += len(values)
        self.sum_ns += sum_ns
        low, high = min(values), max(values)
        if low < self.min:
            self.min = low
        if high > self.max:
            self.max = high

    def merge(self, other: Histogram) -> None:
        """Add another histogram's samples to this one (exact)."""
        counts = self.counts
        for i, n in other.counts.items():
            counts[i] = counts.get(i, 0) + n
        self.count += other.count
        self.sum_ns += other.sum_ns
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    @property
    def mean(self) -> float | None:
        return self.sum_ns / 1e6 / self.count if self.count else None

    def percentile(self, pct: float) -> float | None:
        """Nearest-rank percentile (pct in 0..100), as the bucket's midpoint clamped to [min, max].

        The error is at most half a bucket: 5 µs below 100 ms, 0.05 % above.
        """
        if not self.count:
            return None
        return self.value_at_rank(nearest_rank(pct, self.count))

    def value_at_rank(self, rank: int) -> float | None:
        """The rank-th smallest sample (1-based), as its bucket's midpoint clamped to [min, max]."""
        if not self.count:
            return None
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                lo, hi = bucket_bounds(i)
                return min(max((lo + hi) / 2, self.min), self.max)
        return self.max

    def percentiles(self, pcts: Iterable[float]) -> dict[float, float | None]:
        """Several percentiles in one pass over the sorted buckets."""
        pcts = sorted(pcts)
        out: dict[float, float | None] = {p: None for p in pcts}
        if not self.count:
            return out
        ranks = [(nearest_rank(p, self.count), p) for p in pcts]
        j = 0
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            while j < len(ranks) and seen >= ranks[j][0]:
                lo, hi = bucket_bounds(i)
                out[ranks[j][1]] = min(max((lo + hi) / 2, self.min), self.max)
                j += 1
            if j == len(ranks):
                break
        return out

    def to_wire(self) -> dict[str, Any]:
        """A msgpack/JSON-safe form (what workers send to the master)."""
        return {
            "buckets": [[i, n] for i, n in self.counts.items()],
            "count": self.count,
            "sum_ns": self.sum_ns,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Histogram:
        h = cls()
        h.counts = {int(i): int(n) for i, n in data["buckets"]}
        h.count = int(data["count"])
        h.sum_ns = int(data["sum_ns"])
        if h.count:
            h.min, h.max = float(data["min"]), float(data["max"])
        return h

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (self.counts == other.counts and self.count == other.count and self.sum_ns == other.sum_ns
                and (self.count == 0 or (self.min, self.max) == (other.min, other.max)))

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, mean={self.mean}, min={self.min}, max={self.max})"


class SignedHistogram:
    """Samples that may be negative (a measurement error: client minus server): two Histograms, one per sign.

    Merges exactly, as Histogram does; percentiles use the nearest rank over all samples.
    """

    __slots__ = ("pos", "neg")

    def __init__(self) -> None:
        self.pos = Histogram()
        self.neg = Histogram()
        """Magnitudes of the negative samples."""

    @property
    def count(self) -> int:
        return self.pos.count + self.neg.count

    @property
    def mean(self) -> float | None:
        n = self.count
        return (self.pos.sum_ns - self.neg.sum_ns) / 1e6 / n if n else None

    def record(self, ms: float) -> None:
        if ms < 0:
            self.neg.record(-ms)
        else:
            self.pos.record(ms)

    def record_many(self, values: Iterable[float]) -> None:
        for v in values:
            self.record(v)

    def merge(self, other: SignedHistogram) -> None:
        self.pos.merge(other.pos)
        self.neg.merge(other.neg)

    def percentile(self, pct: float) -> float | None:
        n = self.count
        if not n:
            return None
        rank = max(1, math.ceil(pct / 100.0 * n - 1e-9))
        if rank <= self.neg.count:  # the negatives, most negative first
            v = self.neg.value_at_rank(self.neg.count - rank + 1)
            return None if v is None else -v
        return self.pos.value_at_rank(rank - self.neg.count)

    def abs_percentile(self, pct: float) -> float | None:
        """A percentile of the magnitudes (|sample|)."""
        both = Histogram()
        both.merge(self.pos)
        both.merge(self.neg)
        return both.percentile(pct)

    def to_wire(self) -> dict[str, Any]:
        return {"pos": self.pos.to_wire(), "neg": self.neg.to_wire()}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> SignedHistogram:
        h = cls()
        h.pos, h.neg = Histogram.from_wire(data["pos"]), Histogram.from_wire(data["neg"])
        return h

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SignedHistogram):
            return NotImplemented
        return self.pos == other.pos and self.neg == other.neg
