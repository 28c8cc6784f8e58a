"""Server-side statistics: counters, latencies as emitted, recent rates; as JSON and as Prometheus metrics.

Nothing here runs per token. A stream keeps its emit times in a plain list
while it runs (llmsim/api.py, stream_bytes); when its response ends,
`record_generation()` takes its TTFT, gaps, TPOT, E2E and queue wait in one
pass, and they are bucketed with the other responses' when anything reads
them or the sampler ticks. A sampler (`run_sampler`, one greenlet per server) takes a snapshot of
the cumulative counters every second, which gives the request and token rates
over the last second and minute and the latency percentiles of recent
windows.

Histograms have fixed buckets: 0.1 ms wide below 100 ms, 1 ms to 1 s, 10 ms
to 10 s, then a tenth of the decade up to 10,000 s. Every bucket bound of
vLLM's histograms is one of those bounds, so the per-model vLLM histograms
of /metrics are exact sums of them, and percentiles are within half a bucket.

The model label is bounded: the first `MAX_MODEL_LABELS` model names seen get
their own, later ones are counted as "other".
"""

from __future__ import annotations

import _thread
import math
import time
import weakref
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from itertools import islice
from operator import sub
from typing import TYPE_CHECKING, Any

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from .itl import split_gaps

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Generation
    from .scheduler import Schedulers

__all__ = ["EDGES", "Distribution", "ServerStats", "VLLM_BUCKETS", "bucket_index", "metrics_registry",
           "render_metrics"]

MAX_MODEL_LABELS = 50
OTHER = "other"
WINDOW_TICKS = 60
"""Seconds of history the sampler keeps (rates and latency windows)."""
RATE_WINDOWS = {"1s": 1.0, "60s": 60.0}
LATENCY_WINDOWS = {"10s": 10, "60s": 60}

# vLLM's bucket bounds (vllm/v1/metrics/loggers.py), so its dashboards read these unchanged.
VLLM_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                     20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
VLLM_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                    40.0, 80.0)
VLLM_REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                        240.0, 480.0, 960.0, 1920.0, 7680.0)

METRICS = ("ttft", "itl", "tpot", "e2e", "queue")
"""The latency series: time to first token, inter-token latency (per token), time per output token
(per request), end to end, queue wait."""
VLLM_BUCKETS = {"ttft": VLLM_TTFT_BUCKETS, "itl": VLLM_ITL_BUCKETS, "tpot": VLLM_ITL_BUCKETS,
                "e2e": VLLM_REQUEST_BUCKETS, "queue": VLLM_REQUEST_BUCKETS}
VLLM_HISTOGRAMS = (  # (vLLM name, its help text, our series)
    ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", "ttft"),
    ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", "itl"),
    ("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds."
                                           "DEPRECATED: Use vllm:inter_token_latency_seconds instead.", "itl"),
    ("vllm:request_time_per_output_token_seconds", "Histogram of time_per_output_token_seconds per request.",
     "tpot"),
    ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", "e2e"),
    ("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", "queue"),
)
VLLM_FINISH_REASONS = ("stop", "length", "abort")
VLLM_ENGINE = "0"


def _edges() -> list[float]:
    out: set[float] = set()
    for den, lo, hi in ((10_000, 1, 1000), (1000, 101, 1000), (100, 101, 1000), (10, 101, 1000)):
        out.update(k / den for k in range(lo, hi + 1))
    for mul in (1, 10):
        out.update(float(k * mul) for k in range(101, 1001))
    return sorted(out)


EDGES: list[float] = _edges()
"""Upper bounds (seconds, inclusive) of the fine buckets; one more bucket holds anything above the last."""


def bucket_index(seconds: float) -> int:
    """The fine bucket a value falls into: bucket i holds (EDGES[i-1], EDGES[i]]."""
    return bisect_left(EDGES, seconds)


def _bucket_mid(i: int) -> float:
    hi = EDGES[i] if i < len(EDGES) else EDGES[-1] * 2
    lo = EDGES[i - 1] if i > 0 else 0.0
    return (lo + hi) / 2


def _coarse_lut(bounds: tuple[float, ...]) -> list[int]:
    """Fine bucket -> index of the vLLM bucket holding it (len(bounds) for +Inf)."""
    return [bisect_left(bounds, e) for e in EDGES] + [len(bounds)]


