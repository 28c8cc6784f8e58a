"""The load model end to end: the real HTTP server, the official openai SDK.

Bounds here are structural (a queued request cannot start before the batch
ahead of it ends; sleeps only overshoot), so a slow machine cannot fail them.
"""

from __future__ import annotations

import time

import gevent
import openai
import pytest
import requests

from llmsim.testing import start_server

PROFILE_YAML = """
profiles:
  - name: sim-capacity
    models: [sim-capacity]
    provider: openai
    encoding: o200k_base
    ttft: {distribution: constant, mean_ms: 100}
    itl: {distribution: constant, mean_ms: 20}
    capacity: {max_concurrent: 2, queue_limit: 2, slowdown_at_full: 1.0}
"""
TOKENS = 40
BATCH_S = 0.100 + (TOKENS - 1) * 0.020  # one request alone on its slot: 0.88 s


@pytest.fixture()
def server(tmp_path):
    path = tmp_path / "cap.yaml"
    path.write_text(PROFILE_YAML)
    srv = start_server(profile_files=[path], seed=1)
    try:
        stream_ttft(srv)  # warm up: the first request loads the tokenizer
        yield srv
    finally:
        srv.stop()


def client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.openai_base_url, api_key="sk-test", max_retries=0, timeout=30)


def stream_timed(srv) -> tuple[float, float, float]:
    """(start, first content, end) of one streamed request, on the monotonic clock."""
    c = client(srv)
    t0 = time.monotonic()
    first = None
    stream = c.chat.completions.create(model="sim-capacity", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=TOKENS, stream=True)
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.monotonic()
    assert first is not None
    return t0, first, time.monotonic()


def stream_ttft(srv) -> float:
    t0, first, _ = stream_timed(srv)
    return first - t0


def wait_for(srv, active: int, waiting: int) -> None:
    sched = srv.state.schedulers.get(srv.state.registry.get("sim-capacity"))
    deadline = time.monotonic() + 10
    while (sched.active, sched.waiting) != (active, waiting):
        assert time.monotonic() < deadline, (sched.active, sched.waiting)
        gevent.sleep(0.005)


def test_queued_requests_ttft_grows_by_the_batch_ahead(server):
    first = [gevent.spawn(stream_timed, server) for _ in range(2)]
    wait_for(server, active=2, waiting=0)
    queued = [gevent.spawn(stream_timed, server) for _ in range(2)]  # 2 slots busy: these queue
    wait_for(server, active=2, waiting=2)
    gevent.joinall(first + queued, timeout=30, raise_error=True)
    a, b = [g.value for g in first], [g.value for g in queued]
    # Structural: a queued request's first token comes >= 100 ms (its own TTFT) after a slot frees,
    # i.e. after a first-batch stream has ended.
    assert min(t[1] for t in b) > min(t[2] for t in a)
    ttft_a = [t[1] - t[0] for t in a]
    ttft_b = [t[1] - t[0] for t in b]
    assert all(t >= 0.1 for t in ttft_a + ttft_b)
    # Typically 0.1 s vs 0.1 s + ~0.88 s of queue wait; the bound leaves room for a busy machine.
    assert sum(ttft_b) / 2 > sum(ttft_a) / 2 + 0.3, (ttft_a, ttft_b)
    sched = server.state.schedulers.snapshot()["sim-capacity"]
    assert sched["queued"] == 2 and sched["active"] == 0 and sched["queue_wait_s_total"] > 0.1


def test_queue_overflow_answers_openai_429_with_retry_after(server):
    jobs = [gevent.spawn(stream_ttft, server) for _ in range(4)]
    wait_for(server, active=2, waiting=2)
    with pytest.raises(openai.RateLimitError) as ei:
        client(server).chat.completions.create(model="sim-capacity", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=TOKENS)
    err = ei.value
    assert err.status_code == 429
    assert int(err.response.headers["retry-after"]) >= 1
    body = err.response.json()["error"]
    assert body["type"] == "server_error" and body["param"] is None and body["code"] is None
    assert "currently overloaded" in body["message"]
    gevent.joinall(jobs, timeout=30, raise_error=True)  # the admitted ones still complete
    stats = requests.get(server.url + "/llmsim/stats", timeout=10).json()["schedulers"]["sim-capacity"]
    assert stats["rejected"] == 1 and stats["completed"] == 5  # 4 + the warm-up
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert 'llmsim_batch_rejected_total{profile="sim-capacity"} 1' in metrics


def test_non_streaming_request_holds_its_slot_as_long_as_its_stream(server):
    def plain() -> tuple[float, float]:
        c = client(server)
        t0 = time.monotonic()
        r = c.chat.completions.create(model="sim-capacity", max_tokens=TOKENS,
                                      messages=[{"role": "user", "content": "hi"}])
        assert r.usage.completion_tokens == TOKENS
        return t0, time.monotonic()

    holders = [gevent.spawn(plain) for _ in range(2)]
    wait_for(server, active=2, waiting=0)
    _, first_token, _ = stream_timed(server)
    gevent.joinall(holders, timeout=30, raise_error=True)
    assert all(end - t0 >= BATCH_S - 0.001 for t0, end in (h.value for h in holders))  # as long as a stream
    # Structural: the stream could start only when a non-streamed request freed its slot.
    assert first_token > min(end for _, end in (h.value for h in holders))


def test_client_disconnect_frees_the_slot(server):
    sched = server.state.schedulers.get(server.state.registry.get("sim-capacity"))
    body = {"model": "sim-capacity", "stream": True, "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}
    with requests.post(server.openai_base_url + "/chat/completions", json=body, stream=True, timeout=30) as r:
        for line in r.iter_lines(chunk_size=1):
            if b'"content"' in line:
                break
        assert sched.active == 1
    deadline = time.monotonic() + 10  # the server notices at its next write
    while sched.active:
        assert time.monotonic() < deadline
        gevent.sleep(0.01)
    assert sched.stats.completed == 2  # the warm-up and this one
