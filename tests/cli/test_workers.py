"""`llmsim serve --workers 2` as a user runs it: both workers answer on one port, stats and metrics add up over
them, runtime changes reach both, a killed worker comes back, rate limits are per worker, SIGTERM drains.

Every check waits for an event (a header seen, a file written, a process gone) with a generous deadline; no
check depends on how fast this machine is.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
PROFILE = """profiles:
  - name: steady
    models: [steady-model]
    ttft: {distribution: constant, mean_ms: 0}
    itl: {distribution: constant, mean_ms: %s}
    slo: {ttft_p99_ms: 500, itl_p99_ms: 50}
"""
CHAT = "/v1/chat/completions"


class Fleet:
    """A `llmsim serve --workers N` process: its URL, its stderr (a file) and helpers."""

    def __init__(self, tmp_path, *args: str, itl_ms: float = 1, workers: str = "2") -> None:
        (tmp_path / "profiles").mkdir(exist_ok=True)
        (tmp_path / "profiles" / "steady.yaml").write_text(PROFILE % itl_ms)
        self.stderr_path = tmp_path / "stderr.txt"
        self.stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmsim", "serve", "--port", "0", "--workers", workers,
             "--profiles-dir", str(tmp_path / "profiles"), *args],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=ENV)
        self.line = self.proc.stdout.readline().strip()
        m = re.match(r"llmsim serving on (http://127\.0\.0\.1:\d+) \((.+)\)$", self.line)
        assert m, self.line + self.stderr_text()
        self.url, self.description = m.group(1), m.group(2)

    def stderr_text(self) -> str:
        self.stderr.flush()
        return self.stderr_path.read_text()

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.stderr.close()

    def fresh(self, method: str, path: str, **kw) -> requests.Response:
        """One request on a new connection: the kernel picks the worker anew each time."""
        return requests.request(method, self.url + path, headers={"Connection": "close", **kw.pop("headers", {})},
                                timeout=30, **kw)

    def chat(self, stream: bool = False, **kw) -> requests.Response:
        return self.fresh("POST", CHAT, json={"model": "steady-model", "stream": stream, "max_tokens": 5,
                                              "messages": [{"role": "user", "content": "hi"}]}, **kw)

    def stats(self) -> dict:
        return self.fresh("GET", "/llmsim/stats").json()

    def stats_when(self, ready, timeout: float = 20.0) -> dict:
        """/llmsim/stats once `ready(stats)` holds (the last answer if it never does)."""
        box: dict = {}

        def check():
            box["s"] = self.stats()
            return ready(box["s"])

        until(check, timeout)
        return box["s"]


def until(check, timeout: float = 20.0, every: float = 0.05):
    """Poll `check` until it returns something true; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def chat_count(stats: dict) -> int:
    return stats["requests"].get(CHAT, {}).get("200", 0)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    f = Fleet(tmp_path_factory.mktemp("fleet"), "--admin-token", "tok", "--target-tokens", "5")
    yield f
    assert f.stop() == 0


def test_startup_line_names_the_workers(fleet):
    assert fleet.description.startswith("generator lorem, ") and fleet.description.endswith("; 2 workers")


def test_both_workers_answer_and_stats_add_up(fleet):
    seen = {}
    for _ in range(40):
        r = fleet.chat()
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
        seen[r.headers["x-llmsim-worker"]] = seen.get(r.headers["x-llmsim-worker"], 0) + 1
    assert set(seen) == {"0", "1"}, seen  # 40 connections all hashed to one worker: odds 2^-39
    # Wait until every worker's snapshot holds its share (snapshots are rewritten every 0.5 s).
    stats = fleet.stats_when(lambda s: chat_count(s) >= 40)
    assert chat_count(stats) == 40
    per = {str(w["worker"]): w for w in stats["workers"]}
    assert {k: chat_count(w) for k, w in per.items()} == seen
    assert stats["output_tokens_total"] == 200 == sum(w["output_tokens_total"] for w in stats["workers"])
    assert len({w["pid"] for w in stats["workers"]}) == 2 and stats["worker_restarts"] == 0
    # Whichever worker answers merges the other's last snapshot: poll until both snapshots are current.
    total = re.compile(rf'^llmsim_requests_total\{{endpoint="{CHAT}",status="200"\}} 40$', re.M)

    def merged_metrics():
        text = fleet.fresh("GET", "/metrics").text
        return text if total.search(text) else None

    text = until(merged_metrics)
    assert text, "the merged /metrics never showed 40 chat completions"
    assert re.search(r"^llmsim_output_tokens_total 200$", text, re.M)
    assert re.search(r'^llmsim_active_streams{worker="0"} 0$', text, re.M)
    assert re.search(r"^llmsim_workers 2$", text, re.M)
    for k, n in seen.items():
        assert re.search(rf'^llmsim_worker_output_tokens_total\{{worker="{k}"\}} {5 * n}$', text, re.M)


