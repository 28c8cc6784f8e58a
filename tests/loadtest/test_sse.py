"""SSE parsing and line timestamping at the transport level."""

from __future__ import annotations

import gevent
import pytest
from gevent.server import StreamServer

from llmsim.loadtest.sse import MalformedStream, SseParser
from llmsim.loadtest.transport import HttpConnection, join_path


def feed_all(lines):
    p = SseParser()
    out = [p.feed(line, float(i)) for i, line in enumerate(lines)]
    return [e for e in out if e is not None], p


def test_data_event_comment_and_multiline():
    events, p = feed_all([b": ping", b"event: content_block_delta", b"data: {\"a\":", b"data: 1}", b"",
                          b"id: 7", b"retry: 10", b"data:[DONE]", b""])
    assert [(e.event, e.data) for e in events] == [("content_block_delta", '{"a":\n1}'), (None, "[DONE]")]
    assert events[0].t == 2.0  # stamped when its first data line completed
    assert p.junk_lines == 0


def test_blank_lines_without_data_dispatch_nothing():
    events, _ = feed_all([b"", b"event: ping", b"", b""])
    assert events == []


def test_finish_dispatches_a_trailing_event():
    p = SseParser()
    p.feed(b"data: [DONE]", 1.0)
    ev = p.finish()
    assert ev is not None and ev.data == "[DONE]"
    assert p.finish() is None


def test_bad_utf8_and_junk_lines():
    p = SseParser()
    with pytest.raises(MalformedStream):
        p.feed(b"data: \xff\xfe", 0.0)
    p.feed(b'{"choices": []}', 0.0)
    assert p.junk_lines == 1


def test_join_path():
    assert join_path("", "/v1/chat/completions") == "/v1/chat/completions"
    assert join_path("/v1", "/v1/chat/completions") == "/v1/chat/completions"
    assert join_path("/proxy/v1/", "/v1/messages") == "/proxy/v1/messages"
    assert join_path("/proxy", "/v1/messages") == "/proxy/v1/messages"


def test_lines_are_stamped_when_their_bytes_arrive():
    """A line split across two writes gets the time of the second write; chunk framing is removed."""

    def handler(sock, _addr):
        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(b"6\r\nab\ncd-\r\n")  # "ab" completes now; "cd-" waits
        gevent.sleep(0.05)
        sock.sendall(b"3\r\nef\n\r\n")  # completes "cd-ef"
        gevent.sleep(0.05)
        sock.sendall(b"2\r\ngh\r\n0\r\n\r\n")  # last line has no newline
        sock.recv(65536)

    srv = StreamServer(("127.0.0.1", 0), handler)
    srv.start()
    try:
        conn = HttpConnection(f"http://127.0.0.1:{srv.server_port}", timeout=5)
        resp = conn.request("POST", "/x", {}, b"{}")
        lines = list(resp.iter_lines())
        assert [line for line, _ in lines] == [b"ab", b"cd-ef", b"gh"]
        t_ab, t_cdef = lines[0][1], lines[1][1]
        assert 0.045 <= t_cdef - t_ab <= 0.08
        assert conn._sock is not None  # chunked body read to its end: connection kept
    finally:
        srv.stop(timeout=0.1)
