"""A plain request parsed in one pass gets the environ, the answer and the connection handling pywsgi's reader gives."""

from __future__ import annotations

import json
import random
import socket
import struct
import time

import pytest

import llmsim.cli.server as server_module
from llmsim.cli.plainrequest import parse_plain_head
from llmsim.cli.server import NoDelayWSGIServer, _QuietHandler

SDK_HEAD = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: gzip, deflate\r\n"
            b"Connection: keep-alive\r\nAccept: application/json\r\nContent-Type: application/json\r\n"
            b"User-Agent: OpenAI/Python 1.0\r\nX-Stainless-Lang: python\r\nAuthorization: Bearer sk-x\r\n"
            b"Content-Length: 2\r\n\r\n")

PLAIN = {
    "sdk": SDK_HEAD + b"{}",
    "get": b"GET /health HTTP/1.1\r\nHost: b\r\n\r\n",
    "query and escapes": b"GET /v1/models/gpt%2D4o%C3%A9?limit=2&x=%20 HTTP/1.1\r\nHost: b\r\n\r\n",
    "http/1.0 keep-alive": b"GET /health HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
    "http/1.0": b"GET /health HTTP/1.0\r\n\r\n",
    "connection close": b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n",
    # pywsgi compares the value with its trailing blanks: neither of these is the word it looks for
    "close with a blank": b"GET /health HTTP/1.1\r\nConnection: close \r\n\r\n",
    "keep-alive with a blank": b"GET /health HTTP/1.0\r\nConnection: keep-alive\t\r\n\r\n",
    "blanks around values": b"GET /h HTTP/1.1\r\nHost:   spaced  \r\nAccept:\tx\t\r\nX-Empty:\r\n"
                            b"Content-Type:  text/plain \r\n\r\n",
    "underscore name": b"GET /h HTTP/1.1\r\nX_Under: 1\r\nX-Dash: 2\r\n\r\n",
    "latin-1 value": b"GET /h HTTP/1.1\r\nAuthorization: Bearer \xff\xfekey\r\nHost: b\r\n\r\n",
    "colon in value": b"GET /h HTTP/1.1\r\nHost: example.com:8080\r\nX-T: a:b:c\r\n\r\n",
    "zero length body": b"POST /echo HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
}

