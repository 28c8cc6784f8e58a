"""Locustfile for bench/locust_throughput.py: the chat user, plus a per-event measure of the client's own error.

The bench server names every content event with its send time (`event: <monotonic seconds>`).
For each event the client's delay is (its arrival stamp - the server's send stamp); the two clocks
differ by a constant (CLOCK_REALTIME or perf_counter against CLOCK_MONOTONIC), which cancels: an
ITL sample's client error is the change of that delay between two consecutive events of a stream.
The probe only keeps (send stamp, arrival stamp) per event while the test runs, so that it adds
next to nothing to the client's own work; the histograms are built and written to
$LLMSIM_BENCH_OUT when Locust quits.
"""

import json
import os
import resource
from array import array
from collections import defaultdict

from gevent import getcurrent
from locust import events

from llmsim.loadtest.adapters import ChatCompletionsAdapter
from llmsim.loadtest.histogram import Histogram
from llmsim.loadtest.users import ChatCompletionsUser

_OPEN: dict = defaultdict(lambda: array("d"))  # greenlet -> send stamp, arrival stamp, ... of its current stream
_DONE: list = []  # the finished streams' arrays (arrays of floats: nothing for the garbage collector to walk)
_CPU_AT_START: list = []


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@events.test_start.add_listener
def _start(**_kw):
    _CPU_AT_START[:] = [_cpu_s()]


class StampedChat(ChatCompletionsAdapter):
    def read_event(self, event):
        delta = super().read_event(event)
        if event.event and (delta.text or delta.reasoning):
            a = _OPEN[getcurrent()]
            a.append(float(event.event))
            a.append(event.t)
        elif delta.done:
            _DONE.append(_OPEN.pop(getcurrent(), array("d")))
        return delta


class BenchUser(ChatCompletionsUser):
    adapter = StampedChat()


def figures() -> dict:
    """ERROR: |client error| per ITL sample (ms); SENT: the ITL as sent (ms); same_stamp: ITL samples whose
    two events carry the very same arrival stamp (with kernel stamps: the client read the first one only
    after the second had arrived, and the kernel had merged them in the receive queue)."""
    error, sent, same = Histogram(), Histogram(), 0
    for stream in _DONE:
        prev = None
        for i in range(0, len(stream), 2):
            s, t = stream[i], stream[i + 1]
            if prev is not None and prev[0] < s:
                error.record(abs((t - s) - (prev[1] - prev[0])) * 1000.0)
                sent.record((s - prev[0]) * 1000.0)
                same += t == prev[1]
            prev = (s, t)
    return {"error": error.to_wire(), "sent": sent.to_wire(), "same_stamp": same}


@events.quitting.add_listener
def _write(environment, **_kw):
    path = os.environ.get("LLMSIM_BENCH_OUT")
    if path:
        cpu = _cpu_s() - _CPU_AT_START[0] if _CPU_AT_START else None
        with open(path, "w") as f:
            json.dump({**figures(), "test_cpu_s": cpu}, f)
