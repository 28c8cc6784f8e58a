"""Provider error envelopes.

Every failure llmsim answers with is an ApiError of a provider-neutral kind;
the API that serves the request renders it in its own envelope, so one
validation or fault path serves OpenAI and Anthropic alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

# kind -> (HTTP status, OpenAI error type, Anthropic error type), as documented
# by each provider.
KINDS: dict[str, tuple[int, str, str]] = {
    "invalid_request": (400, "invalid_request_error", "invalid_request_error"),
    "authentication": (401, "invalid_request_error", "authentication_error"),
    "permission": (403, "invalid_request_error", "permission_error"),
    "not_found": (404, "invalid_request_error", "not_found_error"),
    "method_not_allowed": (405, "invalid_request_error", "invalid_request_error"),
    "request_too_large": (413, "invalid_request_error", "request_too_large"),
    "rate_limit": (429, "requests", "rate_limit_error"),
    "server_error": (500, "server_error", "api_error"),
    "unavailable": (503, "server_error", "api_error"),
    "overloaded": (503, "server_error", "overloaded_error"),
    # The batch queue is full (scheduler.QueueFull): OpenAI answers 429 with a
    # server_error body, Anthropic 529 overloaded_error.
    "model_overloaded": (429, "server_error", "overloaded_error"),
}
ANTHROPIC_OVERLOADED_STATUS = 529


@dataclass
class ApiError(Exception):
    """An error answer: kind picks status and type, message names the field at fault."""

    kind: str
    message: str
    param: str | None = None
    code: str | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    openai_type: str | None = None
    anthropic_message: str | None = None  # when Anthropic words the same error differently

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown error kind {self.kind!r}")
        super().__init__(self.message)

    def http_status(self, provider: str) -> int:
        if self.status is not None:
            return self.status
        if provider == "anthropic" and self.kind in ("overloaded", "model_overloaded"):
            return ANTHROPIC_OVERLOADED_STATUS
        return KINDS[self.kind][0]

    def openai_body(self) -> dict:
        """OpenAI's envelope: {"error": {"message", "type", "param", "code"}}."""
        return {"error": {"message": self.message, "type": self.openai_type or KINDS[self.kind][1],
                          "param": self.param, "code": self.code}}

    def anthropic_body(self, request_id: str | None = None) -> dict:
        """Anthropic's envelope: {"type": "error", "error": {"type", "message"}}."""
        body: dict = {"type": "error", "error": {"type": KINDS[self.kind][2],
                                                "message": self.anthropic_message or self.message}}
        if request_id:
            body["request_id"] = request_id
        return body

    def body(self, provider: str, request_id: str | None = None) -> dict:
        return self.anthropic_body(request_id) if provider == "anthropic" else self.openai_body()

    def body_bytes(self, provider: str, request_id: str | None = None) -> bytes:
        return json.dumps(self.body(provider, request_id), separators=(",", ":")).encode()


OPENAI_OVERLOADED_MESSAGE = ("That model is currently overloaded with other requests. You can retry your request, "
                             "or contact us through our help center at help.openai.com if the error persists.")


def model_overloaded(retry_after: str) -> ApiError:
    """The batch queue is full: OpenAI's overloaded 429 (Anthropic: 529 "Overloaded"), with Retry-After."""
    return ApiError("model_overloaded", OPENAI_OVERLOADED_MESSAGE, headers={"Retry-After": retry_after},
                    anthropic_message="Overloaded")


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """The common 400: a request field is missing, mistyped or out of range."""
    return ApiError("invalid_request", message, param=param, code=code)
