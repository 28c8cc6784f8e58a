"""`llmsim serve --workers N` against `--workers 1`: requests/s and streamed chunks/s, measured with wrk.

For each worker count, starts `llmsim serve --workers N --latency-profile instant --target-tokens T` (zero
delays: the server's own cost is all there is), warms it up, then runs wrk (a separate process, C, on the
same machine) with C connections for D seconds, streaming and non-streaming. Prints requests/s, content
chunks/s (requests/s x T for streams), the CPU used by the server processes and by wrk, and the ratio to
one worker, all from the same run. wrk's CPU is printed so you can tell when the load generator, not the
server, is the limit. Never fails: it reports.

    apt-get install wrk                                  # Debian's package
    python bench/workers.py                              # --workers 1 2 --connections 200 --seconds 10
    python bench/workers.py --workers 1 2 4 --seconds 20
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

CLK = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants, from /proc."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def start(workers: int, tokens: int) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-m", "llmsim", "serve", "--port", "0", "--workers", str(workers),
                          "--latency-profile", "instant", "--target-tokens", str(tokens)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    m = re.search(r"(http://[\d.]+:\d+)", p.stdout.readline())
    if not m:
        p.kill()
        raise SystemExit("llmsim did not start")
    return p, m.group(1)


def wrk(url: str, stream: bool, connections: int, seconds: float, lua_dir: str) -> tuple[float, float, str]:
    """requests/s, wrk's CPU seconds, and wrk's latency line."""
    script = os.path.join(lua_dir, f"post-{int(stream)}.lua")
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                f'wrk.body = \'{{"model":"gpt-4o","stream":{str(stream).lower()},'
                '"messages":[{"role":"user","content":"go"}]}\'\n')
    before = os.times()
    r = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "30s", "--latency",
                        "-s", script, url + "/v1/chat/completions"], capture_output=True, text=True,
                       timeout=seconds + 60)
    after = os.times()
    m = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", r.stdout)
    lat = re.search(r"^\s+Latency\s+(.*)$", r.stdout, re.M)
    note = (lat.group(1).split()[0] + " mean latency") if lat else ""
    if errors:
        note += f"; {errors.group(0)}"
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return (float(m.group(1)) if m else 0.0), cpu, note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--tokens", type=int, default=100)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    lua_dir = tempfile.mkdtemp()
    print(f"{os.cpu_count()} CPUs; wrk -t1 -c{args.connections} -d{args.seconds:g}s; "
          f"instant profile, {args.tokens}-token replies")
    print(f"{'mode':<10} {'workers':>7} {'req/s':>9} {'chunks/s':>10} {'server CPU':>10} {'wrk CPU':>8} "
          f"{'vs 1':>6}  notes")
    base: dict[str, float] = {}
    for stream in (True, False):
        mode = "stream" if stream else "json"
        for n in args.workers:
            proc, url = start(n, args.tokens)
            try:
                for _ in range(20):  # warm-up: every worker loads its encodings on its first requests
                    req = urllib.request.Request(url + "/v1/chat/completions", method="POST",
                                                 data=b'{"model":"gpt-4o","messages":[{"role":"user",'
                                                      b'"content":"go"}]}',
                                                 headers={"Content-Type": "application/json", "Connection": "close"})
                    urllib.request.urlopen(req, timeout=10).read()
                cpu0, t0 = tree_cpu(proc.pid), time.monotonic()
                rps, wrk_cpu, note = wrk(url, stream, args.connections, args.seconds, lua_dir)
                wall = time.monotonic() - t0
                server = (tree_cpu(proc.pid) - cpu0) / wall
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
            base.setdefault(mode, rps)
            chunks = rps * args.tokens if stream else 0
            print(f"{mode:<10} {n:>7} {rps:>9,.0f} {chunks:>10,.0f} {server:>9.0%} {wrk_cpu / wall:>8.0%} "
                  f"{rps / base[mode]:>5.2f}x  {note}", flush=True)


if __name__ == "__main__":
    main()
