"""Server memory per open stream: RSS of one `llmsim serve` holding N slow streams, minus its idle RSS.

One server process (its RLIMIT_NOFILE raised to the hard limit) runs a
temporary profile with TTFT 100 ms and a slow ITL (100 tokens 3 s apart by
default), so every stream stays open, and a load model with room for every
stream (all decode, none queue). After a warm-up its idle memory is read.
Then a separate gevent raw-socket client opens streamed chat completions in
steps (1,000, 5,000 and 10,000 by default), waits until every stream has had
its first content chunk, checks with GET /llmsim/stats that they are active
streams, and the server's memory is read again: VmRSS from /proc/PID/status,
PSS and USS (private pages) from /proc/PID/smaps_rollup. It prints
(RSS - idle RSS) / N in KB (1 KB = 1,024 bytes) and the slope between steps,
against the goal (<= 12 KB). Kernel socket buffers are not RSS and are not
counted. Never fails: with a hard descriptor limit too low for a step, it
measures as many streams as fit.

`--src` runs the server from another checkout (two versions, one client);
`--prompt-chars` sends longer prompts; `--hold` reads once more after the
streams went on for a while; `--json` holds non-streamed requests instead.
bench/memory_breakdown.py shows where the memory goes.

    python bench/memory.py [--streams 1000 5000 10000] [--tokens 100] [--itl-ms 3000] [--prompt-chars N]
                           [--hold SECONDS] [--json] [--src CHECKOUT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request

GOAL_KB = 12.0
SPARE_FDS = 64  # the server's listener, timerfd, pipes, files

CLIENT = textwrap.dedent('''
    from gevent import monkey; monkey.patch_all()
    import json, socket, sys, gevent
    from gevent.lock import Semaphore
    from gevent.socket import wait_read
    host, port, model, tokens = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    stream = sys.argv[5] == "stream" if len(sys.argv) > 5 else True
    prompt = ("Tell me about memory. " * (1 + int(sys.argv[6]) // 22))[:int(sys.argv[6])] if len(sys.argv) > 6 else ""
    body = json.dumps({"model": model, "stream": stream, "max_tokens": tokens,
                       "messages": [{"role": "user", "content": prompt or "Tell me about memory."}]}).encode()
    req = (b"POST /v1/chat/completions HTTP/1.1\\r\\nHost: b\\r\\nContent-Type: application/json\\r\\n"
           b"Content-Length: %d\\r\\n\\r\\n" % len(body)) + body
    opening = Semaphore(200)  # connections between connect() and their first content chunk
    started = [0, 0]  # first chunks received, failures
    socks = []
    def one(i):
        with opening:
            try:
                s = socket.socket()
                if i >= 20000:  # beyond one source address's ephemeral ports
                    s.bind(("127.0.0.%d" % (2 + i // 20000), 0))
                s.connect((host, port))
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(req)
                buf = b""
                while stream and b'{"content":' not in buf:  # the role chunk says {"role":..., a token {"content":...
                    d = s.recv(65536)
                    if not d:
                        raise ConnectionError("closed before the first token")
                    buf += d
            except OSError as e:
                started[1] += 1
                print("stream %d failed: %s" % (i, e), file=sys.stderr, flush=True)
                return
            started[0] += 1
            socks.append(s)
        while True:  # keep reading, as a client would
            try:
                if not s.recv(65536):
                    return
            except OSError:
                return
    opened = 0
    while True:
        wait_read(0)
        line = sys.stdin.readline().strip()
        if not line or line == "quit":
            break
        target = int(line)
        gs = [gevent.spawn(one, i) for i in range(opened, target)]
        opened = max(opened, target)
        while started[0] + started[1] < opened:
            gevent.sleep(0.05)
        print("ready %d %d" % tuple(started), flush=True)
    for s in socks:
        s.close()
''')


def profile_yaml(itl_ms: float, slots: int) -> str:
    return (
        "profiles:\n"
        "  - name: bench-memory\n    models: [bench-memory]\n"
        "    ttft: {distribution: constant, mean_ms: 100}\n"
        f"    itl: {{distribution: constant, mean_ms: {itl_ms:g}}}\n"
        f"    capacity: {{max_concurrent: {slots}, queue_limit: 0, slowdown_at_full: 1.0}}\n"
        "  - name: bench-memory-warm\n    models: [bench-memory-warm]\n"
        "    ttft: {distribution: constant, mean_ms: 1}\n    itl: {distribution: constant, mean_ms: 0}\n"
        f"    capacity: {{max_concurrent: {slots}, queue_limit: 0, slowdown_at_full: 1.0}}\n")


def raise_nofile() -> int:
    """Raise this process's descriptor limit to its hard limit; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS, and Pss and USS (Private_Clean + Private_Dirty) when smaps_rollup exists, in KB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in f if ":" in ln and "kB" in ln)}
        out["pss"] = fields.get("Pss", 0)
        out["uss"] = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    except OSError:
        pass
    return out


