"""Real headless Locust runs of locustfiles/chat.py: verdicts, exit codes, any endpoint, --processes, options."""

from __future__ import annotations

import pytest

from llmsim.loadtest.transport import KERNEL_STAMPS_SUPPORTED

from .locust_helpers import BUSY_TOLERANCE, MEDIAN_ITL_MS, PROFILES, free_port, locust_rows, run_locust, within
from .sse_server import MiniServer

pytestmark = pytest.mark.slow  # real Locust runs (see pyproject: -m "not slow")


@pytest.fixture(scope="module")
def endpoint():
    """The minimal non-llmsim server: TTFT 30 ms, ITL 4 ms (profiles/mini.yaml says the same)."""
    srv = MiniServer(ttft_ms=30.0, itl_ms=4.0).start()
    yield srv
    srv.stop()


def test_default_command_embedded_server_passes(tmp_path):
    """The Quickstart line (shorter): no --host, default model gpt-5, embedded llmsim; exit 0 with a PASS."""
    proc, report = run_locust(tmp_path, "-u", "20", "-r", "20", "-t", "8s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["verdict"] == "PASS"
    assert report["model"] == "gpt-5" and report["profile"] == "gpt-5"
    assert report["host"].startswith("http://127.0.0.1:")
    assert report["requests"]["failed"] == 0 and report["requests"]["ok"] >= 20
    # gpt-5 reasons before it answers: the server reports hidden reasoning, TTFT includes it.
    assert report["metrics"]["ttft"]["p50"] > 1000
    assert report["expected"]["ttft"]["p50"] > 1000
    assert any(v["metric"] == "ttft" and v["verdict"] == "PASS" for v in report["verdicts"])
    # gpt-5's load model slows decoding with 20 streams in flight (64 slots, 1.5 at full): about x1.15.
    assert 1.10 < report["load"]["itl_multiplier"] < 1.16
    assert abs(report["metrics"]["itl"]["mean"] - report["expected"]["itl"]["mean"]) < 3.0
    # Console: the summary and the verdict table.
    out = proc.stdout
    for needle in ("TTFT", "ITL", "TPOT", "E2E", "p99.9", "tok/s", "req/s", "errors by kind: none",
                   "Scored against profile gpt-5", "RESULT"):
        assert needle in out, needle
    # Locust rows: the request row carries E2E and output tokens; TTFT and ITL have their own rows.
    rows = locust_rows(tmp_path)
    req = rows["/v1/chat/completions"]
    assert req["num_requests"] == report["requests"]["total"]
    assert req["total_content_length"] == report["tokens"]["output"]
    assert rows["TTFT"]["num_requests"] == report["metrics"]["ttft"]["count"]
    assert rows["ITL"]["num_requests"] == report["metrics"]["itl"]["count"]
    # The embedded server is asked for its own timings (--llm-trace auto); the report has the section.
    assert report["measurement_error"] is not None and "measurement error" in out


def test_any_endpoint_matching_profile_passes(tmp_path, endpoint):
    proc, report = run_locust(tmp_path, "--host", endpoint.url, "--llm-model", "mini-model",
                              "--llm-profile", str(PROFILES / "mini.yaml"), "--max-tokens", "20",
                              "-u", "10", "-r", "10", "-t", "3s", *BUSY_TOLERANCE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = report["metrics"]
    assert report["profile"] == "lt-mini"
    assert within(m["ttft"]["p50"], 30.0)
    assert within(m["itl"]["p50"], 4.0, MEDIAN_ITL_MS, MEDIAN_ITL_MS)
    assert within(m["tpot"]["p50"], 4.0, MEDIAN_ITL_MS, MEDIAN_ITL_MS)
    assert within(m["e2e"]["p50"], 30.0 + 19 * 4.0)
    assert report["tokens"]["output"] == 20 * report["requests"]["ok"]  # from the server's usage
    assert report["verdict"] == "PASS"
    # Plain http on Linux: every time is a kernel receive time, and the report says so.
    if KERNEL_STAMPS_SUPPORTED:
        assert report["timestamps"] == {"source": "kernel", "kernel_requests": report["requests"]["ok"],
                                        "user_space_requests": 0}
        assert "timestamps: kernel receive times (SO_TIMESTAMPNS)" in proc.stdout


def test_different_profile_fails_with_nonzero_exit(tmp_path, endpoint):
    # The endpoint does TTFT 30 / ITL 4; the profile `fast` says 10 / 1.
    proc, report = run_locust(tmp_path, "--host", endpoint.url, "--llm-profile", "fast", "--max-tokens", "10",
                              "-u", "5", "-r", "5", "-t", "4s")  # enough samples to score p50 on a loaded machine
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["verdict"] == "FAIL"
    failed = {(v["metric"], v["stat"]) for v in report["verdicts"] if v["verdict"] == "FAIL"}
    assert ("ttft", "p50") in failed
    assert "FAIL" in proc.stdout


def test_measure_only_when_no_profile_applies(tmp_path, endpoint):
    """A model with no built-in profile and no --llm-profile: the figures, no verdict, exit 0."""
    proc, report = run_locust(tmp_path, "--host", endpoint.url, "--llm-model", "my-llama", "--max-tokens", "10",
                              "-u", "2", "-r", "2", "-t", "2s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["score"] == "off" and report["verdict"] is None and report["profile"] is None
    assert "verdicts" not in report
    assert report["requests"]["ok"] > 0 and report["metrics"]["ttft"]["count"] == report["requests"]["ok"]
    assert "Not scored: no profile covers model my-llama" in proc.stdout
    assert "RESULT" not in proc.stdout


def test_score_off_exits_0_when_the_profile_disagrees(tmp_path, endpoint):
    # The same run as test_different_profile_fails_with_nonzero_exit, measured only.
    proc, report = run_locust(tmp_path, "--host", endpoint.url, "--llm-profile", "fast", "--llm-score", "off",
                              "--max-tokens", "10", "-u", "2", "-r", "2", "-t", "2s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["score"] == "off" and report["profile"] == "fast" and report["verdict"] is None
    assert "Not scored: --llm-score off." in proc.stdout


def test_warmup_requests_are_left_out_of_every_figure(tmp_path, endpoint):
    proc, report = run_locust(tmp_path, "--host", endpoint.url, "--llm-profile", str(PROFILES / "mini.yaml"),
                              "--llm-warmup", "5", "--max-tokens", "10", "-u", "2", "-r", "2", "-t", "2s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["warmup"] == {"setting": "5", "requests": 5}
    rows = locust_rows(tmp_path)
    # Locust's own rows count every request; the toolkit's figures leave the first 5 out.
    assert rows["/v1/chat/completions"]["num_requests"] == report["requests"]["total"] + 5
    assert rows["TTFT"]["num_requests"] == report["metrics"]["ttft"]["count"] + 5
    assert report["tokens"]["output"] == 10 * report["requests"]["ok"]
    assert "warm-up (--llm-warmup 5): 5 requests left out" in proc.stdout


def test_warmup_seconds(tmp_path, endpoint):
    # Requests take about 30 + 9 * 4 = 66 ms: in the first second each of 2 users sends about 15.
    proc, report = run_locust(tmp_path, "--host", endpoint.url, "--llm-profile", str(PROFILES / "mini.yaml"),
                              "--llm-warmup", "1s", "--max-tokens", "10", "-u", "2", "-r", "2", "-t", "2s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = locust_rows(tmp_path)
    assert report["warmup"]["requests"] >= 4
    assert rows["/v1/chat/completions"]["num_requests"] == report["requests"]["total"] + report["warmup"]["requests"]
    assert report["requests"]["total"] >= 4


def test_trace_reports_the_clients_measurement_error(tmp_path, endpoint):
    """--llm-trace on against a server that answers x-llmsim-trace: client minus server in the summary and
    the report; a limit below the error makes the summary name the load generator as the bottleneck."""
    proc, report = run_locust(tmp_path, "--host", endpoint.url, "--llm-profile", str(PROFILES / "mini.yaml"),
                              "--llm-trace", "on", "--llm-trace-limit", "0", "--max-tokens", "10",
                              "-u", "4", "-r", "4", "-t", "2s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    err = report["measurement_error"]
    assert err["traced_requests"] == report["requests"]["ok"] > 0 and err["mismatched_traces"] == 0
    assert err["itl_ms"]["count"] == 9 * err["traced_requests"]
    # Same machine, kernel stamps: the client is within a few ms of the server (generous for a busy machine).
    assert -1.0 < err["ttft_ms"]["p50"] < 5.0 and err["itl_ms"]["abs_p99"] < 5.0
    assert err["limit_ms"] == 0 and err["load_generator_bottleneck"]
    assert "measurement error (client - server, " in proc.stdout
    assert "The load generator, not the server, is the bottleneck" in proc.stdout
    # Against a --host, auto means off: no header, no figures.
    proc, report = run_locust(tmp_path, "--host", endpoint.url, "--llm-profile", str(PROFILES / "mini.yaml"),
                              "--max-tokens", "5", "-u", "1", "-r", "1", "-t", "1s")
    assert report["measurement_error"] is None and "measurement error" not in proc.stdout


def test_failures_are_counted_by_kind(tmp_path, endpoint):
    proc, report = run_locust(tmp_path, "--host", endpoint.url, "--llm-model", "mode-no-done",
                              "--llm-profile", str(PROFILES / "mini.yaml"), "--max-tokens", "5",
                              "-u", "2", "-r", "2", "-t", "3s")  # a loaded machine may take a second to start
    assert proc.returncode != 0
    assert report["requests"]["ok"] == 0
    assert report["requests"]["errors_by_kind"] == {"no_terminator": report["requests"]["total"]}
    assert "no request succeeded" in report["notes"]
    rows = locust_rows(tmp_path)
    assert rows["/v1/chat/completions"]["num_failures"] == report["requests"]["total"]
    assert "no_terminator: 1" in proc.stdout or "no_terminator:" in proc.stdout


def test_processes_merge_exactly(tmp_path):
    """--processes 2 with the embedded server (a profile YAML loaded into it): merged = sum over workers."""
    port = str(free_port())  # not Locust's fixed 5557: another run on the machine may hold it
    proc, report = run_locust(tmp_path, "--processes", "2", "--master-bind-port", port, "--master-port", port,
                              "--llm-profile", str(PROFILES / "steady.yaml"),
                              "--max-tokens", "10", "-u", "8", "-r", "8", "-t", "4s", *BUSY_TOLERANCE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    workers = report["workers"]
    assert len(workers) == 2 and all(w["requests"] > 0 for w in workers.values())
    for key in ("requests", "ok", "output_tokens", "prompt_tokens"):
        merged = report["tokens"]["output"] if key == "output_tokens" else (
            report["tokens"]["prompt"] if key == "prompt_tokens" else report["requests"]["total" if key ==
                                                                                          "requests" else "ok"])
        assert merged == sum(w[key] for w in workers.values()), key
    # Locust's own aggregation of the same rows agrees.
    rows = locust_rows(tmp_path)
    assert rows["/v1/chat/completions"]["num_requests"] == report["requests"]["total"]
    assert rows["/v1/chat/completions"]["total_content_length"] == report["tokens"]["output"]
    assert rows["ITL"]["num_requests"] == report["metrics"]["itl"]["count"]
    assert report["profile"] == "lt-steady"
    assert within(report["metrics"]["ttft"]["p50"], 50.0)
    assert report["verdict"] == "PASS"


@pytest.mark.parametrize("args, needle", [
    (["--llm-tolerance", "abc"], "--llm-tolerance"),
    (["--max-tokens", "0"], "--max-tokens"),
    (["--llm-profile", "no-such-profile"], "no profile named 'no-such-profile'"),
    (["--llm-profile", "missing.yaml"], "missing.yaml: file: cannot read"),
    (["--prompts", "missing.jsonl"], "missing.jsonl: cannot read"),
    (["--llm-model", "llama-3-8b", "--llm-score", "on"], "no profile covers model 'llama-3-8b'"),
    (["--llm-warmup", "ten"], "--llm-warmup"),
    (["--host", "127.0.0.1:18999"], "--host: not an http(s) URL: '127.0.0.1:18999' (give the scheme"),
    (["--host", "http://127.0.0.1:port"], "--host: not an http(s) URL"),
    (["--llm-report", "afile/report.json"], "--llm-report: cannot write afile/report.json"),
    (["--llm-report", "."], "--llm-report: cannot write . (it is a directory)"),
    (["--llm-trace", "on", "--no-stream"], "--llm-trace on needs a streamed run"),
    (["--llm-timeout", "0"], "--llm-timeout: must be a finite number more than 0"),
    (["--llm-profile", "empty.yaml"], "--llm-profile: empty.yaml holds no profiles"),
])

def test_bad_options_give_one_line_errors(tmp_path, args, needle):
    (tmp_path / "afile").write_text("a file, where a report's directory would go")
    (tmp_path / "empty.yaml").write_text("profiles: []\n")
    proc, report = run_locust(tmp_path, *args, "-u", "1", "-t", "1s", timeout=30)
    assert proc.returncode == 2
    assert report is None
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and needle in errors[0], proc.stderr


def test_options_work_from_a_locust_config_file(tmp_path):
    conf = tmp_path / "llm.conf"
    conf.write_text("llm-model = model-from-conf\nllm-score = on\n")
    proc, report = run_locust(tmp_path, "--config", str(conf), "-u", "1", "-t", "1s", timeout=30)
    assert proc.returncode == 2
    assert "no profile covers model 'model-from-conf'" in proc.stderr
