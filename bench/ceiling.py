"""llmsim against the bare-server ceiling, in one run: streamed tokens/s and non-streaming requests/s.

The ceiling is a bare gevent pywsgi app with TCP_NODELAY that sends the same
bytes llmsim would (100 SSE chunks, or one pre-serialised `chat.completion`
body) with no work at all. llmsim runs with the `instant` profile (no
delays), so both are CPU-bound and the ratio is llmsim's own overhead. The
server is pinned to CPU 0 and the load generator (gevent, keep-alive raw
sockets, N connections in a loop) to CPU 1 when there are two; the load
generator's CPU share is printed, and a ratio measured while it was
saturated is flagged. Machines are noisy: read the ratios, taken in one run.

Each mode runs both servers side by side and alternates load runs between them
(`--rounds`, 3 by default), so a slow minute of the machine hits both; the
ratio printed is the median of the rounds' ratios.

    python bench/ceiling.py [--connections 200] [--seconds 5] [--tokens 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap

BARE_APP = textwrap.dedent('''
    from gevent import monkey; monkey.patch_all()
    import json, socket, sys
    from gevent.pywsgi import WSGIServer
    tokens, mode = int(sys.argv[1]), sys.argv[2]
    head = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
            b'"choices":[{"index":0,"delta":{"content":')
    chunks = [head + json.dumps(" w%d" % i).encode() + b'},"finish_reason":null}]}\\n\\n' for i in range(tokens)]
    chunks.append(b"data: [DONE]\\n\\n")
    body = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": " w" * tokens},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 9, "completion_tokens": tokens, "total_tokens": tokens + 9}}).encode()
    def app(environ, start_response):
        environ["wsgi.input"].read()
        if mode == "stream":
            start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
            return iter(chunks)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    sock = socket.socket(); sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); sock.bind(("127.0.0.1", 0)); sock.listen(2048)
    class H(WSGIServer):
        def handle(self, s, a):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); super().handle(s, a)
    print("http://127.0.0.1:%d" % sock.getsockname()[1], flush=True)
    H(sock, app, log=None).serve_forever()
''')

LOAD = textwrap.dedent('''
    from gevent import monkey; monkey.patch_all()
    import socket, sys, time, resource, gevent
    host, port, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    seconds, body = float(sys.argv[4]), sys.argv[5].encode()
    stream = b'"stream":true' in body
    req = (b"POST /v1/chat/completions HTTP/1.1\\r\\nHost: b\\r\\nContent-Type: application/json\\r\\n"
           b"Content-Length: %d\\r\\n\\r\\n" % len(body)) + body
    done = [0]; end = time.monotonic() + seconds
    def worker():
        s = socket.create_connection((host, port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while time.monotonic() < end:
            s.sendall(req); buf = b""
            while True:
                data = s.recv(262144)
                if not data: return
                buf += data
                if stream:
                    if buf.endswith(b"data: [DONE]\\n\\n\\r\\n") or buf.endswith(b"0\\r\\n\\r\\n"): break
                else:
                    h, sep, rest = buf.partition(b"\\r\\n\\r\\n")
                    if sep:
                        n = int(h.lower().split(b"content-length:")[1].split(b"\\r\\n")[0])
                        if len(rest) >= n: break
            done[0] += 1
    t0 = time.monotonic(); c0 = time.process_time()
    gevent.joinall([gevent.spawn(worker) for _ in range(conns)])
    wall = time.monotonic() - t0
    print(done[0], wall, (time.process_time() - c0) / wall, flush=True)
''')


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if os.cpu_count() and os.cpu_count() > 1 and _has("taskset") else []


def _has(cmd: str) -> bool:
    return any(os.access(os.path.join(p, cmd), os.X_OK) for p in os.environ.get("PATH", "").split(os.pathsep))


def start(cmd: list[str]) -> tuple[subprocess.Popen, str, int]:
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    m = re.search(r"http://([\d.]+):(\d+)", p.stdout.readline())
    assert m, "server did not start"
    return p, m.group(1), int(m.group(2))


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(host: str, port: int, conns: int, seconds: float, body: dict, server_pid: int) -> dict:
    c0 = cpu_seconds(server_pid)
    cmd = [*pin(1), sys.executable, "-c", LOAD, host, str(port), str(conns), str(seconds),
           json.dumps(body, separators=(",", ":"))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    n, wall, load_cpu = int(out[0]), float(out[1]), float(out[2])
    used = cpu_seconds(server_pid) - c0
    return {"responses": n, "per_s": n / wall, "server_cpu": used / wall, "load_cpu": load_cpu,
            "cpu_us": used / max(1, n) * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="load runs per server, alternated (median ratio)")
    args = ap.parse_args()
    bare_py = os.path.join(tempfile.mkdtemp(), "bare.py")
    with open(bare_py, "w") as f:
        f.write(BARE_APP)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "go"}], "max_tokens": args.tokens}
    rows = []
    for mode in ("stream", "json"):
        req = {**body, "stream": mode == "stream"}
        servers = {}
        try:
            for name, cmd in (("bare", [*pin(0), sys.executable, bare_py, str(args.tokens), mode]),
                              ("llmsim", [*pin(0), sys.executable, "-m", "llmsim", "serve", "--port", "0",
                                          "--latency-profile", "instant", "--target-tokens", str(args.tokens)])):
                servers[name] = start(cmd)
                proc, host, port = servers[name]
                run_load(host, port, 20, 1.0, req, proc.pid)  # warm up
            rounds: list[dict[str, dict]] = []
            for _ in range(args.rounds):  # alternated, so a slow minute of the machine hits both
                rounds.append({name: run_load(host, port, args.connections, args.seconds, req, proc.pid)
                               for name, (proc, host, port) in servers.items()})
        finally:
            for proc, _, _ in servers.values():
                proc.terminate()
                proc.wait()
        unit = "tokens/s" if mode == "stream" else "req/s"
        scale = args.tokens if mode == "stream" else 1
        for k, results in enumerate(rounds, 1):
            for name, r in results.items():
                flag = "  (load generator saturated)" if r["load_cpu"] > 0.95 else ""
                rows.append(f"{mode:6s} {k} {name:7s} {r['per_s'] * scale:10.0f} {unit:8s} server CPU "
                            f"{r['server_cpu']:4.0%} ({r['cpu_us']:6.0f} µs an answer)  load CPU "
                            f"{r['load_cpu']:4.0%}{flag}")
        ratios = sorted(r["llmsim"]["per_s"] / r["bare"]["per_s"] for r in rounds)
        goal = 0.80 if mode == "stream" else 0.70
        rows.append(f"{mode:6s} llmsim/bare ratio {statistics.median(ratios):.2f} (goal >= {goal:.2f}; rounds: "
                    f"{', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"{args.connections} connections, {args.seconds:g} s each, {args.tokens}-token answers")
    print("(llmsim sends chunks that are due together in one write: with the instant profile, a whole stream's)")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
