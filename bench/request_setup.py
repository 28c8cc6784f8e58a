"""What one request's set-up costs the event loop: parse, count, plan the answer, admit.

Every microsecond here delays every other open stream's next token while a
ramp of arrivals comes in, so it is measured on its own (no HTTP, no sleep):
the engine's whole per-request path for Chat (text), a tool call and a
structured answer. Prints microseconds per request; never fails.

    python bench/request_setup.py [N]
"""

from __future__ import annotations

import json
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


def main(n: int = 2000) -> None:
    engine, api = Engine(latency_profile="instant"), ChatCompletions()
    for name, body in CASES.items():
        raw = json.dumps(body).encode()

        def one(raw: bytes = raw) -> None:
            engine.generate(api.parse(json.loads(raw))).slot.release()

        for _ in range(200):
            one()
        t0 = time.perf_counter()
        for _ in range(n):
            one()
        print(f"{name:18s} {(time.perf_counter() - t0) / n * 1e6:8.1f} µs per request")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
