"""The recording proxy's side toward the upstream: a small HTTP/1.1 client on raw sockets.

Why not http.client: the proxy must hand every byte on the moment it arrives
and stamp when it arrived. Here one `recv` gives everything the kernel holds
(several events, when the proxy was busy, go out in one write instead of one
each), chunked framing is undone in place, and on plain TCP each read carries
the kernel's receive time (SO_TIMESTAMPNS), so the record's timing leaves out
the proxy's own scheduling delays. TLS (https) uses Python's ssl, stamped on
wake-up. Connections are kept alive and pooled per upstream.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["Upstream", "UpstreamConnection", "UpstreamError", "UpstreamResponse"]

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
READ_SIZE = 65536
MAX_HEAD = 64 * 1024


class UpstreamError(Exception):
    """The upstream could not be reached, or broke the HTTP exchange."""


class Stale(UpstreamError):
    """A kept-alive connection the upstream had already closed: nothing of the response arrived."""


@dataclass
class Upstream:
    """Where the proxy forwards to: scheme, host, port and a base path prefixed to every request path."""

    url: str
    timeout: float = 600.0
    max_idle: int = 64
    _idle: list[UpstreamConnection] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--upstream must be an http:// or https:// URL, got {self.url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        default_port = self.port == (443 if self.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.display = f"{self.scheme}://{self.host_header}{self.base_path}"
        """The URL without user info or query: what a record line may show."""
        self._ssl = ssl.create_default_context() if self.scheme == "https" else None

    def connect(self) -> UpstreamConnection:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as e:
            raise UpstreamError(f"upstream {self.display} unreachable: {e.strerror or e}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stamped = False
        if self._ssl is not None:
            try:
                sock = self._ssl.wrap_socket(sock, server_hostname=self.host)
            except (OSError, ssl.SSLError) as e:
                sock.close()
                raise UpstreamError(f"upstream {self.display}: TLS failed: {e}") from None
        else:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                stamped = True
            except OSError:  # pragma: no cover - not Linux
                pass
        return UpstreamConnection(sock, stamped)

    def connection(self) -> UpstreamConnection:
        """An idle kept-alive connection, or a new one."""
        return self._idle.pop() if self._idle else self.connect()

    def release(self, conn: UpstreamConnection) -> None:
        """Keep a connection whose response was read to the end, for the next request."""
        if len(self._idle) < self.max_idle and not conn.closed:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class UpstreamConnection:
    """One socket to the upstream; `request()` sends a request and reads the response head."""

    def __init__(self, sock: socket.socket, stamped: bool) -> None:
        self.sock = sock
        self.stamped = stamped
        self.closed = False
        self.used = False

    def recv(self) -> tuple[bytes, float]:
        """Whatever has arrived (b"" at EOF), and when: the kernel's stamp (time.time() scale) if it gave one."""
        if self.stamped:
            data, anc, _flags, _addr = self.sock.recvmsg(READ_SIZE, 256)
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, ns = struct.unpack("ll", raw[:16])
                    return data, sec + ns / 1e9
            return data, time.time()
        return self.sock.recv(READ_SIZE), time.time()

    def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
                ) -> UpstreamResponse:
        """Send the request (one write) and wait for the response head; Stale if a reused connection was dead."""
        reused, self.used = self.used, True
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        try:
            self.sock.sendall(head.encode("latin-1") + body)
        except OSError as e:
            self.close()
            if reused:
                raise Stale(str(e)) from None
            raise UpstreamError(f"cannot send: {e.strerror or e}") from None
        resp = UpstreamResponse(self, method)
        try:
            resp.read_head()
        except Stale:
            self.close()
            if reused:
                raise
            raise UpstreamError("the upstream closed the connection without answering") from None
        except (OSError, UpstreamError) as e:
            self.close()
            raise UpstreamError(f"no response: {getattr(e, 'strerror', None) or e}") from None
        return resp

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:  # pragma: no cover
                pass


