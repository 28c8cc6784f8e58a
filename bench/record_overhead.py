"""What `llmsim record` adds: TTFT and ITL through the recording proxy against the same server directly.

Starts `llmsim serve` (constant TTFT and ITL) and `llmsim record` in front of
it, then sends the same streamed chat request alternately to each, from N
concurrent workers on keep-alive connections. Each read is stamped by the
kernel (SO_TIMESTAMPNS), so this process's own scheduling stays out of the
figures. Prints TTFT and ITL percentiles for both paths and the added TTFT.
Never fails: it reports.

    python bench/record_overhead.py --streams 1 10 50 --requests 200
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from gevent.pool import Pool  # noqa: E402

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def start(args: list[str], pattern: str) -> tuple[subprocess.Popen, str, int]:
    # PROFILE_OUT=FILE: run the proxy under cProfile (written when it stops).
    profile = os.environ.get("PROFILE_OUT") if args[0] == "record" else None
    prof = ["-m", "cProfile", "-o", profile] if profile else []
    p = subprocess.Popen([sys.executable, *prof, "-m", "llmsim", *args], stdout=subprocess.PIPE, text=True)
    m = re.search(pattern, p.stdout.readline())
    if not m:
        raise SystemExit(f"could not start llmsim {args[0]}")
    return p, m.group(1), int(m.group(2))


class Client:
    """One keep-alive connection; run() sends a streamed request and returns content-event arrival times."""

    def __init__(self, host: str, port: int) -> None:
        self.s = socket.create_connection((host, port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def run(self, body: bytes) -> tuple[float, list[float]]:
        t0 = time.time()
        self.s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
                       b"Authorization: Bearer sk-bench\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        stamps: list[float] = []
        buf = b""
        while b"0\r\n\r\n" not in buf[-7:]:
            data, anc, _, _ = self.s.recvmsg(65536, 256)
            if not data:
                raise SystemExit("connection closed")
            t = time.time()
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, ns = struct.unpack("ll", raw[:16])
                    t = sec + ns / 1e9
            n = data.count(b'"content":"') - data.count(b'"content":""')
            stamps += [t] * n
            buf += data
        return t0, stamps


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process so far (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--requests", type=int, default=200, help="per path and stream count")
    ap.add_argument("--ttft-ms", type=float, default=50)
    ap.add_argument("--itl-ms", type=float, default=10)
    ap.add_argument("--tokens", type=int, default=20)
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "bench.yaml"), "w") as f:
        f.write(f"profiles:\n  - name: bench\n    models: [bench]\n    ttft: {{mean_ms: {a.ttft_ms}}}\n"
                f"    itl: {{mean_ms: {a.itl_ms}}}\n")
    server, host, port = start(["serve", "--port", "0", "--profiles-dir", d], r"http://([\d.]+):(\d+)")
    out = os.path.join(d, "rec.jsonl")
    proxy, phost, pport = start(["record", "--upstream", f"http://{host}:{port}", "--out", out, "--port", "0"],
                                r"recording on http://([\d.]+):(\d+)")
    body = json.dumps({"model": "bench", "stream": True, "max_tokens": a.tokens,
                       "messages": [{"role": "user", "content": "go"}]}).encode()
    print(f"llmsim serve: constant TTFT {a.ttft_ms:g} ms, ITL {a.itl_ms:g} ms, {a.tokens} tokens; "
          f"{a.requests} requests per path; kernel receive stamps")
    print(f"{'streams':>7}  {'path':<7} {'TTFT p50':>9} {'p90':>7} {'p99':>7}   {'ITL p50':>8} {'p99':>7}"
          f"   {'added TTFT p50':>14}   {'proxy CPU/event':>8}")
    try:
        for n in a.streams:
            res: dict[str, tuple[list[float], list[float]]] = {"direct": ([], []), "proxy": ([], [])}

            def worker(count: int, res: dict[str, tuple[list[float], list[float]]] = res) -> None:
                clients = {"direct": Client(host, port), "proxy": Client(phost, pport)}
                for i in range(count):
                    for name in (("direct", "proxy") if i % 2 == 0 else ("proxy", "direct")):
                        t0, stamps = clients[name].run(body)
                        res[name][0].append((stamps[0] - t0) * 1000)
                        res[name][1].extend((b - x) * 1000 for x, b in zip(stamps, stamps[1:], strict=False))

            cpu0 = cpu_s(proxy.pid)
            pool = Pool(n)
            for k in range(n):
                pool.spawn(worker, a.requests // n + (1 if k < a.requests % n else 0))
            pool.join(raise_error=True)
            events = len(res["proxy"][1]) + len(res["proxy"][0])
            proxy_us = (cpu_s(proxy.pid) - cpu0) / max(1, events) * 1e6
            base = pct(res["direct"][0], 50)
            for name, (ttft, itl) in res.items():
                added = f"{pct(ttft, 50) - base:+.2f} ms" if name == "proxy" else ""
                cpu = f"{proxy_us:.0f} µs" if name == "proxy" else ""
                print(f"{n:>7}  {name:<7} {pct(ttft, 50):>9.2f} {pct(ttft, 90):>7.2f} {pct(ttft, 99):>7.2f}   "
                      f"{pct(itl, 50):>8.2f} {pct(itl, 99):>7.2f}   {added:>14}   {cpu:>8}")
    finally:
        for p in (proxy, server):
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=10)


if __name__ == "__main__":
    main()