UNUSUAL = {
    "chunked": b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "expect": b"POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
    "upgrade": b"GET /h HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "connection upgrade": b"GET /h HTTP/1.1\r\nConnection: upgrade\r\n\r\n",
    "repeated header": b"GET /h HTTP/1.1\r\nAccept: a\r\naccept: b\r\n\r\n",
    "two lengths": b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "bad length": b"POST /echo HTTP/1.1\r\nContent-Length: -2\r\n\r\n",
    "length with blank": b"POST /echo HTTP/1.1\r\nContent-Length: 2 \r\n\r\n{}",
    "head with body": b"HEAD /h HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    "http/2.0": b"GET /h HTTP/2.0\r\n\r\n",
    "http/0.9 two words": b"GET /h\r\n\r\n",
    "bad version": b"GET /h HTTQ/1.1\r\n\r\n",
    "double space": b"GET  /h HTTP/1.1\r\n\r\n",
    "tab in target": b"GET /a\tb HTTP/1.1\r\n\r\n",
    "folded line": b"GET /h HTTP/1.1\r\nX-Long: one\r\n two\r\n\r\n",
    "no colon": b"GET /h HTTP/1.1\r\nnot a header\r\n\r\n",
    "space in name": b"GET /h HTTP/1.1\r\nBad Name: v\r\n\r\n",
    "bare LF": b"GET /h HTTP/1.1\nHost: b\n\n",
    "bare CR in value": b"GET /h HTTP/1.1\r\nHost: b\rAccept: x\r\n\r\n",
    "too many headers": b"GET /h HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n",
    "request line too long": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_heads_are_parsed(name):
    raw = PLAIN[name]
    head = parse_plain_head(raw)
    assert head is not None
    assert raw[head.size - 4:head.size] == b"\r\n\r\n" and b"\r\n\r\n" not in raw[:head.size - 4]


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_anything_else_is_left_to_pywsgi(name):
    assert parse_plain_head(UNUSUAL[name]) is None


def test_what_the_head_says_of_the_connection_and_body():
    head = parse_plain_head(PLAIN["sdk"])
    assert (head.method, head.target, head.version, head.content_length, head.close) == \
        ("POST", "/v1/chat/completions", "HTTP/1.1", 2, False)
    assert parse_plain_head(PLAIN["http/1.0"]).close is True
    assert parse_plain_head(PLAIN["http/1.0 keep-alive"]).close is False
    assert parse_plain_head(PLAIN["connection close"]).close is True
    assert parse_plain_head(PLAIN["get"]).content_length is None


def _echo(environ, start_response):
    """The request's environ (its string items) and body, as JSON."""
    body = environ["wsgi.input"].read()
    items = {k: v for k, v in environ.items() if isinstance(v, str) and not k.startswith("wsgi.")}
    for port in ("REMOTE_PORT", "SERVER_PORT"):  # differ between the two servers and their connections
        items[port] = items[port].isdigit()
    items["body"] = body.decode("latin-1")
    out = json.dumps(items, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]


def server_without(switch: str) -> type:
    """NoDelayWSGIServer whose handlers have one of their shortcuts (a class attribute) turned off."""
    handler = type(f"_No_{switch}", (_QuietHandler,), {"__slots__": (), switch: False})
    return type(f"_ServerNo_{switch}", (NoDelayWSGIServer,), {"handler_class": handler})


_PywsgiServer = server_without("plain_requests")


@pytest.fixture
def servers(monkeypatch):
    """Two echo servers, one parsing plain requests in one pass and one with pywsgi's reader, and a count of
    the heads the first took the one-pass way."""
    taken = []

    def counting(buf):
        head = parse_plain_head(buf)
        taken.append(head is not None)
        return head

    monkeypatch.setattr(server_module, "parse_plain_head", counting)
    made = [cls(("127.0.0.1", 0), _echo, log=None) for cls in (NoDelayWSGIServer, _PywsgiServer)]
    for s in made:
        s.start()
    yield [s.server_port for s in made], taken
    for s in made:
        s.stop(timeout=1)


PROBE = b"GET /probe HTTP/1.1\r\nConnection: close\r\n\r\n"
"""Sent after the request: answered only if the server kept the connection open, which it then closes."""


def _exchange(port: int, raw: bytes) -> bytes:
    """What the server sends for `raw` and the probe after it, until it closes (Date headers dropped).

    An upgrade's input is the connection itself, read to its end: there the client stops sending instead.
    """
    upgrade = b"pgrade" in raw
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw if upgrade else raw + PROBE)
        if upgrade:
            sock.shutdown(socket.SHUT_WR)
        got = b""
        while data := sock.recv(65536):
            got += data
    return b"\r\n".join(ln for ln in got.split(b"\r\n") if not ln.startswith(b"Date: "))


@pytest.mark.parametrize("name", sorted(PLAIN) + sorted(UNUSUAL))
def test_the_server_answers_as_pywsgi_does(servers, name):
    (fast, slow), taken = servers
    raw = PLAIN.get(name) or UNUSUAL[name]
    mine, theirs = _exchange(fast, raw), _exchange(slow, raw)
    assert mine == theirs
    assert taken[0] is (name in PLAIN)  # the first request of the connection took the path it should
    if name in PLAIN:
        first = mine.split(b"HTTP/1.1 ")[1]
        echoed = json.loads(first.split(b"\r\n\r\n", 1)[1])
        assert echoed["REQUEST_METHOD"] in ("GET", "POST") and echoed["REMOTE_PORT"] is True


def test_a_head_that_arrives_in_parts_is_read_whole(servers):
    (fast, slow), taken = servers
    raw = PLAIN["sdk"]
    answers = []
    for port in (fast, slow):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(raw[:40])
            time.sleep(0.05)  # the server has read the first part
            sock.sendall(raw[40:] + PROBE)
            got = b""
            while data := sock.recv(65536):
                got += data
        answers.append(b"\r\n".join(ln for ln in got.split(b"\r\n") if not ln.startswith(b"Date: ")))
    assert answers[0] == answers[1] and answers[0].count(b"200 OK") == 2


def test_pipelined_requests_on_one_connection(servers):
    (fast, slow), taken = servers
    raw = PLAIN["sdk"] + PLAIN["get"] + UNUSUAL["chunked"] + PLAIN["query and escapes"] + PLAIN["connection close"]
    mine, theirs = _exchange(fast, raw), _exchange(slow, raw)
    assert mine == theirs
    assert mine.count(b"HTTP/1.1 200 OK") == 5  # the last asked to close: the probe is not answered
    assert True in taken and False in taken


