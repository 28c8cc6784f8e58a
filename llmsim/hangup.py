"""Noticing a client that left while its request waits (queued, or inside TTFT).

A waiting request writes nothing, so a closed connection would go unnoticed
until the first token: a queued request would keep its place and then hold a
batch slot for a whole TTFT with nobody listening. `SocketWatch` waits for the
deadline (or the slot) *and* for the client's socket to become readable; EOF
there means the client is gone, and the wait ends at once with ClientGone.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from gevent import get_hub
from gevent.hub import Waiter


class ClientGone(Exception):
    """The client closed its connection while its request was waiting."""


_READABLE, _TIMEOUT, _EVENT = "readable", "timeout", "event"


def _switcher(waiter: Waiter) -> Any:
    return lambda _event: waiter.switch(_EVENT)


class SocketWatch:
    """Sleeps and event waits that end early when the client hangs up."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock

    def _gone(self) -> bool:
        """True on EOF or a reset; a readable socket with data (a pipelined request) is not a hang-up."""
        sock = self.sock
        if sock is None:
            return False
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if data:
            self.sock = None  # pipelined bytes: readable from now on, so stop watching
            return False
        return True

    def _wait(self, seconds: float | None, event: Any = None) -> bool:
        """Wait for the timeout or the event; True if it came (False: the timeout passed)."""
        loop = get_hub().loop
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            if event is not None and event.is_set():
                return True
            if deadline is not None:
                seconds = max(0.0, deadline - time.monotonic())
            waiter = Waiter()
            link = None
            io = loop.io(self.sock.fileno(), 1) if self.sock is not None else None
            timer = loop.timer(seconds) if seconds is not None else None
            try:
                if io is not None:
                    io.start(waiter.switch, _READABLE)
                if timer is not None:
                    timer.start(waiter.switch, _TIMEOUT)
                if event is not None:
                    link = _switcher(waiter)
                    event.rawlink(link)
                why = waiter.get()
            finally:
                if io is not None:
                    io.stop()
                    io.close()
                if timer is not None:
                    timer.stop()
                    timer.close()
                if link is not None:
                    event.unlink(link)
            if why == _READABLE:
                if self._gone():
                    raise ClientGone()
                continue  # pipelined data: keep waiting, unwatched
            return why == _EVENT

    def sleep(self, seconds: float) -> None:
        """gevent.sleep(seconds), or ClientGone as soon as the client hangs up."""
        if self.sock is None:
            import gevent

            gevent.sleep(seconds)
            return
        self._wait(max(0.0, seconds))

    def wait(self, event: Any, timeout: float | None = None) -> bool:
        """event.wait(timeout), or ClientGone as soon as the client hangs up."""
        if self.sock is None:
            return bool(event.wait(timeout))
        return self._wait(timeout, event)
