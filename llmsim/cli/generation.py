"""The generation routes (Chat, Responses, Messages, legacy Completions) from a WSGI environ to an answer.

These routes carry the load, so they are served in front of Flask: Flask's
request and response objects, its hooks and its dispatch cost several times the
work of a small answer, and under a ramp of arrivals every microsecond of a
request's set-up delays every open stream's next token. `GenerationRoutes` takes
the POSTs to a generation path and passes everything else (and every other
method on those paths) to the Flask app. The Flask route for the same paths (used
when `llmsim replay` puts its recordings first) calls the same `generation_answer`,
and both sides share the auth check, the error envelopes and the answer headers,
so what a client sees does not depend on which side answered.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from http import HTTPStatus
from typing import Any

from flask import Response, current_app, g, request

from ..api import Api, StreamEncoder, stream_bytes
from ..auth import Headers
from ..engine import new_id
from ..errors import FAULT_HEADER, ApiError, ConnectionDrop, StreamCut, server_error
from ..hangup import ClientGone, SocketWatch
from ..precise import run_due
from ..trace import TRACE_HEADER, wants_trace
from .access import authenticate, is_api_path, provider_for_path, rate_limit_headers
from .body import read_body_bytes
from .state import AppState, Generation

SOCKET_KEY = "llmsim.socket"
"""The environ key under which the WSGI handler passes the client's socket (to notice hang-ups)."""
T0_KEY = "llmsim.t0"
"""The environ key of the monotonic time the request's first line was read (TTFT runs from it)."""
ANSWER_KEY = "llmsim.answer"
"""WSGI environ key: where the server offers to send a whole answer at once (status line, headers, body), for
headers this module made itself, without start_response's per-header checks (cli/server.py, send_answer)."""
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no hop-by-hop headers (PEP 3333)
SSE_TYPE = "text/event-stream; charset=utf-8"
JSON_TYPE = "application/json"
CONVERSATION_HEADER = "x-llmsim-conversation"

WsgiApp = Callable[[dict, Callable[..., Any]], Iterable[bytes]]


@cache
def _environ_key(header: str) -> str:
    key = header.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key


class _EnvironHeaders:
    """A request's headers, read straight from its WSGI environ: what the generation routes ask of
    them (get), without werkzeug's several calls a look-up."""

    __slots__ = ("environ",)

    def __init__(self, environ: dict) -> None:
        self.environ = environ

    def get(self, name: str, /) -> str | None:
        return self.environ.get(_environ_key(name))


_FAULT_KEY, _TRACE_KEY, _CONVERSATION_KEY = (_environ_key(h) for h in (FAULT_HEADER, TRACE_HEADER,
                                                                       CONVERSATION_HEADER))


class StreamBody:
    """The SSE body of one generation: counts the stream while it runs, and frees its slot
    however it ends, even when the server closes it before the first chunk.

    Iterating gives the API's bytes; an injected mid-stream cut either drops
    the connection with no terminator, or (midstream_mode: error) sends the
    API's in-band error event and ends there. The WSGI server always calls
    close(), which is where an unstarted or abandoned stream is settled.
    """

    __slots__ = ("state", "gen", "enc", "_it", "_ended")

    def __init__(self, state: AppState, gen: Generation, enc: StreamEncoder) -> None:
        self.state, self.gen, self.enc = state, gen, enc
        self._it: Iterator[bytes] | None = None
        self._ended = False
        state.stats.stream_started()

    def __iter__(self) -> Iterator[bytes]:
        self._it = self._run()
        return self._it

    def _run(self) -> Iterator[bytes]:
        try:
            yield from stream_bytes(self.gen, self.enc)
        except StreamCut as e:
            if e.cut.error is None:
                self._end(cut=True)
                raise ConnectionDrop() from None
            yield self.enc.error_event(e.cut.error)
            self._end(cut=True)
            return
        except ClientGone:
            self._end()
            raise ConnectionDrop() from None
        self._end(completed=True)

    def _end(self, completed: bool = False, cut: bool = False) -> None:
        if self._ended:
            return
        self._ended = True
        self.gen.release()  # every choice's slot
        self.state.stats.stream_ended(disconnected=not (completed or cut), cut=cut)
        self.state.finish(self.gen, completed)

    def close(self) -> None:
        if self._it is not None:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()
        self._end()


def wait_for(state: AppState, gen: Generation) -> None:
    """A non-streaming answer: take as long as the stream would (holding its slot), then count its tokens."""
    completed = False
    try:
        gen.wait_all()
        completed = True
    except ClientGone:
        state.stats.record_disconnect()
        raise ConnectionDrop() from None
    finally:
        state.finish(gen, completed)


