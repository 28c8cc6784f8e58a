"""Streams the event loop writes (cli/streamwriter.py): no greenlet between tokens, and nothing else changes.

After its first content chunk, a stream is handed to a DetachedStream: the
connection's greenlet ends, and timer callbacks write the later chunks. These
tests check what that must keep: every byte in order, keep-alive after the
stream, a slot freed when the client leaves, a full socket buffer, the stats,
and (as a control, the same test with precise waits off) that the greenlets
really are gone.
"""

from __future__ import annotations

import gc
import json
import socket
import time

import gevent
import pytest

from llmsim.cli.streamwriter import DetachedStream
from llmsim.testing import run_server
from llmsim.tokens import encode, get_encoding
from tests.rawhttp import RawResponse, read_response

MODEL = "writer-test"


def _profile(tmp_path, *, ttft_ms: float = 20, itl_ms: float = 100, slots: int = 64, queue: int = 0) -> str:
    path = tmp_path / "writer.yaml"
    path.write_text(
        "profiles:\n"
        f"  - name: {MODEL}\n    models: [{MODEL}]\n"
        f"    ttft: {{distribution: constant, mean_ms: {ttft_ms:g}}}\n"
        f"    itl: {{distribution: constant, mean_ms: {itl_ms:g}}}\n"
        f"    capacity: {{max_concurrent: {slots}, queue_limit: {queue}, slowdown_at_full: 1.0}}\n")
    return str(tmp_path)


