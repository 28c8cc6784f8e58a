"""Where a stream's memory goes: bench/memory.py's set-up with the server in this process, under tracemalloc.

The server runs on this process's gevent hub (llmsim.testing.start_server)
with the same slow profile as bench/memory.py; the client is bench/memory.py's
gevent raw-socket client in a second process. Between the idle snapshot (after
a warm-up) and N open streams (each past its first content chunk) it prints,
per stream: RSS, the bytes tracemalloc saw allocated (Python objects and
everything else allocated through PyMem, greenlet stack copies included), the
top allocation sites, and the new live objects by type (gc-tracked objects
only: strings, ints and floats are not in that count). tracemalloc slows the
server and adds its own memory to RSS; read the per-site figures, not the RSS.

    python bench/memory_breakdown.py [--streams 2000] [--tokens 300] [--frames 12] [--top 30]
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections import Counter  # noqa: E402

import gevent  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory import CLIENT, memory_kb, profile_yaml, raise_nofile, request  # noqa: E402

from llmsim.testing import start_server  # noqa: E402


def live_types() -> Counter[str]:
    return Counter(f"{getattr(type(o), '__module__', '?')}.{type(o).__qualname__}" for o in gc.get_objects())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--itl-ms", type=float, default=2000.0)
    ap.add_argument("--frames", type=int, default=12, help="traceback depth tracemalloc records")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--group", default="lineno", choices=["lineno", "traceback", "filename"])
    args = ap.parse_args()
    raise_nofile()
    n = args.streams
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "memory.yaml"), "w") as f:
        f.write(profile_yaml(args.itl_ms, n * 2))
    server = start_server(profiles_dir=d, target_tokens=args.tokens)
    url = server.url
    host, port = url.removeprefix("http://").split(":")
    chat = {"messages": [{"role": "user", "content": "Tell me about memory."}], "max_tokens": args.tokens}
    for _ in range(3):
        request(url + "/v1/chat/completions", {**chat, "model": "bench-memory-warm", "stream": True})
        request(url + "/v1/chat/completions", {**chat, "model": "bench-memory-warm"})
    request(url + "/v1/chat/completions", {**chat, "model": "bench-memory", "stream": True, "max_tokens": 2})
    client = subprocess.Popen([sys.executable, "-c", CLIENT, host, port, "bench-memory", str(args.tokens)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    gevent.sleep(1.0)
    gc.collect()
    tracemalloc.start(args.frames)
    types0 = live_types()
    rss0 = memory_kb(os.getpid())["rss"]
    snap0 = tracemalloc.take_snapshot()
    t0 = tracemalloc.get_traced_memory()[0]
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write(f"{n}\n")
    client.stdin.flush()
    ready = client.stdout.readline().split()
    ok = int(ready[1])
    gevent.sleep(1.0)
    stats = json.loads(request(url + "/llmsim/stats"))
    gc.collect()
    t1 = tracemalloc.get_traced_memory()[0]
    snap1 = tracemalloc.take_snapshot()
    rss1 = memory_kb(os.getpid())["rss"]
    types1 = live_types()
    filters = [tracemalloc.Filter(False, tracemalloc.__file__),
               tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]
    snap0, snap1 = snap0.filter_traces(filters), snap1.filter_traces(filters)
    print(f"{ok} streams open ({stats.get('active_streams')} active on the server), {args.tokens}-token answers")
    print(f"per stream: RSS {(rss1 - rss0) / ok:.1f} KB (tracemalloc's own included), "
          f"traced {(t1 - t0) / 1024 / ok:.2f} KB")
    print(f"\ntop {args.top} allocation sites by growth ({args.group}), bytes per stream and blocks per stream:")
    diff = snap1.compare_to(snap0, args.group)
    for st in diff[: args.top]:
        if st.size_diff <= 0:
            break
        print(f"{st.size_diff / ok:9.1f} B {st.count_diff / ok:6.2f}  ", end="")
        if args.group == "traceback":
            print()
            for line in st.traceback.format(limit=args.frames, most_recent_first=True):
                print("      " + line)
        else:
            print(st.traceback[0])
    print("\nnew live gc-tracked objects per stream, by type:")
    for name, k in sorted(((t, types1[t] - types0.get(t, 0)) for t in types1), key=lambda x: -x[1])[:40]:
        if k / ok < 0.5:
            break
        print(f"  {k / ok:6.2f}  {name}")
    client.stdin.write("quit\n")
    client.stdin.flush()
    client.wait()
    server.stop()
    time.sleep(0)


if __name__ == "__main__":
    main()
