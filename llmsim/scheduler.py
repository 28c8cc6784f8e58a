"""The load model: batch slots, a FIFO queue and decode slowdown, one per deployment.

A real inference deployment decodes a bounded batch of sequences at once. More
requests wait in a queue (their TTFT grows), a full queue is refused (429/529),
and every sequence decodes more slowly the fuller the batch is. A profile's
`capacity:` section describes this; `Scheduler` enforces it for one profile.

The design keeps the model exact and testable:

* `Scheduler` is a pure state machine. It never sleeps; it reads time from an
  injectable clock only to record queue waits. `submit()` admits, queues or
  refuses at once; `Slot.release()` frees a slot and grants it to the next
  waiter. Blocking lives in one thin gevent adapter, `Slot.wait()` (and
  `Scheduler.acquire()` = submit + wait).
* Pacing stays in `stream.Pacer`: it asks the slot for `multiplier()` each
  time a gap starts, so the slowdown follows streams joining and leaving.
* `simulate()` runs the very same Scheduler and stream.Pacer on a virtual
  clock (each request in a raw greenlet whose sleep is a switch back to an
  event loop), so tests are exact and fast, and a capacity test can predict
  its knee from the profile alone.

Profiles without `capacity:` get a `NullScheduler`: no queue, multiplier 1.0.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from greenlet import getcurrent, greenlet

from .latency import LatencyProfile
from .prefix_cache import PrefixCache
from .profiles import Capacity

if TYPE_CHECKING:  # pragma: no cover
    from .profiles import ModelProfile

Clock = Callable[[], float]

RETRY_AFTER_MIN_S = 1.0
RETRY_AFTER_MAX_S = 60.0


def slowdown_multiplier(active: float, max_concurrent: int, slowdown_at_full: float) -> float:
    """ITL multiplier with `active` streams decoding: 1 alone, slowdown_at_full when full, linear between.

    1 + (slowdown_at_full - 1) * (active - 1) / (max_concurrent - 1); 1.0 when
    max_concurrent is 1 or at most one stream is active.
    """
    if max_concurrent <= 1 or active <= 1:
        return 1.0
    return 1.0 + (slowdown_at_full - 1.0) * (min(active, max_concurrent) - 1) / (max_concurrent - 1)


class QueueFull(Exception):
    """Admission refused: the queue already holds `queue_limit` requests.

    The HTTP layer answers OpenAI 429 (with Retry-After) or Anthropic 529
    overloaded_error; `retry_after_s` is the scheduler's estimate of how long
    the current queue takes to drain, clamped to [1, 60] s.
    """

    def __init__(self, name: str, waiting: int, queue_limit: int, retry_after_s: float) -> None:
        self.name, self.waiting, self.queue_limit, self.retry_after_s = name, waiting, queue_limit, retry_after_s
        where = f" for {name}" if name else ""
        super().__init__(f"the server is overloaded{where}: {waiting} requests already queued "
                         f"(queue_limit {queue_limit}); retry after {math.ceil(retry_after_s)} s")

    @property
    def retry_after_header(self) -> str:
        """Retry-After as whole seconds (the header allows no fractions)."""
        return str(max(1, math.ceil(self.retry_after_s)))


@dataclass
class SchedulerStats:
    """Cumulative counters of one scheduler (for /stats and Prometheus)."""

    admitted: int = 0         # granted a slot, immediately or after queueing
    queued: int = 0           # had to wait before being granted (or cancelled while waiting)
    rejected: int = 0         # refused with QueueFull
    cancelled: int = 0        # gave up while still waiting (client disconnect, timeout)
    completed: int = 0        # released a granted slot
    queue_wait_s: float = 0.0  # sum of queue waits of admitted requests
    max_waiting: int = 0
    max_active: int = 0


class Slot:
    """One request's claim on a batch slot: queued, then granted, then released.

    Usable as a context manager; `release()` is idempotent, so calling it from
    a `finally`, a GeneratorExit handler and a close callback is safe.
    """

    __slots__ = ("_scheduler", "submitted_at", "granted_at", "released_at", "queued", "_on_grant")

    def __init__(self, scheduler: Scheduler | NullScheduler, submitted_at: float) -> None:
        self._scheduler = scheduler
        self.submitted_at = submitted_at
        self.granted_at: float | None = None
        self.released_at: float | None = None
        self.queued = False  # had to wait in the queue
        self._on_grant: Callable[[Slot], None] | None = None

    @property
    def granted(self) -> bool:
        return self.granted_at is not None

    @property
    def released(self) -> bool:
        return self.released_at is not None

    @property
    def queue_wait_s(self) -> float:
        """Seconds spent queued before the grant (0 until granted)."""
        return 0.0 if self.granted_at is None else self.granted_at - self.submitted_at

    def multiplier(self) -> float:
        """The ITL multiplier of the batch right now (read it when a gap starts)."""
        return self._scheduler.multiplier()

    def wait(self, timeout: float | None = None, watch: Any = None) -> float | None:
        """Block this greenlet until the slot is granted (gevent adapter).

        Returns the grant time if the request had to queue, so the pacer starts
        its TTFT from the moment decoding could begin rather than from the
        wake-up; None if it was admitted at once (start "now", as without a
        scheduler). If the wait is interrupted (timeout -> TimeoutError, a
        killed greenlet, the client hanging up seen by `watch`: a hangup.SocketWatch),
        the request leaves the queue before the error goes on.
        """
        if self.granted_at is None:
            if self.released_at is not None:
                raise RuntimeError("this slot left the queue before it was granted")
            from gevent.event import Event

            event = Event()
            self._on_grant = lambda _s: event.set()
            try:
                if not (event.wait(timeout) if watch is None else watch.wait(event, timeout)):
                    raise TimeoutError(f"no batch slot within {timeout} s")
            except BaseException:
                self.release()
                raise
        return self.granted_at if self.queued else None

    def release(self) -> None:
        """Free the slot (or leave the queue) and wake the next waiter; idempotent."""
        if self.released_at is None:
            self._scheduler._release(self)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "granted" if self.granted else "waiting"
        return f"<Slot {state} wait={self.queue_wait_s:.3f}s>"


class Scheduler:
    """Batch slots, FIFO queue and slowdown of one deployment, as a pure state machine.

    `submit()` and `Slot.release()` never block or sleep; `acquire()` is the
    gevent adapter that blocks a greenlet until its slot is granted.
    """

    def __init__(self, capacity: Capacity, *, clock: Clock = time.monotonic, name: str = "",
                 expected_hold_s: float = 1.0) -> None:
        if capacity.max_concurrent < 1:
            raise ValueError("capacity.max_concurrent must be >= 1")
        if capacity.queue_limit < 0:
            raise ValueError("capacity.queue_limit must be >= 0")
        self.capacity = capacity
        self.max_concurrent = capacity.max_concurrent
        self.queue_limit = capacity.queue_limit
        self.slowdown_at_full = capacity.slowdown_at_full
        self.clock = clock
        self.name = name
        self.active = 0
        self._queue: deque[Slot] = deque()
        self.stats = SchedulerStats()
        # Mean slot hold time (EWMA of completed requests), seeded by the caller's
        # estimate; it only shapes the Retry-After hint.
        self._hold_s = max(0.0, expected_hold_s)

    @property
    def waiting(self) -> int:
        """Requests queued for a slot right now."""
        return len(self._queue)

    def multiplier(self, active: int | None = None) -> float:
        """ITL multiplier for `active` streams decoding (default: now)."""
        return slowdown_multiplier(self.active if active is None else active, self.max_concurrent,
                                   self.slowdown_at_full)

    def retry_after_s(self) -> float:
        """Estimated seconds for the current queue to drain, clamped to [1, 60]."""
        est = self._hold_s * (self.waiting + 1) / self.max_concurrent
        return min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, est))

    def submit(self, on_grant: Callable[[Slot], None] | None = None) -> Slot:
        """Admit now, queue, or raise QueueFull; never blocks.

        A request that would make more than `queue_limit` requests wait is
        refused. `on_grant(slot)` is called when a queued slot is granted later
        (not when it is granted at once: check `slot.granted`).
        """
        now = self.clock()
        slot = Slot(self, now)
        if self.active < self.max_concurrent and not self._queue:
            self._grant(slot, now)
            return slot
        if len(self._queue) >= self.queue_limit:
            self.stats.rejected += 1
            raise QueueFull(self.name, len(self._queue), self.queue_limit, self.retry_after_s())
        slot._on_grant = on_grant
        slot.queued = True
        self._queue.append(slot)
        self.stats.queued += 1
        if len(self._queue) > self.stats.max_waiting:
            self.stats.max_waiting = len(self._queue)
        return slot

    def acquire(self, timeout: float | None = None) -> Slot:
        """submit() then Slot.wait(): block until granted, or raise QueueFull at once if the queue is full."""
        slot = self.submit()
        slot.wait(timeout)
        return slot

    def _grant(self, slot: Slot, now: float) -> None:
        slot.granted_at = now
        self.active += 1
        st = self.stats
        st.admitted += 1
        st.queue_wait_s += now - slot.submitted_at
        if self.active > st.max_active:
            st.max_active = self.active

    def _release(self, slot: Slot) -> None:
        now = self.clock()
        slot.released_at = now
        if slot.granted_at is None:  # gave up while queued
            try:
                self._queue.remove(slot)
            except ValueError:  # pragma: no cover - a foreign slot
                pass
            self.stats.cancelled += 1
            return
        self.active -= 1
        self.stats.completed += 1
        self._hold_s += 0.1 * ((now - slot.granted_at) - self._hold_s)
        while self._queue and self.active < self.max_concurrent:
            nxt = self._queue.popleft()
            self._grant(nxt, now)
            cb, nxt._on_grant = nxt._on_grant, None
            if cb is not None:
                cb(nxt)

    def snapshot(self) -> dict:
        """Gauges and counters for stats endpoints."""
        s = self.stats
        return {"max_concurrent": self.max_concurrent, "queue_limit": self.queue_limit,
                "active": self.active, "waiting": self.waiting, "multiplier": self.multiplier(),
                "admitted": s.admitted, "queued": s.queued, "rejected": s.rejected, "cancelled": s.cancelled,
                "completed": s.completed, "queue_wait_s_total": s.queue_wait_s,
                "max_waiting": s.max_waiting, "max_active": s.max_active}

    def __repr__(self) -> str:
        return f"<Scheduler {self.name or '?'} active={self.active}/{self.max_concurrent} waiting={self.waiting}>"


class NullScheduler:
    """Infinite capacity (a profile without `capacity:`): admit at once, multiplier 1.0.

    Same interface as Scheduler, so callers never branch; it only counts.
    """

    capacity = None
    max_concurrent = 0
    queue_limit = 0
    waiting = 0

    def __init__(self, *, clock: Clock = time.monotonic, name: str = "") -> None:
        self.clock = clock
        self.name = name
        self.active = 0
        self.stats = SchedulerStats()

    def multiplier(self, active: int | None = None) -> float:
        return 1.0

    def submit(self, on_grant: Callable[[Slot], None] | None = None) -> Slot:
        now = self.clock()
        slot = Slot(self, now)
        slot.granted_at = now
        self.active += 1
        self.stats.admitted += 1
        if self.active > self.stats.max_active:
            self.stats.max_active = self.active
        return slot

    def acquire(self, timeout: float | None = None) -> Slot:
        return self.submit()

    def _release(self, slot: Slot) -> None:
        slot.released_at = self.clock()
        self.active -= 1
        self.stats.completed += 1

    def snapshot(self) -> dict:
        s = self.stats
        return {"max_concurrent": None, "queue_limit": None, "active": self.active, "waiting": 0,
                "multiplier": 1.0, "admitted": s.admitted, "queued": 0, "rejected": 0, "cancelled": 0,
                "completed": s.completed, "queue_wait_s_total": 0.0, "max_waiting": 0,
                "max_active": s.max_active}

    def __repr__(self) -> str:
        return f"<NullScheduler {self.name or '?'} active={self.active}>"


def make_scheduler(profile: ModelProfile, *, clock: Clock = time.monotonic) -> Scheduler | NullScheduler:
    """The scheduler a profile asks for: Scheduler with `capacity:`, else NullScheduler."""
    if profile.capacity is None:
        return NullScheduler(clock=clock, name=profile.name)
    lat = profile.latency
    hold_s = (lat.ttft.mean_ms + 256 * lat.itl.mean_ms) / 1000.0  # a typical reply, only for Retry-After
    return Scheduler(profile.capacity, clock=clock, name=profile.name, expected_hold_s=hold_s)


class Schedulers:
    """One scheduler per profile deployment, created on first use (the server keeps one of these),
    and next to it the deployment's prefix cache when its profile has `cache:`."""

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._by_name: dict[str, Scheduler | NullScheduler] = {}
        self._caches: dict[str, PrefixCache] = {}

    def get(self, profile: ModelProfile) -> Scheduler | NullScheduler:
        s = self._by_name.get(profile.name)
        if s is None:
            s = self._by_name[profile.name] = make_scheduler(profile, clock=self.clock)
        return s

    def cache(self, profile: ModelProfile) -> PrefixCache | None:
        """The deployment's prefix cache (None without `cache:`), created with its scheduler."""
        spec = profile.cache
        if spec is None:
            return None
        c = self._caches.get(profile.name)
        if c is None:
            self.get(profile)
            c = self._caches[profile.name] = PrefixCache(spec, spec.rule_for(profile.provider), clock=self.clock,
                                                         name=profile.name)
        return c

    def caches(self) -> dict[str, PrefixCache]:
        return dict(self._caches)

    def __iter__(self) -> Iterator[Scheduler | NullScheduler]:
        return iter(self._by_name.values())

    def snapshot(self) -> dict[str, dict]:
        """Every deployment's load-model figures, with `prefix_cache` where it has one."""
        out = {name: s.snapshot() for name, s in self._by_name.items()}
        for name, c in self._caches.items():
            out[name]["prefix_cache"] = c.snapshot()
        return out


