"""Running real headless Locust (and a separate llmsim server) as subprocesses."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import gevent

REPO = Path(__file__).resolve().parents[2]
CHAT = str(REPO / "locustfiles" / "chat.py")
MESSAGES = str(REPO / "locustfiles" / "messages.py")
RESPONSES = str(REPO / "locustfiles" / "responses.py")
PROFILES = Path(__file__).resolve().parent / "profiles"

# What a busy two-core machine (other test runs, other processes) guarantees for a server on absolute
# deadlines measured by a client on the same machine. Lateness only adds: TTFT is never early by more
# than clock granularity, and may be late by a scheduling delay. Medians of ITL stay at the target (a
# late token lengthens one gap and shortens the next), while the tail (p99) takes the delays.
EARLY_MS = 1.0
"""How far below the target a measured TTFT or ITL percentile may fall (clock granularity)."""
LATE_MS = 15.0
"""How far above the target a measured TTFT median may rise (scheduling delay)."""
MEDIAN_ITL_MS = 1.5
"""How far a measured ITL median may stray either way."""
TAIL_MS = 25.0
"""How far above the target a measured ITL p99 may rise."""
BUSY_TOLERANCE = ("--llm-tolerance", f"10%,{TAIL_MS:g}ms")
"""Scoring tolerance for runs whose verdict a test asserts: p99s are scored too, and take the delays."""


def within(measured: float, target: float, early: float = EARLY_MS, late: float = LATE_MS) -> bool:
    """target - early <= measured <= target + late."""
    return target - early <= measured <= target + late


def run_locust(tmp_path: Path, *args: str, timeout: float = 90,
               locustfile: str = CHAT) -> tuple[subprocess.CompletedProcess, dict | None]:
    """`locust -f LOCUSTFILE --headless ARGS --llm-report FILE` (chat.py by default); the process and the report."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "locust", "-f", locustfile, "--headless", "--llm-report", str(report),
           "--json-file", str(tmp_path / "locust"), *args]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    data = json.loads(report.read_text()) if report.exists() else None
    return proc, data


def locust_rows(tmp_path: Path) -> dict[str, dict]:
    """Locust's own stats rows (--json-file) by name."""
    rows = json.loads((tmp_path / "locust.json").read_text())
    return {r["name"]: r for r in rows}


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            gevent.sleep(0.05)
    raise RuntimeError("server did not start listening")