def test_random_header_blocks_give_pywsgis_environ(servers):
    """Random mixes of names, spacing, repeats and casing: whichever path a head takes, the same answer."""
    (fast, slow), taken = servers
    rng = random.Random(7)
    names = ["Host", "Accept", "accept", "X-Api-Key", "x_api_key", "Connection", "Content-Type", "Cookie",
             "Content-Length", "Authorization", "X-Llmsim-Fault", "Transfer-Encoding"]
    values = ["v", " spaced ", "\tt", "", "close", "close ", "keep-alive", " Keep-Alive", "a, b", "3", "3 ", "ab\xe9"]
    for _ in range(60):
        lines = [f"{rng.choice(names)}:{rng.choice(values)}" for _ in range(rng.randint(0, 6))]
        version = rng.choice(["HTTP/1.1", "HTTP/1.0"])
        raw = (f"POST /echo?q={rng.randint(0, 9)} {version}\r\n" + "".join(ln + "\r\n" for ln in lines)
               + "\r\n").encode("latin-1") + b"abc"
        assert _exchange(fast, raw) == _exchange(slow, raw), raw
    assert taken.count(True) >= 10 and taken.count(False) >= 10


@pytest.mark.parametrize("served", [False, True])
def test_a_reset_while_waiting_with_no_timeouts_is_closed_quietly(monkeypatch, served):
    """With no header or idle timeout, the wait for a request is the read itself: a client that resets the
    connection there (before its first request, or between two) ends it with no traceback."""
    import gevent

    errors = []
    hub = gevent.get_hub()
    monkeypatch.setattr(hub, "print_exception", lambda context, t, v, tb: errors.append(t))
    srv = NoDelayWSGIServer(("127.0.0.1", 0), _echo, log=None)
    srv.header_timeout = srv.idle_timeout = 0.0
    srv.start()
    try:
        sock = socket.create_connection(("127.0.0.1", srv.server_port), timeout=5)
        if served:
            sock.sendall(PLAIN["get"])
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        time.sleep(0.05)  # the server waits in its read
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, not a close
        time.sleep(0.2)
    finally:
        srv.stop(timeout=1)
    assert errors == []


ASKS = {  # body -> whether it may be asking for a stream
    b'{"model":"m","messages":[]}': False,
    b'{"model":"m","stream":false,"messages":[]}': False,
    b'{"model":"m", "stream" :  false}': False,
    b'{"model":"m","stream":true}': True,
    b'{"model":"m","stream": true ,"x":1}': True,
    b'{"stream":false,"messages":[{"content":"stream"}]}': True,  # named twice: not sure
    b'{"stream":false,"messages":[{"content":"say \\"stream\\""}]}': False,  # escaped: not the name
    b'{"model":"m","stream":falsey}': True,
    b'{"model":"m","stream":null}': True,
}


@pytest.mark.parametrize("body", sorted(ASKS))
def test_a_request_that_cannot_stream_is_answered_at_once(body):
    from llmsim.cli.plainrequest import answered_at_once

    raw = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    head = parse_plain_head(raw)
    assert answered_at_once(head, raw) is not ASKS[body]
    assert answered_at_once(head, raw[:-1]) is False  # the body is not all in: not sure
    assert answered_at_once(parse_plain_head(PLAIN["get"]), PLAIN["get"]) is True  # no body


def test_only_a_request_that_may_stream_runs_on_a_helper_stack():
    """cli/stacks.py: the application call of a request that may ask for a stream runs on a helper greenlet
    (the connection's then streams with a shallow stack); one that cannot runs on the connection's own."""
    import greenlet

    where = []

    def app(environ, start_response):
        environ["wsgi.input"].read()
        where.append(greenlet.getcurrent())
        start_response("200 OK", [("Content-Length", "2")])
        return [b"{}"]

    srv = NoDelayWSGIServer(("127.0.0.1", 0), app, log=None)
    srv.start()
    try:
        for body in (b'{"stream":false}', b'{"stream":true}', b'{"stream":false}'):
            raw = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            assert _exchange(srv.server_port, raw).count(b"200 OK") == 2  # and the probe's (a GET)
    finally:
        srv.stop(timeout=1)
    from llmsim.cli.stacks import _serve

    on_helper = [g.gr_frame is not None and _serve.__code__ in _frames(g) for g in where]
    assert on_helper == [False, False, True, False, False, False]


def _frames(g) -> set:
    codes, frame = set(), g.gr_frame
    while frame is not None:
        codes.add(frame.f_code)
        frame = frame.f_back
    return codes
