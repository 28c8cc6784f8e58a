"""Server observability end to end: per-request traces, /llmsim/stats, vLLM-named /metrics.

Timing checks compare within one run and leave generous room: a slow, busy machine must not fail them.
"""

from __future__ import annotations

import json
import math
import random
import socket
import statistics
import time
from collections import Counter
from pathlib import Path

import anthropic
import gevent
import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from llmsim.testing import run_server, start_server
from llmsim.trace import TRACE_HEADER, TraceStore
from tests.rawhttp import raw_request

TRACE_KEYS = ["id", "queue_ms", "ttft_ms", "gaps_ms", "planned_ttft_ms", "planned_gaps_ms"]
TTFT_MS, ITL_MS, TOKENS = 40.0, 15.0, 20
PROFILES = f"""profiles:
  - name: const
    models: [const]
    ttft: {{distribution: constant, mean_ms: {TTFT_MS}}}
    itl: {{distribution: constant, mean_ms: {ITL_MS}}}
  - name: one-slot
    models: [one-slot]
    ttft: {{distribution: constant, mean_ms: 10}}
    itl: {{distribution: constant, mean_ms: 20}}
    capacity: {{max_concurrent: 1, queue_limit: 10}}
"""
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def profiles_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("profiles")
    (d / "const.yaml").write_text(PROFILES)
    return str(d)


@pytest.fixture(scope="module")
def url(profiles_dir):
    with run_server(profiles_dir=profiles_dir, target_tokens=TOKENS) as u:
        yield u


def traced(url: str, path: str, body: dict, headers: dict | None = None):
    return raw_request(url, "POST", path, body, headers={TRACE_HEADER: "1", **(headers or {})})


def trace_of(body: bytes) -> tuple[dict, list[str]]:
    """The trace comment's JSON, and the SSE events (blank-line separated blocks) in order."""
    blocks = [b for b in body.decode().split("\n\n") if b]
    comments = [b for b in blocks if b.startswith(": llmsim-trace ")]
    assert len(comments) == 1, blocks[-3:]
    return json.loads(comments[0][len(": llmsim-trace "):]), blocks


# --------------------------------------------------------------------------- traces on the wire

@pytest.mark.parametrize("path,body,terminator", [
    ("/v1/chat/completions", {"model": "const", "stream": True, "messages": MESSAGES}, "data: [DONE]"),
    ("/v1/chat/completions", {"model": "const", "stream": True, "messages": MESSAGES,
                              "stream_options": {"include_usage": True}}, "data: [DONE]"),
    ("/v1/responses", {"model": "const", "stream": True, "input": "hi"}, "event: response.completed"),
    ("/v1/responses", {"model": "const", "stream": True, "input": "hi", "max_output_tokens": 16},
     "event: response.incomplete"),
    ("/v1/messages", {"model": "const", "stream": True, "max_tokens": 100, "messages": MESSAGES},
     "event: message_stop"),
], ids=["chat", "chat-usage", "responses", "responses-incomplete", "messages"])
def test_trace_comment_comes_just_before_the_terminator(url, path, body, terminator):
    r = traced(url, path, body)
    assert r.status == 200 and r.terminated
    trace, blocks = trace_of(r.body)
    assert r.body.endswith(b"\n\n")
    assert blocks[-1].startswith(terminator) and blocks[-2].startswith(": llmsim-trace {")
    comment = next(line for line in r.body.decode().split("\n") if line.startswith(": llmsim-trace"))
    assert comment == ": llmsim-trace " + json.dumps(trace, separators=(",", ":"))  # one line, compact
    assert list(trace) == TRACE_KEYS
    assert trace["id"] == r.headers["x-request-id"]
    content = 16 if "max_output_tokens" in body else TOKENS  # one content chunk per token
    assert len(trace["gaps_ms"]) == len(trace["planned_gaps_ms"]) == content - 1
    assert all(isinstance(trace[k], float) for k in ("queue_ms", "ttft_ms", "planned_ttft_ms"))
    assert trace["planned_gaps_ms"] == [ITL_MS] * (content - 1)
    assert trace["planned_ttft_ms"] >= TTFT_MS and trace["queue_ms"] == 0.0
    # the same record, kept for GET /llmsim/requests/{id}
    assert requests.get(f"{url}/llmsim/requests/{trace['id']}", timeout=10).json() == trace


