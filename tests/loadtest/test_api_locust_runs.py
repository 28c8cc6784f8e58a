"""Real headless Locust runs of locustfiles/messages.py and locustfiles/responses.py: their scoring passes."""

from __future__ import annotations

import pytest

from .locust_helpers import (BUSY_TOLERANCE, MEDIAN_ITL_MS, MESSAGES, PROFILES, RESPONSES, locust_rows, run_locust,
                             within)

pytestmark = pytest.mark.slow  # real Locust runs (see pyproject: -m "not slow")


def test_messages_default_command_embedded_server_passes(tmp_path):
    """No --host: the embedded llmsim, the default Claude model and its profile (lognormal TTFT).

    10 users keep the process's CPU (server and Locust share it) low enough for the ITL tail; short
    answers give ~130 requests, enough for TTFT p90 to be scored (and to hold)."""
    proc, report = run_locust(tmp_path, "-u", "10", "-r", "10", "-t", "10s", "--max-tokens", "8",
                              locustfile=MESSAGES)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["verdict"] == "PASS"
    assert report["model"] == "claude-sonnet-4-5" and report["profile"] == "claude-sonnet"
    assert report["requests"]["failed"] == 0 and report["requests"]["ok"] >= 50
    assert report["tokens"]["output"] == 8 * report["requests"]["ok"]  # message_delta's usage, exact
    assert any(v["metric"] == "ttft" and v["verdict"] == "PASS" for v in report["verdicts"])
    rows = locust_rows(tmp_path)
    assert rows["/v1/messages"]["num_requests"] == report["requests"]["total"]
    assert rows["TTFT"]["num_requests"] == report["metrics"]["ttft"]["count"] == report["requests"]["ok"]
    assert "Scored against profile claude-sonnet" in proc.stdout


def test_responses_default_command_embedded_server_passes(tmp_path):
    """No --host: gpt-5 reasons first (its reasoning tokens share max_output_tokens), every answer ends with
    response.incomplete, and TTFT includes the reasoning time."""
    proc, report = run_locust(tmp_path, "-u", "10", "-r", "10", "-t", "10s", "--max-tokens", "32",
                              locustfile=RESPONSES)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["verdict"] == "PASS"
    assert report["model"] == "gpt-5" and report["profile"] == "gpt-5"
    assert report["requests"]["failed"] == 0 and report["requests"]["ok"] >= 20
    assert report["tokens"]["output"] == 32 * report["requests"]["ok"]  # visible + reasoning = max_output_tokens
    assert report["metrics"]["ttft"]["p50"] > 1000 and report["expected"]["ttft"]["p50"] > 1000
    assert locust_rows(tmp_path)["/v1/responses"]["num_requests"] == report["requests"]["total"]


def test_responses_and_messages_with_a_constant_profile(tmp_path):
    """A constant-timing profile: the measured figures are the profile's, for both APIs."""
    for locustfile, path in ((MESSAGES, "/v1/messages"), (RESPONSES, "/v1/responses")):
        out = tmp_path / path.rsplit("/", 1)[-1]
        out.mkdir()
        proc, report = run_locust(out, "--llm-profile", str(PROFILES / "steady.yaml"), "--max-tokens", "20",
                                  "-u", "5", "-r", "5", "-t", "3s", *BUSY_TOLERANCE, locustfile=locustfile)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        m = report["metrics"]
        assert report["profile"] == "lt-steady" and report["verdict"] == "PASS"
        assert within(m["ttft"]["p50"], 50.0) and within(m["itl"]["p50"], 5.0, MEDIAN_ITL_MS, MEDIAN_ITL_MS)
        assert locust_rows(out)[path]["num_requests"] == report["requests"]["total"]

