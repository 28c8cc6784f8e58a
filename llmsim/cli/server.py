"""The gevent WSGI server: TCP_NODELAY on every socket, clean shutdown on signals, and the
HTTP-level defences pywsgi leaves to its users.

pywsgi never sets TCP_NODELAY; without it Nagle plus delayed ACK add ~40 ms to
TTFT on keep-alive connections and merge small ITL gaps (see DESIGN.md).

Malformed requests (too many or too long headers, a bad Content-Length or HTTP
version, an over-long request line) get a JSON error envelope and one log line,
not an empty answer and a traceback. A connection must deliver its headers
within the header timeout and may sit idle between requests for the idle
timeout; running out of file descriptors pauses accepting (one log line, with
back-off) instead of printing a traceback per attempt.

The handler stamps each request when its first line has been read (a plain
request's whole head, which arrives in the same read: cli/plainrequest.py),
before headers, body and JSON are parsed: that is when the server's TTFT
clock starts. The server runs the stats sampler (one tick a second) while it serves.
"""

from __future__ import annotations

import errno
import gc
import http.client
import json
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import gevent
from gevent.pywsgi import MAX_REQUEST_LINE, Input, WSGIHandler, WSGIServer, format_date_time

from ..errors import ConnectionDrop
from ..precise import TimerfdTimer, precise_timer, run_due
from .body import BODY_REFUSED, StrictJSONProvider
from .config import ServerConfig
from .cpu import run_realtime
from .fdtable import raise_fd_limit, reserve_fd_table
from .generation import ANSWER_KEY, StreamBody
from .handlers import create_app
from .plainrequest import answered_at_once, parse_plain_head
from .requestheaders import RequestHeaders, read_headers
from .stacks import call_off_stack
from .state import AppState
from .streamwriter import DetachedStream, frame

_VERSION = re.compile(r"HTTP/(\d)\.(\d)")
_STATUS_TEXT = {400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long",
                431: "Request Header Fields Too Large", 505: "HTTP Version Not Supported"}
DISCARD_AFTER_REFUSAL = 1 << 20
"""At most this much more of a refused body is read (and dropped) before the connection closes,
so the client is not reset while it still sends and can read its 413."""
RFILE_BUFFER = 1024
"""Bytes each connection's request reader buffers (pywsgi's default: 8 KB). A request line and its
headers seldom need more, a body larger than what is buffered is read straight from the socket,
and the buffer lives as long as the connection: an open stream keeps it (see bench/memory.py)."""


def _digits(text: str) -> bool:
    text = text.strip()
    return text.isascii() and text.isdigit()


