"""A minimal HTTP/1.1 keep-alive client that hands the body over line by line as bytes arrive.

Why not Locust's FastHttpSession (geventhttpclient) or requests: their
iter_lines()/iter_content() read fixed-size blocks, which batches SSE events
and skews TTFT and ITL. Here every read is stamped, and each line carries the
stamp of the read that completed it. The socket is a plain (gevent-patched)
socket, TCP_NODELAY is set, and https goes through the standard ssl module,
so it works against any server.

Which stamp (DESIGN.md, "Client behaviour that timing depends on"):
- kernel receive times, on Linux over plain http: the socket has
  SO_TIMESTAMPNS set and every read is a recvmsg() whose ancillary data is the
  CLOCK_REALTIME time at which the kernel received the last segment the read
  consumed. How late the event loop gets round to the read no longer matters
  (up to a limit, below).
  The connection's clock is then time.time() (the same CLOCK_REALTIME), so the
  request's start, taken just before it is written, is in the same domain.
- user-space stamps elsewhere (https, other systems): perf_counter() the moment
  recv() returns. `HttpConnection.kernel_stamps` says which one a connection uses.

A read's kernel stamp is that of the last segment it consumed, and the kernel
merges the segments that wait in a socket's receive queue into one, keeping
the last one's stamp. So an event is stamped with its true arrival time as
long as the client reads it before the next event of the same stream
arrives: kernel stamps take the client's own delays out of the figures up to
one ITL per stream. A client further behind than that gives the events it
finds waiting together the time of the last of them (the summary's
measurement error, from --llm-trace, shows it).

The read timeout: on a gevent socket (monkey-patched processes: Locust), the
socket itself has no timeout, because gevent arms and cancels a timer around
every wait, which costs more than a fifth of a read. Instead one repeating
watchdog timer per connection runs while a request is in flight and, once
no byte has come or gone for `timeout` seconds, raises socket.timeout in the
greenlet that waits on the socket. A plain blocking socket keeps settimeout().
"""

from __future__ import annotations

import platform
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable, Iterator
from time import perf_counter
from typing import Any
from urllib.parse import urlsplit

RECV_SIZE = 65536

# SO_TIMESTAMPNS (= SCM_TIMESTAMPNS) is 35 in Linux's asm-generic socket.h, which every architecture
# but alpha, mips, parisc and sparc uses; Python's socket module does not name it.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@ll")  # struct timespec: two native longs, seconds and nanoseconds
KERNEL_STAMPS_SUPPORTED = sys.platform.startswith("linux") and not platform.machine().lower().startswith(
    ("alpha", "mips", "parisc", "sparc"))
"""Whether this system can give kernel receive times (Linux, asm-generic socket options)."""
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) if KERNEL_STAMPS_SUPPORTED else 0
WATCHDOG_CHECKS = 8
"""The watchdog looks timeout / WATCHDOG_CHECKS apart: a silent server is given up after 1 to 1.125 x timeout."""


def _gevent_sockets() -> bool:
    """Whether socket.socket is gevent's (the process is monkey-patched)."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return bool(monkey.is_module_patched("socket"))


def url_problem(base_url: str) -> str | None:
    """What is wrong with a base URL the client cannot send to (None: nothing)."""
    try:
        parts = urlsplit(base_url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as e:
        return f"not an http(s) URL: {base_url!r} ({e})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"not an http(s) URL: {base_url!r} (give the scheme, e.g. http://{base_url})" \
            if "://" not in base_url else f"not an http(s) URL: {base_url!r}"
    return None


class TransportError(Exception):
    """The connection failed, timed out or the server broke the HTTP framing."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind  # "connection" or "timeout"
        super().__init__(message)


def join_path(base_path: str, path: str) -> str:
    """Base URL path + API path, without doubling a `/v1` the user already put in --host."""
    base = base_path.rstrip("/")
    if base.endswith("/v1") and path.startswith("/v1/"):
        path = path[3:]
    return base + path