_LUTS = {name: _coarse_lut(b) for name, b in VLLM_BUCKETS.items()}


Batch = tuple[dict[int, int], int, float, float, float]
"""Values summarised for Distribution.add: their fine-bucket counts, count, sum, min and max."""

_bucket_of = partial(bisect_left, EDGES)
_plain_lock: Callable[[], Any] = _thread.allocate_lock
try:  # where gevent patched the thread module, its original lock
    from gevent.monkey import get_original

    _plain_lock = get_original("_thread", "allocate_lock")
except ImportError:  # pragma: no cover - gevent is a dependency
    pass
_ZERO_BUCKET = _bucket_of(0.0)
FOLD_AFTER = 32
"""Responses whose latencies may wait to be bucketed (a reader or the sampler's tick buckets them sooner).
Bucketing holds the event loop for about 6 µs a response (a hundred ITL gaps each): 256 at once held it for
1.2-1.7 ms in a 1,000-stream ramp, in whichever stream's end or stats read came then; 32 hold it ~0.2 ms."""
LIVE_STEP = 128
"""Live requests counted between two calls of a reader's `between` (running_waiting)."""


def summarise(values: list[float]) -> Batch:
    """One pass over a response's values (a bisect per value, in C) for every distribution they go to."""
    lo, hi = min(values), max(values)
    # All alike (zero delays: every gap 0): one bucket, found once.
    counts = {_bucket_of(lo): len(values)} if lo == hi else Counter(map(_bucket_of, values))
    return counts, len(values), math.fsum(values), lo, hi


def merge_batches(batches: list[Batch]) -> Batch:
    """Several batches (summarise) as one: what summarise gives for all their values at once."""
    counts: dict[int, int] = {}
    get = counts.get
    n, lo, hi = 0, math.inf, -math.inf
    for indices, k, _, low, high in batches:
        for i, c in indices.items():
            counts[i] = get(i, 0) + c
        n += k
        if low < lo:
            lo = low
        if high > hi:
            hi = high
    return counts, n, math.fsum(b[2] for b in batches), lo, hi


class Distribution:
    """Counts of values (seconds) in the fine buckets, with exact count, sum, min and max."""

    __slots__ = ("counts", "count", "sum", "min", "max")

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, batch: Batch) -> None:
        """A batch of values, summarised once (summarise) for the several distributions it goes to."""
        indices, n, total, lo, hi = batch
        counts = self.counts
        for i, k in indices.items():  # not Counter.update: its Mapping check costs more than this loop
            counts[i] += k
        self.count += n
        self.sum += total
        if lo < self.min:
            self.min = lo
        if hi > self.max:
            self.max = hi

    def merge(self, other: Distribution) -> None:
        self.counts.update(other.counts)
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def percentiles(self, pcts: Iterable[float]) -> dict[float, float | None]:
        """Nearest-rank percentiles (seconds): the bucket's midpoint, clamped to [min, max]."""
        pcts = sorted(pcts)
        out: dict[float, float | None] = {p: None for p in pcts}
        if not self.count:
            return out
        ranks = [(max(1, math.ceil(p / 100.0 * self.count - 1e-9)), p) for p in pcts]
        j = seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            while j < len(ranks) and seen >= ranks[j][0]:
                out[ranks[j][1]] = min(max(_bucket_mid(i), self.min), self.max)
                j += 1
            if j == len(ranks):
                break
        return out

    def summary(self) -> dict[str, Any]:
        """count, mean, p50, p90, p99 and max, in milliseconds (None when empty)."""
        p = self.percentiles((50, 90, 99))

        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000, 3)

        return {"count": self.count, "mean": ms(self.sum / self.count) if self.count else None,
                "p50": ms(p[50]), "p90": ms(p[90]), "p99": ms(p[99]), "max": ms(self.max if self.count else None)}


