"""`llmsim serve --workers N`: N server processes on one port, each one replica of the deployment.

The supervisor (the `llmsim serve` process itself) serves nothing. It binds
the port once without listening, which keeps the port reserved and resolves
`--port 0`. Then it starts N workers, each a fresh `python -m llmsim serve`
process (no gevent hub or state inherited; the environment variables
LLMSIM_WORKER_DIR and LLMSIM_WORKER_INDEX make it a worker). Each worker
binds and listens on the same port with SO_REUSEPORT, so the kernel spreads
new connections over the workers.

A worker is like an inference-server pod behind a load balancer: its own
batch slots and queue, its own rate-limit buckets, its own fault-injection
random numbers. With N workers the deployment holds N × max_concurrent
streams. Runtime changes (POST /llmsim/config) reach every worker through the
shared directory within about half a second.

- A worker that dies is restarted with the same index (one line on stderr).
- SIGTERM or SIGINT on the supervisor: every worker stops accepting, lets its
  open requests finish for up to --grace-period seconds, and exits; then the
  supervisor exits 0. A second signal ends the workers at once.
- Every answer carries `x-llmsim-worker: <index>`; `/llmsim/stats` and
  `/metrics` report totals over the workers and a per-worker breakdown (see
  workerstats.py).
"""

from __future__ import annotations

import errno
import gc
import io
import json
import math
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import ServerConfig
from .cpu import pin_to_cpu, run_realtime
from .workerstats import (
    PROMETHEUS_DIR,
    SNAPSHOT_PERIOD_S,
    WORKER_DIR_ENV,
    WORKER_INDEX_ENV,
    Snapshot,
    cluster_metrics,
    cluster_stats,
    json_bytes,
    read_json,
    read_retired,
    read_snapshots,
    replace_file,
    retire,
    snapshot_path,
    write_json,
)

CONFIG_FILE = "config.pickle"
RUNTIME_FILE = "runtime.json"
STARTUP_TIMEOUT_S = 60.0
RESTART_BACKOFF_S = 1.0
"""A worker that dies within its first seconds waits this long before it is started again."""

StartResponse = Callable[..., Any]


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a container's limit)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _cgroup_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by the cgroup's CFS quota (v2 cpu.max, else v1), or None when unlimited."""
    try:
        quota, period = Path(root, "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q = int(Path(root, "cpu", "cpu.cfs_quota_us").read_text())
        p = int(Path(root, "cpu", "cpu.cfs_period_us").read_text())
        return q / p if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def worker_count(setting: int | str) -> int:
    return available_cores() if setting == "auto" else int(setting)


def is_worker_process() -> bool:
    return bool(os.environ.get(WORKER_DIR_ENV)) and bool(os.environ.get(WORKER_INDEX_ENV))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _say(line: str) -> None:
    print(f"llmsim: {line}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the port

def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) the port the workers will share: resolves port 0 and keeps the port ours.

    A first bind without SO_REUSEPORT fails with EADDRINUSE when anything
    already listens there, so a second `llmsim serve --workers` on the same
    port stops at start-up instead of joining the first one's workers.
    """
    probe = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = probe.getsockname()[1]
    finally:
        probe.close()
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # no SO_REUSEADDR: nobody else may bind
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def shared_listener(host: str, port: int) -> socket.socket:
    """A worker's listening socket: as server.make_listener, plus SO_REUSEPORT."""
    from .server import make_listener

    return make_listener(host, port, reuse_port=True)


# --------------------------------------------------------------------------- the supervisor

