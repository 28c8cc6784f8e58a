"""The toolkit against llmsim's injected faults: every failure is counted by class, a cut stream is a
failure even when tokens arrived, and --retry-429 retries only what it counts."""

from __future__ import annotations

import email.utils

import pytest
import requests

from llmsim.loadtest.adapters import ChatCompletionsAdapter, Prompt
from llmsim.loadtest.aggregate import RunStats
from llmsim.loadtest.client import LlmClient, retry_after_seconds
from llmsim.loadtest.metrics import FAILURE_CLASSES, failure_class
from llmsim.loadtest.report import format_summary
from llmsim.testing import run_server, start_server

from .locust_helpers import run_locust

PROMPT = Prompt.of_text("Say something.", prompt_tokens=4)


def client(url: str, count_tokens, timeout: float = 30.0) -> LlmClient:
    return LlmClient(url, ChatCompletionsAdapter(), model="gpt-4o", count_tokens=count_tokens, timeout=timeout)


def serve(errors: dict, **kw):
    return run_server(config={"errors": errors}, latency_profile="fast", seed=1, **kw)


@pytest.mark.parametrize("kind, cls", [
    ("http_429", "429"), ("http_400", "4xx"), ("http_401", "4xx"), ("http_404", "4xx"), ("http_500", "5xx"),
    ("http_503", "5xx"), ("http_529", "5xx"), ("timeout", "timeout"), ("connection", "connection"),
    ("midstream_cut", "midstream_cut"), ("no_terminator", "midstream_cut"), ("stream_error", "midstream_cut"),
    ("malformed_sse", "malformed_stream"), ("empty_output", "malformed_stream"),
])
def test_every_kind_has_one_class(kind, cls):
    assert failure_class(kind) == cls and cls in FAILURE_CLASSES


def test_dropped_stream_is_a_midstream_cut_even_with_tokens(count_tokens):
    with serve({"midstream": 1.0, "midstream_mode": "drop"}) as url:
        c = client(url, count_tokens)
        for _ in range(5):
            rec = c.run(PROMPT, max_tokens=30)
            assert rec.error_kind == "midstream_cut" and not rec.ok, rec.error_message
            assert rec.status == 200 and rec.output_tokens >= 1  # tokens arrived, still a failure
        assert client(url, count_tokens).run(PROMPT, max_tokens=30, stream=False).error_kind == "connection"


def test_in_band_error_is_a_midstream_cut(count_tokens):
    with serve({"midstream": 1.0, "midstream_mode": "error"}) as url:
        rec = client(url, count_tokens).run(PROMPT, max_tokens=30)
        assert rec.error_kind == "stream_error" and failure_class(rec.error_kind) == "midstream_cut"
        assert "The server had an error" in rec.error_message and rec.output_tokens >= 1


def test_status_faults_and_their_retry_hint(count_tokens):
    with serve({"rate_limit": 1.0, "retry_after_ms": 250}) as url:
        rec = client(url, count_tokens).run(PROMPT, max_tokens=5)
        assert (rec.error_kind, rec.status, rec.retry_after_s) == ("http_429", 429, 0.25)
    with serve({"overloaded": 1.0}) as url:
        rec = client(url, count_tokens).run(PROMPT, max_tokens=5)
        assert (rec.error_kind, rec.retry_after_s) == ("http_503", None)


def test_timeout_fault(count_tokens):
    with serve({"timeout": 1.0, "timeout_after_ms": 2000}) as url:
        assert client(url, count_tokens, timeout=0.3).run(PROMPT, max_tokens=5).error_kind == "timeout"
    with serve({"timeout": 1.0, "timeout_after_ms": 200}) as url:
        rec = client(url, count_tokens).run(PROMPT, max_tokens=5)
        assert rec.error_kind == "connection" and "before responding" in rec.error_message


def test_retry_after_parsing():
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "1"}) == 0.25
    assert retry_after_seconds({"retry-after": "20"}) == 20.0
    assert retry_after_seconds({"retry-after": "1.5"}) == 1.5
    date = email.utils.formatdate(1000.0 + 30, usegmt=True)
    assert retry_after_seconds({"retry-after": date}, now=lambda: 1000.0) == 30.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({"retry-after-ms": "nan"}) is None
    assert retry_after_seconds({}) is None


def test_failures_and_retries_merge_and_print():
    a, b = RunStats(), RunStats()
    from llmsim.loadtest.metrics import failed_record

    for kind in ("http_429", "midstream_cut", "no_terminator", "http_500"):
        a.add(failed_record(start_time=0, t_sent=0, t_end=0.1, kind=kind, message="x"))
    a.add_retry(0.25)
    b.add_retry(1.0)
    merged = RunStats.from_wire(a.to_wire())
    merged.merge(RunStats.from_wire(b.to_wire()))
    assert merged.failures_by_class == {"429": 1, "4xx": 0, "5xx": 1, "timeout": 0, "connection": 0,
                                        "midstream_cut": 2, "malformed_stream": 0}
    assert (merged.retries_429, merged.retry_wait_ms) == (2, 1250)
    report = {"model": "m", "window_s": 1.0, "stream": True,
              "metrics": {m: {"count": 0, "mean": None, **{k: None for k in
                                                         ("p50", "p90", "p95", "p99", "p99.9")}}
                          for m in ("ttft", "itl", "tpot", "e2e")},
              "throughput": {"output_tokens_per_s": None, "requests_per_s": None}, "tokens": {"output": 0},
              "requests": {"total": 4, "ok": 0, "failed": 4, "failures": merged.failures_by_class,
                           "errors_by_kind": dict(merged.errors), "retries_429": 2, "retry_wait_s": 1.25}}
    text = format_summary(report)
    assert "failures: 429 1, 5xx 1, mid-stream cut 2" in text
    assert "429 retries (--retry-429): 2, 1.2 s waited in all" in text


