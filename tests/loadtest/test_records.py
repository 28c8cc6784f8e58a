"""--llm-records FILE: one JSON line per measured request, read back by `llmsim profile fit`."""

from __future__ import annotations

import json

import pytest

from llmsim.fit import fit, load_observations
from llmsim.loadtest.metrics import RequestRecord
from llmsim.loadtest.records import RECORDS_FORMAT, record_line

from .locust_helpers import PROFILES, run_locust


def test_record_line_carries_the_measurements():
    rec = RequestRecord(start_time=100.0, end_time=100.5, e2e_ms=500.0, status=200, ttft_ms=120.04321,
                        itl_ms=[20.0, 21.5], tpot_ms=20.75, output_tokens=3, prompt_tokens=40, reasoning_tokens=6,
                        usage_reported=True)
    line = record_line(rec, model="m", stream=True, users=4)
    assert line == {"llmsim": RECORDS_FORMAT, "start_time": 100.0, "end_time": 100.5, "model": "m", "stream": True,
                    "status": 200, "ok": True, "error_kind": None, "ttft_ms": 120.043, "itl_ms": [20.0, 21.5],
                    "tpot_ms": 20.75, "e2e_ms": 500.0, "prompt_tokens": 40, "output_tokens": 3,
                    "reasoning_tokens": 6, "usage_reported": True, "users": 4}


@pytest.mark.slow
def test_locust_run_writes_one_line_per_request_that_fit_reads(tmp_path, mini_server):
    records = tmp_path / "run.jsonl"
    records.write_text("stale line from an earlier run\n")
    proc, report = run_locust(tmp_path, "--host", mini_server.url, "--llm-model", "mini-model",
                              "--llm-profile", str(PROFILES / "mini.yaml"), "--max-tokens", "12",
                              "--llm-records", str(records), "-u", "4", "-r", "4", "-t", "3s")
    # The verdict (exit 0 or 3) depends on this machine's timing; the records do not.
    assert proc.returncode in (0, 3) and report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(s) for s in records.read_text().splitlines()]
    assert len(lines) == report["requests"]["total"] > 10  # started afresh: no stale line
    first = lines[0]
    assert first["llmsim"] == RECORDS_FORMAT and first["model"] == "mini-model" and first["ok"]
    assert first["users"] == 4 and len(first["itl_ms"]) == 11 and first["output_tokens"] == 12
    assert first["ttft_ms"] > 25 and first["end_time"] > first["start_time"]
    observations, _ = load_observations([str(records)])
    assert max(o.concurrency for o in observations) == 4  # in flight at each start, from the lines' times
    result = fit(observations)
    # The same requests the run's own report measured (compared within the run, not against the profile).
    metrics = report["metrics"]
    assert abs(result.itl.mean - metrics["itl"]["mean"]) <= 0.02 * metrics["itl"]["mean"]
    assert abs(result.ttft.mean - metrics["ttft"]["mean"]) <= 0.05 * metrics["ttft"]["mean"]
    assert result.streamed_ok == report["requests"]["ok"]