class Supervisor:
    """Starts, watches, restarts and stops the workers (runs in the `llmsim serve` process)."""

    def __init__(self, config: ServerConfig, count: int) -> None:
        self.config, self.count = config, count
        self.procs: dict[int, Any] = {}
        self.started_at: dict[int, float] = {}
        self.restarts = 0
        self.dir = ""

    def _env(self, index: int) -> dict[str, str]:
        env = {**os.environ, WORKER_DIR_ENV: self.dir, WORKER_INDEX_ENV: str(index),
               "PROMETHEUS_MULTIPROC_DIR": str(Path(self.dir, PROMETHEUS_DIR))}
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _spawn(self, index: int) -> None:
        from gevent import subprocess

        # A process group of its own: a terminal's Ctrl-C reaches the supervisor, which decides.
        self.procs[index] = subprocess.Popen([sys.executable, "-m", "llmsim", "serve"], env=self._env(index),
                                             stdin=subprocess.DEVNULL, process_group=0)
        self.started_at[index] = time.monotonic()

    def _wait_ready(self, indexes: Iterable[int], stop: Any) -> int | None:
        """Wait for the workers' first snapshots; an exit code if one of them stopped instead, or if llmsim
        was asked to stop meanwhile (0)."""
        import gevent

        pending = set(indexes)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while pending:
            if stop.is_set():
                return 0
            for i in list(pending):
                if snapshot_path(self.dir, i).exists():
                    pending.discard(i)
                elif self.procs[i].poll() is not None:
                    return self.procs[i].returncode or 2
            if time.monotonic() > deadline:
                _say(f"worker {min(pending)} did not start within {STARTUP_TIMEOUT_S:g} s")
                return 2
            gevent.sleep(0.05)
        return None

    def _describe(self) -> str:
        doc = read_json(snapshot_path(self.dir, 0)) or {}
        return str(doc.get("describe") or "")

    def run(self) -> int:
        import gevent
        import gevent.event

        host = self.config.host
        reservation = reserve_port(host, self.config.port)
        port = reservation.getsockname()[1]
        # tmpfs where there is one: a snapshot is rewritten every half second, and a disk write costs the
        # workers' event loops several times more.
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.dir = tempfile.mkdtemp(prefix="llmsim-workers-", dir=shm)
        try:
            Path(self.dir, PROMETHEUS_DIR).mkdir()
            Path(self.dir, CONFIG_FILE).write_bytes(pickle.dumps(replace(self.config, port=port)))
            stop = gevent.event.Event()
            signals = {"n": 0}

            def _on_signal(*_: Any) -> None:
                signals["n"] += 1
                stop.set()
                if signals["n"] > 1:
                    self._kill_all(signal.SIGKILL)

            gevent.signal_handler(signal.SIGTERM, _on_signal)
            gevent.signal_handler(signal.SIGINT, _on_signal)
            # Worker 0 first: a bad setting is reported once, by it, before the others start.
            self._spawn(0)
            code = self._wait_ready([0], stop)
            if code is None and self.count > 1:
                for i in range(1, self.count):
                    self._spawn(i)
                code = self._wait_ready(range(1, self.count), stop)
            if code is not None:
                self._kill_all(signal.SIGTERM if code == 0 else signal.SIGKILL)
                if not self._reap_all(10.0):
                    self._kill_all(signal.SIGKILL)
                    self._reap_all(5.0)
                return code
            url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
            print(f"llmsim serving on {url} ({self._describe()}; {self.count} workers)", flush=True)
            while not stop.wait(0.2):
                self._restart_dead()
            self._kill_all(signal.SIGTERM)
            if not self._reap_all(self.config.grace_period + 10.0):
                _say("workers still running after the grace period: killing them")
                self._kill_all(signal.SIGKILL)
                self._reap_all(5.0)
            print("llmsim stopped", file=sys.stderr, flush=True)
            return 0
        finally:
            reservation.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _restart_dead(self) -> None:
        import gevent

        for index, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            lived = time.monotonic() - self.started_at[index]
            how = f"killed by {_signal_name(-code)}" if code < 0 else f"exit code {code}"
            self._retire(index, proc.pid)
            if lived < 5.0:
                gevent.sleep(RESTART_BACKOFF_S)
            self._spawn(index)
            self.restarts += 1
            _say(f"worker {index} (pid {proc.pid}) stopped ({how}); restarted as pid {self.procs[index].pid}")

    def _retire(self, index: int, pid: int) -> None:
        retire(self.dir, index)
        try:  # prometheus_client's multiprocess mode: drop the dead process's live gauges
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, str(Path(self.dir, PROMETHEUS_DIR)))
        except Exception:  # noqa: BLE001 - not installed, or nothing to mark
            pass

    def _kill_all(self, sig: int) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    proc.send_signal(sig)
                except OSError:  # pragma: no cover - already gone
                    pass

    def _reap_all(self, timeout: float) -> bool:
        import gevent

        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.procs.values()):
            if time.monotonic() > deadline:
                return False
            gevent.sleep(0.05)
        return True


def supervise(config: ServerConfig) -> int:
    return Supervisor(config, worker_count(config.workers)).run()


# --------------------------------------------------------------------------- a worker