def server_429s(url: str) -> int:
    return requests.get(url + "/llmsim/stats").json()["requests"].get("/v1/chat/completions", {}).get("429", 0)


LOCUST_ARGS = ("--llm-model", "gpt-4o", "--llm-profile", "fast", "--max-tokens", "10", "-u", "4", "-r", "4",
               "-t", "3s")
ERRORS = {"rate_limit": 0.3, "server_error": 0.05, "midstream": 0.1, "retry_after_ms": 50}


@pytest.mark.slow
def test_locust_counts_failures_by_class_and_never_retries_silently(tmp_path):
    srv = start_server(config={"errors": ERRORS}, latency_profile="fast", seed=2)
    try:
        proc, report = run_locust(tmp_path, "--host", srv.url, *LOCUST_ARGS)
        answered_429 = server_429s(srv.url)
    finally:
        srv.stop()
    assert report is not None, proc.stderr[-3000:]
    req = report["requests"]
    f = req["failures"]
    assert f["429"] > 0 and f["5xx"] > 0 and f["midstream_cut"] > 0
    assert sum(f.values()) == req["failed"] == req["total"] - req["ok"]
    assert req["retries_429"] == 0
    # Every 429 the server sent was counted as a failed request (at most one per user in flight at the stop).
    assert answered_429 - 4 <= f["429"] <= answered_429
    assert "failures: 429" in proc.stdout and "mid-stream cut" in proc.stdout
    assert proc.returncode != 0


@pytest.mark.slow
def test_locust_retry_429_honours_retry_after_and_counts_each_retry(tmp_path):
    srv = start_server(config={"errors": ERRORS}, latency_profile="fast", seed=2)
    try:
        proc, report = run_locust(tmp_path, "--host", srv.url, *LOCUST_ARGS, "--retry-429", "6")
        answered_429 = server_429s(srv.url)
    finally:
        srv.stop()
    assert report is not None, proc.stderr[-3000:]
    req = report["requests"]
    assert req["retries_429"] > 0
    assert req["retry_wait_s"] == pytest.approx(0.05 * req["retries_429"], abs=0.01)  # the hint, exactly
    # 0.3^7: a request practically never runs out of retries.
    assert req["failures"]["429"] <= 1
    # Each 429 the server sent is either a counted retry or a counted failure.
    counted = req["retries_429"] + req["failures"]["429"]
    assert answered_429 - 4 <= counted <= answered_429
    assert "429 retries (--retry-429)" in proc.stdout
    from .locust_helpers import locust_rows

    assert locust_rows(tmp_path)["429 retry"]["num_requests"] == req["retries_429"]


def test_retry_429_option(capsys):
    import argparse

    from llmsim.loadtest.options import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).retry_429 == 0  # off: nothing is retried
    assert parser.parse_args(["--retry-429"]).retry_429 == 3
    assert parser.parse_args(["--retry-429", "7"]).retry_429 == 7
    with pytest.raises(SystemExit):
        parser.parse_args(["--retry-429", "0"])
    assert "--retry-429: must be at least 1" in capsys.readouterr().err


def test_an_error_bodys_request_id_is_left_out_of_the_failure_message(count_tokens):
    """Anthropic's error bodies carry a per-request id: left in, Locust's error table and _failures.csv would
    get a row per request instead of one per kind of failure."""
    from llmsim.loadtest.adapters import MessagesAdapter

    with serve({"overloaded": 1.0}) as url:
        c = LlmClient(url, MessagesAdapter(), model="claude-haiku-4-5", count_tokens=count_tokens)
        first, second = c.run(PROMPT, max_tokens=5), c.run(PROMPT, max_tokens=5)
    assert first.status == 529 and first.error_kind == "http_529"
    assert first.error_message == second.error_message and "request_id" not in first.error_message
    assert first.error_message.startswith("HTTP 529") and "overloaded_error" in first.error_message


def test_a_silent_server_is_a_timeout_with_llm_timeout_and_unfinished_without(tmp_path):
    """A server that holds every request: with --llm-timeout 1 each becomes a timeout failure; with the default
    (600 s) the run ends with them still waiting, and the summary and report count them as unfinished."""
    srv = start_server(config={"errors": {"timeout": 1.0, "timeout_after_ms": 60000}}, latency_profile="fast")
    (tmp_path / "timed").mkdir()
    (tmp_path / "waiting").mkdir()
    try:
        timed, timed_report = run_locust(tmp_path / "timed", "--host", srv.url, "-u", "2", "-r", "2", "-t", "4s",
                                         "--llm-timeout", "1", timeout=60)
        waiting, waiting_report = run_locust(tmp_path / "waiting", "--host", srv.url, "-u", "2", "-r", "2",
                                             "-t", "2s", timeout=60)
    finally:
        srv.stop()
    assert timed_report is not None, timed.stderr[-3000:]
    req = timed_report["requests"]
    assert req["ok"] == 0 and req["failures"]["timeout"] >= 2 and req["failed"] == req["failures"]["timeout"]
    assert waiting_report is not None, waiting.stderr[-3000:]
    req = waiting_report["requests"]
    assert req["total"] == 0 and req["unfinished"] == 2
    assert "unfinished: 2 requests still waited for their answers when the run stopped" in waiting.stdout