class HttpConnection:
    """One keep-alive connection to one origin; requests run one at a time."""

    def __init__(self, base_url: str, *, timeout: float = 600.0, connect_timeout: float = 30.0,
                 verify: bool = True, kernel_stamps: bool = True) -> None:
        problem = url_problem(base_url)
        if problem:
            raise ValueError(problem)
        parts = urlsplit(base_url)
        self.scheme = parts.scheme
        self.host: str = parts.hostname or ""  # url_problem checked there is one
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path
        default_port = 443 if parts.scheme == "https" else 80
        self.host_header = self.host if self.port == default_port else f"{self.host}:{self.port}"
        if ":" in self.host and not self.host.startswith("["):  # IPv6 literal
            self.host_header = f"[{self.host}]" if self.port == default_port else f"[{self.host}]:{self.port}"
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._ssl_context: ssl.SSLContext | None = None
        if self.scheme == "https":
            self._ssl_context = ssl.create_default_context()
            if not verify:
                self._ssl_context.check_hostname = False
                self._ssl_context.verify_mode = ssl.CERT_NONE
        self._sock: socket.socket | None = None
        self._buf = b""
        self._buf_t = 0.0
        self.kernel_stamps = kernel_stamps and KERNEL_STAMPS_SUPPORTED and self._ssl_context is None
        """Reads are stamped with the kernel's receive time (else with perf_counter() in user space)."""
        self.clock: Callable[[], float] = time.time if self.kernel_stamps else perf_counter
        """The clock of every stamp this connection hands out, and of `HttpResponse.t_sent`."""
        self.unstamped_reads = 0
        """Reads that came without a kernel stamp and were stamped in user space (same clock) instead."""
        self._watchdog: Any = None
        """gevent: a repeating loop timer that enforces the read timeout (see the module docstring)."""
        self._owner: Any = None
        self._in_io = False
        self._last_io = 0.0

    # ------------------------------------------------------------------ socket

    def _connect(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except TimeoutError:
            raise TransportError("timeout", f"connect to {self.host}:{self.port} timed out") from None
        except OSError as e:
            raise TransportError("connection", f"connect to {self.host}:{self.port} failed: {e}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.kernel_stamps:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:  # pragma: no cover - a kernel without it: user-space stamps from now on
                self.kernel_stamps = False
                self.clock = perf_counter
        if self._ssl_context is not None:
            try:
                sock = self._ssl_context.wrap_socket(sock, server_hostname=self.host)
            except (OSError, ssl.SSLError) as e:
                sock.close()
                raise TransportError("connection", f"TLS handshake with {self.host} failed: {e}") from None
        if _gevent_sockets():
            sock.settimeout(None)
            if self._watchdog is None:
                import gevent

                step = max(self.timeout / WATCHDOG_CHECKS, 0.005)
                self._watchdog = gevent.get_hub().loop.timer(step, step)
        else:
            sock.settimeout(self.timeout)
        self._sock = sock
        self._buf = b""

    # ------------------------------------------------------------------ read timeout (gevent)

    def _arm(self) -> None:
        """A request starts: the watchdog watches the calling greenlet's socket waits."""
        if self._watchdog is not None:
            import gevent

            self._owner = gevent.getcurrent()
            self._last_io = time.monotonic()
            if not self._watchdog.active:
                self._watchdog.start(self._check)

    def _disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
        self._owner = None

    def _check(self) -> None:
        if time.monotonic() - self._last_io < self.timeout:
            return
        owner = self._owner
        if self._in_io and owner is not None and not owner.dead:
            self._disarm()
            owner.throw(TimeoutError("timed out"))

    def close(self) -> None:
        self._disarm()
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:  # pragma: no cover
                pass
            self._sock = None
        self._buf = b""

    def _recv(self) -> bytes:
        """One read, stamped in self._buf_t."""
        self._in_io = True
        try:
            if self.kernel_stamps:
                data, anc, _flags, _addr = self._sock.recvmsg(RECV_SIZE, _ANC_SIZE)  # type: ignore[union-attr]
                self._last_io = time.monotonic()
                if anc:
                    sec, nsec = _TIMESPEC.unpack_from(anc[0][2])
                    self._buf_t = sec + nsec * 1e-9
                    return data
                if data:
                    self.unstamped_reads += 1
                self._buf_t = time.time()
                return data
            data = self._sock.recv(RECV_SIZE)  # type: ignore[union-attr]
            self._last_io = time.monotonic()
        except TimeoutError:
            self.close()
            raise TransportError("timeout", f"no data from {self.host}:{self.port} for {self.timeout:g}s") from None
        except OSError as e:
            self.close()
            raise TransportError("connection", f"connection to {self.host}:{self.port} broke: {e}") from None
        finally:
            self._in_io = False
        self._buf_t = perf_counter()
        return data

    # ------------------------------------------------------------------ requests

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> HttpResponse:
        """Send a request and read the status line and headers; the body is read through the response.

        A keep-alive connection the server closed while idle is retried once on
        a fresh one. `response.t_sent` is the connection's clock just before
        the request bytes were written (the start of TTFT and E2E).
        """
        lines = [f"{method} {join_path(self.base_path, path)} HTTP/1.1", f"Host: {self.host_header}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        for attempt in (0, 1):
            reused = self._sock is not None
            if not reused:
                self._connect()
            self._arm()
            t_sent = self.clock()
            try:
                self._in_io = True
                try:
                    self._sock.sendall(raw)  # type: ignore[union-attr]
                finally:
                    self._in_io = False
                status, reason, resp_headers, version = self._read_head()
            except TransportError:
                if reused and attempt == 0:
                    self.close()
                    continue
                raise
            except TimeoutError:
                self.close()
                raise TransportError("timeout", f"sending to {self.host}:{self.port} stalled for "
                                                f"{self.timeout:g}s") from None
            except OSError as e:
                self.close()
                if reused and attempt == 0:
                    continue
                raise TransportError("connection", f"request to {self.host}:{self.port} failed: {e}") from None
            return HttpResponse(self, status, reason, resp_headers, version, t_sent, method)
        raise AssertionError("unreachable")  # pragma: no cover

    def _read_head(self) -> tuple[int, str, dict[str, str], str]:
        while b"\r\n\r\n" not in self._buf:
            data = self._recv()
            if not data:
                self.close()
                raise TransportError("connection", "server closed the connection before responding")
            self._buf += data
            if len(self._buf) > 1 << 20:
                self.close()
                raise TransportError("connection", "response headers larger than 1 MiB")
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        try:
            version, code, *rest = lines[0].split(" ", 2)
            status = int(code)
        except ValueError:
            self.close()
            raise TransportError("connection", f"bad HTTP status line: {lines[0][:80]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            headers[k] = f"{headers[k]}, {v.strip()}" if k in headers else v.strip()
        return status, rest[0] if rest else "", headers, version

    def _body_pieces(self, headers: dict[str, str], version: str, method: str, status: int
                     ) -> Iterator[tuple[bytes, float]]:
        """Decoded body bytes as they arrive, each with the stamp of the read that brought it."""
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return
        if "chunked" in headers.get("transfer-encoding", "").lower():
            yield from self._chunked_pieces()
        elif "content-length" in headers:
            remaining = int(headers["content-length"])
            while remaining > 0:
                if not self._buf:
                    self._buf = self._recv()
                    if not self._buf:
                        self.close()
                        raise TransportError("connection", "connection closed in the middle of the body")
                piece, self._buf = self._buf[:remaining], self._buf[remaining:]
                remaining -= len(piece)
                yield piece, self._buf_t
        else:  # body runs until the server closes the connection
            if self._buf:
                piece, self._buf = self._buf, b""
                yield piece, self._buf_t
            while True:
                data = self._recv()
                if not data:
                    self.close()
                    return
                yield data, self._buf_t

    def _need(self, n: int) -> None:
        while len(self._buf) < n:
            data = self._recv()
            if not data:
                self.close()
                raise TransportError("connection", "connection closed in the middle of a chunked body")
            self._buf += data

    def _chunked_pieces(self) -> Iterator[tuple[bytes, float]]:
        """The data of a chunked body. Every chunk complete in the buffer is passed on at once, joined into
        one piece (they share the stamp of the read that brought them); a chunk that is still arriving
        is passed on as far as it has come."""
        buf, self._buf = self._buf, b""
        pos = 0
        remaining = 0  # data bytes of the current chunk not yet passed on
        skip = 0  # bytes of the CRLF after the current chunk's data not yet skipped
        while True:
            parts = []
            n = len(buf)
            while True:
                if remaining:
                    take = min(remaining, n - pos)
                    if take:
                        parts.append(buf[pos:pos + take])
                        pos += take
                        remaining -= take
                    if remaining:
                        break
                    skip = 2
                if skip:
                    take = min(skip, n - pos)
                    pos += take
                    skip -= take
                    if skip:
                        break
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    if n - pos > 4096:
                        self.close()
                        raise TransportError("connection", f"bad chunk size line {buf[pos:pos + 40]!r}")
                    break
                line = buf[pos:i]
                try:
                    size = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    self.close()
                    raise TransportError("connection", f"bad chunk size line {line[:40]!r}") from None
                pos = i + 2
                if size == 0:  # last chunk: skip trailers up to the blank line
                    self._buf = buf[pos:]
                    if parts:
                        yield (parts[0] if len(parts) == 1 else b"".join(parts)), self._buf_t
                    while True:
                        while b"\r\n" not in self._buf:
                            self._need(len(self._buf) + 1)
                        trailer, self._buf = self._buf.split(b"\r\n", 1)
                        if not trailer:
                            return
                remaining = size
            if parts:
                yield (parts[0] if len(parts) == 1 else b"".join(parts)), self._buf_t
            data = self._recv()
            if not data:
                self.close()
                raise TransportError("connection", "connection closed in the middle of a chunked body")
            buf = buf[pos:] + data if pos < n else data
            pos = 0


class HttpResponse:
    """Status and headers of a response whose body is still on the wire."""

    def __init__(self, conn: HttpConnection, status: int, reason: str, headers: dict[str, str], version: str,
                 t_sent: float, method: str) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.t_sent = t_sent
        self._conn = conn
        self._version = version
        self._method = method
        self._consumed = False

    def _pieces(self) -> Iterator[tuple[bytes, float]]:
        if self._consumed:
            raise RuntimeError("response body already read")
        self._consumed = True
        done = False
        try:
            yield from self._conn._body_pieces(self.headers, self._version, self._method, self.status)
            done = True
        finally:
            self._conn._disarm()
            keep = self._version == "HTTP/1.1" and "close" not in self.headers.get("connection", "").lower()
            if not (done and keep):
                self._conn.close()  # an abandoned or unframed body leaves the connection unusable

    def iter_pieces(self) -> Iterator[tuple[bytes, float]]:
        """The body's bytes (chunk framing removed) as they arrive, each piece with the stamp of the read
        that brought it."""
        return self._pieces()

    def iter_lines(self) -> Iterator[tuple[bytes, float]]:
        """Body lines without their line ending, each with the arrival time of the bytes that completed it.

        A final line without a line ending is yielded at end of body.
        """
        pending = b""
        for piece, t in self._pieces():
            if b"\n" not in piece:
                pending += piece
                continue
            parts = (pending + piece).split(b"\n")
            pending = parts.pop()
            for line in parts:
                yield (line[:-1] if line.endswith(b"\r") else line), t
        if pending:
            yield (pending[:-1] if pending.endswith(b"\r") else pending), self._conn.clock()

    def read(self) -> bytes:
        """The whole body."""
        return b"".join(p for p, _ in self._pieces())

    def close(self) -> None:
        """Drop the connection unless the body was read to its end."""
        if not self._consumed:
            self._consumed = True
            self._conn.close()
