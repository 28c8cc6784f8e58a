"""send_answer: a whole answer in one send gives the bytes, status handling and connection handling that
start_response and write give; headers it cannot vouch for go the usual way."""

from __future__ import annotations

import json
import re
import socket

import pytest

from llmsim.cli.body import BODY_REFUSED
from llmsim.cli.generation import ANSWER_KEY
from llmsim.cli.server import NoDelayWSGIServer, _QuietHandler
from llmsim.testing import run_server
from tests.cli.test_plainrequest import PLAIN, UNUSUAL, _exchange, server_without

SENT: list[bool] = []


def _answering(environ, start_response):
    """The echo app of test_plainrequest, answering through send_answer where the server offers it.

    A `?h=` query adds a header with that (percent-decoded, latin-1) value (`euro`: one latin-1 lacks);
    `?refuse` marks the body refused; `?badstatus` puts a line break in the status."""
    body = environ["wsgi.input"].read()
    items = {k: v for k, v in environ.items() if isinstance(v, str) and not k.startswith("wsgi.")}
    for port in ("REMOTE_PORT", "SERVER_PORT"):
        items[port] = items[port].isdigit()
    items["body"] = body.decode("latin-1")
    out = json.dumps(items, sort_keys=True).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(out))), ("X-Request-Id", "req_1")]
    query = environ.get("QUERY_STRING", "")
    if query.startswith("h="):
        from urllib.parse import unquote

        value = query[2:]
        headers.append(("X-Value", "\u20ac" if value == "euro" else unquote(value, encoding="latin-1")))
    if query == "refuse":
        environ[BODY_REFUSED] = True
    status = "404 Not Found" if environ.get("PATH_INFO") == "/missing" else "200 OK"
    if query == "badstatus":
        status = "200 OK\r\nX-Injected: 1"
    send = environ.get(ANSWER_KEY)
    if send is not None:
        sent = send(status, headers, out)
        SENT.append(sent)
        if sent:
            return ()
    start_response(status, headers)
    return [out]


_UsualServer = server_without("direct_answers")


@pytest.fixture
def servers():
    SENT.clear()
    made = [cls(("127.0.0.1", 0), _answering, log=None) for cls in (NoDelayWSGIServer, _UsualServer)]
    for s in made:
        s.start()
    yield [s.server_port for s in made]
    for s in made:
        s.stop(timeout=1)


EXTRA = {
    "not found": b"GET /missing HTTP/1.1\r\nHost: b\r\n\r\n",
    "refused body": b"POST /echo?refuse HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    "refused body, http/1.0": b"POST /echo?refuse HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}",
    "latin-1 header": b"GET /echo?h=caf%E9 HTTP/1.1\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(PLAIN) + sorted(UNUSUAL) + sorted(EXTRA))
def test_the_same_bytes_as_start_response(servers, name):
    direct, usual = servers
    raw = PLAIN.get(name) or UNUSUAL.get(name) or EXTRA[name]
    SENT.clear()
    mine = _exchange(direct, raw)
    if name in PLAIN or name in EXTRA:
        assert SENT and SENT[0] is True  # the first request was answered in one send
    assert mine == _exchange(usual, raw)


@pytest.mark.parametrize("value", ["%0D%0AX-Injected:%201", "a%0Ab", "a%0Db", "euro", None])
def test_a_header_it_cannot_vouch_for_goes_to_start_response(servers, value):
    """A line break or a character latin-1 lacks: nothing is sent by send_answer, and start_response refuses
    the header as it always did (a 500), on both servers alike."""
    direct, usual = servers
    query = "badstatus" if value is None else f"h={value}"  # None: the line break is in the status
    raw = f"GET /echo?{query} HTTP/1.1\r\nConnection: close\r\n\r\n".encode()
    SENT.clear()
    mine = _exchange(direct, raw)
    assert SENT == [False]
    assert mine == _exchange(usual, raw)
    assert mine.startswith(b"HTTP/1.1 500") and b"X-Injected" not in mine


def test_pipelined_answers_keep_their_order(servers):
    direct, usual = servers
    raw = PLAIN["sdk"] + EXTRA["not found"] + UNUSUAL["chunked"] + PLAIN["http/1.0 keep-alive"] + PLAIN["get"]
    mine = _exchange(direct, raw)
    assert mine == _exchange(usual, raw)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", mine) == [b"200", b"404", b"200", b"200", b"200", b"200"]  # and the probe


def test_llmsim_answers_go_in_one_send(monkeypatch):
    """The generation routes use it: a non-streamed answer and an API error each leave in one send, with the
    headers the SDKs read."""
    calls = []
    original = _QuietHandler.send_answer

    def counting(self, status, headers, body):
        sent = original(self, status, headers, body)
        calls.append((status, sent))
        return sent

    monkeypatch.setattr(_QuietHandler, "send_answer", counting)
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
    with run_server(latency_profile="instant") as url:
        port = int(url.rsplit(":", 1)[1])
        for payload, want in ((body, b"200 OK"), ("{", b"400 Bad Request")):
            raw = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n{payload}").encode()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(raw)
                got = b""
                while data := sock.recv(65536):
                    got += data
            head, _, answer = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 " + want)
            lines = head.split(b"\r\n")
            assert b"x-request-id: req_" in head and lines[-1].startswith(b"Date: ")
            assert int(dict(ln.split(b": ", 1) for ln in lines[1:])[b"Content-Length"]) == len(answer)
            json.loads(answer)
    assert [sent for _, sent in calls] == [True, True]


@pytest.mark.parametrize("draining", [False, True])
def test_a_worker_tags_answers_sent_whole_and_closes_while_draining(draining):
    """`--workers`: an answer sent in one send still carries x-llmsim-worker; once the worker drains, the
    answer goes through start_response, which adds Connection: close, and the connection ends."""
    from types import SimpleNamespace

    from llmsim.cli.workers import worker_handler

    worker = SimpleNamespace(index=3, draining=draining, in_flight=0, activity=0)
    srv = NoDelayWSGIServer(("127.0.0.1", 0), _answering, log=None,
                            handler_class=worker_handler(NoDelayWSGIServer, worker))
    srv.start()
    SENT.clear()
    try:
        got = _exchange(srv.server_port, PLAIN["get"])
    finally:
        srv.stop(timeout=1)
    answers = re.findall(rb"HTTP/1\.1 200 OK\r\n(.*?)\r\n\r\n", got, re.S)
    assert SENT[0] is (not draining)
    assert all(b"x-llmsim-worker: 3" in head for head in answers)
    assert len(answers) == (1 if draining else 2)  # draining: the probe after it is not answered
    assert (b"Connection: close" in answers[0]) is draining
