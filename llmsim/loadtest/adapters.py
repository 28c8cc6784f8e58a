"""API adapters: the only place where one LLM API differs from another.

The streaming client, the metrics, the histograms and the scoring are shared.
An adapter says how a request is built (path, headers, JSON body) and how one
SSE event or one non-streamed body is read. To add the Anthropic Messages API
or the OpenAI Responses API, subclass ApiAdapter, implement build_request,
read_event and read_body, and point a user class at it (see users.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .sse import MalformedStream, SseEvent


@dataclass(frozen=True)
class Prompt:
    """One prompt as a chat message list; adapters translate it to their API's shape."""

    messages: tuple[dict[str, Any], ...]
    prompt_tokens: int | None = None
    """Tokens the client counted for it (used when the server reports no usage)."""

    @classmethod
    def of_text(cls, text: str, prompt_tokens: int | None = None) -> "Prompt":
        return cls(({"role": "user", "content": text},), prompt_tokens)


@dataclass
class Usage:
    """Token usage as reported by the server; None where the server said nothing."""

    prompt_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None

    def update(self, other: "Usage | None") -> None:
        """Take every field `other` reports (APIs like Messages spread usage over several events)."""
        if other is None:
            return
        for name in ("prompt_tokens", "output_tokens", "reasoning_tokens"):
            v = getattr(other, name)
            if v is not None:
                setattr(self, name, v)


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """What one SSE event means for measurement."""

    text: str = ""
    """Visible generated text in this event ("" for role-only, usage-only or control events)."""
    reasoning: str = ""
    """Streamed reasoning text; it counts as generated content for TTFT and ITL."""
    done: bool = False
    """The stream's terminator: `[DONE]`, `message_stop` or `response.completed`."""
    usage: Usage | None = None
    error: str | None = None
    """An error the server reported inside the stream."""


NOTHING = StreamDelta()


@dataclass
class HttpRequest:
    """What the client sends: the path below --host, extra headers and the JSON body."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class ApiAdapter:
    """How to talk to one API. Subclasses override the four methods below."""

    name = "api"
    path = "/"
    api_key_env = "OPENAI_API_KEY"

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        """Headers that carry the API key."""
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def build_request(self, prompt: Prompt, *, model: str, max_tokens: int | None, stream: bool) -> HttpRequest:
        raise NotImplementedError

    def read_event(self, event: SseEvent) -> StreamDelta:
        """Interpret one SSE event; raise MalformedStream when its data cannot be read."""
        raise NotImplementedError

    def read_body(self, body: Any) -> tuple[str, str, Usage | None]:
        """(text, reasoning, usage) of a non-streamed response body (parsed JSON)."""
        raise NotImplementedError

    @staticmethod
    def load_json(data: str) -> Any:
        try:
            return json.loads(data)
        except ValueError:
            raise MalformedStream(f"event data is not JSON: {data[:80]!r}") from None


def _int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class ChatCompletionsAdapter(ApiAdapter):
    """OpenAI `POST /v1/chat/completions` (and every server that copies it)."""

    name = "chat"
    path = "/v1/chat/completions"
    max_tokens_field = "max_tokens"
    """Some deployments want `max_completion_tokens`; override in a subclass."""

    def build_request(self, prompt: Prompt, *, model: str, max_tokens: int | None, stream: bool) -> HttpRequest:
        body: dict[str, Any] = {"model": model, "messages": list(prompt.messages), "stream": stream}
        if max_tokens is not None:
            body[self.max_tokens_field] = max_tokens
        if stream:
            body["stream_options"] = {"include_usage": True}
        return HttpRequest(self.path, body)

    @staticmethod
    def _usage(u: Any) -> Usage | None:
        if not isinstance(u, dict):
            return None
        details = u.get("completion_tokens_details")
        reasoning = _int_or_none(details.get("reasoning_tokens")) if isinstance(details, dict) else None
        return Usage(_int_or_none(u.get("prompt_tokens")), _int_or_none(u.get("completion_tokens")), reasoning)

    def read_event(self, event: SseEvent) -> StreamDelta:
        data = event.data
        if data == "[DONE]":
            return StreamDelta(done=True)
        obj = self.load_json(data)
        if not isinstance(obj, dict):
            raise MalformedStream(f"event data is not a JSON object: {data[:80]!r}")
        if "error" in obj and not obj.get("choices"):
            err = obj["error"]
            return StreamDelta(error=str(err.get("message", err) if isinstance(err, dict) else err))
        text = reasoning = ""
        choices = obj.get("choices")
        if choices:
            delta = choices[0].get("delta") or {}
            text = delta.get("content") or ""
            # vLLM/DeepSeek stream reasoning as `reasoning_content`, others as `reasoning`.
            reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
            if not isinstance(text, str) or not isinstance(reasoning, str):
                raise MalformedStream("delta content is not a string")
        usage = self._usage(obj.get("usage"))
        if text or reasoning or usage:
            return StreamDelta(text=text, reasoning=reasoning, usage=usage)
        return NOTHING

    def read_body(self, body: Any) -> tuple[str, str, Usage | None]:
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            raise MalformedStream("response body has no choices")
        text = reasoning = ""
        if body["choices"]:
            msg = body["choices"][0].get("message") or {}
            text = msg.get("content") or ""
            reasoning = msg.get("reasoning_content") or msg.get("reasoning") or ""
        return text, reasoning, self._usage(body.get("usage"))
