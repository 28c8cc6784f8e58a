"""Timing fidelity under a ramp of arrivals: how late each content chunk leaves the server.

N streams (TTFT 100 ms, ITL 20 ms, 100 tokens by default) arrive spread evenly
over one second. Every request asks for its server-side trace
(`x-llmsim-trace: 1`): the emit time of each chunk (just after its bytes went
to the socket) and its planned deadline (arrival + TTFT + i·ITL). Lateness is
emitted minus planned, so a client that is itself late cannot blur it.
Prints lateness p1/p50/p99/p99.9/max per N (p1, negative: how early the
earliest chunks went), and the client's CPU share (over 80 %, it may have been
late itself to send its requests). Never fails.

The client runs at the lowest CPU priority the system gives (Linux's SCHED_IDLE,
else nice 19): on a 2-core machine, `--workers 2` puts three busy processes on two
cores, and a client at the same priority takes the server's core for whole
scheduler slices (p99 9-11 ms at 1,000 streams, against 2.4-4 ms with the client
idle-class). Lateness is stamped on the server, so a client that reads late
changes nothing it measures; the socket buffers hold a whole 100-token stream.

Each server takes two ramps: the first right after start, then a second one ("warm") once
the first has ended, so what a server does once only (a cache filled, a table grown) shows
as a difference between them. The first ramp used to stall for 8-30 ms once its
connections passed 256: Linux grew the server's descriptor table, and waited for an RCU
grace period to do it. The server now sizes the table at start-up (llmsim/cli/fdtable.py).
`--warm 0` measures the first ramp only.

Before the ramps it measures the machine's own floor (`--floor SECONDS`, 0 skips it): on each
core, with nothing else of ours running, a loop at normal priority sleeps to a deadline every
millisecond and records how late it woke. Whatever delays that loop (the VM losing its core,
interrupts, the host's own agents) delays a worker the same way, and no server on this machine
can do better. A worker at 1,000 streams has about 25 chunks due each millisecond, so one late
wake of 3 ms makes dozens of them more than 2 ms late.

    python bench/arrival_fidelity.py [--streams 100 250 500] [--workers 1] [--pin-workers] [--realtime] [--warm 0]
                                     [--floor 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap

CLIENT = textwrap.dedent('''
    from gevent import monkey; monkey.patch_all()
    import json, socket, sys, time, gevent
    host, port, n, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    body = json.dumps({"model": "bench-arrival", "stream": True, "max_tokens": tokens,
                       "messages": [{"role": "user", "content": "go"}]}).encode()
    req = (b"POST /v1/chat/completions HTTP/1.1\\r\\nHost: b\\r\\nContent-Type: application/json\\r\\n"
           b"x-llmsim-trace: 1\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body)) + body
    traces = []
    def one(delay):
        gevent.sleep(delay)
        s = socket.create_connection((host, port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(req); parts = []; tail = b""
        while b"data: [DONE]" not in tail:  # only the newest bytes are searched: no quadratic re-scan
            d = s.recv(65536)
            if not d: break
            parts.append(d); tail = tail[-16:] + d
        s.close()
        m = b"".join(parts).split(b": llmsim-trace ", 1)
        if len(m) == 2:
            traces.append(json.loads(m[1].split(b"\\n", 1)[0]))
    wall0, cpu0 = time.monotonic(), time.process_time()
    gevent.joinall([gevent.spawn(one, i / n) for i in range(n)])
    print(json.dumps({"traces": traces, "cpu": (time.process_time() - cpu0) / (time.monotonic() - wall0)}))
''')

FLOOR = textwrap.dedent('''
    import json, os, sys, time
    cpu, seconds = int(sys.argv[1]), float(sys.argv[2])
    os.sched_setaffinity(0, {cpu})
    clock, late = time.monotonic, []
    deadline = start = clock()
    while deadline < start + seconds:
        deadline += 0.001
        wait = deadline - clock()
        if wait > 0:
            time.sleep(wait)
        late.append(1000 * (clock() - deadline))
    print(json.dumps(late))
''')


def machine_floor(seconds: float) -> str:
    """How late a 1-ms timer loop wakes on each core with nothing else of ours running (see the module doc)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no pinning, no floor
        return "machine floor: not measured (this system cannot pin a process to a core)"
    probes = [subprocess.Popen([sys.executable, "-c", FLOOR, str(c), str(seconds)], stdout=subprocess.PIPE, text=True)
              for c in cpus]
    parts = []
    for cpu, probe in zip(cpus, probes, strict=True):
        try:
            late = json.loads(probe.communicate()[0])
        except ValueError:  # the probe failed (it printed why): the ramps still run
            parts.append(f"cpu{cpu} not measured")
            continue
        parts.append(f"cpu{cpu} p99 {pct(late, 99):.2f} p99.9 {pct(late, 99.9):.2f} max {max(late):.2f} ms, "
                     f"{sum(x > 1 for x in late)} wakes >1 ms, {sum(x > 2 for x in late)} >2 ms")
    return f"machine floor ({len(cpus)} timer loops, one per core, {seconds:g} s, 1 wake/ms): " + "; ".join(parts)


