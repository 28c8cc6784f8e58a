"""Slow and idle connections: the header and idle timeouts, and a server out of file descriptors.

Each test runs `llmsim serve` in a subprocess (its own file-descriptor limit where
needed) and talks to it over raw sockets. Bounds are generous: they hold on a busy
two-core machine, and still fail if a timeout is missing (the waits would never end).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..rawhttp import RawResponse, _parse, read_response

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def serve(tmp_path: Path, *args: str, nofile: int | None = None) -> tuple[subprocess.Popen, str, Path]:
    log = tmp_path / "stderr.log"
    cmd = [sys.executable, "-m", "llmsim", "serve", "--port", "0", *args]
    if nofile is not None:  # lower the open-file limit of the server process only
        cmd = [sys.executable, "-c", "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, "
               f"({nofile}, {nofile})); os.execv(sys.executable, sys.argv[1:])", *cmd]
    with open(log, "w") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=ENV)
    line = p.stdout.readline()
    m = re.search(r"http://([\d.]+):(\d+)", line)
    assert m, line + log.read_text()
    return p, f"{m.group(1)}:{m.group(2)}", log


def connect(addr: str, timeout: float = 15.0) -> socket.socket:
    host, port = addr.split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and how long that took."""
    t0 = time.monotonic()
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - t0


def health(addr: str) -> bytes:
    return f"GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n".encode()


@pytest.fixture
def server(tmp_path):
    p, addr, log = serve(tmp_path, "--latency-profile", "fast", "--header-timeout", "1", "--idle-timeout", "1",
                         "--target-tokens", "1500")
    try:
        yield addr, log
    finally:
        p.terminate()
        p.wait(timeout=10)
    assert "Traceback" not in log.read_text()


def test_a_silent_connection_is_closed_after_the_header_timeout(server):
    addr, log = server
    with connect(addr) as sock:
        data, waited = read_until_closed(sock)
    assert data == b"" and 0.8 <= waited <= 6, waited  # nothing was asked: nothing to answer


def test_partial_headers_get_a_408_envelope(server):
    addr, log = server
    with connect(addr) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        data, waited = read_until_closed(sock)
    resp = RawResponse(data, True, waited)
    _parse(resp)
    assert resp.status == 408 and json.loads(resp.body)["error"]["type"] == "invalid_request_error"
    assert 0.8 <= waited <= 6, waited
    assert len([ln for ln in log.read_text().splitlines() if "408" in ln]) == 1


def test_headers_sent_a_byte_at_a_time_still_meet_one_deadline(server):
    addr, log = server
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    t0 = time.monotonic()
    with connect(addr) as sock:
        for i in range(len(request)):
            try:
                sock.sendall(request[i:i + 1])
            except OSError:
                break
            time.sleep(0.05)
            if time.monotonic() - t0 > 8:
                break
        data, _ = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408"), data[:100]
    assert time.monotonic() - t0 < 8  # the deadline, not the per-byte gap, ended it


def test_idle_keep_alive_connections_are_closed_busy_ones_are_not(server):
    addr, log = server
    with connect(addr) as sock:
        for _ in range(3):  # requests closer together than the idle timeout keep the connection
            sock.sendall(health(addr))
            assert read_response(sock).status == 200
            time.sleep(0.3)
        data, waited = read_until_closed(sock)
    assert data == b"" and waited <= 6


def test_timeouts_do_not_limit_slow_bodies_or_long_streams(server):
    addr, log = server
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                       "max_tokens": 1500}).encode()
    with connect(addr) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode())
        time.sleep(1.5)  # the body arrives after the header timeout: the headers were in time
        sock.sendall(body)
        t0 = time.monotonic()
        resp = read_response(sock)
        took = time.monotonic() - t0
    assert resp.status == 200 and resp.terminated and resp.events[-1] == "[DONE]"
    assert took > 1.0  # 1500 tokens at 1 ms: the stream outlived both timeouts


def test_timeouts_are_options(tmp_path):
    from llmsim.cli.config import resolve_config

    cfg = resolve_config({"header_timeout": "2.5"}, env={"LLMSIM_IDLE_TIMEOUT": "0"})
    assert (cfg.header_timeout, cfg.idle_timeout) == (2.5, 0.0)
    assert resolve_config({}, env={}).header_timeout > 0 and resolve_config({}, env={}).idle_timeout > 0
    r = subprocess.run([sys.executable, "-m", "llmsim", "serve", "--idle-timeout", "-1"], capture_output=True,
                       text=True, timeout=60, env=ENV)
    assert r.returncode == 2 and "--idle-timeout" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_out_of_file_descriptors_degrades_and_recovers(tmp_path):
    """With 32 descriptors, 60 idle connections exhaust the server; it pauses accepting (one log line,
    no traceback), closes the idle ones after the timeout, and /health answers again."""
    p, addr, log = serve(tmp_path, "--latency-profile", "instant", "--header-timeout", "1", "--idle-timeout", "1",
                         nofile=32)
    idle: list[socket.socket] = []
    try:
        for _ in range(60):
            idle.append(connect(addr))
        t0 = time.monotonic()
        with connect(addr, timeout=30) as sock:
            sock.sendall(health(addr))
            resp = read_response(sock)
        took = time.monotonic() - t0
        assert resp.status == 200 and json.loads(resp.body)["status"] == "ok"
        assert took < 25, took
        closed = 0
        for s in idle:  # every idle connection was accepted in turn and closed by the server
            s.settimeout(20)
            data, _ = read_until_closed(s)
            closed += data == b""
        assert closed == len(idle)
    finally:
        for s in idle:
            s.close()
        p.terminate()
        p.wait(timeout=10)
    text = log.read_text()
    assert "Traceback" not in text
    lines = [ln for ln in text.splitlines() if "cannot accept connections" in ln]
    assert 1 <= len(lines) <= 3 and "Too many open files" in lines[0], text[-2000:]