# --------------------------------------------------------------------------- simulation


@dataclass(frozen=True)
class SimRequest:
    """One request of a simulated workload."""

    arrival_s: float
    output_tokens: int
    prompt_tokens: int = 0
    reasoning_tokens: int = 0
    stream: bool = True


@dataclass
class SimResult:
    """What one simulated request saw, in seconds on the virtual clock."""

    index: int
    arrival_s: float
    rejected: bool = False
    retry_after_s: float | None = None
    granted_s: float | None = None
    token_times: list[float] = field(default_factory=list)  # absolute time of each visible token
    end_s: float | None = None

    @property
    def queue_wait_s(self) -> float:
        return 0.0 if self.granted_s is None else self.granted_s - self.arrival_s

    @property
    def ttft_s(self) -> float | None:
        """From arrival to the first visible token (queue wait included)."""
        return self.token_times[0] - self.arrival_s if self.token_times else None

    @property
    def e2e_s(self) -> float | None:
        return None if self.end_s is None else self.end_s - self.arrival_s

    @property
    def itls_s(self) -> list[float]:
        tt = self.token_times
        return [b - a for a, b in itertools.pairwise(tt)]


def _sim_rng(seed: int | None, index: int) -> random.Random:
    # The server's per-request RNG (cli.state.AppState.request_rng): seeded runs
    # repeat by arrival order, whatever the interleaving.
    return random.Random(f"{seed}:{index}") if seed is not None else random.Random()