class _VllmHistogram:
    """One series in vLLM's buckets, per model label: [bucket counts..., +Inf], sum."""

    __slots__ = ("bounds", "lut", "by_model")

    def __init__(self, name: str) -> None:
        self.bounds = VLLM_BUCKETS[name]
        self.lut = _LUTS[name]
        self.by_model: dict[str, list] = {}

    def add(self, model: str, batch: Batch) -> None:
        """A batch of values (summarise), each counted in the vLLM bucket its fine bucket falls in."""
        row = self.by_model.get(model)
        if row is None:
            row = self.by_model[model] = [[0] * (len(self.bounds) + 1), 0.0]
        counts, lut = row[0], self.lut
        for i, k in batch[0].items():
            counts[lut[i]] += k
        row[1] += batch[2]


class _ModelStats:
    __slots__ = ("requests", "prompt_tokens", "completion_tokens", "finished")

    def __init__(self) -> None:
        self.requests = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finished: Counter[str] = Counter()  # vLLM finished_reason -> n


class ServerStats:
    """Everything /llmsim/stats and /metrics report, updated once per request (never per token)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.started = time.time()
        # The thread module's own lock, even where gevent patched threading: it is never held across a
        # switch (nothing under it waits), and it costs a third of gevent's.
        self._lock = _plain_lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, status) -> n
        self.api_requests = 0  # requests on the API paths (what req/s counts)
        self.active_streams = 0
        self.output_tokens = 0  # completion tokens (hidden reasoning included), as usage reports them
        self.prompt_tokens = 0
        self.emitted_tokens = 0  # visible tokens of finished responses, as released
        self.disconnects = 0
        self.rate_limited = 0  # refused by the rate limiter (not injected)
        self.faults: Counter[str] = Counter()  # injected fault kind -> n
        self.errors: Counter[str] = Counter()  # error kind -> n (see docs/observability.md)
        self.cache_queries: Counter[str] = Counter()  # model -> prompt tokens looked up in a prefix cache
        self.cache_hits: Counter[str] = Counter()  # model -> of those, tokens found (not prefilled)
        self.models: dict[str, _ModelStats] = {}
        self.live: weakref.WeakValueDictionary[int, Generation] = weakref.WeakValueDictionary()
        self._total = {m: Distribution() for m in METRICS}
        self._vllm = {m: _VllmHistogram(m) for m in METRICS}
        self._current = {m: Distribution() for m in METRICS}
        self._pending: list[tuple] = []  # responses' latencies not yet bucketed (see record_generation)
        self._ticks: deque[dict[str, Distribution]] = deque(maxlen=WINDOW_TICKS)
        self._samples: deque[tuple[float, int, int, int]] = deque(maxlen=WINDOW_TICKS + 2)

    # ------------------------------------------------------------------ recording

    def model_label(self, model: str) -> str:
        """The model's own label while fewer than MAX_MODEL_LABELS are known, else "other"."""
        if model in self.models:
            return model
        if len(self.models) < MAX_MODEL_LABELS or model == OTHER:
            self.models[model] = _ModelStats()
            return model
        if OTHER not in self.models:
            self.models[OTHER] = _ModelStats()
        return OTHER

    def record_request(self, endpoint: str, status: int, api: bool = True) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            if api:
                self.api_requests += 1

    def record_tokens(self, prompt: int, output: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.output_tokens += output

    def record_fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def record_error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def record_rate_limited(self) -> None:
        with self._lock:
            self.rate_limited += 1

    def record_prefix_cache(self, model: str, queries: int, hits: int) -> None:
        """A request met its deployment's prefix cache: `queries` prompt tokens looked up, `hits` reused."""
        with self._lock:
            self.cache_queries[model] += queries
            self.cache_hits[model] += hits

    def stream_started(self) -> None:
        with self._lock:
            self.active_streams += 1

    def stream_ended(self, disconnected: bool = False, cut: bool = False) -> None:
        with self._lock:
            self.active_streams -= 1
            if disconnected:
                self.disconnects += 1
                self.errors["client_disconnect"] += 1
            if cut:
                self.errors["midstream"] += 1

    def record_disconnect(self) -> None:
        """A non-streaming client that left before its answer."""
        with self._lock:
            self.disconnects += 1
            self.errors["client_disconnect"] += 1

    def generation_started(self, gen: Generation) -> None:
        """A request got its generation (and its batch slot, granted or queued)."""
        with self._lock:
            self.live[id(gen)] = gen
            self.models[self.model_label(gen.request.model)].requests += 1

    def record_generation(self, gen: Generation, completed: bool, completion_tokens: int) -> None:
        """A response ended: its latencies as emitted, its tokens and how it finished (once per request).

        The counters change now; the latencies wait in a list and are bucketed together when
        anything reads them (or a second passes, or FOLD_AFTER responses wait): a bisect per value in
        C for all of them, and three histogram updates per series and model, not per response."""
        arrival = gen.arrival if gen.arrival is not None else gen.slot.submitted_at
        emitted = gen.emitted
        end = gen.ended if gen.ended is not None else self.clock()
        queue = gen.slot.queue_wait_s if gen.slot.granted else None  # abandoned in the queue: never finished waiting
        visible = gen.pacer.sent_tokens
        ttft = tpot = itl = None
        if emitted:
            ttft = emitted[0] - arrival
            n = len(emitted)
            if n > 1 and visible == n and emitted[0] == emitted[-1]:
                # Stamps never decrease: every gap is 0 (zero delays), one bucket.
                itl = ({_ZERO_BUCKET: n - 1}, n - 1, 0.0, 0.0, 0.0)
            elif n > 1:
                gaps = list(map(sub, islice(emitted, 1, None), emitted))
                if visible != n:  # chunks of k > 1 tokens: gap/k, k times, as the client counts ITL
                    gaps = split_gaps(gaps, islice(gen.plan.piece_tokens, 1, None))
                if gaps:
                    itl = summarise(gaps)
            if visible >= 2:
                tpot = (emitted[-1] - emitted[0]) / (visible - 1)
        reason = _finished_reason(gen.plan.finish_reason) if completed else "abort"
        with self._lock:
            self.live.pop(id(gen), None)
            self.emitted_tokens += visible
            label = self.model_label(gen.request.model)
            m = self.models[label]
            m.prompt_tokens += gen.prompt_tokens
            m.completion_tokens += completion_tokens
            m.finished[reason] += 1
            pending = self._pending
            pending.append((label, end - arrival, queue, ttft, tpot, itl))
            if len(pending) >= FOLD_AFTER:
                self._fold()

    def _fold(self) -> None:
        """Bucket the waiting latencies into the totals, the current window and the vLLM histograms
        (the lock held)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        rows_of: dict[str, list[tuple]] = {}
        for row in pending:
            rows = rows_of.get(row[0])
            if rows is None:
                rows = rows_of[row[0]] = []
            rows.append(row)
        batches: list[tuple[str, str, Batch]] = []
        for label, rows in rows_of.items():
            _, e2e, queue, ttft, tpot, itl = zip(*rows, strict=True)
            for name, column in (("e2e", e2e), ("queue", queue), ("ttft", ttft), ("tpot", tpot)):
                values = [v for v in column if v is not None]
                if values:
                    batches.append((label, name, summarise(values)))
            gaps = [batch for batch in itl if batch is not None]
            if gaps:  # every response's gaps as one batch: three updates a fold, not three a response
                batches.append((label, "itl", gaps[0] if len(gaps) == 1 else merge_batches(gaps)))
        total, current, vllm = self._total, self._current, self._vllm
        for label, name, batch in batches:
            total[name].add(batch)
            current[name].add(batch)
            vllm[name].add(label, batch)

    @property
    def total(self) -> dict[str, Distribution]:
        """Every response's latencies since the server started, per series."""
        with self._lock:
            self._fold()
            return self._total

    @property
    def vllm(self) -> dict[str, _VllmHistogram]:
        """The latencies in vLLM's buckets, per series and model label."""
        with self._lock:
            self._fold()
            return self._vllm

    # ------------------------------------------------------------------ sampling

    def _emitted_now(self) -> int:
        return self.emitted_tokens + sum(g.pacer.sent_tokens for g in list(self.live.values()))

    def tick(self, now: float | None = None) -> None:
        """One sampler step: snapshot the counters, start a new latency window slot."""
        now = self.clock() if now is None else now
        with self._lock:
            self._fold()  # what ended before this tick belongs to its window
            self._samples.append((now, self.api_requests, self._emitted_now(), sum(self.errors.values())))
            self._ticks.append(self._current)
            self._current = {m: Distribution() for m in METRICS}

    def run_sampler(self, interval: float = 1.0) -> None:
        """Tick every `interval` seconds, forever (run it in a greenlet; kill it to stop)."""
        import gevent

        self.tick()
        while True:
            gevent.sleep(interval)
            self.tick()

    def rates(self, now: float | None = None) -> dict[str, dict[str, float]]:
        """Requests, tokens and errors per second over about the last 1 s and 60 s (from the sampler)."""
        now = self.clock() if now is None else now
        current = (now, self.api_requests, self._emitted_now(), sum(self.errors.values()))
        out = {}
        for name, window in RATE_WINDOWS.items():
            base = None
            for s in reversed(self._samples):  # the newest sample at least `window` old, else the oldest
                base = s
                if now - s[0] >= window:
                    break
            span = now - base[0] if base is not None else 0.0
            if base is None or span <= 0:
                out[name] = {"requests_per_s": 0.0, "tokens_per_s": 0.0, "errors_per_s": 0.0}
                continue
            out[name] = {"requests_per_s": round((current[1] - base[1]) / span, 3),
                         "tokens_per_s": round((current[2] - base[2]) / span, 3),
                         "errors_per_s": round((current[3] - base[3]) / span, 3)}
        return out

    def window(self, ticks: int) -> dict[str, Distribution]:
        """Latencies of responses that ended in about the last `ticks` seconds (the lock held)."""
        self._fold()
        out = {m: Distribution() for m in METRICS}
        recent = list(self._ticks)[-ticks:] + [self._current]
        for slot in recent:
            for m in METRICS:
                out[m].merge(slot[m])
        return out

    # ------------------------------------------------------------------ reading

    def running_waiting(self, between: Callable[[], object] | None = None) -> dict[str, tuple[int, int]]:
        """Per model label: requests holding a batch slot, and requests queued for one.

        Counted outside the lock, calling `between()` every LIVE_STEP requests (with 500 open it takes
        about 0.5 ms, which a server spends writing due streams); only the copy of the list is taken
        under it. `between` may end streams, and so take the lock."""
        out: dict[str, list[int]] = {}
        labels = self.models  # a request's label was made when it started (generation_started)
        with self._lock:
            gens = list(self.live.values())
        for start in range(0, len(gens), LIVE_STEP):
            if start and between is not None:
                between()
            for gen in gens[start:start + LIVE_STEP]:
                model = gen.request.model
                row = out.setdefault(model if model in labels else OTHER, [0, 0])
                row[0 if gen.slot.granted else 1] += 1
        return {k: (v[0], v[1]) for k, v in out.items()}

    def to_dict(self, now: float | None = None, between: Callable[[], object] | None = None) -> dict:
        """What /llmsim/stats reports. `between` is called now and then while counting the open requests
        (a server passes precise.run_due: the streams due meanwhile go out on time)."""
        rw = self.running_waiting(between)
        with self._lock:
            by_endpoint: dict[str, dict[str, int]] = {}
            for (endpoint, status), n in sorted(self.requests.items()):
                by_endpoint.setdefault(endpoint, {})[str(status)] = n
            models = {}
            for label, m in self.models.items():
                running, waiting = rw.get(label, (0, 0))
                models[label] = {"requests": m.requests, "running": running, "waiting": waiting,
                                 "prompt_tokens": m.prompt_tokens, "completion_tokens": m.completion_tokens,
                                 "finished": dict(sorted(m.finished.items()))}
            windows = {name: self.window(ticks) for name, ticks in LATENCY_WINDOWS.items()}
            latency = {name: {m: d[m].summary() for m in METRICS} for name, d in windows.items()}
            latency["total"] = {m: self._total[m].summary() for m in METRICS}
            return {
                "uptime_s": round(time.time() - self.started, 3),
                "requests": by_endpoint,
                "requests_total": sum(self.requests.values()),
                "active": sum(r for r, _ in rw.values()),
                "queued": sum(w for _, w in rw.values()),
                "active_streams": self.active_streams,
                "models": models,
                "prompt_tokens_total": self.prompt_tokens,
                "output_tokens_total": self.output_tokens,
                "streamed_tokens_total": self._emitted_now(),
                "client_disconnects_total": self.disconnects,
                "rate_limited_total": self.rate_limited,
                "faults_injected": dict(sorted(self.faults.items())),
                "errors": dict(sorted(self.errors.items())),
                "rates": self.rates(now),
                "latency_ms": latency,
                "prefix_cache": self._cache_dict(),
            }

    def _cache_dict(self) -> dict:
        queries, hits = sum(self.cache_queries.values()), sum(self.cache_hits.values())
        return {"queries_total": queries, "hits_total": hits, "hit_rate": round(hits / queries, 6) if queries else 0.0,
                "models": {m: {"queries_total": q, "hits_total": self.cache_hits[m]}
                           for m, q in sorted(self.cache_queries.items())}}

    def status_line(self, between: Callable[[], object] | None = None) -> str:
        """One line for `llmsim serve --stats-interval`: rates, state and recent latencies (`between` as
        in to_dict)."""
        d = self.to_dict(between=between)
        r = d["rates"]["1s"]
        lat = d["latency_ms"]["10s"]

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        errors = sum(d["errors"].values())
        return (f"llmsim: {r['requests_per_s']:.1f} req/s, {r['tokens_per_s']:.0f} tokens/s, "
                f"active {d['active']}, queued {d['queued']}, TTFT p50/p99 {ms(lat['ttft']['p50'])}/"
                f"{ms(lat['ttft']['p99'])} ms, ITL p50/p99 {ms(lat['itl']['p50'])}/{ms(lat['itl']['p99'])} ms, "
                f"requests {d['requests_total']}, errors {errors}")


def _finished_reason(finish_reason: str) -> str:
    """vLLM's finished_reason of a completed response (a tool call ends as "stop" in the engine)."""
    return "length" if finish_reason == "length" else "stop"


# --------------------------------------------------------------------------- Prometheus


class _Collector(Collector):
    """Reads ServerStats and the schedulers at scrape time (nothing is observed twice)."""

    def __init__(self, stats: ServerStats, schedulers: Schedulers | None,
                 between: Callable[[], object] | None = None) -> None:
        self.stats, self.schedulers, self.between = stats, schedulers, between

    def collect(self) -> Iterator[Any]:
        st = self.stats
        rw = st.running_waiting(self.between)
        with st._lock:  # read whole under the lock, which is never held where a reader could switch away
            st._fold()
            families = [*self._vllm(st, rw), *self._own(st)]
        yield from families
        if self.schedulers is not None:
            yield from _scheduler_families(self.schedulers.snapshot())

    @staticmethod
    def _vllm(st: ServerStats, rw: dict[str, tuple[int, int]]) -> Iterator[Any]:
        labels = ["model_name", "engine"]
        running = GaugeMetricFamily("vllm:num_requests_running", "Number of requests in model execution batches.",
                                    labels=labels)
        waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                                    labels=labels)
        prompt = CounterMetricFamily("vllm:prompt_tokens", "Number of prefill tokens processed.", labels=labels)
        generation = CounterMetricFamily("vllm:generation_tokens", "Number of generation tokens processed.",
                                         labels=labels)
        success = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                      labels=labels + ["finished_reason"])
        for label, m in st.models.items():
            key = [label, VLLM_ENGINE]
            r, w = rw.get(label, (0, 0))
            running.add_metric(key, r)
            waiting.add_metric(key, w)
            prompt.add_metric(key, m.prompt_tokens)
            generation.add_metric(key, m.completion_tokens)
            for reason in VLLM_FINISH_REASONS:
                success.add_metric(key + [reason], m.finished.get(reason, 0))
        queries = CounterMetricFamily("vllm:prefix_cache_queries",
                                      "Prefix cache queries, in terms of number of queried tokens.", labels=labels)
        hits = CounterMetricFamily("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
                                   labels=labels)
        for model, n in sorted(st.cache_queries.items()):
            queries.add_metric([model, VLLM_ENGINE], n)
            hits.add_metric([model, VLLM_ENGINE], st.cache_hits.get(model, 0))
        yield from (running, waiting, prompt, generation, success, queries, hits)
        for name, help_, series in VLLM_HISTOGRAMS:
            h = st._vllm[series]
            fam = HistogramMetricFamily(name, help_, labels=labels)
            for label in st.models:
                counts, total = h.by_model.get(label) or ([0] * (len(h.bounds) + 1), 0.0)
                cumulative, buckets = 0, []
                for bound, n in zip([*map(_le, h.bounds), "+Inf"], counts, strict=True):
                    cumulative += n
                    buckets.append((bound, cumulative))
                fam.add_metric([label, VLLM_ENGINE], buckets, total)
            yield fam

    @staticmethod
    def _own(st: ServerStats) -> Iterator[Any]:
        requests = CounterMetricFamily("llmsim_requests", "Requests answered, by endpoint and status.",
                                       labels=["endpoint", "status"])
        for (endpoint, status), n in sorted(st.requests.items()):
            requests.add_metric([endpoint, str(status)], n)
        faults = CounterMetricFamily("llmsim_faults_injected", "Faults injected (config errors:), by kind.",
                                     labels=["kind"])
        for kind, n in sorted(st.faults.items()):
            faults.add_metric([kind], n)
        errors = CounterMetricFamily("llmsim_errors", "Requests that failed, by kind: the API error kind answered, "
                                     "midstream, timeout or client_disconnect.", labels=["kind"])
        for kind, n in sorted(st.errors.items()):
            errors.add_metric([kind], n)
        yield from (requests, faults, errors)
        yield CounterMetricFamily("llmsim_rate_limit_rejections", "Requests refused by the rate limiter (429).",
                                  value=st.rate_limited)
        yield CounterMetricFamily("llmsim_client_disconnects", "Responses cut short by the client.",
                                  value=st.disconnects)
        yield GaugeMetricFamily("llmsim_active_streams", "Streams being generated now.", value=st.active_streams)
        yield CounterMetricFamily("llmsim_prompt_tokens", "Prompt tokens received.", value=st.prompt_tokens)
        yield CounterMetricFamily("llmsim_output_tokens", "Completion tokens generated (hidden reasoning included).",
                                  value=st.output_tokens)