def test_no_trace_without_the_header(url):
    r = raw_request(url, "POST", "/v1/chat/completions", {"model": "const", "stream": True, "messages": MESSAGES})
    assert b"llmsim-trace" not in r.body
    missing = requests.get(f"{url}/llmsim/requests/{r.headers['x-request-id']}", timeout=10)
    assert missing.status_code == 404 and "x-llmsim-trace: 1" in missing.json()["error"]["message"]


def test_trace_gaps_match_a_constant_profile(url):
    traces = [trace_of(traced(url, "/v1/chat/completions",
                              {"model": "const", "stream": True, "messages": MESSAGES}).body)[0] for _ in range(5)]
    gaps = [g for t in traces for g in t["gaps_ms"]]
    assert len(gaps) == 5 * (TOKENS - 1)
    assert abs(statistics.median(gaps) - ITL_MS) < 1.0, gaps
    assert abs(statistics.mean(gaps) - ITL_MS) < 2.0, gaps  # deadlines are absolute: lateness never accumulates
    late = [t["ttft_ms"] - t["planned_ttft_ms"] for t in traces]
    assert abs(statistics.median(late)) < 10.0, late  # bench/ttft_accuracy.py measures it closely
    assert all(t["planned_ttft_ms"] == pytest.approx(TTFT_MS, abs=0.01) for t in traces)


def test_ttft_runs_from_the_requests_first_bytes(url):
    """The clock starts when the request line is read, not when the body has been parsed."""
    payload = json.dumps({"model": "const", "stream": True, "messages": MESSAGES}).encode()
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=20)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        time.sleep(0.25)  # the rest of the request comes much later than the profile's TTFT
        sock.sendall(b"Host: x\r\nContent-Type: application/json\r\n%s: 1\r\nContent-Length: %d\r\n\r\n%s"
                     % (TRACE_HEADER.encode(), len(payload), payload))
        data = b""
        while b"[DONE]" not in data:
            data += sock.recv(65536)
    finally:
        sock.close()
    trace = json.loads(data.split(b": llmsim-trace ", 1)[1].split(b"\n", 1)[0])
    assert trace["ttft_ms"] >= 250  # the wait for the body is part of the TTFT
    assert trace["planned_ttft_ms"] == pytest.approx(TTFT_MS, abs=0.01)


def test_queue_wait_is_in_the_trace(url):
    slow = gevent.spawn(requests.post, url + "/v1/chat/completions", timeout=30,
                        json={"model": "one-slot", "stream": True, "messages": MESSAGES})
    gevent.sleep(0.05)  # it holds the only slot for 10 + 19 * 20 ms
    r = traced(url, "/v1/chat/completions", {"model": "one-slot", "stream": True, "messages": MESSAGES})
    slow.get(timeout=30)
    trace, _ = trace_of(r.body)
    assert trace["queue_ms"] > 100
    assert trace["planned_ttft_ms"] >= trace["queue_ms"] + 10 - 0.01  # its TTFT runs from the grant


def test_trace_store_keeps_a_bounded_recent_window():
    store = TraceStore(size=3)
    for i in range(5):
        store.add({"id": f"r{i}"})
    assert len(store) == 3 and store.get("r0") is None and store.get("r1") is None
    assert [store.get(f"r{i}")["id"] for i in (2, 3, 4)] == ["r2", "r3", "r4"]


# --------------------------------------------------------------------------- the SDKs ignore it

