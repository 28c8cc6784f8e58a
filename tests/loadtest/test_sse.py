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


class _ScriptedConnection(HttpConnection):
    """An HttpConnection whose reads return the given byte strings, one per read."""

    def __init__(self, reads):
        super().__init__("http://127.0.0.1:9", kernel_stamps=False)
        self._reads = list(reads)

    def _recv(self):
        self._buf_t = float(len(self._reads))
        return self._reads.pop(0) if self._reads else b""


@pytest.mark.parametrize("seed", range(20))
def test_chunked_decoding_survives_any_split(seed):
    import random

    rng = random.Random(seed)
    chunks = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(rng.randrange(1, 12))]
    wire = b"".join(b"%x%s\r\n%s\r\n" % (len(c), b";ext=1" if rng.random() < 0.2 else b"", c) for c in chunks)
    wire += b"0\r\n" + (b"X-Trailer: 1\r\n" if rng.random() < 0.5 else b"") + b"\r\nNEXT"
    cuts = sorted(rng.sample(range(1, len(wire)), min(len(wire) - 1, rng.randrange(0, 30))))
    reads = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)])]
    conn = _ScriptedConnection(reads)
    body = b"".join(piece for piece, _ in conn._chunked_pieces())
    assert body == b"".join(chunks)
    assert conn._buf + b"".join(conn._reads) == b"NEXT"  # nothing of the next response is eaten


def test_bad_chunk_size_is_a_transport_error():
    from llmsim.loadtest.transport import TransportError

    conn = _ScriptedConnection([b"zz\r\nabc\r\n"])
    with pytest.raises(TransportError, match="bad chunk size"):
        list(conn._chunked_pieces())


def test_feed_piece_equals_feeding_lines():
    """Body pieces split anywhere give the events (and times) that feeding their lines gives."""
    body = (b": ping\r\nevent: content_block_delta\r\ndata: {\"a\":\r\ndata:1}\r\n\r\n"
            b"id: 7\nretry: 10\ndata: x\n\n: llmsim-trace {\"id\": \"r\"}\n\ndata: [DONE]\n\ndata: tail")
    for cut in range(1, len(body)):
        p = SseParser()
        events = p.feed_piece(body[:cut], 1.0) + p.feed_piece(body[cut:], 2.0) + p.end_of_body(3.0)
        assert [(e.event, e.data) for e in events] == [
            ("content_block_delta", '{"a":\n1}'), (None, "x"), (None, "[DONE]"), (None, "tail")]
        first_data_line_end = body.index(b"{\"a\":\r\n") + 7
        assert events[0].t == (1.0 if cut >= first_data_line_end else 2.0)
        assert events[-1].t == 3.0
        assert p.trace == b'{"id": "r"}' and p.junk_lines == 0


def test_feed_piece_rejects_bad_utf8():
    with pytest.raises(MalformedStream):
        SseParser().feed_piece(b"data: \xff\n", 0.0)
