"""Locust across hosts, played by local processes: a `--master` and two `--worker`s on a free port, driving a
`llmsim serve --workers 2` started here. The master's report merges the workers exactly, as with --processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import requests

from .locust_helpers import CHAT, PROFILES, free_port, locust_rows


@pytest.fixture(scope="module")
def fleet_url():
    proc = subprocess.Popen([sys.executable, "-m", "llmsim", "serve", "--port", "0", "--workers", "2",
                             "--profiles-dir", str(PROFILES), "--latency-profile", "lt-steady"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+) .*; 2 workers\)$", line.strip())
        assert m, line
        yield m.group(1)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


@pytest.mark.slow
def test_master_and_workers_merge_exactly(tmp_path, fleet_url):
    port = str(free_port())  # not Locust's fixed 5557: another run on the machine may hold it
    common = ["-f", CHAT, "--llm-profile", str(PROFILES / "steady.yaml"), "--max-tokens", "10"]
    workers = [subprocess.Popen([sys.executable, "-m", "locust", *common, "--worker", "--master-host", "127.0.0.1",
                                 "--master-port", port], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / f"worker{i}.log", "w"), text=True) for i in range(2)]
    try:
        master = subprocess.run(
            [sys.executable, "-m", "locust", *common, "--master", "--master-bind-host", "127.0.0.1",
             "--master-bind-port", port, "--expect-workers", "2", "--headless", "-u", "8", "-r", "8", "-t", "5s",
             "--host", fleet_url, "--llm-report", str(tmp_path / "report.json"),
             "--json-file", str(tmp_path / "locust")],
            cwd=tmp_path, capture_output=True, text=True, timeout=120)
        # 0 (PASS) or 3 (a verdict FAIL: a tail percentile on a busy 2-core machine); the merge is the point here.
        assert master.returncode in (0, 3), master.stdout[-3000:] + master.stderr[-3000:]
        for w in workers:
            assert w.wait(timeout=30) == 0  # a worker stops when its master quits
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    report = json.loads((tmp_path / "report.json").read_text())
    per_worker = report["workers"]
    assert len(per_worker) == 2 and all(w["requests"] > 0 for w in per_worker.values())
    merged = {"requests": report["requests"]["total"], "ok": report["requests"]["ok"],
              "output_tokens": report["tokens"]["output"], "prompt_tokens": report["tokens"]["prompt"]}
    for key, total in merged.items():
        assert total == sum(w[key] for w in per_worker.values()), key
    assert report["requests"]["failed"] == 0 and report["tokens"]["output"] == 10 * report["requests"]["ok"]
    # Locust's own aggregation of the same rows agrees, sample for sample.
    rows = locust_rows(tmp_path)
    assert rows["/v1/chat/completions"]["num_requests"] == report["requests"]["total"]
    assert rows["/v1/chat/completions"]["total_content_length"] == report["tokens"]["output"]
    assert rows["TTFT"]["num_requests"] == report["metrics"]["ttft"]["count"] == report["requests"]["ok"]
    assert rows["ITL"]["num_requests"] == report["metrics"]["itl"]["count"] == 9 * report["requests"]["ok"]
    assert abs(report["metrics"]["ttft"]["p50"] - 50.0) <= 10.0
    assert report["verdict"] in ("PASS", "FAIL") and (report["verdict"] == "PASS") == (master.returncode == 0)
    # The server's totals, over its two workers, hold every request the report counted.
    stats = requests.get(fleet_url + "/llmsim/stats", timeout=10).json()
    assert len(stats["workers"]) == 2
    assert stats["requests"]["/v1/chat/completions"]["200"] >= report["requests"]["ok"]
