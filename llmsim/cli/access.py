"""Who may call the APIs and how much: the API key, the optional allow-list, rate-limit headers.

Every API path (OpenAI's, Anthropic's, any added later) is covered without its
handler doing anything: the key is read once before the request, a disallowed
key gets the provider's 401, and every answer on an API path carries the
caller's current rate-limit headers, 429s included. The checks are plain
functions of the request's headers, so the Flask hooks and the generation
routes (cli/generation.py, which answer without Flask) share them.
"""

from __future__ import annotations

from flask import Flask, Response, g, request

from ..auth import Headers, request_api_key
from ..errors import ApiError
from .state import AppState

API_PREFIXES = ("/v1/", "/openai/", "/anthropic/")


def is_api_path(path: str) -> bool:
    """Paths that answer as a provider API (not /health, /metrics or /llmsim/...)."""
    return path.startswith(API_PREFIXES)


def provider_for_path(path: str) -> str:
    """Which provider's envelope a path answers in."""
    if path.startswith("/anthropic/") or path.rstrip("/") in ("/v1/messages", "/v1/messages/count_tokens"):
        return "anthropic"
    return "openai"


def is_models_path(path: str) -> bool:
    """OpenAI's Models API paths, which Anthropic's SDK also calls when pointed at the server root."""
    path = path.rstrip("/")
    return path == "/v1/models" or path.startswith("/v1/models/")


def error_provider(path: str, headers: Headers) -> str:
    """Whose envelope an error comes in: the path's provider, or on the shared Models API the caller's."""
    provider = provider_for_path(path)
    return client_provider(provider, headers) if is_models_path(path) else provider


def client_provider(provider: str, headers: Headers) -> str:
    """Whose client is calling: Anthropic's SDK sends `anthropic-version` even on shared paths."""
    return "anthropic" if provider == "anthropic" or headers.get("anthropic-version") is not None else "openai"


def authenticate(state: AppState, path: str, headers: Headers) -> str | None:
    """The caller's API key; the provider's 401 (an ApiError) when an allow-list refuses it."""
    api_key = request_api_key(headers, client_provider(provider_for_path(path), headers))
    if state.auth is not None:
        state.auth.check(api_key)
    return api_key


def rate_limit_headers(state: AppState, path: str, headers: Headers, api_key: str | None,
                       status: int) -> dict[str, str]:
    """The caller's current limits, in its provider's headers, for an answer on an API path."""
    limiter = state.limiter
    if limiter is None or status == 401 or not is_api_path(path):
        return {}
    return limiter.headers(api_key, client_provider(provider_for_path(path), headers))


def install_access(app: Flask, state: AppState) -> None:
    """Register the auth check and the rate-limit headers on the app."""
    from .generation import error_response  # handlers installs us: import at call time

    @app.before_request
    def _authenticate() -> Response | None:
        if not is_api_path(request.path):
            return None
        try:
            g.api_key = authenticate(state, request.path, request.headers)
        except ApiError as err:  # the provider's 401
            return error_response(err, error_provider(request.path, request.headers))
        return None

    @app.after_request
    def _rate_limit_headers(resp: Response) -> Response:
        resp.headers.update(rate_limit_headers(state, request.path, request.headers, g.get("api_key"),
                                               resp.status_code))
        return resp