def _request(tokens: int, stream: bool = True) -> bytes:
    body = json.dumps({"model": MODEL, "max_tokens": tokens, "stream": stream,
                       "messages": [{"role": "user", "content": "go"}]}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def _open(url: str, tokens: int) -> tuple[socket.socket, bytes]:
    """A raw stream, read until its first content chunk arrived."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(_request(tokens))
    sock.settimeout(10)
    raw = b""
    while raw.count(b"data: ") < 2:  # the opening (role) event, then the first content chunk
        data = sock.recv(65536)
        assert data, "closed before the first token"
        raw += data
    return sock, raw


def _read_response(sock: socket.socket, raw: bytes = b"") -> RawResponse:
    """Read one streamed response whole; it must end with its zero-length chunk."""
    resp = read_response(sock, raw)
    assert resp.headers.get("transfer-encoding") == "chunked", resp.headers
    assert resp.terminated and not resp.closed, "the server closed the stream early"
    return resp


def _text(body: bytes) -> str:
    events = [e for e in body.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    deltas = [json.loads(e[6:]) for e in events[:-1]]
    assert [d["choices"][0]["finish_reason"] for d in deltas if d["choices"]][-1] == "length"
    return "".join(d["choices"][0]["delta"].get("content") or "" for d in deltas if d["choices"])


def _live_greenlets() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, gevent.Greenlet) and not o.dead)


def _stats(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url + "/llmsim/stats") as r:
        return json.loads(r.read())


@pytest.mark.parametrize("precise", ["1", "0"])
def test_open_streams_keep_no_greenlet_between_tokens(tmp_path, monkeypatch, precise):
    # With precise waits off there is no timer to write from: every open stream keeps its greenlet.
    # That control shows the count below can tell the two apart.
    monkeypatch.setenv("LLMSIM_PRECISE_WAITS", precise)
    n, tokens = 24, 8
    with run_server(profiles_dir=_profile(tmp_path, itl_ms=150), target_tokens=4 * tokens) as url:
        _stats(url)  # warm: the server's own greenlets exist before counting
        before = _live_greenlets()
        streams = [_open(url, tokens) for _ in range(n)]
        parked = _live_greenlets() - before
        texts = []
        for sock, raw in streams:
            texts.append(_text(_read_response(sock, raw).body))
            sock.close()
        time.sleep(0.1)
        stats = _stats(url)
    if precise == "1":
        assert parked <= 2, f"{parked} greenlets for {n} open streams"
    else:
        assert parked >= n
    enc = get_encoding("o200k_base")
    assert all(len(encode(t, enc)) == tokens for t in texts)
    assert stats["models"][MODEL]["finished"] == {"length": n}
    assert stats["active_streams"] == 0
    assert stats["client_disconnects_total"] == 0


def test_a_connection_carries_on_after_a_written_stream(tmp_path):
    # Keep-alive: streams and a JSON answer one after another on one socket, and each is whole.
    with run_server(profiles_dir=_profile(tmp_path, itl_ms=20), target_tokens=24) as url:
        host, port = url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)))
        sock.settimeout(10)
        for _ in range(3):
            sock.sendall(_request(6))
            assert len(encode(_text(_read_response(sock).body), get_encoding("o200k_base"))) == 6
        sock.sendall(_request(6, stream=False))
        answer = read_response(sock)
        assert answer.terminated and not answer.closed
        assert json.loads(answer.body)["usage"]["completion_tokens"] == 6
        sock.close()
        time.sleep(0.1)
        stats = _stats(url)
    assert stats["models"][MODEL]["finished"] == {"length": 4}
    assert stats["active_streams"] == 0


@pytest.mark.parametrize("leaves", ["before its first token", "between tokens"])
def test_a_client_that_hangs_up_frees_its_slot_at_once(tmp_path, leaves):
    # One slot, and a stream whose next token is 3 s away when its client closes the connection. The
    # slot must go to the next request at once, not when the stream would next have written.
    ttft_ms, itl_ms = (3000, 20) if leaves == "before its first token" else (20, 3000)
    with run_server(profiles_dir=_profile(tmp_path, ttft_ms=ttft_ms, itl_ms=itl_ms, slots=1, queue=8),
                    target_tokens=40) as url:
        if leaves == "before its first token":
            host, port = url.removeprefix("http://").split(":")
            sock = socket.create_connection((host, int(port)))
            sock.sendall(_request(10))
            sock.settimeout(10)
            raw = b""
            while b"data: " not in raw:  # the headers and the opening event, long before the first token
                raw += sock.recv(65536)
        else:
            sock, _ = _open(url, 10)
        host, port = url.removeprefix("http://").split(":")
        second = socket.create_connection((host, int(port)))
        second.sendall(_request(2))  # queued behind the first
        while _stats(url)["queued"] < 1:
            time.sleep(0.01)
        sock.close()
        t = time.monotonic()
        while time.monotonic() - t < 2.5:
            stats = _stats(url)
            if stats["models"][MODEL]["finished"].get("abort") == 1 and stats["queued"] == 0:
                break
            time.sleep(0.01)
        waited = time.monotonic() - t
        second.close()
    assert waited < 1.5, f"the slot was freed {waited:.2f} s after the client left"
    assert stats["active"] == 1  # the second request holds it now
    assert stats["client_disconnects_total"] == 1


def test_a_full_socket_buffer_parks_the_stream_until_the_client_reads(tmp_path, monkeypatch, small_send_buffer):
    drained = []
    drain = DetachedStream._drain

    def counting(self):
        drained.append(1)
        return drain(self)

    monkeypatch.setattr(DetachedStream, "_drain", counting)
    tokens = 4000
    with run_server(profiles_dir=_profile(tmp_path, itl_ms=0.25), target_tokens=2 * tokens,
                    generator="random") as url:
        host, port = url.removeprefix("http://").split(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
        sock.connect((host, int(port)))
        sock.sendall(_request(tokens))
        sock.settimeout(20)
        time.sleep(1.5)  # the stream is due whole by now; the socket buffers fill, the rest waits
        body = _read_response(sock).body
        sock.close()
    assert drained, "the socket never filled: the test did not reach the parked path"
    assert len(encode(_text(body), get_encoding("o200k_base"))) == pytest.approx(tokens, abs=tokens // 50)


@pytest.mark.parametrize("mode", ["drop", "error"])
def test_an_injected_cut_between_tokens_ends_the_written_stream_as_on_a_greenlet(tmp_path, mode):
    # The cut comes at a deadline the writer woke for: "drop" closes with no terminator, "error" sends the
    # in-band error event and ends the stream properly. Either way the stream is settled, not left open.
    with run_server(profiles_dir=_profile(tmp_path, itl_ms=30), target_tokens=80, seed=3,
                    config={"errors": {"midstream": 1.0, "midstream_mode": mode}}) as url:
        sock, raw = _open(url, 20)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            raw += data
            if raw.endswith(b"0\r\n\r\n"):
                break
        sock.close()
        time.sleep(0.1)
        stats = _stats(url)
    if mode == "drop":
        assert not raw.endswith(b"0\r\n\r\n") and b"[DONE]" not in raw
    else:
        assert raw.endswith(b"0\r\n\r\n") and b'"error"' in raw
    assert stats["active_streams"] == 0
    assert stats["errors"].get("midstream") == 1
