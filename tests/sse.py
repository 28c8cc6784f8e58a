"""Test helpers for streamed APIs: a raw SSE parser and a one-shot server for canned streams."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Iterable, Iterator

import requests
from gevent import pywsgi


def parse_sse(text: str) -> list[tuple[str | None, dict | str]]:
    """(event name, data) per SSE event, in order; data is parsed JSON unless it is not JSON."""
    events = []
    for block in text.split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[len("event:"):].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:"):].strip())
        if data:
            raw = "\n".join(data)
            try:
                events.append((name, json.loads(raw)))
            except ValueError:
                events.append((name, raw))
    return events


def stream_events(url: str, body: dict, **kwargs) -> tuple[requests.Response, list[tuple[str | None, dict | str]]]:
    """POST `body` and return the response and its parsed SSE events."""
    r = requests.post(url, json=body, stream=True, timeout=30, **kwargs)
    return r, parse_sse(r.text)


@contextmanager
def canned_stream(chunks: Iterable[bytes]) -> Iterator[str]:
    """A server answering every request with 200 and these SSE bytes; yields its base URL."""
    chunks = list(chunks)

    def app(environ, start_response):
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
        return iter(chunks)

    server = pywsgi.WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.stop(timeout=1)


def opening_and_first_token(api, model: str, text: str = "Hi"):
    """An API's stream encoder for a one-token answer, and its opening events plus that token's bytes,
    exactly as the server would write them (for canned streams that then fail in band)."""
    from llmsim.engine import Engine, Request

    gen = Engine(generator=f"fixed:{text}").generate(
        Request(model=model, messages=[{"role": "user", "content": "x"}], stream=True))
    enc = api.encoder(gen)
    first = gen.plan.blocks[0]
    events = list(enc.opening())
    if enc.early_open:
        events += [enc.block_start(0, first), enc.delta(0, first, text)]
    else:
        events.append(enc.block_start(0, first) + enc.delta(0, first, text))
    return enc, [e for e in events if e]