def test_a_runtime_change_reaches_every_worker(fleet):
    auth = {"Authorization": "Bearer tok"}
    r = fleet.fresh("POST", "/llmsim/config", json={"errors": {"server_error": 1.0}}, headers=auth)
    assert r.status_code == 200 and r.json()["errors"]["server_error"] == 1.0, r.text

    def both_fail():
        for _ in range(20):
            r = fleet.chat()
            assert r.status_code in (200, 500)
            if r.status_code == 500:
                failed.add(r.headers["x-llmsim-worker"])
        return failed == {"0", "1"}

    failed: set[str] = set()
    assert until(both_fail, timeout=10), failed
    r = fleet.fresh("POST", "/llmsim/config", json={"errors": None}, headers=auth)
    assert r.status_code == 200
    ok: set[str] = set()

    def both_ok():
        r = fleet.chat()
        if r.status_code == 200:
            ok.add(r.headers["x-llmsim-worker"])
        return ok == {"0", "1"}

    assert until(both_ok, timeout=10), ok


def test_a_killed_worker_is_restarted_and_keeps_its_counts(fleet):
    for _ in range(10):
        assert fleet.chat().status_code == 200
    done = time.time()

    def current():
        # The victim is the worker that did not answer, once its snapshot file is newer than the last request:
        # then the file (all that is left of it after SIGKILL) holds every request it answered.
        r = fleet.fresh("GET", "/llmsim/stats")
        s = r.json()
        other = [w for w in s["workers"] if str(w["worker"]) != r.headers["x-llmsim-worker"]]
        return (s, other[0]) if other and other[0]["snapshot_age_s"] < time.time() - done else None

    before, victim = until(current)
    total = chat_count(before)
    os.kill(victim["pid"], signal.SIGKILL)
    line = f"worker {victim['worker']} (pid {victim['pid']}) stopped (killed by SIGKILL); restarted as pid"
    assert until(lambda: line in fleet.stderr_text(), timeout=30), fleet.stderr_text()
    after = fleet.stats_when(lambda s: len(s["workers"]) == 2 and victim["pid"] not in {w["pid"] for w in
                                                                                        s["workers"]}, 30)
    assert victim["pid"] not in {w["pid"] for w in after["workers"]} and after["worker_restarts"] == 1
    assert chat_count(after) == total  # the dead worker's counts stay in the totals
    answered = set()
    assert until(lambda: answered.add(fleet.chat().headers["x-llmsim-worker"]) or answered == {"0", "1"})
    assert fleet.stderr_text().count("restarted as pid") == 1