class Simulation:
    """A discrete-event run of the real Scheduler and stream.Pacer on a virtual clock.

    Each granted request runs stream.Pacer in a raw greenlet; the pacer's
    sleep() schedules a wake-up and switches back to the event loop. Events at
    the same instant run in the order they were scheduled, so a run is a pure
    function of its inputs and seed.
    """

    def __init__(self, latency: LatencyProfile, capacity: Capacity | None, *, seed: int | None = 0,
                 chunk_tokens: int = 1) -> None:
        self.latency = latency
        self.now = 0.0
        self.seed = seed
        self.chunk_tokens = max(1, chunk_tokens)
        self.scheduler: Scheduler | NullScheduler = (
            Scheduler(capacity, clock=self._clock) if capacity is not None else NullScheduler(clock=self._clock))
        self._events: list[tuple[float, int, Callable[[], object]]] = []
        self._seq = 0
        self._loop: greenlet | None = None
        self.results: list[SimResult] = []
        self.on_done: Callable[[SimResult], None] | None = None

    def _clock(self) -> float:
        return self.now

    def _sleep(self, seconds: float) -> None:
        self.at(self.now + seconds, getcurrent().switch)
        assert self._loop is not None
        self._loop.switch()

    def at(self, t: float, fn: Callable[[], object]) -> None:
        """Run fn at virtual time t (after everything already scheduled for t)."""
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, fn))

    def submit(self, req: SimRequest) -> SimResult:
        """Schedule a request's arrival; its result fills in as the run proceeds."""
        res = SimResult(index=len(self.results), arrival_s=req.arrival_s)
        self.results.append(res)
        self.at(req.arrival_s, lambda: self._arrive(req, res))
        return res

    def _arrive(self, req: SimRequest, res: SimResult) -> None:
        try:
            slot = self.scheduler.submit(on_grant=lambda s: self._start(req, res, s))
        except QueueFull as e:
            res.rejected, res.retry_after_s, res.end_s = True, e.retry_after_s, self.now
            if self.on_done:
                self.on_done(res)
            return
        if slot.granted:
            self._start(req, res, slot)

    def _plan(self, req: SimRequest):  # -> stream.TokenPlan
        from .stream import TokenPlan

        k, n = self.chunk_tokens, max(0, req.output_tokens)
        sizes = [k] * (n // k) + ([n % k] if n % k else [])
        return TokenPlan(pieces=[""] * len(sizes), piece_tokens=sizes, reasoning_tokens=max(0, req.reasoning_tokens))

    def _start(self, req: SimRequest, res: SimResult, slot: Slot) -> None:
        from .stream import Pacer

        res.granted_s = self.now
        plan = self._plan(req)
        pacer = Pacer(self.latency, _sim_rng(self.seed, res.index), prompt_tokens=req.prompt_tokens, slot=slot,
                      clock=self._clock, sleep=self._sleep)

        def run() -> None:
            start = self.now
            if req.stream:
                for i, _piece in enumerate(pacer.paced(plan, start)):
                    res.token_times.extend([self.now] * plan.piece_tokens[i])
            else:
                pacer.wait_all(plan, start)
                res.token_times.extend([self.now] * plan.output_tokens)
            res.end_s = self.now
            slot.release()
            if self.on_done:
                self.on_done(res)

        assert self._loop is not None
        self.at(self.now, greenlet(run, parent=self._loop).switch)

    def run(self, until: float = math.inf) -> list[SimResult]:
        """Process events up to `until` (virtual seconds); returns all results so far."""
        self._loop = getcurrent()
        ev = self._events
        while ev and ev[0][0] <= until:
            t, _, fn = heapq.heappop(ev)
            self.now = t
            fn()
        return self.results


def _latency_capacity(profile: ModelProfile | LatencyProfile, capacity: Capacity | None
                      ) -> tuple[LatencyProfile, Capacity | None]:
    if isinstance(profile, LatencyProfile):
        return profile, capacity
    return profile.latency, capacity if capacity is not None else profile.capacity


def simulate(profile: ModelProfile | LatencyProfile, requests: Sequence[SimRequest], *,
             capacity: Capacity | None = None, seed: int | None = 0) -> list[SimResult]:
    """Open loop: run `requests` (in arrival order) through the load model on a virtual clock.

    `profile` is a ModelProfile (its capacity is used unless `capacity` is given)
    or a bare LatencyProfile plus `capacity`. Returns one SimResult per request,
    in input order: queue wait, TTFT, per-token times, or rejection.
    """
    lat, cap = _latency_capacity(profile, capacity)
    sim = Simulation(lat, cap, seed=seed, chunk_tokens=getattr(profile, "chunk_tokens", 1))
    for r in requests:
        sim.submit(r)
    return sim.run()


def simulate_closed_loop(profile: ModelProfile | LatencyProfile, users: int, duration_s: float, *,
                         output_tokens: int, prompt_tokens: int = 0, reasoning_tokens: int = 0,
                         think_time_s: float = 0.0, stream: bool = True, capacity: Capacity | None = None,
                         retry_backoff_s: float = 1.0, seed: int | None = 0) -> list[SimResult]:
    """Closed loop: `users` each send a request, wait for it (and think_time_s), repeat.

    Models a Locust step at a fixed user count. Users start together at t=0;
    requests still running at `duration_s` are left unfinished (end_s None).
    A user whose request is refused (only possible when users exceed
    max_concurrent + queue_limit) tries again after retry_backoff_s.
    """
    lat, cap = _latency_capacity(profile, capacity)
    sim = Simulation(lat, cap, seed=seed, chunk_tokens=getattr(profile, "chunk_tokens", 1))

    def send(t: float) -> None:
        if t < duration_s:
            sim.submit(SimRequest(t, output_tokens, prompt_tokens, reasoning_tokens, stream))

    sim.on_done = lambda res: send(sim.now + (max(retry_backoff_s, 1e-3) if res.rejected else think_time_s))
    for _ in range(users):
        send(0.0)
    return sim.run(until=duration_s)