class UpstreamResponse:
    """The response: status, headers, then `read()` for body pieces as they arrive (b"" at the end)."""

    def __init__(self, conn: UpstreamConnection, method: str) -> None:
        self.conn = conn
        self.method = method.upper()
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.head_time = 0.0
        self.last_time = 0.0
        """When the last read arrived (time.time() scale)."""
        self.done = False
        self.keep_alive = True
        self._buf = b""
        self._mode = "close"  # "length" | "chunked" | "close" | "none"
        self._left = 0  # length mode: bytes to go; chunked: bytes of the current chunk to go
        self._chunk_state = "size"  # "size" | "data" | "crlf" | "trailer"

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def read_head(self) -> None:
        while True:  # 1xx answers (100 Continue) come before the real one
            while b"\r\n\r\n" not in self._buf:
                if len(self._buf) > MAX_HEAD:
                    raise UpstreamError("response head larger than 64 KiB")
                data, t = self.conn.recv()
                if not data:
                    if self._buf:
                        raise UpstreamError("the connection closed inside the response head")
                    raise Stale("closed before any response")
                self._buf += data
                self.head_time = self.last_time = t
            head, self._buf = self._buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise UpstreamError(f"not an HTTP response: {lines[0][:80]!r}")
            self.status, self.reason = int(parts[1]), parts[2] if len(parts) > 2 else ""
            self.headers = []
            for line in lines[1:]:
                if line[:1] in (" ", "\t") and self.headers:  # obsolete line folding
                    k, v = self.headers[-1]
                    self.headers[-1] = (k, v + " " + line.strip())
                    continue
                name, _, value = line.partition(":")
                self.headers.append((name.strip(), value.strip()))
            if not 100 <= self.status < 200 or self.status == 101:
                break
        version = parts[0]
        conn_hdr = (self.header("connection") or "").lower()
        self.keep_alive = "close" not in conn_hdr and (version != "HTTP/1.0" or "keep-alive" in conn_hdr)
        te = (self.header("transfer-encoding") or "").lower()
        length = self.header("content-length")
        if self.method == "HEAD" or self.status in (204, 304):
            self._mode = "none"
        elif "chunked" in te:
            self._mode = "chunked"
        elif length is not None and length.strip().isdigit():
            self._mode, self._left = "length", int(length)
        else:
            self._mode, self.keep_alive = "close", False
        if self._mode == "none" or (self._mode == "length" and self._left == 0):
            self.done = True

    def read(self) -> tuple[bytes, float]:
        """The body bytes that have arrived (blocking until some do), de-chunked, and their arrival time;
        b"" once the body is complete. UpstreamError if the upstream breaks it off."""
        while not self.done:
            out = self._take() if self._buf else b""
            if out or self.done:
                return out, self.last_time
            data, self.last_time = self.conn.recv()
            if not data:
                if self._mode == "close":
                    self.done = True
                    return b"", self.last_time
                raise UpstreamError("the upstream closed the connection inside the body")
            self._buf += data
        return b"", self.last_time

    def _take(self) -> bytes:
        """Consume what the buffer holds of the body."""
        if self._mode == "close":
            out, self._buf = self._buf, b""
            return out
        if self._mode == "length":
            out, self._buf = self._buf[:self._left], self._buf[self._left:]
            self._left -= len(out)
            self.done = self._left == 0
            return out
        pieces = []
        buf = self._buf
        while buf:
            state = self._chunk_state
            if state == "data":
                piece = buf[:self._left]
                pieces.append(piece)
                buf = buf[len(piece):]
                self._left -= len(piece)
                if self._left == 0:
                    self._chunk_state = "crlf"
            elif state == "crlf":
                if len(buf) < 2:
                    break
                buf = buf[2:]
                self._chunk_state = "size"
            else:  # "size" or "trailer": a whole line is needed
                nl = buf.find(b"\r\n")
                if nl < 0:
                    if len(buf) > MAX_HEAD:
                        raise UpstreamError("malformed chunked body")
                    break
                line, buf = buf[:nl], buf[nl + 2:]
                if state == "trailer":
                    if not line:
                        self.done = True
                        break
                    continue
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise UpstreamError(f"malformed chunk size {line[:20]!r}") from None
                if size == 0:
                    self._chunk_state = "trailer"
                else:
                    self._left, self._chunk_state = size, "data"
        self._buf = buf
        return b"".join(pieces)

    @property
    def reusable(self) -> bool:
        return self.done and self.keep_alive and not self._buf and not self.conn.closed
