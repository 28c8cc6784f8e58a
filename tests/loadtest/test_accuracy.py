"""Issue 3's accuracy setup: llmsim (its own process) with constant TTFT 200 ms / ITL 20 ms, 20 users."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmsim.loadtest.adapters import ChatCompletionsAdapter, Prompt
from llmsim.loadtest.client import LlmClient

from .locust_helpers import (BUSY_TOLERANCE, MEDIAN_ITL_MS, PROFILES, TAIL_MS, free_port, run_locust,
                             wait_listening, within)

pytestmark = pytest.mark.slow  # real Locust runs (see pyproject: -m "not slow")


def warm_up(url: str) -> None:
    """A first request pays the server's one-time costs (loading BPE ranks); keep them out of the figures."""
    client = LlmClient(url, ChatCompletionsAdapter(), model="gpt-5", count_tokens=len)
    assert client.run(Prompt.of_text("warm up"), max_tokens=1).ok
    client.close()


@pytest.fixture(scope="module")
def llmsim_200_20():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmsim", "serve", "--port", str(port), "--profiles-dir",
                             str(PROFILES), "--latency-profile", "lt-accuracy"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port, proc)
        url = f"http://127.0.0.1:{port}"
        warm_up(url)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_client_accuracy_against_llmsim(tmp_path, llmsim_200_20):
    proc, report = run_locust(tmp_path, "--host", llmsim_200_20, "--llm-profile",
                              str(PROFILES / "accuracy.yaml"), "--max-tokens", "24",
                              "-u", "20", "-r", "20", "-t", "7s", *BUSY_TOLERANCE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = report["metrics"]
    print({k: (m[k]["p50"], m[k]["p99"], m[k]["count"]) for k in m})
    assert m["ttft"]["count"] >= 100 and m["itl"]["count"] >= 2000
    # Bounds a busy two-core machine keeps (see locust_helpers); a client that batched events, started
    # its clock late or stamped after parsing would still break them.
    assert within(m["ttft"]["p50"], 200.0)
    assert within(m["itl"]["p50"], 20.0, MEDIAN_ITL_MS, MEDIAN_ITL_MS)
    assert within(m["itl"]["p99"], 20.0, late=TAIL_MS)
    assert report["verdict"] == "PASS"

