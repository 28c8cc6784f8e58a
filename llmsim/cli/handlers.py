"""Flask routes: the HTTP face of the simulator.

Routes only glue: parse with the API module, plan with AppState.generate, pace
with the Pacer, encode with the API's chunk encoder. Every error, including
Flask's own 404/405/413 and unexpected exceptions, leaves in the envelope of
the API the path belongs to, never as an HTML page or a traceback.
"""

from __future__ import annotations

import sys
import time
import traceback
from typing import Callable, Iterable, Iterator

from flask import Blueprint, Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ..anthropic.messages import (MessageEventEncoder, count_input_tokens, message_body, message_events,
                                  parse_count_tokens_request, parse_messages_request, prompt_messages)
from ..anthropic.models import list_models as anthropic_models, retrieve_model as anthropic_model
from ..errors import ApiError, ConnectionDrop, StreamCut, server_error
from ..openai.chat import DONE, ChatChunkEncoder, chat_completion, chat_usage, parse_chat_request
from ..openai.responses import ResponseBuilder, ResponseEventEncoder, parse_responses_request, response_events
from ..tokens import count_chat_tokens, get_encoding
from .access import install_access
from .admin import admin_blueprint
from .body import read_json_body
from .state import AppState, Generation

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no hop-by-hop headers (PEP 3333)
MODEL_CREATED = 1_700_000_000
OWNERS = {"openai": "openai", "anthropic": "anthropic", "google": "google", "deepseek": "deepseek"}


def provider_for_path(path: str) -> str:
    """Which provider's envelope a path answers in."""
    if path.startswith("/anthropic/") or path.rstrip("/") in ("/v1/messages", "/v1/messages/count_tokens"):
        return "anthropic"
    return "openai"


def error_response(err: ApiError, provider: str | None = None) -> Response:
    provider = provider or provider_for_path(request.path)
    resp = Response(err.body_bytes(provider, getattr(g, "request_id", None)), status=err.http_status(provider),
                    mimetype="application/json")
    for k, v in err.headers_for(provider).items():
        resp.headers[k] = v
    return resp


def sse_response(chunks: Iterable[bytes], headers: dict[str, str] | None = None) -> Response:
    """A streamed response nothing buffers: no Content-Length, no compression."""
    resp = Response(chunks, mimetype="text/event-stream", direct_passthrough=True)
    resp.headers.update(SSE_HEADERS)
    if headers:
        resp.headers.update(headers)
    return resp


def stream_response(state: AppState, gen: Generation, body: Callable[[], Iterator[bytes]],
                    headers: dict[str, str] | None = None,
                    error_event: Callable[[ApiError], bytes] | None = None) -> Response:
    """The SSE response of one generation; its slot is freed however the stream ends.

    `error_event` is the API's in-band error encoder, used by an injected mid-stream fault.
    """
    resp = sse_response(tracked_stream(state, gen, body, error_event), headers)
    resp.call_on_close(gen.slot.release)  # also if the body is never iterated
    return resp


def tracked_stream(state: AppState, gen: Generation, body: Callable[[], Iterator[bytes]],
                   error_event: Callable[[ApiError], bytes] | None = None) -> Iterator[bytes]:
    """Wrap a chunk generator: counts the stream while it runs, frees it when the client goes,
    and carries out an injected mid-stream cut, the same way for every API.

    A cut either drops the connection with no terminator, or (midstream_mode: error)
    sends the API's own in-band `error_event` and ends the body there.
    """
    state.stats.stream_started()
    completed = cut = False
    try:
        try:
            yield from body()
            completed = True
        except StreamCut as e:
            cut = True
            if e.cut.error is None or error_event is None:
                raise ConnectionDrop() from None
            yield error_event(e.cut.error)
    finally:
        # Runs on normal end, on a cut, and on GeneratorExit when the client disconnects.
        gen.slot.release()
        state.stats.stream_ended(disconnected=not (completed or cut))
        state.finish(gen, completed)


def wait_for(state: AppState, gen: Generation) -> None:
    """A non-streaming answer: take as long as the stream would (holding its slot), then count its tokens."""
    completed = False
    try:
        gen.wait_all()
        completed = True
    finally:
        state.finish(gen, completed)


def read_body() -> dict:
    return read_json_body(request, request.max_content_length)


def openai_blueprint(state: AppState, name: str) -> Blueprint:
    bp = Blueprint(name, __name__)

    @bp.post("/chat/completions")
    def chat_completions() -> Response:
        req = parse_chat_request(read_body())
        gen = state.generate(req.model, {"model": req.model, "messages": req.messages},
                             count_prompt=lambda enc: count_chat_tokens(req.messages, enc),
                             max_tokens=req.max_tokens, max_tokens_param=req.max_tokens_param, stop=req.stop,
                             effort=req.reasoning_effort)
        meta = {"id": state.new_id("chatcmpl-"), "object": "chat.completion", "created": gen.created,
                "model": req.model, "system_fingerprint": "fp_llmsim"}
        if not req.stream:
            wait_for(state, gen)
            return jsonify(chat_completion(meta, gen.plan, gen.prompt_tokens))
        enc = ChatChunkEncoder(meta, req.include_usage)

        def chunks() -> Iterator[bytes]:
            yield enc.role()
            for piece in gen.paced():
                yield enc.content(piece)
            yield enc.finish(gen.plan.finish_reason)
            if req.include_usage:
                yield enc.usage(chat_usage(gen.prompt_tokens, gen.plan))
            yield DONE

        return stream_response(state, gen, chunks, error_event=enc.error_event)

    @bp.get("/models")
    def list_models() -> Response:
        return jsonify({"object": "list", "data": [model_object(state, m) for m in state.registry.model_names()]})

    @bp.get("/models/<path:model_id>")
    def get_model(model_id: str) -> Response:
        if state.registry.match(model_id) is None:
            raise ApiError("not_found", f"The model `{model_id}` does not exist or you do not have access to it.",
                           param="model", code="model_not_found")
        return jsonify(model_object(state, model_id))

    @bp.post("/responses")
    def create_response() -> Response:
        req = parse_responses_request(read_body())
        gen = state.generate(req.model, {"model": req.model, "messages": req.messages},
                             count_prompt=lambda enc: count_chat_tokens(req.messages, enc),
                             max_tokens=req.max_output_tokens, max_tokens_param="max_output_tokens",
                             effort=req.effort, prompt_param="input")
        builder = ResponseBuilder(state.new_id("resp_"), req.model, gen.created, req.echo,
                                  reasoning=gen.plan.reasoning_tokens > 0, message_id=state.new_id("msg_"),
                                  reasoning_id=state.new_id("rs_"))
        if not req.stream:
            wait_for(state, gen)
            return jsonify(builder.final(gen.plan, gen.prompt_tokens, output_text=True))
        enc = ResponseEventEncoder(builder)
        return stream_response(state, gen, lambda: response_events(enc, gen.plan, gen.paced, gen.prompt_tokens),
                               error_event=enc.error_event)

    return bp


