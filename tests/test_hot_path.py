"""The hot path's shortcuts change nothing a client or the stats can see.

- The generation routes answer in front of Flask (cli/generation.py); the Flask
  route (used under `llmsim replay`) gives the same status, headers and body.
- A non-streamed answer waits through its chunks with Pacer.wait_through: the
  same deadlines, draws, slowdown reads and cut as a stream's paced_indices.
- A stream's chunks after the first go straight to the socket (server.py); a
  client that stops reading still gets every byte, in order, when it resumes.
"""

from __future__ import annotations

import json
import random
import socket
import time

import pytest
import requests

from llmsim.cli.config import resolve_config
from llmsim.cli.handlers import create_app
from llmsim.cli.server import _QuietHandler
from llmsim.cli.state import AppState
from llmsim.errors import ApiError, Cut, StreamCut
from llmsim.latency import Distribution, LatencyProfile
from llmsim.replay import ReplayBook
from llmsim.stream import Pacer
from llmsim.testing import run_server
from llmsim.tokens import encode, get_encoding
from tests.rawhttp import read_response

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 12}
VOLATILE = {"x-request-id", "request-id", "openai-processing-ms"}


def _faces(settings: dict | None = None):
    """The same server twice: generation routes in front of Flask, and Flask's own route (replay, no recordings)."""
    def state():
        return AppState(resolve_config({"latency_profile": "instant", "seed": 7}, env={}, settings=settings))
    return create_app(state()).test_client(), create_app(state(), ReplayBook()).test_client()


def _headers(resp) -> dict:
    return {k.lower(): v for k, v in resp.headers.items() if k.lower() not in VOLATILE}


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", CHAT),
    ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}),
    ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 12, "messages": CHAT["messages"]}),
    ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 12, "messages": CHAT["messages"], "stream": True}),
    ("/v1/responses", {"model": "gpt-4o", "input": "hello there", "max_output_tokens": 12}),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "hello there", "max_tokens": 12}),
    ("/v1/chat/completions", {"model": "gpt-4o"}),  # 400: messages missing
    ("/v1/chat/completions", {**CHAT, "max_tokens": 10**9}),  # 400 naming max_tokens
    ("/v1/chat/completions", {**CHAT, "model": "no-such-model"}),  # 404
])
def test_both_faces_answer_alike(path, body):
    fast, flask_face = _faces()
    a, b = fast.post(path, json=body), flask_face.post(path, json=body)
    assert a.status_code == b.status_code
    assert _headers(a) == _headers(b)
    assert a.headers["x-request-id"].startswith("req_") and b.headers["x-request-id"].startswith("req_")
    if a.mimetype == "application/json":
        da, db = a.get_json(), b.get_json()
        for d in (da, db):  # ids and clocks differ from run to run; everything else must not
            d.pop("id", None), d.pop("created", None), d.pop("created_at", None)
            if isinstance(d.get("error"), dict):
                assert d.get("error")["message"]
        assert da == db
    else:
        assert a.mimetype == "text/event-stream" and a.headers["Cache-Control"] == "no-cache"
        events = [len(x.split(b"\n\n")) for x in (a.get_data(), b.get_data())]
        assert events[0] == events[1] > 3


def test_bad_bytes_and_auth_answer_alike_on_both_faces():
    fast, flask_face = _faces({"auth": {"api_keys": ["sk-good"]}})
    for client in (fast, flask_face):
        refused = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-bad"})
        assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "invalid_api_key"
        anthropic = client.post("/v1/messages", json=CHAT, headers={"x-api-key": "sk-bad"})
        assert anthropic.status_code == 401 and anthropic.get_json()["type"] == "error"
        assert anthropic.headers["request-id"] == anthropic.headers["x-request-id"]
        junk = client.post("/v1/chat/completions", data=b"\xff{", headers={"Authorization": "Bearer sk-good",
                                                                        "Content-Type": "application/json"})
        assert junk.status_code == 400 and junk.get_json()["error"]["code"] == "invalid_json"
        assert junk.headers["openai-version"] == "2020-10-01"