class RuntimeSync:
    """POST /llmsim/config answered by one worker reaches the others through `runtime.json`.

    The file holds every change so far (`changes`, each key replacing the last
    value, as apply() does) and the newest one (`last`, numbered `seq`). A
    worker one change behind applies `last`; one further behind, or new,
    applies `changes`.
    """

    def __init__(self, directory: str, state: Any) -> None:
        self.path = Path(directory, RUNTIME_FILE)
        self.lock = Path(directory, RUNTIME_FILE + ".lock")
        self.state = state
        self.applied = 0
        self.seen: int | None = None

    def published(self, changes: dict) -> None:
        """This worker has just applied `changes`: tell the others."""
        import fcntl  # here, not at the top: `llmsim serve` without --workers imports this module too

        with open(self.lock, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            doc = read_json(self.path) or {"seq": 0, "changes": {}}
            seq = int(doc.get("seq", 0)) + 1
            write_json(self.path, {"seq": seq, "origin": os.getpid(), "changes": {**doc.get("changes", {}),
                                                                                  **changes}, "last": changes})
            if self.applied == seq - 1:
                self.applied = seq
        self.seen = None

    def poll(self) -> None:
        from ..profiles import ProfileError
        from .admin import SOURCE

        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self.seen:
            return
        self.seen = mtime
        doc = read_json(self.path)
        if not doc or int(doc.get("seq", 0)) <= self.applied:
            return
        seq = int(doc["seq"])
        changes = doc.get("last") if seq == self.applied + 1 else doc.get("changes")
        try:
            self.state.apply(changes or {}, SOURCE)
        except ProfileError as e:  # validated by the worker that took the POST; should not happen
            _say(f"worker {os.environ.get(WORKER_INDEX_ENV)}: could not apply a runtime change: {e}")
        self.applied = seq


def local_body(app: Any, path: str) -> bytes | None:
    """What `GET path` renders in this process, without counting as a request or passing through hooks."""
    from werkzeug.exceptions import HTTPException

    try:
        endpoint, args = app.url_map.bind("localhost").match(path, "GET")
    except HTTPException:
        return None
    with app.test_request_context(path):
        return app.make_response(app.view_functions[endpoint](**args)).get_data()


class Worker:
    """One worker process: its server, its snapshots, its drain."""

    def __init__(self, directory: str, index: int) -> None:
        from .handlers import create_app
        from .server import NoDelayWSGIServer, describe
        from .state import AppState

        self.dir, self.index = directory, index
        self.config: ServerConfig = pickle.loads(Path(directory, CONFIG_FILE).read_bytes())
        if self.config.seed is not None:  # replicas draw different numbers; each is reproducible on its own
            self.config = replace(self.config, seed=self.config.seed + index)
        self.state = AppState(self.config)
        self.description = describe(self.state)
        self.runtime = RuntimeSync(directory, self.state)
        self.runtime.poll()  # a restarted worker takes the runtime changes made so far
        self.app = create_app(self.state)
        self.draining = False
        self.in_flight = 0
        self.activity = 0  # responses started + finished (see publish)
        self._published_at_activity = -1
        self.started = time.time()
        self.parent = os.getppid()
        listener = shared_listener(self.config.host, self.config.port)
        self.server = NoDelayWSGIServer(listener, WorkerApp(self), log="default" if self.config.access_log else None,
                                        error_log="default", handler_class=worker_handler(NoDelayWSGIServer, self))
        gc.freeze()  # as build_server: what start-up built is never walked by a collection again

    def snapshot(self) -> Snapshot:
        stats = local_body(self.app, "/llmsim/stats")
        metrics = local_body(self.app, "/metrics")
        return Snapshot(self.index, os.getpid(), self.started, time.time(),
                        json.loads(stats) if stats else {}, metrics.decode() if metrics else "")

    def publish(self, force: bool = False) -> None:
        """Rewrite this worker's snapshot, unless it has been idle since the last one (no request open,
        none started or finished: nothing can have changed).

        Rendering runs on the event loop, writing the streams that fall due between its steps
        (run_due); only the file write goes to gevent's threadpool. The JSON is encoded here, not
        there: the thread would hold the interpreter lock for the whole encoding, in C, and the
        loop would wait for it.
        """
        import gevent

        if not force and not self.open_requests() and self.activity == self._published_at_activity:
            return
        self._published_at_activity = self.activity
        data = json_bytes({**self.snapshot().to_dict(), "describe": self.description})
        gevent.get_hub().threadpool.apply(replace_file, (snapshot_path(self.dir, self.index), data))

    def run(self) -> int:
        import gevent
        import gevent.event

        stop = gevent.event.Event()
        gevent.signal_handler(signal.SIGTERM, stop.set)
        gevent.signal_handler(signal.SIGINT, stop.set)
        self.server.start()
        self.publish(force=True)  # the supervisor waits for this file
        while not stop.wait(SNAPSHOT_PERIOD_S):
            if os.getppid() != self.parent:  # the supervisor is gone
                break
            self.runtime.poll()
            self.publish()
        self.drain()
        self.publish(force=True)
        return 0

    def drain(self) -> None:
        import gevent

        self.draining = True
        self.server.close()  # stop accepting; open connections carry on
        deadline = time.monotonic() + self.config.grace_period
        while self.open_requests() and time.monotonic() < deadline:
            gevent.sleep(0.02)
        if self.open_requests():
            _say(f"worker {self.index}: grace period over, cutting {self.open_requests()} open request(s)")

    def open_requests(self) -> int:
        """Requests being handled, and streams the event loop writes (they have no handler running)."""
        return self.in_flight + len(self.server.detached)


def worker_handler(server_class: Any, worker: Worker) -> type:
    """The server's handler, plus: `x-llmsim-worker` on every answer, in-flight counting for the drain,
    and `Connection: close` once draining. Nothing wraps the response body."""
    base = server_class.handler_class
    tag = str(worker.index)

    class WorkerHandler(base):  # type: ignore[valid-type, misc]
        def start_response(self, status: str, headers: list, exc_info: Any = None) -> Any:
            headers = [*headers, ("x-llmsim-worker", tag)]
            if worker.draining:
                headers.append(("Connection", "close"))
            return super().start_response(status, headers, exc_info)

        def send_answer(self, status: str, headers: list, body: bytes) -> bool:
            if worker.draining:  # Connection: close is the server's to add: start_response does
                return False
            return super().send_answer(status, [*headers, ("x-llmsim-worker", tag)], body)

        def handle_one_response(self) -> Any:
            worker.in_flight += 1
            worker.activity += 1
            try:
                return super().handle_one_response()
            finally:
                worker.in_flight -= 1
                worker.activity += 1
                if worker.draining:
                    self.close_connection = True

    return WorkerHandler


class WorkerApp:
    """WSGI middleware of a worker: merged stats and metrics, runtime changes shared, /health while draining.

    Every other request goes to the Flask app untouched.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.app = worker.app

    def __call__(self, environ: dict, start_response: StartResponse) -> Any:
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", "")
        if method == "GET" and path in ("/llmsim/stats", "/metrics"):
            return self._merged(environ, start_response, path)
        if method == "POST" and path == "/llmsim/config":
            return self._config(environ, start_response)
        if path == "/health" and self.worker.draining:
            body = b'{"status":"draining"}'
            start_response("503 SERVICE UNAVAILABLE", [("Content-Type", "application/json"),
                                                       ("Content-Length", str(len(body)))])
            return [body]
        return self.app(environ, start_response)

    def _inner(self, environ: dict) -> tuple[str, list, bytes]:
        seen: dict[str, Any] = {}

        def sr(status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
            seen["status"], seen["headers"] = status, headers
            return lambda _data: None

        result = self.app(environ, sr)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return seen["status"], seen["headers"], body

    @staticmethod
    def _answer(start_response: StartResponse, status: str, headers: list, body: bytes) -> list[bytes]:
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [body]

    def _merged(self, environ: dict, start_response: StartResponse, path: str) -> list[bytes]:
        from ..precise import run_due

        status, headers, body = self._inner(environ)
        if status.startswith("200"):
            w = self.worker
            own = Snapshot(w.index, os.getpid(), w.started, time.time())
            others = [s for s in read_snapshots(w.dir) if s.index != w.index]
            retired = read_retired(w.dir)
            if path == "/metrics":
                own.stats = json.loads(local_body(w.app, "/llmsim/stats") or b"{}")
                body = cluster_metrics(body.decode(), own, others, retired, run_due).encode()
            else:
                own.stats = json.loads(body)
                body = json.dumps(cluster_stats(own, others, retired), separators=(",", ":")).encode()
        return self._answer(start_response, status, headers, body)

    def _config(self, environ: dict, start_response: StartResponse) -> list[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        raw = environ["wsgi.input"].read(length) if length > 0 else b""
        environ = {**environ, "wsgi.input": io.BytesIO(raw), "CONTENT_LENGTH": str(len(raw))}
        status, headers, body = self._inner(environ)
        if status.startswith("200"):
            try:
                changes = json.loads(raw)
            except ValueError:  # pragma: no cover - the app accepted it, so it parsed
                changes = None
            if isinstance(changes, dict):
                self.worker.runtime.published(changes)
        return self._answer(start_response, status, headers, body)


def run_worker() -> int:
    """The body of a worker process (LLMSIM_WORKER_DIR and LLMSIM_WORKER_INDEX are set)."""
    directory, index = os.environ[WORKER_DIR_ENV], int(os.environ[WORKER_INDEX_ENV])
    try:
        worker = Worker(directory, index)
        if worker.config.pin_workers and pin_to_cpu(index) is None:
            _say(f"worker {index}: --pin-workers: this system cannot pin a process to a CPU; running unpinned")
        if worker.config.realtime and (why := run_realtime()) is not None:
            _say(f"worker {index}: --realtime: {why}; running at normal priority")
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            _say(f"worker {index}: cannot listen: {e.strerror}")
            return 2
        raise
    return worker.run()
