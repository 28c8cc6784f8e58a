"""Messages and Responses take part in the load model: they hold a batch slot while they generate,
overflow answers in each API's own envelope, and the slot is freed at the end or on disconnect."""

from __future__ import annotations

import time

import gevent
import pytest
import requests

from llmsim.testing import start_server

PROFILE_YAML = """
profiles:
  - name: sim-one-slot
    models: [sim-one-slot]
    provider: any
    encoding: o200k_base
    ttft: {distribution: constant, mean_ms: 200}
    itl: {distribution: constant, mean_ms: 5}
    capacity: {max_concurrent: 1, queue_limit: 0, slowdown_at_full: 1.0}
  - name: sim-queue
    models: [sim-queue]
    provider: any
    encoding: o200k_base
    ttft: {distribution: constant, mean_ms: 200}
    itl: {distribution: constant, mean_ms: 20}
    capacity: {max_concurrent: 1, queue_limit: 1, slowdown_at_full: 1.0}
"""
MESSAGES = {"model": "sim-one-slot", "max_tokens": 40, "messages": [{"role": "user", "content": "hi"}]}
RESPONSES = {"model": "sim-one-slot", "input": "hi", "max_output_tokens": 40}


@pytest.fixture()
def server(tmp_path):
    path = tmp_path / "one.yaml"
    path.write_text(PROFILE_YAML)
    srv = start_server(profile_files=[path], seed=1)
    try:
        yield srv
    finally:
        srv.stop()


def scheduler(srv):
    return srv.state.schedulers.get(srv.state.registry.get("sim-one-slot"))


def wait_active(srv, n: int) -> None:
    deadline = time.monotonic() + 10
    while scheduler(srv).active != n:
        assert time.monotonic() < deadline, scheduler(srv).active
        gevent.sleep(0.005)


def assert_overflow(srv) -> None:
    r = requests.post(srv.url + "/v1/messages", json=MESSAGES, timeout=10)
    assert r.status_code == 529 and r.headers["Retry-After"]
    assert r.json()["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    r = requests.post(srv.url + "/v1/responses", json=RESPONSES, timeout=10)
    assert r.status_code == 429 and r.headers["Retry-After"]
    assert r.json()["error"]["type"] == "server_error" and "overloaded" in r.json()["error"]["message"]


@pytest.mark.parametrize("path, body", [("/v1/messages", MESSAGES), ("/v1/responses", RESPONSES)])
@pytest.mark.parametrize("stream", [False, True])
def test_a_request_holds_the_slot_until_it_ends(server, path, body, stream):
    job = gevent.spawn(requests.post, server.url + path, json={**body, "stream": stream}, timeout=30)
    wait_active(server, 1)
    assert_overflow(server)
    r = job.get(timeout=30)
    assert r.status_code == 200 and len(r.content) > 0
    wait_active(server, 0)


@pytest.mark.parametrize("path, body, first", [("/v1/messages", MESSAGES, b"content_block_delta"),
                                               ("/v1/responses", RESPONSES, b"response.output_text.delta")])
def test_a_client_that_disconnects_frees_the_slot(server, path, body, first):
    r = requests.post(server.url + path, json={**body, "stream": True}, stream=True, timeout=30)
    for line in r.iter_lines():
        if first in line:
            break
    assert scheduler(server).active == 1
    r.close()
    wait_active(server, 0)


@pytest.mark.parametrize("path, body, opening, first", [
    ("/v1/messages", {**MESSAGES, "model": "sim-queue"}, b"event: message_start", b"event: content_block_delta"),
    ("/v1/responses", {**RESPONSES, "model": "sim-queue"}, b"event: response.created",
     b"event: response.output_text.delta")])
def test_a_queued_stream_opens_at_once_and_starts_after_the_grant(server, path, body, opening, first):
    def timed() -> tuple[float, float, float]:
        t_open = t_first = None
        with requests.post(server.url + path, json={**body, "stream": True}, stream=True, timeout=30) as r:
            for line in r.iter_lines():
                if t_open is None and line.startswith(opening):
                    t_open = time.monotonic()
                if t_first is None and line.startswith(first):
                    t_first = time.monotonic()
        return t_open, t_first, time.monotonic()

    ahead = gevent.spawn(timed)
    deadline = time.monotonic() + 10
    sched = server.state.schedulers.get(server.state.registry.get("sim-queue"))
    while sched.active != 1:
        assert time.monotonic() < deadline
        gevent.sleep(0.005)
    queued = gevent.spawn(timed)
    _, a_first, a_end = ahead.get(timeout=30)
    q_open, q_first, _ = queued.get(timeout=30)
    # The request ahead streams for 39 x 20 ms after its first token; the queued one's opening
    # events come out during that time, not after the grant.
    assert q_open < a_end
    # Its first token needs the slot (free only after the 40th token ahead) plus its own TTFT.
    assert q_first >= a_first + 39 * 0.020 * 0.95 + 0.200 * 0.95
