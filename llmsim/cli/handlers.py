"""Flask routes: the HTTP face of the simulator.

Routes only glue: one generic route serves every API (parse with the API
module, generate with the engine, answer with the API's body or stream). Every error, including
Flask's own 404/405/413 and unexpected exceptions, leaves in the envelope of
the API the path belongs to, never as an HTML page or a traceback.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from ..anthropic.messages import Messages, parse_count_tokens_request
from ..anthropic.models import list_models as anthropic_models
from ..anthropic.models import retrieve_model as anthropic_model
from ..api import Api, StreamEncoder, stream_bytes
from ..engine import new_id
from ..errors import FAULT_HEADER, ApiError, ConnectionDrop, StreamCut, server_error
from ..fields import parse_json_object
from ..hangup import ClientGone, SocketWatch
from ..openai.chat import ChatCompletions
from ..openai.completions import Completions
from ..openai.embeddings import embeddings_body, parse_embeddings_request
from ..openai.responses import Responses
from ..stats import metrics_registry
from ..tokens import get_encoding
from ..trace import TRACE_HEADER, wants_trace
from .access import install_access, is_api_path
from .admin import admin_blueprint
from .body import read_body_bytes
from .dashboard import dashboard_html
from .state import AppState, Generation

if TYPE_CHECKING:  # pragma: no cover
    from ..replay import ReplayBook

SOCKET_KEY = "llmsim.socket"
"""The environ key under which the WSGI handler passes the client's socket (to notice hang-ups)."""
T0_KEY = "llmsim.t0"
"""The environ key of the monotonic time the request's first line was read (TTFT runs from it)."""
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no hop-by-hop headers (PEP 3333)
MODEL_CREATED = 1_700_000_000
OWNERS = {"openai": "openai", "anthropic": "anthropic", "google": "google", "deepseek": "deepseek"}


def provider_for_path(path: str) -> str:
    """Which provider's envelope a path answers in."""
    if path.startswith("/anthropic/") or path.rstrip("/") in ("/v1/messages", "/v1/messages/count_tokens"):
        return "anthropic"
    return "openai"


def error_response(err: ApiError, provider: str | None = None, *, count: bool = True) -> Response:
    """The error in the provider's envelope. On an API path it counts in the server's errors by kind
    (unless count=False); a 404 for /favicon.ico is no request that failed."""
    provider = provider or provider_for_path(request.path)
    state = current_app.extensions.get("llmsim_state")
    if state is not None and count and is_api_path(request.path):
        state.stats.record_error(err.kind)
    resp = Response(err.body_bytes(provider, getattr(g, "request_id", None)), status=err.http_status(provider),
                    mimetype="application/json")
    for k, v in err.headers_for(provider).items():
        resp.headers[k] = v
    return resp


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


def stream_response(state: AppState, gen: Generation, enc: StreamEncoder) -> Response:
    """A streamed response nothing buffers: no Content-Length, no compression."""
    resp = Response(StreamBody(state, gen, enc), mimetype="text/event-stream", direct_passthrough=True)
    resp.headers.update(SSE_HEADERS)
    return resp


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


def read_body() -> dict:
    """The JSON body; the time spent waiting for a slow client's body is noted, so it is not TTFT."""
    started = time.monotonic()
    raw = read_body_bytes(request, request.max_content_length)
    g.body_wait = time.monotonic() - started
    return parse_json_object(raw)


APIS: tuple[Api, ...] = (ChatCompletions(), Responses(), Messages(), Completions())
"""Every generation API; each is served by the one generic route below."""