class ProtocolError(ValueError):
    """A request that cannot be parsed as HTTP; answered with `status` and closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class _HeaderTimeout(OSError):
    """The client took longer than the header timeout to send its request line and headers."""


class _IdleTimeout(OSError):
    """A keep-alive connection sent no new request within the idle timeout."""


def protocol_error_response(status: int, reason: str) -> bytes:
    """A whole HTTP response carrying an OpenAI-shaped error envelope; the connection closes after it."""
    body = json.dumps({"error": {"message": reason, "type": "invalid_request_error", "param": None,
                                 "code": f"http_{status}"}}, separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Bad Request')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body


class _DiscardSome:
    """Stands in for the request input after a refused body: reads a bounded amount, then gives up."""

    def __init__(self, stream: Any, budget: int) -> None:
        self.stream, self.budget = stream, budget

    def _discard(self) -> None:  # what pywsgi calls after the response
        left = self.budget
        try:
            while left > 0:
                data = self.stream.read(min(65536, left))
                if not data:
                    return
                left -= len(data)
        except (OSError, ValueError):
            pass


if TYPE_CHECKING:  # pragma: no cover
    from ..replay import ReplayBook


_SPENT_ENVIRON: dict = {}
"""A handed-off stream's handler keeps this instead of its request's WSGI environ (about 2 KB)."""

_HANDLER_SLOTS = ("_t0", "_served", "_deadline", "_late", "_connected_at", "_detached", "_idle_timer")
"""_QuietHandler's own state (named, not literal, in its __slots__: mypy cannot tell that pywsgi's
untyped handler, its base, keeps every other attribute in a __dict__)."""


class _QuietHandler(WSGIHandler):
    """Client disconnects are normal under load tests: no traceback for them.

    An injected ConnectionDrop closes the socket as is: no 500 before the
    response, no terminating chunk in the middle of one.

    A handler lives as long as its connection, so an open stream keeps it:
    it reads requests through a small buffer (RFILE_BUFFER), keeps its own
    state in slots, calls the application on a helper stack (cli/stacks.py),
    and drops the encoded response headers once they are sent.
    """

    __slots__ = _HANDLER_SLOTS

    server: NoDelayWSGIServer
    wsgi_input: Any
    application: Any
    socket: Any
    result: Any
    environ: dict
    response_headers: Any  # [(name, value)] in bytes, once start_response took them
    status: Any  # bytes, once start_response took it

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        self._t0: float | None = None
        self._served = 0  # requests answered on this connection
        self._deadline: gevent.Timeout | None = None
        self._late = False  # the header deadline passed while reading the request line
        self._connected_at = 0.0
        self._detached: DetachedStream | None = None  # the stream the event loop writes, between hand-off and end
        self._idle_timer: gevent.Timeout | None = None  # the wait before each later request: one per connection
        super().__init__(sock, address, server, sock.makefile("rb", RFILE_BUFFER) if rfile is None else rfile)

    def MessageClass(self, fp: Any, *_: Any) -> Any:  # noqa: N802 - pywsgi's name
        return read_headers(fp)

    def _headers(self) -> Iterator[tuple[str, str]]:
        """The request's headers as environ items (HTTP_*), as pywsgi's, straight from parsed ones."""
        headers = self.headers
        if not isinstance(headers, RequestHeaders):
            yield from super()._headers()
            return
        for name, value in headers.items:
            if "_" not in name:  # pywsgi drops names with underscores (they would alias dashes)
                key = name.replace("-", "_").upper()
                if key != "CONTENT_TYPE" and key != "CONTENT_LENGTH":
                    yield "HTTP_" + key, value.strip()

    def get_environ(self) -> dict:
        environ = super().get_environ()
        environ["llmsim.socket"] = self.socket  # handlers.SOCKET_KEY: to notice a client that hangs up
        environ["llmsim.t0"] = self._t0  # handlers.T0_KEY
        if self.direct_answers:
            environ[ANSWER_KEY] = self.send_answer
        self.headers = WSGIHandler.headers  # parsed request headers: in the environ now, not kept twice
        return environ

    # ------------------------------------------------------------------ timeouts

    def handle(self) -> Any:
        self._connected_at = time.monotonic()
        return self.serve_requests()

    def serve_requests(self) -> Any:
        """pywsgi's request loop; DETACHED when it ended by handing a stream to the event loop
        (cli/streamwriter.py), which then owns the connection: the caller must not close it."""
        try:
            super().handle()
        finally:
            if self._idle_timer is not None:  # not kept while a handed-off stream runs, nor after the end
                self._idle_timer.close()
                self._idle_timer = None
        stream = self._detached
        if stream is None:
            return None
        stream.schedule()  # only now: this greenlet no longer touches the connection
        return DETACHED

    def log_request(self) -> None:
        if self._detached is None and self.server.logs_requests:  # a handed-off stream: when it ends
            super().log_request()

    def _await_request(self) -> bool:
        """Wait for the next request's first bytes: the first request within the header timeout of the
        connection opening, later ones within the idle timeout. False: the client closed the connection."""
        header, idle = self.server.header_timeout, self.server.idle_timeout
        wait = idle if self._served else header and header - (time.monotonic() - self._connected_at)  # 0: no limit
        if not wait:
            return True
        if not self._served:
            with gevent.Timeout(max(wait, 0.001), _IdleTimeout("no request")):
                return bool(self.rfile.peek(1))
        timer = self._idle_timer  # the same wait before every later request: one timer, started again
        if timer is None or timer.seconds != idle:
            if timer is not None:
                timer.close()
            timer = self._idle_timer = gevent.Timeout(idle, _IdleTimeout("no request"))
        timer.start()
        try:
            return bool(self.rfile.peek(1))
        finally:
            timer.cancel()

    def read_requestline(self) -> str:
        """Wait for the next request, then give its request line and headers one deadline.

        The first request must be complete within the header timeout of the connection
        opening; later ones may wait the idle timeout for their first byte, then have
        the header timeout for the rest. A connection that sent nothing is closed
        quietly; one that sent part of a request gets a 408.
        """
        if not self._await_request():
            return ""  # the client closed the connection
        header = self.server.header_timeout
        if header:
            left = header if self._served else header - (time.monotonic() - self._connected_at)
            self._deadline = gevent.Timeout(max(left, 0.001), _HeaderTimeout("request headers not received in time"))
            self._deadline.start()
        try:
            line = super().read_requestline()
        except _HeaderTimeout:
            self._late = True
            raise
        self._t0 = time.monotonic()  # the request's first bytes are in: its TTFT clock starts here
        return line

    plain_requests = True
    """Parse plain requests that arrived whole in one pass (cli/plainrequest.py); off, pywsgi parses all."""

    def handle_one_request(self) -> Any:
        self._late = False
        if self.plain_requests:
            result = self._handle_plain_request()
            if result is not _NOT_PLAIN:
                return result
        try:
            result = super().handle_one_request()
        finally:
            self._cancel_deadline()
        if isinstance(result, tuple) and result[0] == "414":
            result = self._refuse(ProtocolError(414, f"Request line too long: the limit is {MAX_REQUEST_LINE - 1} "
                                                     "bytes."))
        elif result is None and self._late:
            result = self._refuse(self._header_timeout_error())
        elif result is True:
            self._served += 1
        return result

    def _handle_plain_request(self) -> Any:
        """pywsgi's handle_one_request for a request whose head is buffered whole and plain; _NOT_PLAIN
        (nothing read) for any other, which pywsgi's reader then parses with its checks."""
        rfile = self.rfile
        peek = getattr(rfile, "peek", None)
        if peek is None or rfile.closed:
            return _NOT_PLAIN
        try:
            if not self._await_request():
                return None  # the client closed the connection
            buffered = peek(RFILE_BUFFER)
        except OSError:  # the idle timeout, or a reset: closed quietly, as pywsgi's reader does
            return None
        head = parse_plain_head(buffered)
        if head is None:
            return _NOT_PLAIN
        self._t0 = time.monotonic()  # the request's first bytes are in: its TTFT clock starts here
        rfile.read(head.size)  # from the buffer: no system call
        self.requestline = head.requestline
        self.command, self.path, self.request_version = head.method, head.target, head.version
        self.content_length = head.content_length
        self.close_connection = head.close
        self.response_length = 0
        environ = head.environ(self.server.get_environ())
        client = self.client_address
        if isinstance(client, tuple):
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = str(client[0]), str(client[1])
        self.wsgi_input = Input(rfile, head.content_length)
        environ["wsgi.input"] = self.wsgi_input
        environ["wsgi.input_terminated"] = True
        environ["llmsim.socket"] = self.socket  # as get_environ
        environ["llmsim.t0"] = self._t0
        if self.direct_answers:
            environ[ANSWER_KEY] = self.send_answer
        if answered_at_once(head, buffered):
            environ[_AT_ONCE_KEY] = True
        self.environ = environ
        self.application = self.server.application
        run_due()  # as read_request
        self.handle_one_response()
        if self.close_connection or rfile.closed:
            return None
        self._served += 1
        return True

    def _header_timeout_error(self) -> ProtocolError:
        return ProtocolError(408, f"Request headers not received within {self.server.header_timeout:g} s.")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.close()
            self._deadline = None

    # ------------------------------------------------------------------ protocol errors

    def read_request(self, raw_requestline: str) -> bool:
        """Parse the request line and headers; a ProtocolError says what is wrong and which status it gets."""
        words = raw_requestline.split()
        if len(words) != 3:
            raise ProtocolError(400, "Malformed request line: expected METHOD PATH HTTP/1.1.")
        version = _VERSION.fullmatch(words[2])
        if version is None:
            raise ProtocolError(400, "Malformed HTTP version in the request line: expected HTTP/1.1 or HTTP/1.0.")
        if not (1, 0) <= (int(version.group(1)), int(version.group(2))) < (2, 0):
            raise ProtocolError(505, f"HTTP version {words[2]} is not supported: use HTTP/1.1 or HTTP/1.0.")
        try:
            ok = super().read_request(raw_requestline)
        except http.client.HTTPException as e:  # "got more than 100 headers"
            raise ProtocolError(431, f"Request header fields too large: {e}.") from None
        except ValueError:
            if getattr(self.headers, "status", None) == "Line too long":
                raise ProtocolError(431, "Request header fields too large: a header line is longer than "
                                         "65536 bytes.") from None
            if self.headers.get("content-length") is not None:
                raise ProtocolError(400, "Invalid Content-Length header: expected a non-negative integer.") \
                    from None
            raise ProtocolError(400, "Malformed request headers.") from None
        lengths = set(self.headers.get_all("content-length") or ())
        if lengths and (len(lengths) > 1 or not _digits(next(iter(lengths)))):
            raise ProtocolError(400, "Invalid Content-Length header: expected one non-negative integer.")
        self._cancel_deadline()  # headers are in: the body and the answer take what they take
        run_due()  # the streams that fell due while the headers were parsed (see generation_answer)
        return ok

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
        """pywsgi's hook for a request it cannot parse: one log line and a JSON envelope, no traceback."""
        if isinstance(ex, ProtocolError):
            return self._refuse(ex)
        if isinstance(ex, _HeaderTimeout):
            return self._refuse(self._header_timeout_error())
        return self._refuse(ProtocolError(400, f"Malformed request: {ex}."))

    def _refuse(self, err: ProtocolError) -> tuple[str, bytes]:
        self.close_connection = True
        peer = self.client_address
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer or "?")
        self.server.log_line(f"{err.status} from {where}: {err.reason}")
        return str(err.status), protocol_error_response(err.status, err.reason)

    # ------------------------------------------------------------------ refused bodies

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if self.environ.get(BODY_REFUSED):  # the server, not the app, may add hop-by-hop headers
            headers = [*headers, ("Connection", "close")]
        return super().start_response(status, headers, exc_info)

    def run_application(self) -> None:
        # The application call (routing, parsing, planning) runs on a helper stack: this greenlet,
        # which an open stream keeps, then only streams what it returned (see cli/stacks.py). A request
        # that cannot be asking for a stream is answered at once: its call runs here, two switches fewer.
        if not self.environ.get(_AT_ONCE_KEY):
            self.application = self.server.off_stack(self.application)
        try:
            super().run_application()
        finally:
            if self.environ.get(BODY_REFUSED):
                self.close_connection = True
                self.wsgi_input = _DiscardSome(self.wsgi_input, DISCARD_AFTER_REFUSAL)

    # ------------------------------------------------------------------ whole answers

    direct_answers = True
    """Offer the app send_answer (generation.ANSWER_KEY); off, every answer goes through start_response."""

    def send_answer(self, status: str, headers: list[tuple[str, str]], body: bytes) -> bool:
        """A whole answer (with its Content-Length) in one send: the bytes start_response and write would
        send, without their per-header checks, copies and encodings, for headers an app made itself
        (no hop-by-hop ones, as PEP 3333 asks). False, with nothing sent, when a header holds a line
        break or a character latin-1 lacks: the app then calls start_response, which refuses it."""
        if self.status is not None or "\r" in status or "\n" in status:
            return False
        text = "\r\n".join([f"{name}: {value}" for name, value in headers])
        breaks = len(headers) - 1
        if text.count("\n") != breaks or text.count("\r") != breaks:
            return False
        # Where start_response would add a Connection header, before finalize_headers' Date.
        if self.environ.get(BODY_REFUSED):
            self.close_connection = True
            text += "\r\nConnection: close"
        elif self.request_version == "HTTP/1.0":
            text += "\r\nConnection: close" if self.close_connection else "\r\nConnection: keep-alive"
        try:
            head = f"HTTP/1.1 {status}\r\n{text}\r\nDate: ".encode("latin-1")
            code = int(status[:3])
        except (UnicodeEncodeError, ValueError):
            return False
        self.status, self._orig_status, self.code = status.encode("latin-1"), status, code
        self.headers_sent = True
        data = b"".join((head, http_date(), b"\r\n\r\n", body))
        raw = getattr(self.socket, "_sock", None)
        if raw is None:
            self._sendall(data)
        else:
            self._send_now(raw, data)
        return True

    # ------------------------------------------------------------------ streams

    def process_result(self) -> None:
        """A stream's chunks go straight to the socket once its headers are out.

        pywsgi's write path (write, _write, _sendall, gevent's sendall, which asks
        the kernel for the send buffer's size on every call) costs more than the
        send itself; a stream writes a small chunk per token, so each chunk here
        is one framed send() on the raw non-blocking socket, falling back to a
        waiting sendall only when the socket buffer is full. The bytes on the
        wire are the same.
        """
        result = self.result
        raw = getattr(self.socket, "_sock", None)
        if not isinstance(result, StreamBody) or raw is None:
            super().process_result()
            return
        chunks = iter(result)
        for data in chunks:
            if data:
                self.write(data)  # the status line and headers, with the first chunk
                break
        chunked = self.response_use_chunked
        timer = self.server.stream_timer()
        gen = result.gen
        pacer = gen.pacer if timer is not None and not gen.choices else None
        if pacer is not None:
            # Its waits yield (b"") instead of sleeping: from the first chunk when its batch slot is
            # granted; a queued request first waits for its slot here, then from its second chunk.
            pacer.scheduled_from = 0 if gen.slot.granted else 1
        for data in chunks:
            if data:
                self._send_now(raw, frame(data, chunked))
            elif pacer is not None and pacer.wake_at is not None and timer is not None:
                # Its first wait: the event loop writes the rest (cli/streamwriter.py), and this
                # greenlet, which an open stream would keep, ends with pywsgi's request loop.
                self._detached = DetachedStream(self, self.socket, raw, chunks, result, pacer, chunked, timer)
                self.result = None  # the stream is not closed when this request's handling unwinds
                self.socket = None  # pywsgi's loop ends without closing the connection
                self.environ = _SPENT_ENVIRON  # the request's environ: not kept as long as the stream
                return
        if self.status and not self.headers_sent:
            self.write(b"")
        if chunked:
            self._sendall(b"0\r\n\r\n")

    def _send_now(self, raw: socket.socket, frame: bytes) -> None:
        try:
            sent = raw.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError as ex:  # as pywsgi's _sendall: the handler then closes quietly
            self.status = f"socket error: {ex}"
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += sent
        if sent < len(frame):
            self._sendall(frame[sent:])  # the buffer is full: wait for room

    def finalize_headers(self) -> None:
        if self.provided_date is None:  # type: ignore[has-type]
            # pywsgi formats the date for every response; it changes once a second.
            self.provided_date = http_date()
            self.response_headers.append((b"Date", self.provided_date))
        super().finalize_headers()

    def _write_with_headers(self, data: bytes) -> None:
        """pywsgi's, but the status line, the headers and the first body bytes go in one send (pywsgi
        sends the headers on their own), straight to the raw socket where there is one."""
        self.headers_sent = True
        self.finalize_headers()
        head: list[bytes] = [b"HTTP/1.1 ", self.status, b"\r\n"]
        for name, value in self.response_headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        if data:
            head.append(frame(data, self.response_use_chunked))
        self.response_headers = None  # sent: not kept for as long as a stream lasts
        raw = getattr(self.socket, "_sock", None)
        if raw is None:
            self._sendall(b"".join(head))
        else:
            self._send_now(raw, b"".join(head))

    # ------------------------------------------------------------------ errors

    def handle_error(self, t: Any, v: Any, tb: Any) -> None:
        if isinstance(t, type) and issubclass(t, ConnectionDrop):
            self.close_connection = True
            return
        super().handle_error(t, v, tb)

    def log_error(self, msg: str, *args: Any) -> None:  # pragma: no cover - pywsgi's error path
        if args and isinstance(args[-1], (BrokenPipeError, ConnectionResetError)):
            return
        super().log_error(msg, *args)


