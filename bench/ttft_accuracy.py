"""How close llmsim's TTFT and ITL are to the profile on the wire, and what the precision costs in CPU.

Starts `llmsim serve` in a subprocess with a constant profile (TTFT and ITL
without spread), sends streamed chat requests from this process over
keep-alive connections, and times each one on the wire: the clock starts
just before the request is written, and each content event's arrival is the
kernel's receive timestamp of its segment (SO_TIMESTAMPNS), so this client's
own scheduling delay is not in the figures. Prints the wire TTFT and ITL
minus the profile's (p50/p90/p99) and the server's CPU per streamed token.
Never fails: it reports.

    python bench/ttft_accuracy.py                          # this checkout
    python bench/ttft_accuracy.py --src /tmp/llmsim-before  # another checkout's llmsim, same client
    LLMSIM_PRECISE_WAITS=0 python bench/ttft_accuracy.py    # this checkout, precise waits off

`--streams 1` (the default first row) is the low-load case: one request at a
time. Larger counts run that many concurrent clients, each sending requests
back to back, their starts spread over one response.

    python bench/ttft_accuracy.py --pacer-cpu 1 8 50 200 --tokens 200

paces streams in this process without HTTP, with precise waits on and off in
turn, and prints the CPU each costs per token.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
ANC = socket.CMSG_SPACE(struct.calcsize("ll"))


def start_server(src: str | None, ttft_ms: float, itl_ms: float, tokens: int) -> tuple[subprocess.Popen, int]:
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "bench.yaml"), "w") as f:
        f.write(f"profiles:\n  - name: bench\n    models: [bench]\n    ttft: {{mean_ms: {ttft_ms}}}\n"
                f"    itl: {{mean_ms: {itl_ms}}}\n")
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.Popen([sys.executable, "-m", "llmsim", "serve", "--port", "0", "--profiles-dir", d,
                          "--target-tokens", str(tokens)], stdout=subprocess.PIPE, text=True, env=env, cwd=d)
    line = p.stdout.readline()
    m = re.search(r"http://[\d.]+:(\d+)", line)
    if not m:
        raise SystemExit(f"server did not start: {line!r}")
    return p, int(m.group(1))


def one_request(sock: socket.socket, body: bytes) -> tuple[float, list[float]]:
    """(TTFT ms, content event arrival times in ns) of one streamed request on a keep-alive socket."""
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body)) + body
    t0 = time.time_ns()
    sock.sendall(req)
    buf, arrivals, done = b"", [], False
    while not done:
        data, anc, _flags, _addr = sock.recvmsg(65536, ANC)
        if not data:
            raise ConnectionError("server closed the connection")
        stamp = time.time_ns()
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, ns = struct.unpack("ll", raw[:struct.calcsize("ll")])
                stamp = sec * 1_000_000_000 + ns
        buf += data
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if b'"content":"' in event and b'"content":""' not in event:
                arrivals.append(stamp)
            elif b"[DONE]" in event:
                done = True
        if done and not buf.endswith(b"0\r\n\r\n"):
            # Read the chunked terminator too, so the next request starts on a clean socket.
            while not buf.endswith(b"0\r\n\r\n"):
                buf += sock.recv(65536)
    return (arrivals[0] - t0) / 1e6, arrivals


def client(port: int, requests: int, body: bytes, ttfts: list, gaps: list, delay: float = 0.0) -> None:
    gevent.sleep(delay)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    try:
        for _ in range(requests):
            ttft, arrivals = one_request(sock, body)
            ttfts.append(ttft)
            gaps.extend((b - a) / 1e6 for a, b in zip(arrivals, arrivals[1:], strict=False))
    finally:
        sock.close()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(args: argparse.Namespace, streams: int) -> None:
    proc, port = start_server(args.src, args.ttft_ms, args.itl_ms, args.tokens)
    prompt = ("go " * (args.prompt_chars // 3 + 1))[:max(2, args.prompt_chars)]
    body = (f'{{"model":"bench","stream":true,"messages":[{{"role":"user","content":"{prompt}"}}]}}').encode()
    try:
        warm: list = []
        client(port, 3, body, warm, [])  # connection set-up and first-request costs stay out
        ttfts: list[float] = []
        gaps: list[float] = []
        per_client = max(1, args.requests // streams)
        # Starts spread over one response: constant latencies would otherwise keep the clients in step,
        # and the figures would measure N requests arriving at once, not the server's pacing.
        spread = 0.0 if streams == 1 else (args.ttft_ms + args.tokens * args.itl_ms) / 1000
        rng = random.Random(1)
        c0, w0 = cpu_s(proc.pid), time.monotonic()
        gevent.joinall([gevent.spawn(client, port, per_client, body, ttfts, gaps, rng.random() * spread)
                        for _ in range(streams)])
        wall, cpu = time.monotonic() - w0, cpu_s(proc.pid) - c0
        tokens = len(gaps) + len(ttfts)
        e = [t - args.ttft_ms for t in ttfts]
        g = [x - args.itl_ms for x in gaps]
        print(f"streams={streams:3d} requests={len(ttfts):4d}  TTFT-profile p10={pct(e, 10):+6.3f} "
              f"p50={pct(e, 50):+6.3f} p90={pct(e, 90):+6.3f} p99={pct(e, 99):+6.3f} ms   "
              f"ITL-profile p50={pct(g, 50):+6.3f} "
              f"p99={pct(g, 99):+6.3f} ms   server CPU={100 * cpu / wall:5.1f}% "
              f"({1e6 * cpu / max(1, tokens):5.1f} µs/token, {tokens / wall:6.0f} tokens/s)", flush=True)
    finally:
        proc.terminate()
        proc.wait()


def pacer_cpu(streams: int, tokens: int, itl_ms: float, precise: bool) -> tuple[float, float, float]:
    """In this process: CPU µs per token of pacing alone, and lateness p50/p99 (ms) against the deadlines."""
    from llmsim.latency import Distribution, LatencyProfile
    from llmsim.precise import precise_timer
    from llmsim.stream import Pacer

    latency = LatencyProfile(ttft=Distribution("constant", itl_ms), itl=Distribution("constant", itl_ms))
    late: list[float] = []

    def one(delay: float) -> None:
        gevent.sleep(delay)
        pacer = Pacer(latency, random.Random(0), precise=precise_timer() if precise else None)
        pacer.planned = []
        for i in pacer.paced_indices([1] * tokens):
            late.append(time.monotonic() - pacer.planned[i])

    rng = random.Random(2)
    c0 = time.process_time()
    gevent.joinall([gevent.spawn(one, rng.random() * itl_ms / 1000) for _ in range(streams)])
    cpu = time.process_time() - c0
    late.sort()
    return 1e6 * cpu / len(late), 1000 * late[len(late) // 2], 1000 * late[int(len(late) * 0.99)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=None, help="run the server from this checkout (prepended to PYTHONPATH)")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 20, 100])
    ap.add_argument("--requests", type=int, default=200, help="requests per row (split over the streams)")
    ap.add_argument("--ttft-ms", type=float, default=20.0)
    ap.add_argument("--itl-ms", type=float, default=10.0)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--prompt-chars", type=int, default=2, help="prompt length (parsing and counting it take time)")
    ap.add_argument("--pacer-cpu", type=int, nargs="*", metavar="STREAMS",
                    help="instead: pace this many streams in this process (no HTTP), precise waits on and off "
                         "in turn, and print the CPU per token of pacing alone")
    args = ap.parse_args()
    if args.pacer_cpu is not None:
        print(f"pacing only, in this process: {args.tokens} tokens per stream, ITL {args.itl_ms} ms; "
              "lateness = wake-up time - deadline")
        for n in args.pacer_cpu or [1, 8, 50, 200]:
            for precise in (False, True, False, True):
                cpu, p50, p99 = pacer_cpu(n, args.tokens, args.itl_ms, precise)
                print(f"streams={n:4d} precise={'on ' if precise else 'off'}  CPU {cpu:6.1f} µs/token   "
                      f"lateness p50={p50:+.3f} p99={p99:+.3f} ms", flush=True)
        return
    where = args.src or "this checkout"
    switch = os.environ.get("LLMSIM_PRECISE_WAITS")
    print(f"llmsim serve from {where}; constant profile TTFT {args.ttft_ms} ms, ITL {args.itl_ms} ms, "
          f"{args.tokens} tokens, {args.prompt_chars}-character prompt; wire times from kernel receive stamps"
          f"{'' if switch is None else '; LLMSIM_PRECISE_WAITS=' + switch}")
    for n in args.streams:
        run(args, n)


if __name__ == "__main__":
    main()