def generation_answer(state: AppState, api: Api, environ: dict, request_id: str, t0: float | None,
                      api_key: str | None) -> bytes | StreamBody:
    """Parse, generate, then the JSON answer (after as long as the stream would take) or the stream."""
    # A request's set-up runs without yielding: between its steps, the streams that fell due are
    # written (run_due), so a ramp of arrivals does not make every open stream late.
    started = time.monotonic()
    raw = read_body_bytes(environ, state.config.max_body_bytes)
    body_wait = time.monotonic() - started
    run_due()
    req = api.parse_bytes(raw)
    run_due()
    req.api_key = api_key
    # TTFT runs from the request's first bytes (T0_KEY, when the server stamped them), not counting
    # the wait for a slow client's body: a real server cannot start on a prompt it has not received.
    req.arrival = t0 + body_wait if t0 is not None else None
    req.conversation = environ.get(_CONVERSATION_KEY)
    req.forced_fault = environ.get(_FAULT_KEY)
    gen = state.generate(req, watch=SocketWatch(environ.get(SOCKET_KEY)))
    req.drop_prompt()  # counted and answered: the response, however long, does not hold it
    run_due()
    if req.stream and wants_trace(environ.get(_TRACE_KEY)):
        gen.start_trace(request_id)
    if not req.stream:
        wait_for(state, gen)
        body = api.answer_bytes(gen)
        run_due()
        return body
    return StreamBody(state, gen, api.encoder(gen))


def error_parts(state: AppState | None, err: ApiError, provider: str, path: str, request_id: str | None,
                *, count: bool = True) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of an error in the provider's envelope. On an API path it counts in the
    server's errors by kind (unless count=False); a 404 for /favicon.ico is no request that failed."""
    if state is not None and count and is_api_path(path):
        state.stats.record_error(err.kind)
    return err.http_status(provider), err.headers_for(provider), err.body_bytes(provider, request_id)


def error_response(err: ApiError, provider: str | None = None, *, count: bool = True) -> Response:
    """error_parts as a Flask response, for the request being handled."""
    provider = provider or provider_for_path(request.path)
    status, headers, body = error_parts(current_app.extensions.get("llmsim_state"), err, provider, request.path,
                                        getattr(g, "request_id", None), count=count)
    resp = Response(body, status=status, mimetype=JSON_TYPE)
    for k, v in headers.items():
        resp.headers[k] = v
    return resp


def unexpected_error(exc: BaseException) -> ApiError:
    """A bug: the traceback goes to the log, the client gets the provider's 500."""
    traceback.print_exception(exc, file=sys.stderr)
    return ApiError("server_error", "The server had an error while processing your request. "
                                    "(llmsim logged the details.)")


def answer_headers(state: AppState, path: str, headers: Headers, request_id: str, t0: float | None,
                   api_key: str | None, status: int) -> dict[str, str]:
    """The headers every answer carries: request ids, OpenAI's processing time, the caller's rate limits."""
    out = {"x-request-id": request_id}
    provider = provider_for_path(path)
    if provider == "openai":
        out["openai-processing-ms"] = str(int((time.monotonic() - (t0 or time.monotonic())) * 1000))
        out["openai-version"] = "2020-10-01"
    if provider == "anthropic" or headers.get("anthropic-version") is not None:
        out["request-id"] = request_id
    out.update(rate_limit_headers(state, path, headers, api_key, status))
    return out


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


_STATUS = {s: _status_line(s) for s in (200, 400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504, 529)}


class GenerationRoutes:
    """WSGI middleware in front of the Flask app: serves POSTs to the generation APIs' paths itself."""

    def __init__(self, state: AppState, apis: Iterable[Api], fallback: WsgiApp) -> None:
        self.state = state
        self.routes = {path: api for api in apis for path in api.paths}
        self.fallback = fallback

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        api = self.routes.get(environ.get("PATH_INFO", ""))
        if api is None or environ.get("REQUEST_METHOD") != "POST":
            return self.fallback(environ, start_response)
        return self.serve(api, environ, start_response)

    def serve(self, api: Api, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        state, path = self.state, environ["PATH_INFO"]
        t0 = environ.get(T0_KEY) or time.monotonic()
        request_id = "req_" + new_id("")
        headers = _EnvironHeaders(environ)
        api_key: str | None = None
        extra: dict[str, str] = {}
        try:
            api_key = authenticate(state, path, headers)
            answer = generation_answer(state, api, environ, request_id, t0, api_key)
            status = 200
        except ApiError as err:
            status, extra, answer = error_parts(state, err, provider_for_path(path), path, request_id)
        except StreamCut as e:  # an injected mid-stream fault on a non-streaming request fails before its answer
            state.stats.record_error("midstream")
            if e.cut.error is None:
                raise ConnectionDrop() from None
            status, extra, answer = error_parts(state, server_error(), provider_for_path(path), path, request_id,
                                                count=False)
        except Exception as exc:
            status, extra, answer = error_parts(state, unexpected_error(exc), provider_for_path(path), path,
                                                request_id)
        out = answer_headers(state, path, headers, request_id, t0, api_key, status)
        state.stats.record_request(path, status, api=True)
        if isinstance(answer, StreamBody):
            start_response(_STATUS[200], [("Content-Type", SSE_TYPE), *SSE_HEADERS.items(), *out.items()])
            return answer
        line = _STATUS.get(status) or _status_line(status)
        fields = [("Content-Type", JSON_TYPE), ("Content-Length", str(len(answer))), *extra.items(), *out.items()]
        send = environ.get(ANSWER_KEY)
        if send is not None and send(line, fields, answer):
            return ()
        start_response(line, fields)
        return [answer]