_DATE: list[Any] = [None, b""]


def http_date() -> bytes:
    """The Date header's value for now, formatted once a second."""
    now = int(time.time())
    if _DATE[0] != now:
        _DATE[:] = now, format_date_time(now)
    return _DATE[1]


_NOT_PLAIN: Any = object()
"""_handle_plain_request: not a plain request, nothing of it read."""
_AT_ONCE_KEY = "llmsim.at_once"
"""WSGI environ key: the request cannot be asking for a stream (plainrequest.answered_at_once)."""

DETACHED: Any = object()
"""What a connection's handling returns when the event loop now writes its stream: it stays open."""


def _serve_connection(handle: Any, close: Any, sock: Any, address: Any) -> Any:
    """gevent's _handle_and_close_when_done without the *args call (see NoDelayWSGIServer.do_handle),
    leaving open a connection whose stream was handed off."""
    result = None
    try:
        result = handle(sock, address)
        return result
    finally:
        if result is not DETACHED:
            close(sock, address)


def _serve_more(handler: _QuietHandler, close: Any, sock: Any, address: Any) -> Any:
    """The rest of a connection whose handed-off stream ended: its next requests."""
    return _serve_connection(lambda *_: handler.serve_requests(), close, sock, address)


_ACCEPT_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class NoDelayWSGIServer(WSGIServer):
    """pywsgi's server with TCP_NODELAY, connection timeouts and a quiet back-off when accept() fails."""

    handler_class = _QuietHandler
    header_timeout: float = 30.0
    idle_timeout: float = 60.0
    accept_backoff_max = 1.0
    LOG_EVERY_S = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # With no access log, pywsgi still formats every request's log line (a datetime and a string)
        # and writes it nowhere.
        self.logs_requests = kwargs.get("log", "default") is not None
        self._accept_delay = 0.0
        self._accept_failures = 0
        self._last_log = -float("inf")
        self.detached: set[DetachedStream] = set()
        """Streams the event loop writes (cli/streamwriter.py): open, with no greenlet of their own."""

    def log_line(self, message: str) -> None:
        """One line to the error log (stderr by default)."""
        try:
            self.error_log.write(f"llmsim: {message}\n")
        except Exception:  # pragma: no cover - a closed or broken log stream
            pass

    state: AppState | None = None
    _sampler: Any = None
    _off_stack: partial | None = None

    def off_stack(self, app: Any) -> partial:
        """`app` called through call_off_stack (one wrapper per application, not one per request)."""
        wrapped = self._off_stack
        if wrapped is None or wrapped.args[0] is not app:
            wrapped = self._off_stack = partial(call_off_stack, app)
        return wrapped

    def start(self) -> None:
        super().start()
        if self.state is not None and self._sampler is None:
            self._sampler = gevent.spawn(self.state.stats.run_sampler)

    def stop(self, timeout: float | None = None) -> None:
        """gevent's stop (no new connections; handlers get `timeout` to finish, then are killed), and the same
        for the streams the event loop writes, which have no handler to wait for or kill: each gets the same
        grace, then its connection is closed, so a client reading it fails at once instead of waiting."""
        if self._sampler is not None:
            self._sampler.kill(block=False)
            self._sampler = None
        self.close()
        deadline = time.monotonic() + (self.stop_timeout if timeout is None else timeout)
        while self.detached and time.monotonic() < deadline:
            gevent.sleep(0.02)
        for stream in list(self.detached):
            stream.abort(ConnectionDrop())
        super().stop(timeout)

    def do_handle(self, *args: Any) -> None:
        """gevent's, but the connection's greenlet calls handle(sock, address) with its arguments spelled
        out: CPython 3.11 runs a handle(*args) call in a C frame of its own, which every open stream's
        saved stack would carry (about 0.4 KB)."""
        if self._spawn is None or len(args) != 2:
            super().do_handle(*args)
            return
        try:
            self._spawn(_serve_connection, self._handle, self.do_close, args[0], args[1])
        except BaseException:
            self.do_close(*args)
            raise

    def handle(self, sock: socket.socket, address: Any) -> Any:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not a TCP socket
            pass
        return self.handler_class(sock, address, self).handle()

    # ------------------------------------------------------------------ streams with no greenlet

    _stream_timer: Any = False  # not looked up yet

    def stream_timer(self) -> TimerfdTimer | None:
        """The precise timer that writes streams with no greenlet of their own; None where there is
        none (not Linux, or LLMSIM_PRECISE_WAITS=0): every stream then keeps its greenlet."""
        timer = self._stream_timer
        if timer is False:
            found = precise_timer()
            timer = self._stream_timer = found if isinstance(found, TimerfdTimer) else None
        return timer

    def resume_connection(self, handler: _QuietHandler) -> None:
        """A handed-off stream ended: a new greenlet serves the connection's next request, unless it
        is closing (the client asked, or this server stops accepting)."""
        spawn = getattr(self, "_spawn", None)
        if handler.close_connection or handler.rfile.closed or self.closed or spawn is None:
            self.close_connection(handler)
            return
        spawn(_serve_more, handler, self.do_close, handler.socket, handler.client_address)

    def close_connection(self, handler: _QuietHandler) -> None:
        """Close a handed-off stream's connection as pywsgi closes one (unread input first, no reset)."""
        sock = handler.socket
        raw = getattr(sock, "_sock", None)
        try:
            if raw is not None:
                try:
                    raw.recv(16384)
                except OSError:
                    pass
            sock.close()
        except OSError:
            pass
        handler.__dict__.pop("socket", None)
        self.do_close(sock, handler.client_address)

    def do_read(self) -> Any:
        """Accept one connection; out of descriptors, pause accepting for a while instead of failing loudly."""
        try:
            args = super().do_read()
        except OSError as e:
            if e.errno not in _ACCEPT_ERRORS:
                raise
            self._pause_accepting(e)
            return None
        if args:
            self._accept_delay = 0.0
        return args

    def _pause_accepting(self, e: OSError) -> None:
        self._accept_failures += 1
        now = time.monotonic()
        if now - self._last_log >= self.LOG_EVERY_S:
            self._last_log = now
            idle = f"after {self.idle_timeout:g} s" if self.idle_timeout else "never (--idle-timeout 0)"
            self.log_line(f"cannot accept connections: {e.strerror or e} ({errno.errorcode.get(e.errno or 0, '?')}"
                          f"); pausing new connections and retrying with back-off (failed accepts so far: "
                          f"{self._accept_failures}); idle connections close {idle}")
        self._accept_delay = min(self.accept_backoff_max, max(0.02, self._accept_delay * 2))
        self.stop_accepting()
        timer = self.loop.timer(self._accept_delay)
        timer.start(self._resume_accepting, timer)

    def _resume_accepting(self, timer: Any) -> None:
        timer.close()
        if self.started and self.socket is not None:
            self.start_accepting()


