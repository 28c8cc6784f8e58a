"""`llmsim replay`: recorded answers in front of the simulator's own routes (the HTTP side of llmsim/replay.py).

A before-request hook (after the auth check) looks the request up in the
ReplayBook. A match answers with the recorded status, headers and body or
stream, on the recorded timing counted from the request's arrival. No match
falls through to the simulator (the generator answers as `llmsim serve`
would), or, with --strict, gets a 404 in the provider's envelope. llmsim's
own endpoints (/health, /metrics, /llmsim/...) are never replayed.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from ..errors import ApiError
from ..replay import ReplayBook, parse_body
from .body import BODY_KEY, read_body_bytes
from .generation import SSE_HEADERS

OWN_PATHS = ("/health", "/metrics", "/llmsim/")


def install_replay(app: Flask, book: ReplayBook) -> None:
    @app.before_request
    def _replay() -> Response | None:
        path = request.path
        if path == "/health" or path == "/metrics" or path.startswith("/llmsim/"):
            return None
        raw = read_body_bytes(request.environ, request.max_content_length)
        request.environ[BODY_KEY] = raw  # the generic route reads the body from here, already read
        body = parse_body(raw)
        rec = book.take(request.method, path, body)
        if rec is None:
            if book.strict:
                on = "the exact body" if not book.fields else ", ".join(book.fields)
                raise ApiError("not_found", f"llmsim replay --strict: no recording matches {request.method} {path} "
                                            f"(matched on {on})")
            return None
        t0 = g.get("t0") or time.monotonic()
        if rec.streamed:
            resp = Response(rec.paced(t0), status=rec.status, direct_passthrough=True)
            resp.headers.update(SSE_HEADERS)
        else:
            resp = Response(rec.wait_body(t0), status=rec.status)
        for k, v in rec.headers:
            resp.headers[k] = v
        return resp
