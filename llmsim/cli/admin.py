"""Runtime control: GET/POST /llmsim/config changes error rates, rate limits and the forced profile.

Disabled (404) unless the server runs with --admin-token; every call must
carry that token as `Authorization: Bearer TOKEN`. A POST is validated whole
before anything changes, so a bad change answers 400 and leaves the running
config as it was.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, jsonify, request

from ..auth import request_api_key
from ..errors import ApiError, invalid
from ..validation import ValidationError
from .body import read_json_body
from .state import AppState

SOURCE = "POST /llmsim/config"
RUNTIME_KEYS = ("errors", "rate_limits", "latency_profile")


def admin_blueprint(state: AppState) -> Blueprint:
    bp = Blueprint("llmsim_admin", __name__)

    def authorize() -> None:
        token = state.config.admin_token
        if not token:
            raise ApiError("not_found", "Runtime control is disabled: start llmsim with --admin-token TOKEN "
                                        "(or LLMSIM_ADMIN_TOKEN) to enable /llmsim/config.")
        given = request_api_key(request.headers, "openai") or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError("authentication", "Missing or wrong admin token: send Authorization: Bearer "
                                             "<the --admin-token value>.", code="invalid_api_key")

    @bp.get("/llmsim/config")
    def show() -> Response:
        authorize()
        return jsonify(state.runtime_config())

    @bp.post("/llmsim/config")
    def change() -> Response:
        authorize()
        body = read_json_body(request.environ, request.max_content_length)
        unknown = sorted(set(body) - set(RUNTIME_KEYS))
        if unknown:
            raise invalid(f"Unknown setting {unknown[0]!r}: /llmsim/config changes {', '.join(RUNTIME_KEYS)}.",
                          param=unknown[0], code="unknown_parameter")
        try:
            state.apply(body, SOURCE)
        except ValidationError as e:
            raise invalid(f"{e.key}: {e.reason}. Nothing was changed.", param=e.key, code="invalid_value") from None
        return jsonify(state.runtime_config())

    return bp
