"""Streams with no greenlet of their own: once its headers are out, the event loop writes a stream.

A connection's greenlet lives as long as its connection, so an open stream
would keep it while it waits for its tokens (its saved C stack and the pages
of frame stack it touched: about 9 KB, see bench/memory.py) and switch into it
for every token. Instead, the handler writes the stream's headers and opening
events, and at its first wait (for the first token when its batch slot is
granted; for the second when it had to queue, since the queue wait blocks)
hands the stream to a `DetachedStream`, and its greenlet ends.

The stream's generator then runs in event-loop callbacks: the hub's precise
timer (llmsim/precise.py) calls it on each chunk's deadline, less the timer's
learned lead, as a precise wait would end, and it writes what is due with one
non-blocking send. A full socket buffer parks the rest behind a write watcher;
chunks that fall due meanwhile go out together when it drains, as on the
greenlet path. When the stream ends, a new greenlet carries on with the
connection's next request (keep-alive). A read watcher notices a client that
hangs up, even while its first token is due; that, or an injected cut, closes
the connection and settles the stream (its batch slot too) at once.

A client sees the same bytes on the same deadlines, each chunk's emit time is
stamped right after its send, and the server counts the stream as open until
its last byte is out (a drain waits for it).
"""

from __future__ import annotations

import socket
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any

from ..errors import ConnectionDrop

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterator

    from ..precise import TimerfdTimer
    from ..stream import Pacer
    from .generation import StreamBody

_READ, _WRITE = 1, 2  # libev's EV_READ and EV_WRITE


def frame(data: bytes, chunked: bool) -> bytes:
    """One write of a response body: an HTTP/1.1 chunk, or the bytes as they are (HTTP/1.0)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if chunked else data


class DetachedStream:
    """One stream being written from event-loop callbacks; it settles itself and its connection."""

    __slots__ = ("handler", "sock", "rfile", "raw", "chunks", "body", "pacer", "chunked", "timer", "pending", "watcher",
                 "entry", "due", "reader")

    def __init__(self, handler: Any, sock: Any, raw: Any, chunks: Iterator[bytes], body: StreamBody,
                 pacer: Pacer, chunked: bool, timer: TimerfdTimer) -> None:
        self.handler, self.sock, self.raw, self.body = handler, sock, raw, body
        self.rfile = handler.rfile  # pywsgi's request loop lets go of it as it ends: given back after the stream
        self.chunks: Iterator[bytes] | None = chunks
        self.pacer, self.chunked, self.timer = pacer, chunked, timer
        self.pending = b""  # bytes the socket had no room for yet
        self.watcher: Any = None  # the write watcher, while the socket buffer is full
        self.entry: list[Any] | None = None  # the timer entry of the next wake-up
        self.due: float | None = None  # the deadline it wakes for
        handler.server.detached.add(self)
        # A client that hangs up (while its first token is due, or between tokens) is noticed at once.
        self.reader: Any = handler.server.loop.io(raw.fileno(), _READ)
        self.reader.start(self._readable)

    def schedule(self) -> None:
        """Wake on the next chunk's deadline (the pacer's wake_at)."""
        wake, self.pacer.wake_at = self.pacer.wake_at, None
        self.due = wake if wake is not None else time.monotonic()
        self.entry = self.timer.at(self.due, self.step)

    def step(self, _: Any = None) -> None:
        """Write everything that is due, then wait for the next deadline, for room, or finish."""
        self.entry = None
        due, self.due = self.due, None
        try:
            while True:
                chunks = self.chunks
                if chunks is None:
                    self._finish()
                    return
                try:
                    data = next(chunks)
                except StopIteration:
                    self.chunks = None
                    if self.chunked and not self._send(b"0\r\n\r\n"):
                        return
                    continue
                if data:
                    sent = self._send(frame(data, self.chunked))
                    if due is not None:
                        # The chunk it woke for: how late it went out teaches the timer its lead (one
                        # chunk in eight is enough to follow the load, and costs an eighth).
                        if not self.pacer.sent_tokens & 7:
                            self.timer.observe_call(time.monotonic() - due)
                        due = None
                    if not sent:
                        return  # the rest goes when the socket has room (_drain)
                elif self.pacer.wake_at is not None:
                    self.schedule()
                    return
        except BaseException as ex:  # noqa: BLE001 - whatever happens, the stream and its connection are settled
            self.abort(ex)

    def _send(self, frame: bytes) -> bool:
        """Send now what the socket takes; False when the rest waits for room."""
        try:
            sent = self.raw.send(frame)
        except BlockingIOError:
            sent = 0
        self.handler.response_length += sent
        if sent == len(frame):
            return True
        self.pending = frame[sent:]
        if self.watcher is None:
            self.watcher = self.handler.server.loop.io(self.raw.fileno(), _WRITE)
        self.watcher.start(self._drain)
        return False

    def _drain(self) -> None:
        try:
            try:
                sent = self.raw.send(self.pending)
            except BlockingIOError:
                return
            self.handler.response_length += sent
            self.pending = self.pending[sent:]
            if self.pending:
                return
            self.watcher.stop()
            self.step()
        except BaseException as ex:  # noqa: BLE001
            self.abort(ex)

    def _readable(self) -> None:
        try:
            peeked = self.raw.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            peeked = b""
        if peeked:  # a request sent ahead (pipelined): a client that leaves is noticed at the next send
            self.reader.stop()
            return
        self.abort(ConnectionDrop())  # end of input: the client hung up; its slot is freed now

    def _release(self) -> Any:
        """Stop watching and waking; give the handler its socket back."""
        self.reader.stop()
        self.reader.close()
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher.close()
            self.watcher = None
        if self.entry is not None:
            self.entry[2] = None  # cancelled
            self.entry = None
        self.chunks = None
        handler = self.handler
        handler.server.detached.discard(self)
        handler.socket, handler.rfile = self.sock, self.rfile
        handler._detached = None
        handler.time_finish = time.time()
        return handler

    def _finish(self) -> None:
        """Every byte is out: settle the stream, then the connection carries on (or closes)."""
        handler = self._release()
        try:
            self.body.close()
            handler.log_request()
        except BaseException as ex:  # noqa: BLE001 - a bug: logged, and the connection closed
            traceback.print_exception(ex, file=sys.stderr)
            handler.server.close_connection(handler)
            return
        handler.server.resume_connection(handler)

    def abort(self, ex: BaseException | None = None) -> None:
        """The client left, a cut dropped the connection, the server stops, or a bug: close it all now."""
        if self.handler._detached is not self:
            return  # already settled
        handler = self._release()
        if ex is not None and not isinstance(ex, (ConnectionDrop, OSError)):
            traceback.print_exception(ex, file=sys.stderr)
        try:
            self.body.close()  # counts the stream as ended by its client unless it completed
        finally:
            handler.status = handler.status or "socket error"
            handler.server.close_connection(handler)