def test_openai_sdk_parses_traced_streams(url):
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0,
                           default_headers={TRACE_HEADER: "1"})
    chunks = list(client.chat.completions.create(model="const", messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == TOKENS and text
    with client.responses.stream(model="const", input="hi") as stream:
        events = [e.type for e in stream]
        final = stream.get_final_response()
    assert events[-1] == "response.completed" and final.output_text
    assert final.usage.output_tokens == TOKENS


def test_anthropic_sdk_parses_traced_streams(url):
    client = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0,
                                 default_headers={TRACE_HEADER: "1"})
    with client.messages.stream(model="const", max_tokens=100, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text and final.usage.output_tokens == TOKENS


# --------------------------------------------------------------------------- /metrics

def scrape(url: str) -> dict[str, dict]:
    """name -> {"type", "samples": {(sample name, sorted labels): value}}."""
    r = requests.get(url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        out[fam.name] = {"type": fam.type, "samples": {
            (s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}}
    return out


def value(metrics: dict, family: str, sample: str | None = None, **labels) -> float:
    key = (sample or family, tuple(sorted(labels.items())))
    return metrics[family]["samples"][key]


def test_metrics_count_exactly_what_the_clients_saw(profiles_dir):
    # Seeded: the count of ITL gaps below takes one token per chunk. Unseeded random text now and then
    # splits a character across the first two tokens, and a first chunk of two tokens has one gap less.
    with run_server(profiles_dir=profiles_dir, target_tokens=TOKENS, generator="random", seed=11) as url:
        oa = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        an = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
        prompt = completion = 0
        finished = {"stop": 0, "length": 0}
        for i in range(4):  # streamed chat, usage in the last chunk
            chunks = list(oa.chat.completions.create(model="const", messages=[{"role": "user", "content": "x" * i}],
                                                     stream=True, stream_options={"include_usage": True}))
            prompt += chunks[-1].usage.prompt_tokens
            completion += chunks[-1].usage.completion_tokens
            finished["stop"] += 1
        r = oa.chat.completions.create(model="const", messages=MESSAGES, max_tokens=5)  # non-streamed, cut
        prompt, completion = prompt + r.usage.prompt_tokens, completion + r.usage.completion_tokens
        finished["length"] += 1
        with an.messages.stream(model="const", max_tokens=100, messages=MESSAGES) as s:
            m = s.get_final_message()
        prompt, completion = prompt + m.usage.input_tokens, completion + m.usage.output_tokens
        finished["stop"] += 1
        with oa.responses.stream(model="const", input="hello there") as s:
            resp = s.get_final_response()
        prompt, completion = prompt + resp.usage.input_tokens, completion + resp.usage.output_tokens
        finished["stop"] += 1
        with pytest.raises(openai.NotFoundError):
            oa.chat.completions.create(model="no-such-model", messages=MESSAGES)
        m = scrape(url)

    key = {"model_name": "const", "engine": "0"}
    assert m["vllm:prompt_tokens"]["type"] == "counter"
    assert value(m, "vllm:prompt_tokens", "vllm:prompt_tokens_total", **key) == prompt
    assert value(m, "vllm:generation_tokens", "vllm:generation_tokens_total", **key) == completion
    for reason, n in {**finished, "abort": 0}.items():
        assert value(m, "vllm:request_success", "vllm:request_success_total", finished_reason=reason, **key) == n
    requests_done = sum(finished.values())
    for name in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                 "vllm:request_queue_time_seconds", "vllm:request_time_per_output_token_seconds"):
        assert m[name]["type"] == "histogram"
        assert value(m, name, name + "_count", **key) == requests_done, name
        assert value(m, name, name + "_bucket", le="+Inf", **key) == requests_done, name
    streamed_gaps = completion - requests_done  # one token per chunk: a gap between every two
    for name in ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"):
        assert value(m, name, name + "_count", **key) == streamed_gaps, name
        assert value(m, name, name + "_bucket", le="+Inf", **key) == streamed_gaps, name
        # ITL is 15 ms: the median falls in the (10 ms, 25 ms] bucket (a stall on a busy machine delays
        # a token and shortens the next gap, which moves single gaps, not the median)
        assert value(m, name, name + "_bucket", le="0.01", **key) < streamed_gaps / 2
        assert value(m, name, name + "_bucket", le="0.025", **key) > streamed_gaps / 2
        assert value(m, name, name + "_sum", **key) == pytest.approx(streamed_gaps * ITL_MS / 1000, rel=0.25)
    ttft_buckets = {dict(lbl)["le"] for (s, lbl) in m["vllm:time_to_first_token_seconds"]["samples"]
                    if s.endswith("_bucket")}
    assert {"0.001", "0.04", "2560.0", "+Inf"} <= ttft_buckets and len(ttft_buckets) == 23
    for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert m[gauge]["type"] == "gauge" and value(m, gauge, **key) == 0
    assert value(m, "llmsim_requests", "llmsim_requests_total", endpoint="/v1/chat/completions", status="200") == 5
    assert value(m, "llmsim_requests", "llmsim_requests_total", endpoint="/v1/chat/completions", status="404") == 1
    assert value(m, "llmsim_errors", "llmsim_errors_total", kind="not_found") == 1
    assert value(m, "llmsim_output_tokens", "llmsim_output_tokens_total") == completion
    assert value(m, "llmsim_prompt_tokens", "llmsim_prompt_tokens_total") == prompt
    assert value(m, "llmsim_client_disconnects", "llmsim_client_disconnects_total") == 0


def test_metrics_count_faults_rate_limits_and_disconnects(profiles_dir):
    config = {"errors": {"models": {"const": {"server_error": 1.0}}}, "rate_limits": {"rpm": 2}}
    server = start_server(profiles_dir=profiles_dir, target_tokens=200, config=config)
    try:
        url = server.url
        chat = url + "/v1/chat/completions"
        statuses = [requests.post(chat, json={"model": "one-slot", "messages": MESSAGES, "max_tokens": 1},
                                  headers={"Authorization": f"Bearer k{i // 3}"}, timeout=10).status_code
                    for i in range(3)]
        assert statuses == [200, 200, 429]  # the third of key k0 is over its 2 RPM
        assert requests.post(chat, json={"model": "const", "messages": MESSAGES},
                             headers={"Authorization": "Bearer k9"}, timeout=10).status_code == 500
        # a client that leaves mid-stream
        r = requests.post(chat, json={"model": "one-slot", "stream": True, "messages": MESSAGES},
                          headers={"Authorization": "Bearer k8"}, stream=True, timeout=10)
        next(r.iter_lines())
        r.close()
        deadline = time.monotonic() + 10
        while server.state.stats.disconnects == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        m = scrape(url)
    finally:
        server.stop()
    assert value(m, "llmsim_faults_injected", "llmsim_faults_injected_total", kind="server_error") == 1
    assert value(m, "llmsim_errors", "llmsim_errors_total", kind="server_error") == 1
    assert value(m, "llmsim_errors", "llmsim_errors_total", kind="rate_limit") == 1
    assert value(m, "llmsim_rate_limit_rejections", "llmsim_rate_limit_rejections_total") == 1
    assert value(m, "llmsim_client_disconnects", "llmsim_client_disconnects_total") == 1
    assert value(m, "llmsim_errors", "llmsim_errors_total", kind="client_disconnect") == 1
    key = {"model_name": "one-slot", "engine": "0"}
    assert value(m, "vllm:request_success", "vllm:request_success_total", finished_reason="abort", **key) == 1
    assert value(m, "vllm:request_success", "vllm:request_success_total", finished_reason="length", **key) == 2
    assert value(m, "llmsim_batch_rejected", "llmsim_batch_rejected_total", profile="one-slot") == 0


def test_metrics_registry_is_per_server(profiles_dir):
    with run_server(profiles_dir=profiles_dir, target_tokens=3) as a, run_server(profiles_dir=profiles_dir) as b:
        requests.post(a + "/v1/chat/completions", json={"model": "const", "messages": MESSAGES}, timeout=10)
        exposed = requests.get(a + "/metrics", timeout=10).text
        assert 'vllm:prompt_tokens_total{engine="0",model_name="const"}' in exposed
        assert 'model_name="const"' not in requests.get(b + "/metrics", timeout=10).text


def test_metrics_render_one_family_at_a_time_with_the_stats_lock_free_between(profiles_dir, monkeypatch):
    """A scrape (1-5 ms of prometheus_client) writes the streams due between its families: the same text
    as generate_latest, `between` once per family, and the stats lock (a stream's end takes it) free then."""
    from prometheus_client import generate_latest

    import llmsim.cli.handlers as handlers
    from llmsim.cli.config import ServerConfig
    from llmsim.cli.server import build_server
    from llmsim.stats import metrics_registry, render_metrics

    server, state = build_server(ServerConfig(port=0, profiles_dir=str(profiles_dir), target_tokens=3))
    try:
        client = server.application.test_client()
        for model in ("const", "one-slot", "const"):
            assert client.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES}).status_code == 200
        registry = metrics_registry(state.stats, state.schedulers)
        families = list(registry.collect())
        assert len(families) > 10
        calls = []

        def between():
            assert state.stats._lock.acquire(blocking=False), "the stats lock is held while `between` runs"
            state.stats._lock.release()
            calls.append(1)

        text = render_metrics(registry, between)
        assert text == generate_latest(registry)
        assert b'vllm:generation_tokens_total{engine="0",model_name="one-slot"} 3.0' in text
        assert len(calls) == len(families)

        due = []
        monkeypatch.setattr(handlers, "run_due", lambda: due.append(1))
        app = handlers.create_app(state)
        before = generate_latest(registry)  # the scrape counts itself once answered
        assert app.test_client().get("/metrics").data == before
        assert len(due) == len(families)
    finally:
        server.close()


# --------------------------------------------------------------------------- /llmsim/stats

def test_stats_show_state_rates_and_latencies(profiles_dir):
    with run_server(profiles_dir=profiles_dir, target_tokens=TOKENS) as url:
        chat = url + "/v1/chat/completions"
        jobs = [gevent.spawn(requests.post, chat, timeout=30,
                             json={"model": "one-slot", "stream": True, "messages": MESSAGES}) for _ in range(3)]
        deadline, during = time.monotonic() + 10, None
        while time.monotonic() < deadline:
            during = requests.get(url + "/llmsim/stats", timeout=10).json()
            if during["active"] == 1 and during["queued"] == 2:
                break
            gevent.sleep(0.01)
        gevent.joinall(jobs, timeout=30, raise_error=True)
        for _ in range(3):
            requests.post(chat, json={"model": "const", "stream": True, "messages": MESSAGES}, timeout=30)
        after = requests.get(url + "/llmsim/stats", timeout=10).json()
    assert during["active"] == 1 and during["queued"] == 2, during
    assert during["models"]["one-slot"]["running"] == 1 and during["models"]["one-slot"]["waiting"] == 2
    assert after["active"] == 0 and after["queued"] == 0
    assert after["models"]["const"]["requests"] == 3 and after["models"]["one-slot"]["finished"] == {"stop": 3}
    assert after["requests"]["/v1/chat/completions"] == {"200": 6}
    assert after["streamed_tokens_total"] == 6 * TOKENS == after["output_tokens_total"]
    for window in ("1s", "60s"):
        assert set(after["rates"][window]) == {"requests_per_s", "tokens_per_s", "errors_per_s"}
    assert after["rates"]["60s"]["tokens_per_s"] > 0 and after["rates"]["60s"]["requests_per_s"] > 0
    lat = after["latency_ms"]
    assert set(lat) == {"10s", "60s", "total"}
    total = lat["total"]
    assert set(total) == {"ttft", "itl", "tpot", "e2e", "queue"}
    assert total["ttft"]["count"] == 6 and total["itl"]["count"] == 6 * (TOKENS - 1)
    assert set(total["itl"]) == {"count", "mean", "p50", "p90", "p99", "max"}
    assert total["itl"]["p50"] == pytest.approx(ITL_MS, abs=3) or total["itl"]["p50"] == pytest.approx(20, abs=3)
    assert total["queue"]["max"] > 50  # the third one-slot request waited for two others
    assert total["ttft"]["p50"] <= total["ttft"]["p90"] <= total["ttft"]["p99"] <= total["ttft"]["max"]
    assert lat["60s"]["ttft"]["count"] == 6


def test_model_labels_are_bounded():
    from llmsim.stats import MAX_MODEL_LABELS, ServerStats

    stats = ServerStats()
    labels = [stats.model_label(f"m{i}") for i in range(MAX_MODEL_LABELS + 10)]
    assert labels[:MAX_MODEL_LABELS] == [f"m{i}" for i in range(MAX_MODEL_LABELS)]
    assert set(labels[MAX_MODEL_LABELS:]) == {"other"}
    assert stats.model_label("m3") == "m3" and len(stats.models) == MAX_MODEL_LABELS + 1


def test_histogram_buckets_hold_every_vllm_bound_and_percentiles_are_close():
    from llmsim.stats import EDGES, VLLM_BUCKETS, Distribution, bucket_index, summarise

    for bounds in VLLM_BUCKETS.values():
        assert set(bounds) <= set(EDGES)
    assert bucket_index(0.0001) == 0 and bucket_index(0.00010001) == 1  # upper bounds are inclusive
    assert bucket_index(1e9) == len(EDGES)
    d = Distribution()
    values = [0.001 * i for i in range(1, 1001)]  # 1 ms .. 1 s
    batch = summarise(values)
    assert batch[0] == Counter(bucket_index(v) for v in values)  # one bisect per value, as bucket_index
    assert batch[1:] == (1000, math.fsum(values), 0.001, 1.0)
    d.add(batch)
    assert summarise([0.0] * 99) == (Counter({0: 99}), 99, 0.0, 0.0, 0.0)
    assert summarise([0.02] * 3)[0] == Counter({bucket_index(0.02): 3})
    p = d.percentiles((50, 90, 99))
    assert p[50] == pytest.approx(0.5, abs=0.001) and p[99] == pytest.approx(0.99, abs=0.001)
    s = d.summary()
    assert s["count"] == 1000 and s["max"] == 1000.0 and s["mean"] == pytest.approx(500.5)


def test_stats_interval_prints_a_status_line(profiles_dir, tmp_path):
    import subprocess
    import sys

    config = tmp_path / "llmsim.yaml"
    config.write_text("stats_interval: 0.3\n")
    proc = subprocess.Popen([sys.executable, "-m", "llmsim", "serve", "--port", "0", "--config", str(config),
                             "--profiles-dir", profiles_dir], stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        base = first.split(" on ", 1)[1].split(" ", 1)[0]
        requests.post(base + "/v1/chat/completions", json={"model": "const", "messages": MESSAGES}, timeout=10)
        lines = [proc.stdout.readline()]
        while "requests 1," not in lines[-1] and len(lines) < 50:  # lines printed while it ran come first
            lines.append(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert all(line.startswith("llmsim: ") and "req/s" in line and "tokens/s" in line for line in lines), lines
    assert "requests 1, errors 0" in lines[-1] and "active 0, queued 0" in lines[-1], lines
    assert any("active 1, queued 0" in line for line in lines), lines


def test_stats_interval_option():
    from llmsim.cli.config import ConfigError, resolve_config

    assert resolve_config({}, env={}).stats_interval is None
    assert resolve_config({"stats_interval": "2.5"}, env={}).stats_interval == 2.5
    assert resolve_config({}, env={"LLMSIM_STATS_INTERVAL": "10"}).stats_interval == 10.0
    assert resolve_config({}, env={}, settings={"stats_interval": 1}).stats_interval == 1.0
    with pytest.raises(ConfigError, match="stats-interval: must be a number of seconds above 0"):
        resolve_config({"stats_interval": "0"}, env={})


DOC = Path(__file__).resolve().parent.parent / "docs" / "observability.md"


def test_docs_examples_match_the_server(url):
    text = DOC.read_text()
    example = text.split("<!-- trace-example -->\n```\n", 1)[1].split("\n```", 1)[0]
    assert example.startswith(": llmsim-trace {") and "\n" not in example
    assert list(json.loads(example[len(": llmsim-trace "):])) == TRACE_KEYS
    stats = json.loads(text.split("<!-- stats-example -->\n```json\n", 1)[1].split("\n```", 1)[0])
    requests.post(url + "/v1/chat/completions", json={"model": "const", "messages": MESSAGES}, timeout=30)
    real = requests.get(url + "/llmsim/stats", timeout=10).json()
    assert list(stats) == list(real)
    assert list(stats["latency_ms"]) == list(real["latency_ms"])
    assert stats["latency_ms"]["10s"].keys() == real["latency_ms"]["10s"].keys()
    assert stats["rates"]["1s"].keys() == real["rates"]["1s"].keys()
    assert stats["models"]["gpt-4o"].keys() == real["models"]["const"].keys()


def test_docs_page_names_every_metric():
    text = DOC.read_text()
    from llmsim.stats import VLLM_HISTOGRAMS

    for name, _, _ in VLLM_HISTOGRAMS:
        assert f"`{name}`" in text, name
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:request_success_total", "llmsim_errors_total",
                 "llmsim_faults_injected_total", "llmsim_rate_limit_rejections_total",
                 "llmsim_client_disconnects_total", "llmsim_requests_total"):
        assert f"`{name}" in text, name


def test_zero_delay_answers_count_every_gap_as_the_general_path_does():
    """With the instant profile every stamp is alike: the ITL batch is made without walking the gaps, and
    it must equal what walking them gives."""
    from llmsim.engine import Engine
    from llmsim.openai.chat import ChatCompletions
    from llmsim.stats import bucket_index, summarise

    engine, api = Engine(latency_profile="instant"), ChatCompletions()
    gen = engine.generate(api.parse({"model": "gpt-4o", "messages": [{"role": "user", "content": "go"}],
                                     "max_tokens": 100}))
    gen.wait_all()
    engine.finish(gen, True)
    n = len(gen.emitted)
    assert n == 100 and gen.emitted[0] == gen.emitted[-1]
    itl = engine.stats.total["itl"]
    zeros = summarise([0.0] * (n - 1))
    assert (dict(itl.counts), itl.count, itl.sum, itl.min, itl.max) == (dict(zeros[0]), *zeros[1:])
    assert dict(itl.counts) == {bucket_index(0.0): 99}
    assert engine.stats.total["tpot"].count == 1 and engine.stats.total["ttft"].count == 1


def test_a_chunk_of_no_token_is_one_itl_gap_and_never_fails_the_answer():
    """Statistics must never fail a finished answer: a chunk planned with 0 tokens (none is, since the cut
    inside a character went with its token's chunk) counts as one gap, as the client counts it, instead of
    dividing by zero."""
    from array import array

    from llmsim.engine import Engine
    from llmsim.openai.chat import ChatCompletions

    engine, api = Engine(latency_profile="instant"), ChatCompletions()
    gen = engine.generate(api.parse({"model": "gpt-4o", "messages": [{"role": "user", "content": "go"}],
                                     "max_tokens": 5}))
    gen.wait_all()
    t = gen.emitted[0]
    gen.emitted[:] = array("d", [t, t + 0.03, t + 0.03])
    gen.plan.piece_tokens = [1, 3, 0]
    gen.pacer.sent_tokens = 4
    engine.finish(gen, True)
    itl = engine.stats.total["itl"]
    assert itl.count == 4 and math.isclose(itl.sum, 0.03)


def test_the_itl_split_is_one_rule_for_server_and_client():
    """llmsim/itl.py: a gap ending in a chunk of k > 1 tokens is k samples of gap/k; k <= 1 is one sample."""
    from llmsim.itl import split_gaps
    from llmsim.loadtest.metrics import itl_samples

    assert split_gaps([0.01, 0.03, 0.02], [1, 3, 0]) == pytest.approx([0.01, 0.01, 0.01, 0.01, 0.02])
    assert split_gaps([0.01, 0.02], [2]) == pytest.approx([0.005, 0.005])  # pairs up to the shorter
    times, tokens = [0.0, 0.01, 0.04, 0.06], [1, 1, 3, 0]
    assert itl_samples(times, tokens) == pytest.approx([1000 * g for g in split_gaps([0.01, 0.03, 0.02], [1, 3, 0])])


def test_batches_merged_are_the_batch_of_all_their_values():
    """_fold adds every response's ITL gaps as one batch per model (merge_batches): the same counts, count,
    min and max as summarising all the gaps at once, and their sum."""
    from llmsim.stats import merge_batches, summarise

    rng = random.Random(5)
    groups = [[rng.choice([0.0, 0.0, 0.02]) + rng.random() / rng.choice([10, 1000]) for _ in range(rng.randint(1, 60))]
              for _ in range(40)]
    groups.append([0.02] * 30)  # a response whose gaps are all alike (one bucket)
    merged = merge_batches([summarise(g) for g in groups])
    values = [v for g in groups for v in g]
    whole = summarise(values)
    assert dict(merged[0]) == dict(whole[0]) and merged[1] == whole[1] == len(values)
    assert merged[3:] == whole[3:] == (min(values), max(values))
    assert math.isclose(merged[2], whole[2], rel_tol=1e-12)


def test_latencies_wait_to_be_bucketed_and_land_in_the_window_they_ended_in(monkeypatch):
    """record_generation keeps a response's latencies in a list; they are bucketed (with the others') when
    read, at the sampler's tick (into the window that was current when they ended), or once FOLD_AFTER wait.
    Bucketed in bulk or one by one, the figures are the same."""
    from llmsim import stats as stats_module
    from llmsim.engine import Engine
    from llmsim.openai.chat import ChatCompletions
    from llmsim.stats import Distribution, summarise

    monkeypatch.setattr(stats_module, "FOLD_AFTER", 5)
    clock = [100.0]
    engine, api = Engine(latency_profile="instant"), ChatCompletions()
    st = engine.stats
    st.clock = lambda: clock[0]

    def answer(seconds: float) -> float:
        gen = engine.generate(api.parse({"model": "gpt-4o", "messages": [{"role": "user", "content": "go"}],
                                         "max_tokens": 3}))
        gen.wait_all()
        gen.ended = gen.arrival + seconds
        engine.finish(gen, True)
        return gen.ended - gen.arrival

    early = [answer(s) for s in (0.010, 0.020, 0.030)]
    assert len(st._pending) == 3  # nothing bucketed yet
    st.tick()  # the window of the first three ends
    assert st._pending == []
    late = [answer(s) for s in (0.5, 0.6)]
    with st._lock:
        st._fold()
        newest = st._current["e2e"]  # the current window only: the two late answers
        previous = st._ticks[-1]["e2e"]
    assert (newest.count, newest.min, newest.max) == (2, pytest.approx(0.5), pytest.approx(0.6))
    assert (previous.count, previous.min, previous.max) == (3, pytest.approx(0.010), pytest.approx(0.030))
    total = st.total["e2e"]
    want = Distribution()
    want.add(summarise(early + late))
    assert (dict(total.counts), total.count, total.min, total.max) == (dict(want.counts), 5, min(early), max(late))
    assert math.isclose(total.sum, math.fsum(early + late))
    for _ in range(4):  # past FOLD_AFTER: bucketed without a reader
        answer(0.1)
    assert len(st._pending) < 5
    assert sum(st.vllm["e2e"].by_model["gpt-4o"][0]) == 9


def test_trace_times_are_milliseconds_to_the_microsecond():
    from llmsim.trace import _gaps_ms, _ms

    rng = random.Random(7)
    stamps = [1e4 + 0.1]
    for _ in range(500):
        stamps.append(stamps[-1] + rng.choice([0.0, 1e-7, 0.02, rng.uniform(0, 0.5)]))
    gaps = _gaps_ms(stamps)
    assert len(gaps) == len(stamps) - 1
    for g, a, b in zip(gaps, stamps, stamps[1:]):
        assert abs(g - (b - a) * 1000) <= 0.0005 + 1e-9 and g == round(g, 3)
    assert [_ms(x) for x in (0.0, 0.0200004, 0.0200006, 1.2345675, -0.0000004)] == [0.0, 20.0, 20.001, 1234.568, -0.0]


def test_stats_readers_write_due_streams_while_they_count_open_requests():
    """/llmsim/stats and /metrics count the open requests (500 took ~0.5 ms) without the stats lock,
    calling `between` (a server's run_due) every LIVE_STEP of them. What `between` does may end a stream,
    which takes the lock: it must never be held then. The counts are those of the open requests."""
    from llmsim.engine import Engine
    from llmsim.openai.chat import ChatCompletions
    from llmsim.stats import metrics_registry, render_metrics

    engine, api = Engine(latency_profile="instant"), ChatCompletions()
    st = engine.stats
    gens = [engine.generate(api.parse({"model": m, "messages": [{"role": "user", "content": "go"}],
                                       "max_tokens": 2})) for m in ["gpt-4o", "gpt-4o-mini"] * 130]
    calls: list[bool] = []

    def between() -> None:
        calls.append(st._lock.locked())
        gen = gens.pop()  # a stream that ends meanwhile: takes the lock
        gen.wait_all()
        engine.finish(gen, True)

    d = st.to_dict(between=between)
    assert calls == [False, False]  # after the 128th and the 256th of 260
    # Counted from the list taken before the read: a stream that ended meanwhile is still counted.
    assert d["models"]["gpt-4o"]["running"] == d["models"]["gpt-4o-mini"]["running"] == 130
    assert d["active"] == 260 and d["queued"] == 0
    assert sum(m["finished"].get("length", 0) for m in d["models"].values()) == 2

    calls.clear()
    text = render_metrics(metrics_registry(st, None, between)).decode()
    assert calls == [False, False]  # 258 open: after the 128th and the 256th
    running = {line.split('model_name="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line.startswith("vllm:num_requests_running{")}
    assert running == {"gpt-4o": 129.0, "gpt-4o-mini": 129.0}
