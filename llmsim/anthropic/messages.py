"""Anthropic Messages: validate a request as Anthropic does, build the message and its SSE events.

Validation errors use Anthropic's wording, `<field path>: <reason>` with dotted
paths (`messages.0.content`), and leave in Anthropic's envelope because the
routes live under Anthropic paths. The stream is Anthropic's exact event
sequence; a text delta is built from a precomputed prefix and suffix, so a
token costs one json.dumps of its text.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import tiktoken

from ..errors import ApiError, invalid
from ..fields import json_type
from ..stream import TokenPlan
from ..tokens import count_chat_tokens, message_text

ROLES = ("user", "assistant")
TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")
PING = b'event: ping\ndata: {"type":"ping"}\n\n'
MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def bad(path: str, reason: str) -> ApiError:
    """A 400 in Anthropic's wording: the field path, then what is wrong with it."""
    return invalid(f"{path}: {reason}", param=path)


@dataclass
class MessagesRequest:
    model: str
    messages: list[dict]
    system: str | list | None = None
    max_tokens: int | None = None
    stop_sequences: list[str] = field(default_factory=list)
    stream: bool = False


# ---------------------------------------------------------------- typed readers (Anthropic wording)

def _integer(body: dict, key: str, *, required: bool = False, minimum: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        if required:
            raise bad(key, "Field required")
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(key, "Input should be a valid integer")
    if minimum is not None and value < minimum:
        raise bad(key, f"Input should be greater than or equal to {minimum}")
    return value


def _number(body: dict, key: str, minimum: float, maximum: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(key, "Input should be a valid number")
    if not math.isfinite(value):
        raise bad(key, "Input should be a finite number")
    if value < minimum:
        raise bad(key, f"Input should be greater than or equal to {minimum}")
    if value > maximum:
        raise bad(key, f"Input should be less than or equal to {maximum}")
    return float(value)


def _object(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise bad(path, "Input should be a valid dictionary")
    return value


def _list(value: Any, path: str) -> list:
    if not isinstance(value, list):
        raise bad(path, "Input should be a valid list")
    return value


def _blocks(blocks: list, path: str, *, text_only: bool = False) -> None:
    """Content blocks: objects with a string `type`; text blocks carry non-empty text."""
    for j, block in enumerate(blocks):
        where = f"{path}.{j}"
        _object(block, where)
        kind = block.get("type")
        if not isinstance(kind, str):
            raise bad(f"{where}.type", "Field required" if kind is None else "Input should be a valid string")
        if text_only and kind != "text":
            raise bad(f"{where}.type", f"Input should be 'text', got {kind!r}")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise bad(f"{where}.text", "Field required" if text is None else "Input should be a valid string")
            if not text:
                raise bad(where, "text content blocks must be non-empty")


def _messages(body: dict) -> list[dict]:
    if body.get("messages") is None:
        raise bad("messages", "Field required")
    messages = _list(body["messages"], "messages")
    if not messages:
        raise bad("messages", "at least one message is required")
    last = len(messages) - 1
    for i, msg in enumerate(messages):
        path = f"messages.{i}"
        _object(msg, path)
        role = msg.get("role")
        if role is None:
            raise bad(f"{path}.role", "Field required")
        if role == "system":
            raise bad(f"{path}.role", 'Unexpected role "system". The Messages API accepts a top-level `system` '
                                      'parameter, not "system" as an input message role.')
        if role not in ROLES:
            raise bad(f"{path}.role", f"Input should be 'user' or 'assistant', got {_dumps(role)}")
        if "content" not in msg or msg["content"] is None:
            raise bad(f"{path}.content", "Field required")
        content = msg["content"]
        if isinstance(content, list):
            _blocks(content, f"{path}.content")
        elif not isinstance(content, str):
            raise bad(f"{path}.content", f"Input should be a valid string or a list of content blocks, got "
                                         f"{json_type(content)}")
        if not content and not (i == last and role == "assistant"):
            raise bad(path, "all messages must have non-empty content except for the optional final assistant "
                            "message")
    return messages


def _system(body: dict) -> str | list | None:
    system = body.get("system")
    if system is None or isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise bad("system", f"Input should be a valid string or a list of text blocks, got {json_type(system)}")
    _blocks(system, "system", text_only=True)
    return system


def _tools(body: dict) -> None:
    tools = body.get("tools")
    if tools is not None:
        for i, tool in enumerate(_list(tools, "tools")):
            _object(tool, f"tools.{i}")
            if not isinstance(tool.get("name"), str):
                raise bad(f"tools.{i}.name", "Field required")
    choice = body.get("tool_choice")
    if choice is not None:
        _object(choice, "tool_choice")
        if choice.get("type") not in TOOL_CHOICE_TYPES:
            allowed = ", ".join(f"'{t}'" for t in TOOL_CHOICE_TYPES)
            raise bad("tool_choice.type", f"Input should be one of {allowed}")
        if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
            raise bad("tool_choice.name", "Field required")


def _stop_sequences(body: dict) -> list[str]:
    value = body.get("stop_sequences")
    if value is None:
        return []
    for i, s in enumerate(_list(value, "stop_sequences")):
        if not isinstance(s, str):
            raise bad(f"stop_sequences.{i}", "Input should be a valid string")
    return value


def _model(body: dict) -> str:
    model = body.get("model")
    if model is None:
        raise bad("model", "Field required")
    if not isinstance(model, str):
        raise bad("model", "Input should be a valid string")
    if not model:
        raise bad("model", "String should have at least 1 character")
    return model


def parse_count_tokens_request(body: dict) -> MessagesRequest:
    """The prompt half of a Messages request (what /v1/messages/count_tokens takes)."""
    model = _model(body)
    messages = _messages(body)
    system = _system(body)
    _tools(body)
    return MessagesRequest(model=model, messages=messages, system=system)


def parse_messages_request(body: dict) -> MessagesRequest:
    """Validate a Messages body by Anthropic's rules; 400 `invalid_request_error` naming the field otherwise."""
    req = parse_count_tokens_request(body)
    req.max_tokens = _integer(body, "max_tokens", required=True, minimum=1)
    req.stop_sequences = _stop_sequences(body)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("stream", "Input should be a valid boolean")
    req.stream = bool(stream)
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    _integer(body, "top_k", minimum=0)
    metadata = body.get("metadata")
    if metadata is not None:
        user_id = _object(metadata, "metadata").get("user_id")
        if user_id is not None and not isinstance(user_id, str):
            raise bad("metadata.user_id", "Input should be a valid string")
    thinking = body.get("thinking")
    if thinking is not None:
        _object(thinking, "thinking")
    return req


# ---------------------------------------------------------------- token accounting

def prompt_messages(req: MessagesRequest) -> list[dict]:
    """The prompt as chat-shaped messages, the system prompt first: what is counted and generated from."""
    messages = [{"role": m["role"], "content": m["content"]} for m in req.messages]
    if req.system:
        messages.insert(0, {"role": "system", "content": message_text(req.system)})
    return messages


def count_input_tokens(req: MessagesRequest, encoding: tiktoken.Encoding) -> int:
    """`usage.input_tokens`: OpenAI's chat accounting over [system] + messages, text only.

    Claude's tokenizer is not public; the profile's encoding (cl100k_base for
    Claude) approximates it, and the same per-message framing as Chat keeps
    one accounting rule across the simulator.
    """
    return count_chat_tokens(prompt_messages(req), encoding)


# ---------------------------------------------------------------- response bodies

def stop_reason(plan: TokenPlan) -> str:
    """Anthropic's stop_reason for a plan: max_tokens, stop_sequence or end_turn."""
    if plan.finish_reason == "length":
        return "max_tokens"
    if plan.stop_sequence is not None:
        return "stop_sequence"
    return "end_turn"


def message_usage(input_tokens: int, output_tokens: int) -> dict:
    return {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "output_tokens": output_tokens, "service_tier": "standard"}


def message_body(meta: dict, plan: TokenPlan, input_tokens: int) -> dict:
    """The non-streaming `message` object. meta: {"id", "model"}."""
    return {
        "id": meta["id"],
        "type": "message",
        "role": "assistant",
        "model": meta["model"],
        "content": [{"type": "text", "text": plan.text}],
        "stop_reason": stop_reason(plan),
        "stop_sequence": plan.stop_sequence,
        "usage": message_usage(input_tokens, plan.completion_tokens),
    }


class MessageEventEncoder:
    """SSE bytes (`event:` + `data:` lines) for one streamed message."""

    def __init__(self, meta: dict, input_tokens: int) -> None:
        self.meta = meta
        self.input_tokens = input_tokens
        self._delta_head = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,' \
                           b'"delta":{"type":"text_delta","text":'
        self._delta_tail = b"}}\n\n"

    @staticmethod
    def event(name: str, data: dict) -> bytes:
        return f"event: {name}\ndata: {_dumps(data)}\n\n".encode()

    def message_start(self, output_tokens: int = 1) -> bytes:
        message = {"id": self.meta["id"], "type": "message", "role": "assistant", "model": self.meta["model"],
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": message_usage(self.input_tokens, output_tokens)}
        return self.event("message_start", {"type": "message_start", "message": message})

    def content_block_start(self) -> bytes:
        return self.event("content_block_start", {"type": "content_block_start", "index": 0,
                                                  "content_block": {"type": "text", "text": ""}})

    @staticmethod
    def ping() -> bytes:
        return PING

    def text(self, piece: str) -> bytes:
        return self._delta_head + json.dumps(piece).encode() + self._delta_tail

    def content_block_stop(self) -> bytes:
        return self.event("content_block_stop", {"type": "content_block_stop", "index": 0})

    def message_delta(self, plan: TokenPlan) -> bytes:
        usage = {"input_tokens": self.input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                 "output_tokens": plan.completion_tokens}
        return self.event("message_delta", {"type": "message_delta",
                                            "delta": {"stop_reason": stop_reason(plan),
                                                      "stop_sequence": plan.stop_sequence},
                                            "usage": usage})

    @staticmethod
    def message_stop() -> bytes:
        return MESSAGE_STOP

    @staticmethod
    def error_event(err: ApiError) -> bytes:
        """An in-band failure after the 200: `event: error` with Anthropic's error object."""
        return MessageEventEncoder.event("error", err.anthropic_body())


def message_events(enc: MessageEventEncoder, plan: TokenPlan, paced: Callable[[], Iterable[str]]) -> Iterator[bytes]:
    """The whole stream: message_start, content_block_start, ping, one delta per chunk, then the close.

    The three opening events go out at once (headers before the first token);
    `paced()` is called only then (it may wait for a batch slot) and yields the
    chunk texts on their deadlines, so the deltas carry the profile's timing.
    """
    yield enc.message_start(min(1, plan.completion_tokens))
    yield enc.content_block_start()
    yield enc.ping()
    for piece in paced():
        yield enc.text(piece)
    yield enc.content_block_stop()
    yield enc.message_delta(plan)
    yield enc.message_stop()
