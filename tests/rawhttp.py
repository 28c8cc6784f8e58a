"""A bare HTTP/1.1 client for tests that must see the wire: a missing chunk terminator,
a connection closed before any status line, exact header bytes."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    raw: bytes  # everything received
    closed: bool  # the server closed the connection
    elapsed: float
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""  # de-chunked
    terminated: bool = False  # a complete body: the zero-length chunk, or Content-Length bytes

    @property
    def events(self) -> list[str]:
        """SSE `data:` payloads in order."""
        return [line[6:] for line in self.body.decode().split("\n") if line.startswith("data: ")]


def _parse(resp: RawResponse) -> None:
    head, sep, rest = resp.raw.partition(b"\r\n\r\n")
    if not sep:
        return
    lines = head.decode("latin-1").split("\r\n")
    resp.status = int(lines[0].split()[1])
    resp.headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if resp.headers.get("transfer-encoding") == "chunked":
        parts, at = [], 0  # an offset, not slices of the rest: a long stream has thousands of chunks
        while True:
            end = rest.find(b"\r\n", at)
            if end < 0:
                break
            size = int(rest[at:end].split(b";")[0], 16)
            at = end + 2
            if size == 0:
                resp.terminated = rest.startswith(b"\r\n", at)
                break
            parts.append(rest[at:at + size])
            if len(rest) < at + size + 2:
                break
            at += size + 2
        resp.body = b"".join(parts)
    else:
        resp.body = rest
        resp.terminated = len(rest) >= int(resp.headers.get("content-length", "-1"))


def read_response(sock: socket.socket, raw: bytes = b"") -> RawResponse:
    """Read one response from an open keep-alive socket (`raw`: what of it was read already) until it is
    complete (its zero-length chunk, or Content-Length bytes) or the server closes the connection."""
    resp = RawResponse(raw, False, 0.0)
    while b"\r\n\r\n" not in resp.raw or not _complete(resp.raw):
        data = sock.recv(65536)
        if not data:
            resp.closed = True
            break
        resp.raw += data
    _parse(resp)
    return resp


def _complete(raw: bytes) -> bool:
    """Whether a response's bytes are whole, without de-chunking it (once per read of a long stream)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    if b"transfer-encoding: chunked" in lines:
        return rest.startswith(b"0\r\n\r\n") or rest.endswith(b"\r\n0\r\n\r\n")
    length = next((int(ln.split(b":")[1]) for ln in lines if ln.startswith(b"content-length:")), 0)
    return len(rest) >= length


def raw_request(base_url: str, method: str, path: str, body: dict | None = None,
                headers: dict[str, str] | None = None, timeout: float = 20.0) -> RawResponse:
    """Send one keep-alive request and read until the response is complete or the server closes."""
    url = urlsplit(base_url)
    payload = b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {url.netloc}", "Connection: keep-alive",
             f"Content-Length: {len(payload)}"]
    if body is not None:
        lines.append("Content-Type: application/json")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    t0 = time.monotonic()
    sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        resp = read_response(sock)
    finally:
        sock.close()
    resp.elapsed = time.monotonic() - t0
    return resp


def raw_exchange(base_url: str, data: bytes, timeout: float = 20.0, until_close: bool = False) -> RawResponse:
    """Send arbitrary bytes (a whole request, malformed or not) and read one response
    (and, with `until_close`, on until the server closes the connection).

    A server that answers early and closes may reset the connection while we still
    write: what it answered before that is what counts.
    """
    url = urlsplit(base_url)
    t0 = time.monotonic()
    resp = RawResponse(b"", False, 0.0)
    sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
    try:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                resp.closed = True
                break
            if not chunk:
                resp.closed = True
                break
            resp.raw += chunk
            _parse(resp)
            if resp.terminated and not until_close:
                break
    finally:
        sock.close()
    resp.elapsed = time.monotonic() - t0
    _parse(resp)
    return resp