def make_listener(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A non-blocking listening socket with TCP_NODELAY (reuse_port: shared by --workers processes).

    First the process's descriptor limit is raised to its hard limit and its descriptor table sized
    for the connections (cli/fdtable.py): growing the table while streams are open stalls them all."""
    raise_fd_limit()
    reserve_fd_table()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def build_server(config: ServerConfig, state: AppState | None = None,
                 replay: ReplayBook | None = None) -> tuple[NoDelayWSGIServer, AppState]:
    """A bound (not yet serving) server and its state (`replay`: `llmsim replay`'s recordings)."""
    state = state or AppState(config)
    listener = make_listener(config.host, config.port)
    app = create_app(state, replay)
    StrictJSONProvider.install(app)
    server = NoDelayWSGIServer(listener, app, log="default" if config.access_log else None, error_log="default")
    server.header_timeout = config.header_timeout
    server.idle_timeout = config.idle_timeout
    server.state = state
    gc.freeze()  # what start-up built lives as long as the server: no collection need walk it again
    return server, state


def server_url(server: WSGIServer) -> str:
    host, port = server.address[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def describe(state: AppState) -> str:
    profiles = (f"profile {state.forced.name} for every model" if state.forced
                else f"{len(state.registry)} profiles, per model")
    extras = []
    if state.faults.active:
        extras.append("errors " + ", ".join(f"{k}={r:g}" for k, r in state.faults.base.rates.items())
                      if state.faults.base.rates else "errors per model/profile")
    if state.limiter is not None:
        extras.append(f"rate limits (tiers: {', '.join(state.limiter.config.tiers)})")
    if state.auth is not None:
        n = len(state.auth.api_keys)
        extras.append(f"auth ({n} key{'' if n == 1 else 's'})")
    if state.config.admin_token:
        extras.append("/llmsim/config enabled")
    return f"generator {state.config.generator}, {profiles}" + "".join(f"; {e}" for e in extras)


def print_status(state: AppState, interval: float, out: Any = None) -> None:
    """Print the one-line status (ServerStats.status_line) every `interval` seconds, forever."""
    out = out or sys.stdout
    while True:
        gevent.sleep(interval)
        print(state.stats.status_line(run_due), file=out, flush=True)


def serve(config: ServerConfig, replay: ReplayBook | None = None) -> int:
    """Run until SIGINT/SIGTERM; returns the process exit code."""
    from . import workers

    if workers.is_worker_process():  # started by a --workers supervisor
        return workers.run_worker()
    if config.workers != 1:
        return workers.supervise(config)
    if config.realtime and (why := run_realtime()) is not None:
        print(f"llmsim: --realtime: {why}; running at normal priority", file=sys.stderr, flush=True)
    server, state = build_server(config, replay=replay)
    server.start()
    if replay is not None:
        print(f"llmsim replaying {', '.join(replay.files)}: {replay.describe()}", flush=True)
    print(f"llmsim serving on {server_url(server)} ({describe(state)})", flush=True)
    stopping = gevent.event.Event()

    def _stop(*_: Any) -> None:
        stopping.set()

    gevent.signal_handler(signal.SIGTERM, _stop)
    gevent.signal_handler(signal.SIGINT, _stop)
    reporter = gevent.spawn(print_status, state, config.stats_interval) if config.stats_interval else None
    stopping.wait()
    if reporter is not None:
        reporter.kill(block=False)
    server.stop(timeout=2)
    print("llmsim stopped", file=sys.stderr, flush=True)
    return 0