def api_route(state: AppState, api: Api) -> Callable[[], Response]:
    """The one route every API shares: parse, generate, then answer at once or stream."""

    def view() -> Response:
        req = api.parse(read_body())
        req.api_key = g.get("api_key")
        # TTFT runs from the request's first bytes (T0_KEY, when the server stamped them), not counting
        # the wait for a slow client's body: a real server cannot start on a prompt it has not received.
        req.arrival = g.t0 + g.get("body_wait", 0.0) if g.get("t0") is not None else None
        req.conversation = request.headers.get("x-llmsim-conversation")
        req.forced_fault = request.headers.get(FAULT_HEADER)
        gen = state.generate(req, watch=SocketWatch(request.environ.get(SOCKET_KEY)))
        req.drop_prompt()  # counted and answered: the response, however long, does not hold it
        if req.stream and wants_trace(request.headers.get(TRACE_HEADER)):
            gen.start_trace(g.request_id)
        if not req.stream:
            wait_for(state, gen)
            return jsonify(api.body(gen))
        return stream_response(state, gen, api.encoder(gen))

    view.__name__ = api.name.replace(".", "_")
    return view


def openai_blueprint(state: AppState, name: str) -> Blueprint:
    """OpenAI's Models and Embeddings APIs (the generation APIs are registered from APIS)."""
    bp = Blueprint(name, __name__)

    @bp.post("/embeddings")
    def embeddings() -> Response:
        req, encoding_format = parse_embeddings_request(read_body())
        req.api_key = g.get("api_key")
        # TTFT runs from the request's arrival, not counting the wait for a slow client's body:
        # a real server cannot start on a prompt it has not received.
        req.arrival = g.t0 + g.get("body_wait", 0.0) if "t0" in g else None
        req.forced_fault = request.headers.get(FAULT_HEADER)
        try:
            result = state.embed(req, watch=SocketWatch(request.environ.get(SOCKET_KEY)))
        except ClientGone:
            state.stats.record_disconnect()
            raise ConnectionDrop() from None
        return jsonify(embeddings_body(result, encoding_format))

    @bp.get("/models")
    def list_models() -> Response:
        return jsonify({"object": "list", "data": [model_object(state, m) for m in state.registry.model_names()]})

    @bp.get("/models/<path:model_id>")
    def get_model(model_id: str) -> Response:
        if state.registry.match(model_id) is None:
            raise ApiError("not_found", f"The model `{model_id}` does not exist or you do not have access to it.",
                           param="model", code="model_not_found")
        return jsonify(model_object(state, model_id))

    return bp


ANTHROPIC_PREFIXES = ("/v1", "/anthropic/v1")
"""Messages answers at Anthropic's own path and under /anthropic; Models only under /anthropic
(plain /v1/models is OpenAI's unless the request carries `anthropic-version`)."""


def anthropic_blueprint(state: AppState) -> Blueprint:
    """Anthropic's token counting and Models APIs. `x-api-key`, `anthropic-version`
    and `anthropic-beta` are accepted and not required."""
    bp = Blueprint("anthropic", __name__)

    def count_tokens() -> Response:
        req = parse_count_tokens_request(read_body())
        profile = state.resolve_profile(req.model)
        return jsonify({"input_tokens": state.count_prompt(req, profile, get_encoding(profile.encoding),
                                                           check=False)})

    for prefix in ANTHROPIC_PREFIXES:
        bp.add_url_rule(f"{prefix}/messages/count_tokens", "count_tokens", count_tokens, methods=["POST"])

    @bp.get("/anthropic/v1/models")
    def list_models() -> Response:
        return jsonify(anthropic_models(state.registry, request.args))

    @bp.get("/anthropic/v1/models/<path:model_id>")
    def get_model(model_id: str) -> Response:
        return jsonify(anthropic_model(state.registry, model_id))

    @bp.before_app_request
    def _models_for_anthropic_clients() -> Response | None:
        # The Anthropic SDK pointed at the server root asks GET /v1/models, which
        # is OpenAI's path; its anthropic-version header says which shape it wants.
        path = request.path.rstrip("/")
        if request.method != "GET" or "anthropic-version" not in request.headers or not (
                path == "/v1/models" or path.startswith("/v1/models/")):
            return None
        try:
            if path == "/v1/models":
                return jsonify(anthropic_models(state.registry, request.args))
            return jsonify(anthropic_model(state.registry, path.removeprefix("/v1/models/")))
        except ApiError as err:
            return error_response(err, "anthropic")

    @bp.after_app_request
    def _request_id(resp: Response) -> Response:
        if provider_for_path(request.path) == "anthropic" or "anthropic-version" in request.headers:
            resp.headers["request-id"] = g.get("request_id", "")
        return resp

    return bp