def test_port_in_use_stops_a_second_fleet(fleet):
    port = fleet.url.rsplit(":", 1)[1]
    r = subprocess.run([sys.executable, "-m", "llmsim", "serve", "--port", port, "--workers", "2"],
                       capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 2 and "cannot start" in r.stderr and "Traceback" not in r.stderr


def test_a_bad_setting_is_reported_once(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llmsim", "serve", "--port", "0", "--workers", "2",
                        "--latency-profile", "nope"], capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("no profile named 'nope'") == 1, r.stderr


@pytest.mark.slow
def test_rate_limits_are_per_worker(tmp_path):
    """Each replica has its own buckets: rpm 2 lets 2 requests through per worker, 4 in all."""
    (tmp_path / "c.yaml").write_text("rate_limits: {rpm: 2}\n")
    f = Fleet(tmp_path, "--config", str(tmp_path / "c.yaml"))
    try:
        ok: dict[str, int] = {"0": 0, "1": 0}
        limited: set[str] = set()
        for _ in range(200):
            r = f.chat()
            worker = r.headers["x-llmsim-worker"]
            if r.status_code == 200:
                ok[worker] += 1
            else:
                assert r.status_code == 429
                limited.add(worker)
            if limited == {"0", "1"}:
                break
        assert limited == {"0", "1"} and ok == {"0": 2, "1": 2}
    finally:
        assert f.stop() == 0


@pytest.mark.slow
def test_sigterm_lets_open_streams_finish_then_exits_0(tmp_path):
    """A 2 s stream in flight and an idle keep-alive connection: the stream ends whole, no new connection is
    taken, and the fleet exits 0 as soon as the stream is done, long before the 30 s grace period."""
    f = Fleet(tmp_path, "--grace-period", "30", "--target-tokens", "100", itl_ms=20)
    idle = requests.Session()
    assert idle.get(f.url + "/health").status_code == 200  # keep-alive, then idle
    r = requests.post(f.url + CHAT, json={"model": "steady-model", "stream": True,
                                          "messages": [{"role": "user", "content": "hi"}]}, stream=True, timeout=30)
    lines = r.iter_lines()
    first = next(line for line in lines if line.startswith(b"data: "))
    assert b"chat.completion.chunk" in first
    t0 = time.monotonic()
    f.proc.send_signal(signal.SIGTERM)
    rest = [line for line in lines if line.startswith(b"data: ")]
    assert rest[-1] == b"data: [DONE]"
    content = sum(1 for line in [first, *rest] if b'"content":"' in line and b'"content":""' not in line)
    assert content == 100  # every token arrived
    assert f.proc.wait(timeout=25) == 0
    assert time.monotonic() - t0 < 20  # did not wait for the grace period
    with pytest.raises(requests.ConnectionError):
        requests.get(f.url + "/health", timeout=5)
    assert "llmsim stopped" in f.stderr_text() and "Traceback" not in f.stderr_text()
    f.stop()


@pytest.mark.slow
def test_grace_period_cuts_what_is_still_open(tmp_path):
    f = Fleet(tmp_path, "--grace-period", "1", "--target-tokens", "2000", itl_ms=20)  # a 40 s stream
    r = requests.post(f.url + CHAT, json={"model": "steady-model", "stream": True,
                                          "messages": [{"role": "user", "content": "hi"}]}, stream=True, timeout=60)
    lines = r.iter_lines()
    assert next(line for line in lines if line.startswith(b"data: "))
    t0 = time.monotonic()
    f.proc.send_signal(signal.SIGTERM)
    assert f.proc.wait(timeout=30) == 0
    assert time.monotonic() - t0 < 20  # 1 s of grace, not the 40 s stream
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        list(lines)
    assert "grace period over, cutting 1 open request(s)" in f.stderr_text()
    f.stop()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and two CPUs")
def test_pin_workers_puts_each_worker_on_its_own_cpu(tmp_path):
    f = Fleet(tmp_path, "--pin-workers", "--target-tokens", "5")
    try:
        stats = f.stats_when(lambda s: len(s["workers"]) == 2)
        cpus = sorted(os.sched_getaffinity(0))
        pinned = {w["worker"]: os.sched_getaffinity(w["pid"]) for w in stats["workers"]}
        assert pinned == {0: {cpus[0]}, 1: {cpus[1]}}
        assert f.chat().status_code == 200
    finally:
        assert f.stop() == 0


def test_unpinned_workers_keep_every_cpu(fleet):
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity here")
    stats = fleet.stats_when(lambda s: len(s["workers"]) == 2)
    assert all(os.sched_getaffinity(w["pid"]) == os.sched_getaffinity(0) for w in stats["workers"])


def _realtime_allowed() -> bool:
    """Whether a process here may take SCHED_RR (root, CAP_SYS_NICE or RLIMIT_RTPRIO)."""
    probe = "import os; os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="needs Linux's scheduling policies")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_realtime_puts_every_serving_process_under_sched_rr(tmp_path, workers):
    """--realtime: each worker (or the one process) runs under SCHED_RR 1, the supervisor stays ordinary.
    Where the system refuses, every serving process says why once and serves at normal priority."""
    allowed = _realtime_allowed()
    f = Fleet(tmp_path, "--realtime", "--target-tokens", "5", workers=workers)
    try:
        if workers == "1":
            pids = [f.proc.pid]
        else:
            pids = [w["pid"] for w in f.stats_when(lambda s: len(s["workers"]) == 2)["workers"]]
            assert os.sched_getscheduler(f.proc.pid) == os.SCHED_OTHER
        want = os.SCHED_RR if allowed else os.SCHED_OTHER
        assert [os.sched_getscheduler(p) for p in pids] == [want] * len(pids)
        if allowed:
            assert [os.sched_getparam(p).sched_priority for p in pids] == [1] * len(pids)
            assert "--realtime" not in f.stderr_text()
        else:
            assert f.stderr_text().count("--realtime: not permitted") == len(pids)
        assert f.chat(stream=True).status_code == 200
    finally:
        assert f.stop() == 0