def test_other_methods_on_a_generation_path_still_get_405_from_flask():
    fast, _ = _faces()
    resp = fast.get("/v1/chat/completions")
    assert resp.status_code == 405 and "POST" in resp.headers["Allow"]
    assert resp.get_json()["error"]["type"] == "invalid_request_error"


def test_the_fast_face_counts_requests_and_errors_like_flask():
    fast, flask_face = _faces()
    for client in (fast, flask_face):
        client.post("/v1/chat/completions", json=CHAT)
        client.post("/v1/chat/completions", json={"model": "gpt-4o"})
    stats = [c.get("/llmsim/stats").get_json() for c in (fast, flask_face)]
    assert stats[0]["requests"] == stats[1]["requests"]
    assert stats[0]["errors"] == stats[1]["errors"] and sum(stats[0]["errors"].values()) == 1


class _Clock:
    def __init__(self) -> None:
        self.t = 10.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += max(0.0, s)


class _GrowingBatch:
    """A slowdown that changes with time, so a read at the wrong moment would show."""

    def __init__(self, clock: _Clock) -> None:
        self.clock = clock

    def multiplier(self) -> float:
        return 1.0 + (self.clock.t - 10.0) * 0.7


LATENCIES = [LatencyProfile.constant(100, 20),
             LatencyProfile(ttft=Distribution("lognormal", 300, 80), itl=Distribution("normal", 20, 6),
                            prefill_tokens_per_s=5000),
             LatencyProfile.constant(0, 0)]


@pytest.mark.parametrize("latency", LATENCIES)
@pytest.mark.parametrize("cut_after", [None, 0, 7])
def test_wait_through_keeps_the_streams_deadlines_draws_and_cut(latency, cut_after):
    pieces = [2, 1, 3, 1, 1, 4, 1, 2, 1, 1, 1, 2]

    def run(stream: bool) -> tuple[list[float], int, bool, list[float]]:
        clock = _Clock()
        pacer = Pacer(latency, random.Random(3), prompt_tokens=900, slot=_GrowingBatch(clock), clock=clock,
                      sleep=clock.sleep, cut=Cut(cut_after) if cut_after is not None else None)
        pacer.planned = []  # a traced request's deadlines
        stamps: list[float] = []
        try:
            if stream:
                for _ in pacer.paced_indices(pieces, 5, 10.0):
                    stamps.append(clock.t)
            else:
                pacer.wait_through(pieces, 5, 10.0, stamps)
        except StreamCut:
            return stamps, pacer.sent_tokens, True, pacer.planned
        return stamps, pacer.sent_tokens, False, pacer.planned

    streamed, waited = run(True), run(False)
    assert waited[1:3] == streamed[1:3]
    assert waited[0] == pytest.approx(streamed[0], abs=1e-12)
    assert waited[3] == pytest.approx(streamed[3], abs=1e-12)
    assert len(streamed[0]) == (len(pieces) if cut_after is None else cut_after)


def test_encode_memo_hands_out_copies():
    enc = get_encoding("o200k_base")
    first = encode("a sentence encoded twice", enc)
    first.append(-1)
    assert encode("a sentence encoded twice", enc) == enc.encode_ordinary("a sentence encoded twice")


def test_the_fast_face_reads_headers_from_the_environ_as_werkzeug_does():
    from werkzeug.datastructures import EnvironHeaders

    from llmsim.cli.generation import _EnvironHeaders

    environ = {"HTTP_X_API_KEY": "sk-a", "HTTP_ANTHROPIC_VERSION": "2023-06-01", "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": "12", "HTTP_AUTHORIZATION": "Bearer sk-b"}
    ours, theirs = _EnvironHeaders(environ), EnvironHeaders(environ)
    for name in ("x-api-key", "X-Api-Key", "anthropic-version", "Content-Type", "content-length", "authorization",
                 "x-missing", "anthropic-beta"):
        assert ours.get(name) == theirs.get(name), name


