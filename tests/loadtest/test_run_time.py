"""-t lasts what it says: the toolkit's start-up work must not make Locust's run-time timer fire early."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .locust_helpers import PROFILES, run_locust
from .sse_server import MiniServer

TIMED = str(Path(__file__).resolve().parent / "timed_locustfile.py")


@pytest.fixture(scope="module")
def endpoint():
    srv = MiniServer(ttft_ms=30.0, itl_ms=4.0).start()
    yield srv
    srv.stop()


def test_run_lasts_what_t_says(tmp_path, endpoint):
    """Before the fix, -t 3s ran about 2.4 s: gevent's loop clock was stale by the start-up work when
    Locust armed its timer. The test phase is measured inside the Locust process (test_start to
    test_stopping), so a busy machine can only make it later, never earlier."""
    proc, report = run_locust(tmp_path, "--host", endpoint.url, "--llm-profile", str(PROFILES / "mini.yaml"),
                              "--max-tokens", "8", "-u", "2", "-r", "2", "-t", "3s", locustfile=TIMED)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = re.search(r"test phase: ([\d.]+) s", proc.stdout)
    assert m, proc.stdout[-2000:]
    phase = float(m.group(1))
    assert 3.0 - 0.1 <= phase <= 3.0 + 0.2, phase  # upper bound: slack for a loaded machine
