"""llmsim against its Python peers in the same run: streamed chunks/s and timing fidelity under arrival.

The peers are GuideLLM's mock server (`guidellm mock-server`, Sanic) and
fakellm (`fakellm serve`, FastAPI on uvicorn). `--peers` pip-installs both into
a throw-away virtual environment (`--peer-venv DIR` keeps it there for the
next run); without it, only llmsim is measured. A peer that cannot be
installed or started is skipped with one line saying why.

(a) Throughput. Every server runs with zero delay and 100-token answers,
pinned to CPU 0 (taskset), and is warmed up. A load generator pinned to CPU 1
(gevent, raw keep-alive sockets) keeps 200 streaming POST /v1/chat/completions
in flight for a few seconds. It counts the content chunks actually received
(`data:` events whose delta has non-empty content), not 100 per stream: llmsim
writes chunks that are due together in one write, and servers differ in how
many chunks they send. Completion tokens/s are shown where the server reports
usage (`stream_options.include_usage`). Prints streams/s, chunks/s, both
processes' CPU, chunks per second of server CPU (the steadier figure when other
work takes part of CPU 0) and llmsim/peer ratios (goal >= 4x). A row whose
load generator used more than 95 % of its CPU is flagged: there the client,
not the server, set the figure.

(c) Timing fidelity under arrival. Every server runs with TTFT 100 ms, ITL
20 ms and 100 tokens in one process, pinned like (a). N streams arrive evenly
over one second. One client (llmsim.loadtest.transport: kernel receive
timestamps, SO_TIMESTAMPNS) stamps every content event; the lateness of chunk
i is its arrival minus (request sent + TTFT + i * ITL). The same client
measures every server, so its own error weighs on all of them alike. Prints
p50/p99/p99.9/max lateness per server and N, and the client's and server's CPU.

Peer settings. GuideLLM: `--ttft-ms 0 --itl-ms 0 --output-tokens 100` for (a),
`--ttft-ms 100 --itl-ms 20 --output-tokens 100` for (c). fakellm has no delay
option: it sleeps a fixed 10 ms (asyncio.sleep(0.01)) after every word and
sends its first word at once. Its answer is one configured rule of 100 words,
and the launcher here scales that one sleep: x0 for (a), x2 (20 ms) for (c).
Its first word still goes at once, so its deadlines are request sent +
i * 20 ms. Both peers run as shipped otherwise (their access logs are on, sent
to /dev/null); llmsim's is off by default.

All servers of a part are started together (pinned to CPU 0, idle while
another is measured) and measured in turn, `--rounds` times (default 3); the
ratios compare the medians. Machines are noisy: read the ratios, taken in one
run. Never fails.

    python bench/peers.py [--peers [--peer-venv DIR]] [--rounds 3] [--connections 200] [--seconds 5]
                          [--streams 100 250] [--only a|c]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field

TOKENS = 100
PEER_PACKAGES = ("guidellm", "fakellm")

LOAD = textwrap.dedent('''
    from gevent import monkey; monkey.patch_all()
    import json, re, socket, sys, time, gevent
    host, port, conns, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    body = sys.argv[5].encode()
    req = (b"POST /v1/chat/completions HTTP/1.1\\r\\nHost: b\\r\\nContent-Type: application/json\\r\\n"
           b"Content-Length: %d\\r\\n\\r\\n" % len(body)) + body
    content = re.compile(rb'"content": ?"(?!")')  # a content delta that is not empty
    usage = re.compile(rb'"completion_tokens": ?(\\d+)')
    st = {"responses": 0, "chunks": 0, "tokens": 0, "with_usage": 0, "errors": 0, "error": ""}
    end = time.monotonic() + seconds
    def worker():
        try:
            s = socket.create_connection((host, port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            st["errors"] += 1; st["error"] = str(e); return
        while time.monotonic() < end:
            s.sendall(req); parts = []; tail = b""; length = None; framed = False
            while True:
                data = s.recv(262144)
                if not data:
                    st["errors"] += 1; st["error"] = "connection closed"; return
                parts.append(data); tail = (tail + data)[-16:]
                if tail.endswith(b"\\r\\n0\\r\\n\\r\\n"):  # the last chunk of a chunked body
                    break
                if not framed:  # once the head is in: a chunked stream, or an error answer with a Content-Length
                    head, sep, rest = b"".join(parts).partition(b"\\r\\n\\r\\n")
                    framed = bool(sep)
                    if sep and b"chunked" not in head.lower():
                        m = re.search(rb"(?i)content-length: *(\\d+)", head)
                        length = len(head) + 4 + (int(m.group(1)) if m else 0)
                if length is not None and sum(map(len, parts)) >= length:
                    break
            resp = b"".join(parts)
            if not resp.startswith(b"HTTP/1.1 200"):
                st["errors"] += 1; st["error"] = resp[:60].decode("latin-1"); continue
            st["responses"] += 1
            st["chunks"] += len(content.findall(resp))
            m = usage.search(resp)
            if m:
                st["tokens"] += int(m.group(1)); st["with_usage"] += 1
    t0 = time.monotonic(); c0 = time.process_time()
    workers = [gevent.spawn(worker) for _ in range(conns)]
    gevent.joinall(workers, timeout=seconds + 60)
    if any(not w.dead for w in workers):
        st["errors"] += 1; st["error"] = "streams still open 60 s after the end"; gevent.killall(workers)
    wall = time.monotonic() - t0
    st["wall"] = wall; st["cpu"] = (time.process_time() - c0) / wall
    print(json.dumps(st), flush=True)
''')

CLIENT = textwrap.dedent('''
    from gevent import monkey; monkey.patch_all()
    import json, sys, time, gevent
    from llmsim.loadtest.transport import HttpConnection
    url, n, model, tokens = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    body = json.dumps({"model": model, "stream": True, "max_tokens": tokens,
                       "messages": [{"role": "user", "content": "go"}]}).encode()
    headers = {"Content-Type": "application/json"}
    streams, info = [], {"kernel_stamps": True, "unstamped_reads": 0, "errors": 0, "error": ""}
    def one(at):
        gevent.sleep(max(0.0, at - time.monotonic()))
        conn = HttpConnection(url, timeout=60)
        try:
            r = conn.request("POST", "/v1/chat/completions", headers, body)
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}")
            offsets = []
            for line, t in r.iter_lines():
                if line.startswith(b"data: {"):
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    if (choices[0].get("delta") or {}).get("content"):
                        offsets.append((t - r.t_sent) * 1000.0)
            streams.append(offsets)
        except Exception as e:
            info["errors"] += 1; info["error"] = str(e)
        finally:
            info["kernel_stamps"] = info["kernel_stamps"] and conn.kernel_stamps
            info["unstamped_reads"] += conn.unstamped_reads
            conn.close()
    t0 = time.monotonic() + 0.05; c0 = time.process_time()
    gevent.joinall([gevent.spawn(one, t0 + i / n) for i in range(n)])
    info["cpu"] = (time.process_time() - c0) / (time.monotonic() - t0)
    print(json.dumps({"streams": streams, **info}), flush=True)
''')

# fakellm sleeps a fixed asyncio.sleep(0.01) after every word and has no option for it: scale that sleep.
FAKELLM = textwrap.dedent('''
    import asyncio, sys, types
    import fakellm.streaming
    scale = float(sys.argv.pop(1)); sleep = asyncio.sleep
    fakellm.streaming.asyncio = types.SimpleNamespace(sleep=lambda d: sleep(d * scale))
    from fakellm.cli import main
    sys.argv[0] = "fakellm"
    main()
''')


@dataclass
class Server:
    name: str
    cmd: list[str]  # without the CPU pinning
    ttft_ms: float = 0.0  # the deadlines of (c): request sent + ttft_ms + i * itl_ms
    itl_ms: float = 0.0
    port: int = 0  # 0: the server picks one and prints its URL on its first line (llmsim)
    stderr: str = field(default="")


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if (os.cpu_count() or 1) > 1 and shutil.which("taskset") else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


def last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:160] if lines else ""


# --------------------------------------------------------------------------- the peers' virtual environment

def peer_versions(venv: str) -> dict[str, str]:
    """The installed version of each peer package in the venv (missing ones left out)."""
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        return {}
    code = ("import importlib.metadata as m, json, sys\nout = {}\nfor p in sys.argv[1:]:\n"
            "    try: out[p] = m.version(p)\n    except m.PackageNotFoundError: pass\nprint(json.dumps(out))")
    r = subprocess.run([py, "-c", code, *PEER_PACKAGES], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else {}


def install_peers(venv: str) -> dict[str, str]:
    """Create the venv if needed and pip-install what is missing; one line per package that failed."""
    have = peer_versions(venv)
    missing = [p for p in PEER_PACKAGES if p not in have]
    if not missing:
        return have
    if not os.path.exists(os.path.join(venv, "bin", "python")):
        r = subprocess.run([sys.executable, "-m", "venv", venv], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"peers: cannot create a virtual environment in {venv}: {(r.stderr or r.stdout).strip()[-200:]}")
            return {}
    print(f"peers: pip install {' '.join(missing)} into {venv} (a minute or two) ...", flush=True)
    for pkg in missing:
        t0 = time.monotonic()
        r = subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q",
                            "--disable-pip-version-check", pkg], capture_output=True, text=True)
        if r.returncode != 0:
            err = [ln for ln in (r.stderr or r.stdout).splitlines() if ln.strip() and "is ignored" not in ln]
            print(f"peers: {pkg} not installed (pip exit {r.returncode}): {err[-1][:200] if err else ''}")
        else:
            print(f"peers: {pkg} installed in {time.monotonic() - t0:.0f} s", flush=True)
    return peer_versions(venv)


# --------------------------------------------------------------------------- servers

def llmsim_server(mode: str, profiles_dir: str) -> Server:
    base = [sys.executable, "-m", "llmsim", "serve", "--host", "127.0.0.1", "--port", "0",
            "--target-tokens", str(TOKENS)]
    if mode == "a":
        return Server("llmsim", [*base, "--latency-profile", "instant"])
    return Server("llmsim", [*base, "--profiles-dir", profiles_dir], ttft_ms=100.0, itl_ms=20.0)


def peer_servers(mode: str, venv: str, versions: dict[str, str], work: str) -> list[Server]:
    out = []
    if "guidellm" in versions:
        port = free_port()
        delays = ["--ttft-ms", "0", "--itl-ms", "0"] if mode == "a" else ["--ttft-ms", "100", "--itl-ms", "20"]
        out.append(Server("guidellm", [os.path.join(venv, "bin", "guidellm"), "mock-server", "--host", "127.0.0.1",
                                       "--port", str(port), *delays, "--output-tokens", str(TOKENS)],
                          ttft_ms=0.0 if mode == "a" else 100.0, itl_ms=0.0 if mode == "a" else 20.0, port=port))
    if "fakellm" in versions:
        port = free_port()
        config = os.path.join(work, "fakellm.yaml")
        with open(config, "w") as f:
            words = " ".join(f"w{i}" for i in range(TOKENS))
            f.write(f'version: 1\nrules:\n  - name: bench\n    respond:\n      content: "{words}"\n')
        launcher = os.path.join(work, "fakellm_launch.py")
        with open(launcher, "w") as f:
            f.write(FAKELLM)
        scale = "0" if mode == "a" else "2"
        out.append(Server("fakellm", [os.path.join(venv, "bin", "python"), launcher, scale, "serve",
                                      "--host", "127.0.0.1", "--port", str(port), "--config", config],
                          ttft_ms=0.0, itl_ms=0.0 if mode == "a" else 20.0, port=port))
    return out


def start(server: Server, work: str) -> subprocess.Popen | None:
    """Start the server pinned to CPU 0 and wait until it accepts connections; None (and one line) if not."""
    server.stderr = os.path.join(work, f"{server.name}.stderr")
    err = open(server.stderr, "w")
    try:
        proc = subprocess.Popen([*pin(0), *server.cmd], stdout=subprocess.PIPE if server.port == 0 else
                                subprocess.DEVNULL, stderr=err, text=True)
    except OSError as e:
        print(f"{server.name}: cannot start: {e}")
        return None
    finally:
        err.close()
    if server.port == 0:
        m = re.search(r"http://[\d.]+:(\d+)", proc.stdout.readline())  # type: ignore[union-attr]
        if m:
            server.port = int(m.group(1))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and server.port:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.2)
    why = f"exited with {proc.returncode}" if proc.poll() is not None else "did not listen within 180 s"
    print(f"{server.name}: not measured, the server {why}: {last_line(server.stderr)}")
    stop(proc)
    return None


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- (a) throughput

def run_load(port: int, conns: int, seconds: float, pid: int) -> dict:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "go"}], "max_tokens": TOKENS,
            "stream": True, "stream_options": {"include_usage": True}}
    c0 = cpu_seconds(pid)
    r = subprocess.run([*pin(1), sys.executable, "-c", LOAD, "127.0.0.1", str(port), str(conns), str(seconds),
                        json.dumps(body, separators=(",", ":"))], capture_output=True, text=True)
    if r.returncode != 0:
        return {"responses": 0, "errors": 1, "error": last_line_of(r.stderr)}
    st = json.loads(r.stdout)
    st["server_cpu"] = (cpu_seconds(pid) - c0) / st["wall"]  # the load's own wall: not its interpreter's start
    return st


def last_line_of(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


def start_all(servers: list[Server], work: str) -> list[tuple[Server, subprocess.Popen]]:
    """Start every server (all pinned to CPU 0; the idle ones cost nothing), skipping those that fail."""
    running = []
    for server in servers:
        proc = start(server, work)
        if proc is not None:
            running.append((server, proc))
    return running


def median(values: list[float]) -> float:
    s = sorted(values)
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2


def throughput(servers: list[Server], conns: int, seconds: float, rounds: int, work: str) -> None:
    print(f"\n(a) throughput: zero delay, {TOKENS}-token streams, {conns} concurrent keep-alive streams for "
          f"{seconds:g} s; server on CPU 0, load generator on CPU 1"
          + (f"; {rounds} rounds, the servers in turn" if rounds > 1 else ""))
    print(f"{'server':10} {'streams/s':>10} {'chunks/s':>10} {'chunks/stream':>13} {'tokens/s':>10} "
          f"{'server CPU':>10} {'chunks/CPU-s':>12} {'load CPU':>9}")
    results: dict[str, list[dict]] = {}
    running = start_all(servers, work)
    try:
        for server, proc in running:
            run_load(server.port, 20, 1.0, proc.pid)  # warm up
        for _ in range(rounds):
            for server, proc in running:
                r = run_load(server.port, conns, seconds, proc.pid)
                if not r.get("responses"):
                    print(f"{server.name:10} no complete stream ({r.get('errors', 0)} errors: {r.get('error', '')})")
                    continue
                wall = r["wall"]
                r["streams_s"], r["chunks_s"] = r["responses"] / wall, r["chunks"] / wall
                r["per_cpu"] = r["chunks_s"] / max(r["server_cpu"], 1e-9)
                tokens = f"{r['tokens'] / wall:10,.0f}" if r["with_usage"] == r["responses"] else f"{'-':>10}"
                flag = "  LOAD GENERATOR SATURATED: the client set this figure" if r["cpu"] > 0.95 else ""
                errors = f"  ({r['errors']} errors: {r['error']})" if r["errors"] else ""
                print(f"{server.name:10} {r['streams_s']:10,.0f} {r['chunks_s']:10,.0f} "
                      f"{r['chunks'] / r['responses']:13.1f} {tokens} {r['server_cpu']:10.0%} {r['per_cpu']:12,.0f} "
                      f"{r['cpu']:9.0%}{flag}{errors}", flush=True)
                results.setdefault(server.name, []).append(r)
    finally:
        for _, proc in running:
            stop(proc)
    rows = [r for rs in results.values() for r in rs]
    busiest = max((r["cpu"] for r in rows), default=0.0)
    verdict = ("above 95 % in a flagged row: that row is a lower bound" if busiest > 0.95 else
               "below 95 % in every row: the servers, not the load generator, set these figures")
    print(f"load generator CPU at most {busiest:.0%} of its core, {verdict}")
    if any(r["server_cpu"] < 0.85 for r in rows):
        print("a server below 85 % CPU was not given its whole core (other work on the machine?): "
              "chunks/CPU-s is the steadier figure then")
    med = {name: {k: median([r[k] for r in rs]) for k in ("chunks_s", "streams_s", "per_cpu")}
           for name, rs in results.items()}
    base = med.get("llmsim")
    of = f" (medians of {rounds} rounds)" if rounds > 1 else ""
    for name, m in med.items():
        if base and name != "llmsim":
            ratio = base["chunks_s"] / m["chunks_s"]
            print(f"llmsim/{name}{of}: {ratio:.1f}x chunks/s, {base['streams_s'] / m['streams_s']:.1f}x streams/s, "
                  f"{base['per_cpu'] / m['per_cpu']:.1f}x chunks per server CPU-second "
                  f"(goal >= 4x chunks/s: {'met' if ratio >= 4 else 'not met'})")


# --------------------------------------------------------------------------- (c) fidelity

def run_client(server: Server, proc: subprocess.Popen, n: int) -> dict:
    client = [*pin(1), sys.executable, "-c", CLIENT, f"http://127.0.0.1:{server.port}", str(n), "bench-arrival",
              str(TOKENS)]
    c0, t0 = cpu_seconds(proc.pid), time.monotonic()
    r = subprocess.run(client, capture_output=True, text=True)
    server_cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
    if r.returncode != 0:
        return {"failed": last_line_of(r.stderr)}
    out = json.loads(r.stdout)
    out["server_cpu"] = server_cpu
    out["late"] = [off - (server.ttft_ms + i * server.itl_ms) for s in out["streams"] for i, off in enumerate(s)]
    return out


def fidelity(servers: list[Server], counts: list[int], rounds: int, work: str) -> None:
    print(f"\n(c) fidelity: TTFT 100 ms, ITL 20 ms, {TOKENS} tokens, N streams arriving evenly over 1 s; one server "
          "process on CPU 0, the client on CPU 1" + (f"; {rounds} rounds, the servers in turn" if rounds > 1 else ""))
    print("lateness of each content chunk = kernel receive time - (request sent + TTFT + i*ITL); the same client "
          "measures every server")
    print(f"{'server':10} {'N':>5} {'chunks':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8} "
          f"{'server CPU':>10} {'client CPU':>10}")
    stats: dict[tuple[int, str], list[tuple[float, float, float, float]]] = {}
    running = start_all(servers, work)
    try:
        for server, proc in running:
            run_client(server, proc, 5)  # warm up: 5 streams
        for n in counts:
            for _ in range(rounds):
                for server, proc in running:
                    time.sleep(0.5)
                    out = run_client(server, proc, n)
                    if "failed" in out:
                        print(f"{server.name:10} {n:>5} client failed: {out['failed']}")
                        continue
                    late = out["late"]
                    if not late:
                        print(f"{server.name:10} {n:>5} no content chunk came back "
                              f"({out['errors']} errors: {out['error']})")
                        continue
                    notes = []
                    if out["errors"]:
                        notes.append(f"{out['errors']} streams failed: {out['error']}")
                    if len(late) != len(out["streams"]) * TOKENS:
                        notes.append(f"{len(late) / max(1, len(out['streams'])):.1f} chunks/stream")
                    if not out["kernel_stamps"]:
                        notes.append("user-space stamps")
                    if out["cpu"] > 0.95:
                        notes.append("CLIENT SATURATED")
                    row = (pct(late, 50), pct(late, 99), pct(late, 99.9), max(late))
                    print(f"{server.name:10} {n:>5} {len(late):>7} {row[0]:>8.2f} {row[1]:>8.2f} {row[2]:>9.2f} "
                          f"{row[3]:>8.2f} {out['server_cpu']:>10.0%} {out['cpu']:>10.0%}"
                          + (f"  ({'; '.join(notes)})" if notes else ""), flush=True)
                    stats.setdefault((n, server.name), []).append(row)
    finally:
        for _, proc in running:
            stop(proc)
    if rounds > 1 and stats:
        print(f"median of {rounds} rounds:")
        for (n, name), rows in stats.items():
            m = [median([r[i] for r in rows]) for i in range(4)]
            print(f"{name:10} {n:>5} {'':>7} {m[0]:>8.2f} {m[1]:>8.2f} {m[2]:>9.2f} {m[3]:>8.2f}")
    for n in counts:
        if (n, "llmsim") not in stats:
            continue
        ours = median([r[1] for r in stats[(n, "llmsim")]])
        for (n2, name), rows in stats.items():
            if n2 == n and name != "llmsim":
                theirs = median([r[1] for r in rows])
                print(f"N={n}: p99 lateness llmsim {ours:.2f} ms, {name} {theirs:.2f} ms: "
                      f"llmsim {'better' if ours < theirs else 'not better'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", action="store_true", help="also measure GuideLLM's mock server and fakellm, "
                    "pip-installed into a throw-away virtual environment")
    ap.add_argument("--peer-venv", metavar="DIR", help="with --peers: keep the peers' virtual environment in DIR "
                    "and reuse it next time")
    ap.add_argument("--connections", type=int, default=200, help="(a) concurrent streams")
    ap.add_argument("--seconds", type=float, default=5.0, help="(a) seconds of load per server")
    ap.add_argument("--streams", type=int, nargs="+", default=[100, 250], help="(c) arrivals over one second")
    ap.add_argument("--rounds", type=int, default=3, help="measure every server this many times, in turn, and "
                    "compare the medians (steadier on a busy machine)")
    ap.add_argument("--only", choices=["a", "c"], help="run one part only")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="llmsim-peers-")
    profiles_dir = os.path.join(work, "profiles")  # llmsim reads every YAML in it: nothing else goes there
    os.mkdir(profiles_dir)
    with open(os.path.join(profiles_dir, "arrival.yaml"), "w") as f:
        f.write("profiles:\n  - name: bench-arrival\n    models: [bench-arrival]\n"
                "    ttft: {distribution: constant, mean_ms: 100}\n    itl: {distribution: constant, mean_ms: 20}\n")
    venv = args.peer_venv or os.path.join(work, "venv")
    la = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} at the start"
          + ("" if pin(0) else "; no pinning (taskset or a second CPU missing)"))
    versions: dict[str, str] = {}
    if args.peers:
        versions = install_peers(os.path.abspath(venv))
        print("peers: " + (", ".join(f"{k} {v}" for k, v in sorted(versions.items())) if versions else
                           "none could be installed; measuring llmsim only"))
    else:
        print("llmsim only; add --peers to measure GuideLLM's mock server and fakellm in the same run")
    try:
        if args.only != "c":
            throughput([llmsim_server("a", work), *peer_servers("a", os.path.abspath(venv), versions, work)],
                       args.connections, args.seconds, args.rounds, work)
        if args.only != "a":
            fidelity([llmsim_server("c", profiles_dir), *peer_servers("c", os.path.abspath(venv), versions, work)],
                     args.streams, args.rounds, work)
    finally:
        la = os.getloadavg()
        print(f"\nload average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} at the end")
        shutil.rmtree(work, ignore_errors=True)  # with the throw-away venv unless --peer-venv put it elsewhere


if __name__ == "__main__":
    main()