def request(url: str, body: dict | None = None, timeout: float = 60.0) -> bytes:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=[1000, 5000, 10000],
                    help="open streams at each measurement, ascending")
    ap.add_argument("--tokens", type=int, default=100, help="output tokens per stream (max_tokens)")
    ap.add_argument("--itl-ms", type=float, default=3000.0, help="the profile's constant ITL")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds to wait before each reading")
    ap.add_argument("--src", default=None, help="run the server from this checkout (its PYTHONPATH)")
    ap.add_argument("--prompt-chars", type=int, default=0, help="each request's prompt length (default: one line)")
    ap.add_argument("--hold", type=float, default=0.0,
                    help="after the last step, read once more this many seconds later (the streams go on)")
    ap.add_argument("--json", action="store_true",
                    help="non-streamed requests instead of streams (memory per open request waiting for its answer)")
    args = ap.parse_args()
    steps = sorted(set(args.streams))

    limit = raise_nofile()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    fit = limit - SPARE_FDS
    if steps[-1] > fit:
        print(f"the hard descriptor limit ({hard}) holds about {fit} streams per process: measuring up to {fit}")
        steps = sorted({min(n, fit) for n in steps})

    d = tempfile.mkdtemp()
    with open(os.path.join(d, "memory.yaml"), "w") as f:
        f.write(profile_yaml(args.itl_ms, max(steps) * 2))
    env, cwd = dict(os.environ), None
    if args.src:  # `python -m` puts the working directory first on the path: run from the checkout
        cwd = env["PYTHONPATH"] = os.path.abspath(args.src)
    server = subprocess.Popen([sys.executable, "-m", "llmsim", "serve", "--port", "0", "--profiles-dir", d,
                               "--target-tokens", str(args.tokens)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=cwd,
                              preexec_fn=raise_nofile)
    client = None
    try:
        m = re.search(r"http://([\d.]+):(\d+)", server.stdout.readline())
        assert m, "the server did not start"
        host, port = m.group(1), int(m.group(2))
        url = f"http://{host}:{port}"
        # Warm-up: every code path a stream takes (a fast stream to the end, a non-streamed answer, a slow
        # stream's first tokens), so the idle reading includes what the first request loads.
        chat = {"messages": [{"role": "user", "content": "Tell me about memory."}], "max_tokens": args.tokens}
        for _ in range(3):
            request(url + "/v1/chat/completions", {**chat, "model": "bench-memory-warm", "stream": True})
            request(url + "/v1/chat/completions", {**chat, "model": "bench-memory-warm"})
        request(url + "/v1/chat/completions", {**chat, "model": "bench-memory", "stream": True, "max_tokens": 2})
        request(url + "/llmsim/stats")
        time.sleep(args.settle)
        idle = memory_kb(server.pid)
        print(f"server idle after warm-up: RSS {idle['rss'] / 1024:.1f} MB"
              + (f", PSS {idle['pss'] / 1024:.1f} MB, USS {idle['uss'] / 1024:.1f} MB" if "pss" in idle else ""))
        print(f"profile: TTFT 100 ms, ITL {args.itl_ms:g} ms, {args.tokens}-token answers, "
              f"{'non-streamed' if args.json else 'streamed'}, {args.prompt_chars or 21}-character prompts; "
              f"descriptor limit {limit} (hard {hard})")
        print(f"{'streams':>8} {'active':>7} {'RSS MB':>8} {'KB/stream':>10} {'slope KB':>9} "
              f"{'USS KB/str':>11} {'PSS KB/str':>11}")
        client = subprocess.Popen([sys.executable, "-c", CLIENT, host, str(port), "bench-memory", str(args.tokens),
                                   "json" if args.json else "stream", str(args.prompt_chars)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=raise_nofile)
        prev_n, prev_rss = 0, idle["rss"]
        t0 = time.monotonic()
        for n in steps:
            assert client.stdin is not None and client.stdout is not None
            client.stdin.write(f"{n}\n")
            client.stdin.flush()
            ready = client.stdout.readline().split()
            if not ready or ready[0] != "ready":
                print("the client stopped")
                break
            ok, failed = int(ready[1]), int(ready[2])
            for _ in range(120):  # a non-streamed request shows only as a busy batch slot
                time.sleep(args.settle if not args.json else 0.5)
                stats = json.loads(request(url + "/llmsim/stats"))
                slots = sum(s.get("active", 0) for name, s in stats.get("schedulers", {}).items()
                            if name.startswith("bench-memory"))
                active = slots if args.json else stats.get("active_streams", "?")
                if not args.json or active >= ok:
                    break
            if args.json:
                time.sleep(args.settle)
            mem = memory_kb(server.pid)
            per = (mem["rss"] - idle["rss"]) / max(ok, 1)
            slope = (mem["rss"] - prev_rss) / max(ok - prev_n, 1)
            uss = f"{(mem['uss'] - idle['uss']) / max(ok, 1):11.1f}" if "uss" in mem else f"{'-':>11}"
            pss = f"{(mem['pss'] - idle['pss']) / max(ok, 1):11.1f}" if "pss" in mem else f"{'-':>11}"
            note = f"  ({failed} failed)" if failed else ""
            if active != ok:
                note += f"  (the server counts {active} active {'requests' if args.json else 'streams'})"
            print(f"{ok:>8} {active:>7} {mem['rss'] / 1024:>8.1f} {per:>10.1f} {slope:>9.1f} {uss} {pss}{note}",
                  flush=True)
            prev_n, prev_rss = ok, mem["rss"]
        if args.hold > 0 and prev_n:
            time.sleep(args.hold)
            stats = json.loads(request(url + "/llmsim/stats"))
            mem = memory_kb(server.pid)
            print(f"{prev_n:>8} {stats.get('active_streams', '?'):>7} {mem['rss'] / 1024:>8.1f} "
                  f"{(mem['rss'] - idle['rss']) / prev_n:>10.1f}   ({args.hold:g} s later: about "
                  f"{args.hold * 1000 / args.itl_ms:.0f} more chunks each)", flush=True)
        elapsed = time.monotonic() - t0
        life = 0.1 + args.tokens * args.itl_ms / 1000
        if elapsed > life:
            print(f"warning: the run took {elapsed:.0f} s, longer than a stream lives ({life:.0f} s): "
                  "raise --tokens or --itl-ms")
        print(f"goal: <= {GOAL_KB:g} KB per open stream (RSS growth over idle / streams)", flush=True)
    finally:
        if client is not None:
            try:
                if client.stdin is not None:
                    client.stdin.write("quit\n")
                    client.stdin.close()
                client.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                client.kill()
                client.wait()
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
