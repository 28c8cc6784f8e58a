"""Flask routes: the HTTP face of the simulator.

Routes only glue: one generic route serves every API (parse with the API
module, generate with the engine, answer with the API's body or stream). Every error, including
Flask's own 404/405/413 and unexpected exceptions, leaves in the envelope of
the API the path belongs to, never as an HTML page or a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from flask import Blueprint, Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException

from ..anthropic.messages import Messages, parse_count_tokens_request
from ..anthropic.models import list_models as anthropic_models
from ..anthropic.models import retrieve_model as anthropic_model
from ..api import Api
from ..engine import new_id
from ..errors import FAULT_HEADER, ApiError, ConnectionDrop, StreamCut, server_error
from ..fields import parse_json_object
from ..hangup import ClientGone, SocketWatch
from ..openai.chat import ChatCompletions
from ..openai.completions import Completions
from ..openai.embeddings import embeddings_body, parse_embeddings_request
from ..openai.responses import Responses
from ..precise import run_due
from ..stats import metrics_registry, render_metrics
from ..tokens import get_encoding
from ..trace import TRACE_HEADER
from .access import install_access, is_api_path, is_models_path
from .admin import admin_blueprint
from .body import read_body_bytes
from .dashboard import dashboard_html
from .generation import (
    JSON_TYPE,
    SOCKET_KEY,
    SSE_HEADERS,
    T0_KEY,
    GenerationRoutes,
    StreamBody,
    answer_headers,
    error_response,
    generation_answer,
    unexpected_error,
)
from .state import AppState

if TYPE_CHECKING:  # pragma: no cover
    from ..replay import ReplayBook

MODEL_CREATED = 1_700_000_000
OWNERS = {"openai": "openai", "anthropic": "anthropic", "google": "google", "deepseek": "deepseek"}


def read_body() -> dict:
    """The JSON body; the time spent waiting for a slow client's body is noted, so it is not TTFT."""
    started = time.monotonic()
    raw = read_body_bytes(request.environ, request.max_content_length)
    g.body_wait = time.monotonic() - started
    return parse_json_object(raw)


APIS: tuple[Api, ...] = (ChatCompletions(), Responses(), Messages(), Completions())
"""Every generation API; each is served by the one generic route below."""


def api_route(state: AppState, api: Api) -> Callable[[], Response]:
    """The Flask face of a generation route (GenerationRoutes serves it first, unless replay is on)."""

    def view() -> Response:
        answer = generation_answer(state, api, request.environ, g.request_id, g.t0, g.get("api_key"))
        if isinstance(answer, StreamBody):
            resp = Response(answer, mimetype="text/event-stream", direct_passthrough=True)
            resp.headers.update(SSE_HEADERS)
            return resp
        return Response(answer, mimetype=JSON_TYPE)

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
        profile = state.generating_profile(req.model)
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

    return bp


def install_anthropic_models(app: Flask, state: AppState) -> None:
    """The Anthropic SDK pointed at the server root asks GET /v1/models, which is OpenAI's path; its
    anthropic-version header says which shape it wants. Installed after the request id and the auth check,
    which it answers with like any other API call."""

    @app.before_request
    def _models_for_anthropic_clients() -> Response | None:
        path = request.path.rstrip("/")
        if request.method != "GET" or "anthropic-version" not in request.headers or not is_models_path(path):
            return None
        try:
            if path == "/v1/models":
                return jsonify(anthropic_models(state.registry, request.args))
            return jsonify(anthropic_model(state.registry, path.removeprefix("/v1/models/")))
        except ApiError as err:
            return error_response(err, "anthropic")


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
    install_anthropic_models(app, state)  # after the auth check
    if replay is not None:
        from .replaying import install_replay

        install_replay(app, replay)  # after the auth check

    @app.after_request
    def _finish(resp: Response) -> Response:
        resp.headers.update(answer_headers(state, request.path, request.headers, g.get("request_id", ""),
                                           g.get("t0"), g.get("api_key"), resp.status_code))
        state.stats.record_request(request.url_rule.rule if request.url_rule else "unmatched", resp.status_code,
                                   api=is_api_path(request.path))
        return resp

    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "ok", "profiles": len(state.registry)})

    registry = metrics_registry(state.stats, state.schedulers, run_due)

    @app.get("/llmsim/stats")
    def stats_json() -> Response:
        return jsonify({**state.stats.to_dict(between=run_due), "schedulers": state.schedulers.snapshot()})

    @app.get("/metrics")
    def metrics() -> Response:
        # One family at a time, writing the streams due in between (a scrape takes 1-5 ms).
        return Response(render_metrics(registry, run_due), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.get("/llmsim/requests/<request_id>")
    def trace(request_id: str) -> Response:
        record = state.traces.get(request_id)
        if record is None:
            raise ApiError("not_found", f"No trace for request {request_id!r}: the server keeps the last "
                                        f"{state.traces.size} streamed requests sent with `{TRACE_HEADER}: 1`.")
        return jsonify(record)

    @app.get("/llmsim")  # the same page: Flask would answer this one with an HTML redirect
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
        return error_response(unexpected_error(exc))

    if replay is None:  # replay's hooks come first, so only without it do the generation routes skip Flask
        app.wsgi_app = GenerationRoutes(state, APIS, app.wsgi_app)  # type: ignore[method-assign]
    return app
