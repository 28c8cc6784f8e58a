"""How many streamed tokens/s one `llmsim serve` process sustains, and how true its ITL stays.

Starts llmsim in a subprocess with a constant-latency profile, opens N concurrent
streams from this (gevent) process with raw sockets, and stamps every SSE line
as it arrives. Prints achieved tokens/s, server CPU, and the measured ITL
percentiles against the profile's. Never fails: it reports.

    python bench/server_stream.py --streams 50 100 200 --itl-ms 10 --tokens 300
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from llmsim.loadtest.histogram import percentile_of_sorted  # noqa: E402


def start_server(ttft_ms: float, itl_ms: float, tokens: int) -> tuple[subprocess.Popen, str, int]:
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "bench.yaml"), "w") as f:
        f.write(f"profiles:\n  - name: bench\n    models: [bench]\n    ttft: {{mean_ms: {ttft_ms}}}\n"
                f"    itl: {{mean_ms: {itl_ms}}}\n")
    p = subprocess.Popen([sys.executable, "-m", "llmsim", "serve", "--port", "0", "--profiles-dir", d,
                          "--target-tokens", str(tokens)],
                         stdout=subprocess.PIPE, text=True)
    m = re.search(r"http://([\d.]+):(\d+)", p.stdout.readline())
    return p, m.group(1), int(m.group(2))


def one_stream(host: str, port: int, tokens: int, out: list) -> None:
    body = json.dumps({"model": "bench", "stream": True, "max_tokens": tokens,
                       "messages": [{"role": "user", "content": "go"}]}, separators=(",", ":")).encode()
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    stamps, buf = [], b""
    while True:
        data = s.recv(65536)
        if not data:
            break
        now = time.perf_counter()
        buf += data
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if b'"content":"' in event and b'"content":""' not in event:
                stamps.append(now)
        if b"[DONE]" in data:
            break
    s.close()
    out.append(stamps)


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank, as the toolkit's reports compute it."""
    return percentile_of_sorted(sorted(xs), p)


def run(streams: int, itl_ms: float, tokens: int) -> None:
    proc, host, port = start_server(0, itl_ms, tokens)
    try:
        results: list = []
        cpu0 = _cpu(proc.pid)
        own0 = time.process_time()
        t0 = time.perf_counter()
        # Starts spread over one ITL: with constant latencies, streams started together would all
        # wake on the same deadlines and measure their own burst, not the server.
        rng = random.Random(1)
        gevent.joinall([gevent.spawn_later(rng.random() * itl_ms / 1000, one_stream, host, port, tokens, results)
                        for _ in range(streams)])
        wall = time.perf_counter() - t0
        cpu = _cpu(proc.pid) - cpu0
        own = time.process_time() - own0
        gaps = [b - a for st in results for a, b in zip(st, st[1:], strict=False)]
        # Steady state: gaps after every stream has started (the start-up burst of N new
        # connections and requests within one ITL delays the first tokens; that is reported apart).
        all_started = max(st[0] for st in results if st)
        steady = [b - a for st in results for a, b in zip(st, st[1:], strict=False) if a > all_started]
        total = sum(len(st) for st in results)
        print(f"streams={streams:4d}  tokens/s={total / wall:8.0f}  server CPU={100 * cpu / wall:5.1f}%  "
              f"client CPU={100 * own / wall:5.1f}%  steady ITL p50={1000 * pct(steady, 50):6.2f} "
              f"p99={1000 * pct(steady, 99):6.2f} ms (target {itl_ms}; p99 error "
              f"{1000 * pct(steady, 99) - itl_ms:+.2f})  all gaps p99={1000 * pct(gaps, 99):6.2f} ms")
    finally:
        proc.terminate()
        proc.wait()


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[50, 100, 200, 400])
    ap.add_argument("--itl-ms", type=float, default=10.0)
    ap.add_argument("--tokens", type=int, default=300)
    args = ap.parse_args()
    print(f"llmsim serve, one process, ITL {args.itl_ms} ms, {args.tokens} tokens per stream "
          f"(client in this process on the same machine)")
    for n in args.streams:
        run(n, args.itl_ms, args.tokens)


if __name__ == "__main__":
    main()
