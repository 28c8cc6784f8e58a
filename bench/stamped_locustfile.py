"""Locustfile for bench/locust_throughput.py: the chat user, plus a per-event measure of the client's own error.

The bench server names every content event with its send time (`event: <monotonic seconds>`).
perf_counter() and time.monotonic() read the same clock on Linux, so for each event the
client's delay is (its arrival stamp - the server's send stamp). An ITL sample's client error
is the change of that delay between two consecutive events of a stream. The histograms are
written to $LLMSIM_BENCH_OUT when Locust quits.
"""

import json
import os

import gevent
from locust import events

from llmsim.loadtest.adapters import ChatCompletionsAdapter
from llmsim.loadtest.histogram import Histogram
from llmsim.loadtest.users import ChatCompletionsUser

ERROR = Histogram()  # |client error| per ITL sample, ms
SENT = Histogram()  # ITL as sent by the server, ms
SAME_STAMP = [0]
"""ITL samples whose two events carry the very same arrival stamp: with kernel stamps, the client read
the first one only after the second had arrived, and the kernel had merged them in the receive queue."""


class StampedChat(ChatCompletionsAdapter):
    def __init__(self) -> None:
        self._last: dict = {}

    def read_event(self, event):
        delta = super().read_event(event)
        if (delta.text or delta.reasoning) and event.event:
            sent = float(event.event)
            delay = event.t - sent
            key = id(gevent.getcurrent())
            prev = self._last.get(key)
            if prev is not None and prev[0] < sent:
                ERROR.record(abs(delay - prev[1]) * 1000.0)
                SENT.record((sent - prev[0]) * 1000.0)
                SAME_STAMP[0] += event.t == prev[2]
            self._last[key] = (sent, delay, event.t)
        elif delta.done:
            self._last.pop(id(gevent.getcurrent()), None)
        return delta


class BenchUser(ChatCompletionsUser):
    adapter = StampedChat()


@events.quitting.add_listener
def _write(environment, **_kw):
    path = os.environ.get("LLMSIM_BENCH_OUT")
    if path:
        with open(path, "w") as f:
            json.dump({"error": ERROR.to_wire(), "sent": SENT.to_wire(), "same_stamp": SAME_STAMP[0]}, f)