def test_a_body_sent_again_is_parsed_once_into_a_request_of_its_own():
    """Api.parse_bytes keeps what a body parsed to; each request gets its own copy, so what one request's
    handling replaces (its key, its arrival, its prompt once answered) is not the next one's."""
    from llmsim.openai.chat import ChatCompletions, parse_chat_request

    api = ChatCompletions()
    raw = json.dumps({**CHAT, "messages": [{"role": "user", "content": "parsed once, answered twice"}]}).encode()
    first = api.parse_bytes(raw)
    first.api_key, first.arrival = "sk-first", 1.0
    first.drop_prompt()
    second = api.parse_bytes(raw)
    assert second is not first and second.api_key is None and second.arrival is None
    assert second == parse_chat_request(json.loads(raw))
    with pytest.raises(ApiError) as bad:
        api.parse_bytes(b'{"model": "gpt-4o"}')
    with pytest.raises(ApiError) as again:  # a refused body is refused every time, not remembered
        api.parse_bytes(b'{"model": "gpt-4o"}')
    assert bad.value.param == again.value.param == "messages"


def test_the_same_token_id_prompt_twice_gets_the_same_answer_shape():
    """The engine replaces a token-id prompt's messages with its decoded text, and every answer drops its
    prompt: neither may reach the next request with the same body (echo repeats the prompt both times)."""
    with run_server(latency_profile="instant") as url:
        for echo in (False, True):
            body = {"model": "gpt-3.5-turbo-instruct", "prompt": [9906, 1917], "max_tokens": 3, "echo": echo}
            answers = [requests.post(f"{url}/v1/completions", json=body, timeout=10).json() for _ in range(3)]
            assert [a["usage"]["prompt_tokens"] for a in answers] == [2, 2, 2], answers
            texts = [a["choices"][0]["text"] for a in answers]
            assert all(t.startswith("Hello world") == echo for t in texts), texts


def test_a_client_that_stops_reading_still_gets_the_whole_stream_in_order(monkeypatch, small_send_buffer):
    # Instant and long: the chunks fill the socket buffers while the client sleeps, so sends come up short
    # and the server waits for room; the stream must still arrive whole.
    waited = []
    sendall = _QuietHandler._sendall

    def counting(self, data):
        waited.append(len(data))
        return sendall(self, data)

    monkeypatch.setattr(_QuietHandler, "_sendall", counting)
    with run_server(latency_profile="instant", target_tokens=6000, generator="random") as url:
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps({**CHAT, "max_tokens": 6000, "stream": True,
                           "stream_options": {"include_usage": True}}).encode()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A small receive window (set before connecting), so the server's sends come up short on any
        # machine, however large its default socket buffers.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.connect((host, int(port)))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(0.5)
        sock.settimeout(20)
        resp = read_response(sock)  # de-chunked: every size line must match its data
        sock.close()
    # The headers and the terminator always go through _sendall; a chunk does only when the buffer is full.
    assert len(waited) > 2, "the socket never filled: the test did not reach the waiting path"
    assert resp.terminated and not resp.closed, "the server closed the stream early"
    assert resp.headers["transfer-encoding"] == "chunked"
    events = [e for e in resp.body.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    deltas = [json.loads(e[6:]) for e in events[:-1]]
    text = "".join(d["choices"][0]["delta"].get("content") or "" for d in deltas if d["choices"])
    assert deltas[-1]["usage"]["completion_tokens"] == 6000
    assert abs(len(encode(text, get_encoding("o200k_base"))) - 6000) <= 60
    assert [d["choices"][0]["finish_reason"] for d in deltas if d["choices"]][-1] == "stop"
