"""A client that leaves frees its place at once: queued, inside TTFT, before its first chunk, or non-streaming."""

from __future__ import annotations

import json
import socket
import time

import pytest

from llmsim.testing import start_server

PROFILE = """
profiles:
  - name: slow-cap
    models: [slow-cap]
    ttft: {distribution: constant, mean_ms: 3000}
    itl: {distribution: constant, mean_ms: 20}
    capacity: {max_concurrent: 4, queue_limit: 1000}
"""


@pytest.fixture()
def server(tmp_path):
    path = tmp_path / "slow.yaml"
    path.write_text(PROFILE)
    srv = start_server(profile_files=[path], seed=1)
    try:
        yield srv
    finally:
        srv.stop()


def open_request(url: str, stream: bool = True) -> socket.socket:
    """Send a request and leave it waiting; the caller closes the socket to hang up."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": "slow-cap", "messages": [{"role": "user", "content": "hi"}],
                       "stream": stream}).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return sock


def deployment(srv) -> dict:
    return srv.state.schedulers.snapshot()["slow-cap"]


def wait_until(predicate, timeout: float = 5.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_aborted_queued_and_ttft_requests_free_everything_within_a_second(server):
    socks = [open_request(server.url) for _ in range(40)]
    wait_until(lambda: deployment(server)["active"] == 4 and deployment(server)["waiting"] == 36)
    for s in socks:
        s.close()
    took = wait_until(lambda: deployment(server)["active"] == 0 and deployment(server)["waiting"] == 0)
    assert took < 1.0
    snap = deployment(server)
    assert snap["cancelled"] == 36 and snap["admitted"] == 4
    assert server.state.stats.to_dict()["active_streams"] == 0
    assert server.state.stats.to_dict()["client_disconnects_total"] == 40


def test_non_streaming_client_that_leaves_frees_its_slot(server):
    socks = [open_request(server.url, stream=False) for _ in range(6)]
    wait_until(lambda: deployment(server)["active"] == 4 and deployment(server)["waiting"] == 2)
    for s in socks:
        s.close()
    assert wait_until(lambda: deployment(server)["active"] == 0 and deployment(server)["waiting"] == 0) < 1.0
    assert server.state.stats.to_dict()["client_disconnects_total"] == 6


def test_a_body_closed_before_its_first_chunk_releases_its_slot(tmp_path):
    from llmsim.cli.config import resolve_config
    from llmsim.cli.handlers import create_app
    from llmsim.cli.state import AppState
    from llmsim.profiles import ProfileRegistry

    path = tmp_path / "slow.yaml"
    path.write_text(PROFILE)
    state = AppState(resolve_config(env={}), ProfileRegistry.load(extra_files=[path]))
    client = create_app(state).test_client()
    resp = client.post("/v1/chat/completions", buffered=False, json={
        "model": "slow-cap", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert resp.status_code == 200 and state.schedulers.snapshot()["slow-cap"]["active"] == 1
    resp.close()  # never iterated
    snap = state.schedulers.snapshot()["slow-cap"]
    assert snap["active"] == 0 and snap["completed"] == 1
    assert state.stats.to_dict()["active_streams"] == 0
