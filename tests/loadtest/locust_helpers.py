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
PROFILES = Path(__file__).resolve().parent / "profiles"


def run_locust(tmp_path: Path, *args: str, timeout: float = 90) -> tuple[subprocess.CompletedProcess, dict | None]:
    """`locust -f locustfiles/chat.py --headless ARGS --llm-report FILE`; returns the process and the report."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "locust", "-f", CHAT, "--headless", "--llm-report", str(report),
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