_SCHEDULER_METRICS = (
    ("llmsim_batch_active", "gauge", "active", "Streams holding a batch slot now."),
    ("llmsim_batch_waiting", "gauge", "waiting", "Requests queued for a batch slot now."),
    ("llmsim_batch_itl_multiplier", "gauge", "multiplier", "Current decode slowdown (ITL multiplier)."),
    ("llmsim_batch_queued", "counter", "queued", "Requests that had to queue."),
    ("llmsim_batch_rejected", "counter", "rejected", "Requests refused with a full queue (429/529)."),
    ("llmsim_batch_queue_wait_seconds", "counter", "queue_wait_s_total", "Summed queue wait."),
)


def _scheduler_families(snaps: dict[str, dict]) -> Iterator[Any]:
    if not snaps:
        return
    for name, kind, key, help_ in _SCHEDULER_METRICS:
        fam = (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(name, help_, labels=["profile"])
        for profile, snap in snaps.items():
            fam.add_metric([profile], snap[key])
        yield fam


def _le(bound: float) -> str:
    return repr(float(bound))


class _OneFamily(Collector):
    """A family already collected, as a Collector: rendered on its own by generate_latest."""

    def __init__(self, family: Any) -> None:
        self.family = family

    def collect(self) -> Iterator[Any]:
        yield self.family


def render_metrics(registry: CollectorRegistry, between: Callable[[], object] | None = None) -> bytes:
    """generate_latest(registry), one family at a time, calling `between()` after each.

    prometheus_client checks every name it writes (about 6 µs a sample line): a whole scrape takes 1-5 ms,
    and a `--workers` replica renders one every half second. A server passes precise.run_due, so the
    streams that fall due meanwhile go out on time instead of after the scrape. The families are
    collected first, at once: the stats lock they are read under is not held while `between` runs
    (a stream that ends there takes it)."""
    parts = []
    for family in list(registry.collect()):
        parts.append(generate_latest(_OneFamily(family)))
        if between is not None:
            between()
    return b"".join(parts)


def metrics_registry(stats: ServerStats, schedulers: Schedulers | None = None,
                     between: Callable[[], object] | None = None) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one) exposing this server's metrics;
    `between` as in ServerStats.to_dict."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats, schedulers, between))
    return registry