def model_object(state: AppState, model_id: str) -> dict:
    p = state.registry.match(model_id)
    return {"id": model_id, "object": "model", "created": MODEL_CREATED,
            "owned_by": OWNERS.get(p.provider if p else "", "llmsim")}


def create_app(state: AppState, replay: ReplayBook | None = None) -> Flask:
    """The WSGI app for one server state (with `replay`: recorded answers first, see cli/replaying.py)."""
    app = Flask("llmsim")
    app.config["MAX_CONTENT_LENGTH"] = state.config.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]  # DefaultJSONProvider's settings
    app.json.compact = True  # type: ignore[attr-defined]
    app.extensions["llmsim_state"] = state

    app.register_blueprint(openai_blueprint(state, "openai_v1"), url_prefix="/v1")
    app.register_blueprint(openai_blueprint(state, "openai_prefixed"), url_prefix="/openai/v1")
    app.register_blueprint(anthropic_blueprint(state))
    app.register_blueprint(admin_blueprint(state))
    for api in APIS:
        for path in api.paths:
            app.add_url_rule(path, f"{api.name}:{path}", api_route(state, api), methods=["POST"])

    @app.before_request
    def _start() -> None:
        g.request_id = "req_" + new_id("")
        g.t0 = request.environ.get(T0_KEY) or time.monotonic()

    install_access(app, state)  # after _start: auth answers carry the request id
    if replay is not None:
        from .replaying import install_replay

        install_replay(app, replay)  # after the auth check

    @app.after_request
    def _finish(resp: Response) -> Response:
        resp.headers["x-request-id"] = g.get("request_id", "")
        if provider_for_path(request.path) == "openai":
            resp.headers["openai-processing-ms"] = str(int((time.monotonic() - g.get("t0", time.monotonic())) * 1000))
            resp.headers["openai-version"] = "2020-10-01"
        state.stats.record_request(request.url_rule.rule if request.url_rule else "unmatched", resp.status_code,
                                   api=is_api_path(request.path))
        return resp

    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "ok", "profiles": len(state.registry)})

    registry = metrics_registry(state.stats, state.schedulers)

    @app.get("/llmsim/stats")
    def stats_json() -> Response:
        return jsonify({**state.stats.to_dict(), "schedulers": state.schedulers.snapshot()})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.get("/llmsim/requests/<request_id>")
    def trace(request_id: str) -> Response:
        record = state.traces.get(request_id)
        if record is None:
            raise ApiError("not_found", f"No trace for request {request_id!r}: the server keeps the last "
                                        f"{state.traces.size} streamed requests sent with `{TRACE_HEADER}: 1`.")
        return jsonify(record)

    @app.get("/llmsim/")
    def dashboard() -> Response:
        return Response(dashboard_html(), mimetype="text/html")

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> Response:
        return error_response(err)

    @app.errorhandler(StreamCut)
    def _cut_before_answer(e: StreamCut) -> Response:
        # An injected mid-stream fault on a non-streaming request: it fails before its answer.
        state.stats.record_error("midstream")
        if e.cut.error is None:
            raise ConnectionDrop()
        return error_response(server_error(), count=False)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        allowed: list[str] = list(getattr(exc, "valid_methods", None) or [])
        if code == 404:
            err = ApiError("not_found", f"Invalid URL ({request.method} {request.path})")
        elif code == 405:
            err = ApiError("method_not_allowed", f"Method {request.method} is not allowed for {request.path}; "
                                                 f"allowed: {', '.join(sorted(allowed))}.")
        elif code == 413:
            err = ApiError("request_too_large", f"Request too large: the limit is {state.config.max_body_bytes} bytes.")
        else:
            err = ApiError("invalid_request", exc.description or exc.name, status=code)
        resp = error_response(err)
        if code == 405 and allowed:
            resp.headers["Allow"] = ", ".join(allowed)
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        traceback.print_exception(exc, file=sys.stderr)
        return error_response(ApiError("server_error", "The server had an error while processing your request. "
                                                       "(llmsim logged the details.)"))

    return app
