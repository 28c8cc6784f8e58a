"""Who may call the APIs and how much: the API key, the optional allow-list, rate-limit headers.

Installed as request hooks, so every API path (OpenAI's, Anthropic's, any added
later) is covered without its handler doing anything: the key is read once
before the request, a disallowed key gets the provider's 401, and every answer
on an API path carries the caller's current rate-limit headers, 429s included.
"""

from __future__ import annotations

from flask import Flask, Response, g, request

from ..auth import request_api_key
from ..errors import ApiError
from .state import AppState

API_PREFIXES = ("/v1/", "/openai/", "/anthropic/")


def is_api_path(path: str) -> bool:
    """Paths that answer as a provider API (not /health, /metrics or /llmsim/...)."""
    return path.startswith(API_PREFIXES)


def client_provider(provider: str) -> str:
    """Whose client is calling: Anthropic's SDK sends `anthropic-version` even on shared paths."""
    return "anthropic" if provider == "anthropic" or "anthropic-version" in request.headers else "openai"


def install_access(app: Flask, state: AppState) -> None:
    """Register the auth check and the rate-limit headers on the app."""
    from .handlers import error_response, provider_for_path  # handlers installs us: import at call time


    @app.before_request
    def _authenticate() -> Response | None:
        if not is_api_path(request.path):
            return None
        provider = provider_for_path(request.path)
        g.api_key = request_api_key(request.headers, client_provider(provider))
        if state.auth is not None:
            try:
                state.auth.check(g.api_key)
            except ApiError as err:  # the provider's 401
                return error_response(err, provider)
        return None

    @app.after_request
    def _rate_limit_headers(resp: Response) -> Response:
        limiter = state.limiter
        if limiter is not None and is_api_path(request.path) and resp.status_code != 401:
            provider = client_provider(provider_for_path(request.path))
            resp.headers.update(limiter.headers(g.get("api_key"), provider))
        return resp
