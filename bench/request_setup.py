"""What one request's set-up costs the event loop: parse, count, plan the answer, admit.

Every microsecond here delays every other open stream's next token while a
ramp of arrivals comes in, so it is measured on its own (no HTTP, no sleep):
the engine's whole per-request path for Chat (text), a tool call and a
structured answer, each the same body again and again (as a load test sends
it), as the server handles it. Prints the best and the median round in
microseconds per request; never fails.

    python bench/request_setup.py [N]
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from llmsim.engine import Engine
from llmsim.openai.chat import ChatCompletions

USER = [{"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Tell me about the weather in Paris today please."}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CASES = {
    "text (100 tokens)": {"model": "gpt-4o", "messages": USER, "stream": True},
    "tool call": {"model": "gpt-4o", "messages": USER, "stream": True, "tools": TOOLS, "tool_choice": "required"},
    "structured": {"model": "gpt-4o", "messages": USER, "stream": True,
                   "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": TOOLS[0][
                       "function"]["parameters"]}}},
}


def main(n: int = 2000, rounds: int = 7) -> None:
    engine, api = Engine(latency_profile="instant"), ChatCompletions()
    print(f"{'':18s} {'best':>8s} {'median':>8s}  (µs per request, {rounds} rounds of {n})")
    for name, body in CASES.items():
        raw = json.dumps(body).encode()

        def one(raw: bytes = raw) -> None:
            # As the server does: the body's bytes parsed (a body sent again is parsed once), then generated.
            engine.generate(api.parse_bytes(raw)).slot.release()

        for _ in range(200):
            one()
        times = []
        for _ in range(rounds):  # the best round is the cost; the others were interrupted by the machine
            t0 = time.perf_counter()
            for _ in range(n):
                one()
            times.append((time.perf_counter() - t0) / n * 1e6)
        print(f"{name:18s} {min(times):8.1f} {statistics.median(times):8.1f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