def lateness(trace: dict) -> list[float]:
    """Each chunk's emit time minus its planned deadline, ms."""
    out, at, plan = [], trace["ttft_ms"], trace["planned_ttft_ms"]
    if at is None or plan is None:
        return out
    out.append(at - plan)
    for g, p in zip(trace["gaps_ms"], trace["planned_gaps_ms"], strict=False):
        at, plan = at + g, plan + p
        out.append(at - plan)
    return out


def lowest_priority() -> None:
    """Run this (client) process only when a core would otherwise idle (see the module doc)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=[100, 250, 500])
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--workers", default="1")
    ap.add_argument("--pin-workers", action="store_true", help="start the server with --pin-workers")
    ap.add_argument("--realtime", action="store_true",
                    help="start the server with --realtime (SCHED_RR workers; needs CAP_SYS_NICE)")
    ap.add_argument("--warm", type=int, choices=[0, 1], default=1,
                    help="also measure a second ramp against the same server (default 1)")
    ap.add_argument("--floor", type=float, default=5.0,
                    help="seconds to measure the machine's own timer lateness first (default 5; 0 skips it)")
    args = ap.parse_args()
    if args.floor > 0:
        print(machine_floor(args.floor))
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "arrival.yaml"), "w") as f:
        f.write("profiles:\n  - name: bench-arrival\n    models: [bench-arrival]\n"
                "    ttft: {distribution: constant, mean_ms: 100}\n    itl: {distribution: constant, mean_ms: 20}\n")
    print(f"{'streams':>8} {'ramp':>6} {'chunks':>8} {'p1 ms':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
          f"{'max ms':>8} "
          f"{'client CPU':>10}  (lateness of each chunk on the server, --workers {args.workers}"
          f"{' --pin-workers' if args.pin_workers else ''}{' --realtime' if args.realtime else ''}; client at the "
          f"lowest priority)")
    for n in args.streams:
        server = subprocess.Popen([sys.executable, "-m", "llmsim", "serve", "--port", "0", "--profiles-dir", d,
                                   "--target-tokens", str(args.tokens), "--workers", args.workers,
                                   *(["--pin-workers"] if args.pin_workers else []),
                                   *(["--realtime"] if args.realtime else [])],
                                  stdout=subprocess.PIPE, text=True)
        try:
            m = re.search(r"http://([\d.]+):(\d+)", server.stdout.readline())
            assert m, "the server did not start"
            for ramp in ("first", "warm")[:1 + args.warm]:
                out = json.loads(subprocess.run([sys.executable, "-c", CLIENT, m.group(1), m.group(2), str(n),
                                                 str(args.tokens)], capture_output=True, text=True, check=True,
                                                preexec_fn=lowest_priority).stdout)
                late = [x for t in out["traces"] for x in lateness(t)]
                if not late:
                    print(f"{n:>8} {ramp:>6} no traces came back")
                    continue
                busy = " (the client was busy: read the lateness as an upper bound)" if out["cpu"] > 0.8 else ""
                print(f"{n:>8} {ramp:>6} {len(late):>8} {pct(late, 1):>7.2f} {pct(late, 50):>8.2f} "
                      f"{pct(late, 99):>8.2f} "
                      f"{pct(late, 99.9):>9.2f} {max(late):>8.2f} {100 * out['cpu']:>9.0f}%{busy}")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