ANTHROPIC_PREFIXES = ("/v1", "/anthropic/v1")
"""Messages answers at Anthropic's own path and under /anthropic; Models only under /anthropic
(plain /v1/models is OpenAI's unless the request carries `anthropic-version`)."""


def anthropic_blueprint(state: AppState) -> Blueprint:
    """Anthropic's Messages, token counting and Models APIs. `x-api-key`, `anthropic-version`
    and `anthropic-beta` are accepted and not required."""
    bp = Blueprint("anthropic", __name__)

    def create_message() -> Response:
        req = parse_messages_request(read_body())
        gen = state.generate(req.model, {"model": req.model, "messages": prompt_messages(req)},
                             count_prompt=lambda enc: count_input_tokens(req, enc), max_tokens=req.max_tokens,
                             stop=req.stop_sequences)
        meta = {"id": state.new_id("msg_"), "model": req.model}
        if not req.stream:
            wait_for(state, gen)
            return jsonify(message_body(meta, gen.plan, gen.prompt_tokens))
        enc = MessageEventEncoder(meta, gen.prompt_tokens)
        return stream_response(state, gen, lambda: message_events(enc, gen.plan, gen.paced),
                               error_event=enc.error_event)

    def count_tokens() -> Response:
        req = parse_count_tokens_request(read_body())
        enc = get_encoding(state.resolve_profile(req.model).encoding)
        return jsonify({"input_tokens": count_input_tokens(req, enc)})

    for prefix in ANTHROPIC_PREFIXES:
        bp.add_url_rule(f"{prefix}/messages", "messages", create_message, methods=["POST"])
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


def create_app(state: AppState) -> Flask:
    """The WSGI app for one server state."""
    app = Flask("llmsim")
    app.config["MAX_CONTENT_LENGTH"] = state.config.max_body_bytes
    app.json.sort_keys = False
    app.json.compact = True
    app.extensions["llmsim_state"] = state

    app.register_blueprint(openai_blueprint(state, "openai_v1"), url_prefix="/v1")
    app.register_blueprint(openai_blueprint(state, "openai_prefixed"), url_prefix="/openai/v1")
    app.register_blueprint(anthropic_blueprint(state))
    app.register_blueprint(admin_blueprint(state))

    @app.before_request
    def _start() -> None:
        g.request_id = "req_" + state.new_id("")
        g.t0 = time.monotonic()

    install_access(app, state)  # after _start: auth answers carry the request id

    @app.after_request
    def _finish(resp: Response) -> Response:
        resp.headers["x-request-id"] = g.get("request_id", "")
        if provider_for_path(request.path) == "openai":
            resp.headers["openai-processing-ms"] = str(int((time.monotonic() - g.get("t0", time.monotonic())) * 1000))
            resp.headers["openai-version"] = "2020-10-01"
        state.stats.record_request(request.url_rule.rule if request.url_rule else "unmatched", resp.status_code)
        return resp

    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "ok", "profiles": len(state.registry)})

    @app.get("/llmsim/stats")
    def stats_json() -> Response:
        return jsonify({**state.stats.to_dict(), "schedulers": state.schedulers.snapshot()})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(state.stats.to_prometheus() + state.schedulers.to_prometheus(),
                        mimetype="text/plain; version=0.0.4")

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> Response:
        return error_response(err)

    @app.errorhandler(StreamCut)
    def _cut_before_answer(e: StreamCut) -> Response:
        # An injected mid-stream fault on a non-streaming request: it fails before its answer.
        if e.cut.error is None:
            raise ConnectionDrop()
        return error_response(server_error())

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        if code == 404:
            err = ApiError("not_found", f"Invalid URL ({request.method} {request.path})")
        elif code == 405:
            err = ApiError("method_not_allowed", f"Method {request.method} is not allowed for {request.path}; "
                                                 f"allowed: {', '.join(sorted(exc.valid_methods or []))}.")
        elif code == 413:
            err = ApiError("request_too_large", f"Request too large: the limit is {state.config.max_body_bytes} bytes.")
        else:
            err = ApiError("invalid_request", exc.description or exc.name, status=code)
        resp = error_response(err)
        if code == 405 and getattr(exc, "valid_methods", None):
            resp.headers["Allow"] = ", ".join(exc.valid_methods)
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        traceback.print_exception(exc, file=sys.stderr)
        return error_response(ApiError("server_error", "The server had an error while processing your request. "
                                                       "(llmsim logged the details.)"))

    return app
