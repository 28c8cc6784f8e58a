"""Open-loop load: Poisson arrivals on a fixed schedule, and latency corrected for coordinated omission.

A closed-loop user sends its next request only when the previous one is done,
so a slow server quietly lowers the offered load ("coordinated omission").
An open-loop source decides every send time in advance: arrivals form a
Poisson process of rate R, and each arrival is a request whether or not the
earlier ones have finished. Its latency is measured twice:

- service time: from the moment the request was actually written (the
  toolkit's usual metrics);
- from the intended send time: service time plus however late the request
  left (the source had `max_in_flight` requests outstanding and had to wait,
  or the process was too busy to send on time). This is what a caller on that
  schedule would see; TTFT and E2E grow by the delay, ITL and TPOT do not.

Superposed Poisson processes are Poisson, so N users at R req/s each offer
N×R req/s in total, however Locust spreads them over workers.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
from gevent.lock import Semaphore
from gevent.pool import Group

from ..precise import PRECISE_MARGIN_S, precise_timer
from .metrics import RequestRecord


def poisson_arrivals(rate: float, rng: random.Random, start: float) -> Iterator[float]:
    """Absolute arrival times (s) of a Poisson process of `rate` per second, after `start`.

    The schedule is fixed in advance (exponential gaps added to the previous
    arrival, not to the moment a request actually left), so lateness never
    shifts or thins later arrivals.
    """
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    t = start
    while True:
        t += rng.expovariate(rate)
        yield t


def scheduled_delay_ms(actual_start: float, intended: float) -> float:
    """How late (ms) a request left compared with its intended send time; never negative."""
    return max(0.0, (actual_start - intended) * 1000.0)


def from_intended(rec: RequestRecord, intended: float) -> RequestRecord:
    """The record as seen from its intended send time: TTFT and E2E include the delay, ITL and TPOT do not."""
    delay = scheduled_delay_ms(rec.start_time, intended)
    if delay == 0.0:
        return rec
    return dataclasses.replace(
        rec, start_time=intended, e2e_ms=rec.e2e_ms + delay,
        ttft_ms=None if rec.ttft_ms is None else rec.ttft_ms + delay)


class OpenLoopSource:
    """One Locust user's Poisson arrivals, or a given schedule: each becomes a request on its own connection.

    At most `max_in_flight` requests are outstanding; an arrival beyond that
    waits for one to finish and is still sent and counted, its wait showing in
    the latency from the intended send time. `send(client, intended)` sends
    one request; `track(intended)` brackets an arrival until it is recorded.
    With `schedule` (an iterator of (intended time, item) in time order, e.g. a
    trace replay) instead of `rate`, `send(client, intended, item)` is called,
    and run() returns once the schedule is exhausted and its requests are done.
    """

    def __init__(self, rate: float | None, max_in_flight: int, *, new_client: Callable[[], Any],
                 send: Callable[..., object], track: Callable[[float], Any],
                 rng: random.Random | None = None, clock: Callable[[], float] = time.time,
                 schedule: Iterator[tuple[float, Any]] | None = None) -> None:
        if (rate is None) == (schedule is None):
            raise ValueError("give either a rate or a schedule")
        self.rate = rate
        self.schedule = schedule
        self.slots = Semaphore(max_in_flight)
        self.new_client = new_client
        self.send = send
        self.track = track
        self.rng = rng or random.Random()
        self.clock = clock
        self.group = Group()
        self.free: list[Any] = []
        self.clients: list[Any] = []

    def run(self) -> None:
        """Dispatch arrivals until the user is stopped (this greenlet killed), or the schedule is done."""
        if self.schedule is None:
            assert self.rate is not None
            for t in poisson_arrivals(self.rate, self.rng, self.clock()):
                self._at(t)
                self.group.spawn(self._one, t)
        else:
            for t, item in self.schedule:
                self._at(t)
                self.group.spawn(self._one, t, item)
            self.group.join()

    def _at(self, t: float) -> None:
        """Wait until `t`: a coarse sleep (the loop rounds waits up to the next millisecond), then the
        precise timer for the last PRECISE_MARGIN_S (llmsim.precise: timerfd on Linux)."""
        wait = t - self.clock()
        timer = precise_timer() if wait > 0 and self.clock is time.time else None
        if timer is None:
            if wait > 0:
                gevent.sleep(wait)
            return
        if wait > PRECISE_MARGIN_S:
            gevent.sleep(wait - PRECISE_MARGIN_S)
        # The timer ends waits its learned lead early (for the server's writes); a send must not be early.
        timer.until(time.monotonic() + (t - time.time()) + timer.lead)

    def _one(self, intended: float, *item: Any) -> None:
        with self.track(intended), self.slots:
            client = self.free.pop() if self.free else self._new()
            try:
                self.send(client, intended, *item)
            finally:
                self.free.append(client)

    def _new(self) -> Any:
        client = self.new_client()
        self.clients.append(client)
        return client

    def stop(self) -> None:
        """Abandon outstanding requests and close every connection."""
        self.group.kill(block=False)
        for client in self.clients:
            client.close()
        self.clients, self.free = [], []
