"""OpenAI Chat Completions: validate a request, build the body and the SSE chunks.

Chunk bytes are built from a per-response prefix and suffix computed once, so a
streamed token costs one json.dumps of its text, not a dict and a re-encode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import ApiError, invalid
from ..fields import (check_enum, get_bool, get_int, get_list, get_number, get_object, get_stop, get_str,
                      wrong_type)
from ..latency import REASONING_EFFORT_FACTORS
from ..stream import TokenPlan

ROLES = ("system", "assistant", "user", "function", "tool", "developer")
DONE = b"data: [DONE]\n\n"


@dataclass
class ChatRequest:
    model: str
    messages: list[dict]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"
    stop: list[str] = field(default_factory=list)
    reasoning_effort: str | None = None


def parse_chat_request(body: dict) -> ChatRequest:
    """Validate a Chat Completions body as OpenAI does; 400 naming the field otherwise."""
    model = get_str(body, "model", required=True, nonempty=True)
    messages = get_list(body, "messages", required=True, nonempty=True)
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise wrong_type(param, "an object", msg)
        if "role" not in msg:
            raise invalid(f"Missing required parameter: '{param}.role'.", param=f"{param}.role",
                          code="missing_required_parameter")
        check_enum(msg["role"], ROLES, f"{param}.role")
        content = msg.get("content")
        if content is None:
            if msg["role"] != "assistant":
                raise invalid(f"Missing required parameter: '{param}.content'.", param=f"{param}.content",
                              code="missing_required_parameter")
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise invalid(f"Invalid '{param}.content[{j}]': expected an object with a 'type'.",
                                  param=f"{param}.content[{j}]", code="invalid_type")
        elif not isinstance(content, str):
            raise wrong_type(f"{param}.content", "a string or an array of content parts", content)
    stream = get_bool(body, "stream")
    options = get_object(body, "stream_options")
    if options is not None and not stream:
        raise invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                      param="stream_options", code="invalid_value")
    include_usage = get_bool(options or {}, "include_usage", param="stream_options.include_usage")
    n = get_int(body, "n", minimum=1, maximum=128)
    if n is not None and n > 1:
        raise invalid(f"llmsim serves one choice per request: 'n' must be 1, got {n}. Send {n} requests instead.",
                      param="n", code="invalid_value")
    max_tokens_param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = get_int(body, max_tokens_param, minimum=1)
    get_number(body, "temperature", minimum=0, maximum=2)
    get_number(body, "top_p", minimum=0, maximum=1)
    get_number(body, "presence_penalty", minimum=-2, maximum=2)
    get_number(body, "frequency_penalty", minimum=-2, maximum=2)
    effort = get_str(body, "reasoning_effort")
    if effort is not None:
        check_enum(effort, tuple(REASONING_EFFORT_FACTORS), "reasoning_effort")
    return ChatRequest(model=model, messages=messages, stream=stream, include_usage=include_usage,
                       max_tokens=max_tokens, max_tokens_param=max_tokens_param, stop=get_stop(body, "stop", 4),
                       reasoning_effort=effort)


def chat_usage(prompt_tokens: int, plan: TokenPlan) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": plan.completion_tokens,
        "total_tokens": prompt_tokens + plan.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": plan.reasoning_tokens, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def chat_completion(meta: dict, plan: TokenPlan, prompt_tokens: int) -> dict:
    """The non-streaming `chat.completion` object."""
    return {
        **meta,
        "object": "chat.completion",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": plan.text, "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": plan.finish_reason,
        }],
        "usage": chat_usage(prompt_tokens, plan),
        "service_tier": "default",
    }


class ChatChunkEncoder:
    """SSE bytes for one streamed `chat.completion.chunk` sequence."""

    def __init__(self, meta: dict, include_usage: bool) -> None:
        head = json.dumps({**meta, "object": "chat.completion.chunk"}, separators=(",", ":"))[:-1]
        self._head = f'data: {head},"service_tier":"default","choices":[{{"index":0,"delta":'.encode()
        tail = ',"usage":null' if include_usage else ""
        self._content_tail = f'}},"logprobs":null,"finish_reason":null}}]{tail}}}\n\n'.encode()
        self._tail_usage = tail
        self._meta_head = f'data: {head},"service_tier":"default",'.encode()

    def role(self) -> bytes:
        return self._head + b'{"role":"assistant","content":"","refusal":null' + self._content_tail

    def content(self, text: str) -> bytes:
        return self._head + b'{"content":' + json.dumps(text).encode() + self._content_tail

    def finish(self, reason: str) -> bytes:
        return (self._head + b'{},"logprobs":null,"finish_reason":' + json.dumps(reason).encode()
                + f"}}]{self._tail_usage}}}\n\n".encode())

    def usage(self, usage: dict) -> bytes:
        return self._meta_head + b'"choices":[],"usage":' + json.dumps(usage, separators=(",", ":")).encode() + b"}\n\n"

    @staticmethod
    def error_event(err: ApiError) -> bytes:
        """An in-band failure after the 200: a `data: {"error": {...}}` chunk, which the SDK raises as APIError."""
        return b"data: " + json.dumps(err.openai_body(), separators=(",", ":")).encode() + b"\n\n"
