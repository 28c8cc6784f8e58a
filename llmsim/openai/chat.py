"""OpenAI Chat Completions: validate a request, build the body and the SSE chunks.

Text streams as `content` deltas, visible reasoning as `reasoning_content`
(as DeepSeek and vLLM send it), tool calls as `tool_calls` deltas: index, id,
type and name first, then argument fragments at the profile's ITL. With
`logprobs`, every content chunk carries its tokens' log-probabilities; with
`n` > 1, the choices' chunks interleave by `index`, each on its own timeline.
vLLM's `ignore_eos` and `min_tokens` extensions set the answer's length.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..api import Api, StreamEncoder, json_body, json_str
from ..engine import Generation, Request, new_id
from ..errors import ApiError, invalid
from ..fields import (
    check_enum,
    get_bool,
    get_int,
    get_list,
    get_number,
    get_object,
    get_stop,
    get_str,
    missing,
    wrong_type,
)
from ..latency import REASONING_EFFORT_FACTORS
from ..logprobs import MAX_TOP_LOGPROBS, chat_logprob
from ..stream import Block, TokenPlan
from ..tokens import message_text
from ..toolcalls import OutputFormat, tool_turn_mismatch
from .parts import CHAT_PARTS, check_parts
from .tools import parse_function, parse_json_schema_format, parse_tool_choice

ROLES = ("system", "assistant", "user", "function", "tool", "developer")
DONE = b"data: [DONE]\n\n"


def parse_chat_request(body: dict) -> Request:
    """Validate a Chat Completions body as OpenAI does; 400 naming the field otherwise."""
    model = get_str(body, "model", required=True, nonempty=True) or ""
    raw_messages = get_list(body, "messages", required=True, nonempty=True) or []
    messages = [_message(msg, f"messages[{i}]") for i, msg in enumerate(raw_messages)]
    _tool_turns(raw_messages)
    stream, include_usage = stream_options(body)
    n = get_int(body, "n", minimum=1, maximum=128) or 1
    max_tokens_param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = get_int(body, max_tokens_param, minimum=1)
    ignore_eos, min_tokens = length_controls(body, max_tokens)
    logprobs = parse_logprobs(body)
    seed = get_int(body, "seed")
    get_number(body, "temperature", minimum=0, maximum=2)
    get_number(body, "top_p", minimum=0, maximum=1)
    get_number(body, "presence_penalty", minimum=-2, maximum=2)
    get_number(body, "frequency_penalty", minimum=-2, maximum=2)
    effort = get_str(body, "reasoning_effort")
    if effort is not None:
        check_enum(effort, tuple(REASONING_EFFORT_FACTORS), "reasoning_effort")
    tools = []
    for i, tool in enumerate(get_list(body, "tools") or []):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise wrong_type(param, "an object", tool)
        check_enum(tool.get("type"), ("function",), f"{param}.type")
        fn = get_object(tool, "function", param=f"{param}.function")
        if fn is None:
            raise missing(f"{param}.function")
        tools.append(parse_function(fn, f"{param}.function"))
    return Request(model=model, messages=messages, stream=stream, max_tokens=max_tokens,
                   max_tokens_param=max_tokens_param, stop=get_stop(body, "stop", 4), effort=effort,
                   tools=tools, tool_choice=parse_tool_choice(body.get("tool_choice"), tools),
                   parallel_tool_calls=get_bool(body, "parallel_tool_calls", default=True),
                   output_format=_response_format(body),
                   answers_tool_result=raw_messages[-1].get("role") in ("tool", "function"),
                   include_usage=include_usage, n=n, seed=seed, logprobs=logprobs, ignore_eos=ignore_eos,
                   min_tokens=min_tokens)


def stream_options(body: dict) -> tuple[bool, bool]:
    """(stream, stream_options.include_usage), as Chat and legacy Completions take them."""
    stream = get_bool(body, "stream")
    options = get_object(body, "stream_options")
    if options is not None and not stream:
        raise invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                      param="stream_options", code="invalid_value")
    return stream, get_bool(options or {}, "include_usage", param="stream_options.include_usage")


def length_controls(body: dict, max_tokens: int | None) -> tuple[bool, int | None]:
    """vLLM's sampling extensions `ignore_eos` and `min_tokens` (Chat and legacy Completions), validated
    as vLLM does: min_tokens >= 0 and not above max_tokens."""
    ignore_eos = get_bool(body, "ignore_eos")
    min_tokens = get_int(body, "min_tokens", minimum=0)
    if min_tokens is not None and max_tokens is not None and min_tokens > max_tokens:
        raise invalid(f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}.",
                      param="min_tokens", code="invalid_value")
    return ignore_eos, min_tokens or None


def parse_logprobs(body: dict) -> int | None:
    """Chat's `logprobs` (bool) and `top_logprobs` (0-20, only with logprobs): the number of
    alternatives per token, or None when log-probabilities are not asked for."""
    wanted = get_bool(body, "logprobs")
    top = get_int(body, "top_logprobs", minimum=0, maximum=MAX_TOP_LOGPROBS)
    if top is not None and not wanted:
        raise invalid("Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is "
                      "used.", param="top_logprobs", code="invalid_value")
    return (top or 0) if wanted else None


def _message(msg: Any, param: str) -> dict:
    """One message validated; returned chat-shaped for counting (tool-call arguments are prompt text)."""
    if not isinstance(msg, dict):
        raise wrong_type(param, "an object", msg)
    if "role" not in msg:
        raise missing(f"{param}.role")
    role = check_enum(msg["role"], ROLES, f"{param}.role")
    content = msg.get("content")
    calls = msg.get("tool_calls")
    if content is None:
        if role != "assistant":
            raise missing(f"{param}.content")
    elif isinstance(content, list):
        check_parts(content, f"{param}.content", CHAT_PARTS)
    elif not isinstance(content, str):
        raise wrong_type(f"{param}.content", "a string or an array of content parts", content)
    if role == "tool" and not isinstance(msg.get("tool_call_id"), str):
        raise missing(f"{param}.tool_call_id")
    text = message_text(content)
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list):
            raise wrong_type(f"{param}.tool_calls", "an array of tool calls on an assistant message", calls)
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise missing(f"{param}.tool_calls[{j}].function.name")
            if not isinstance(call.get("id"), str):
                raise missing(f"{param}.tool_calls[{j}].id")
            text += fn["name"] + str(fn.get("arguments") or "")
    out = {"role": role, "content": text}
    if isinstance(msg.get("name"), str):
        out["name"] = msg["name"]
    return out


def _tool_turns(messages: list[dict]) -> None:
    """Each assistant message's tool_calls are answered by the `tool` messages right after it, and each of those
    answers one of them (toolcalls.tool_turn_mismatch, in OpenAI's words). An assistant's calls that end the
    conversation may wait for their answers."""
    owner: int | None = None  # the assistant message whose calls the tool messages that follow answer
    calls: list[str] = []
    results: list[tuple[int, str]] = []

    def close(at: int) -> None:
        missing_ids, extra = tool_turn_mismatch(calls, [r for _, r in results])
        if extra:
            i, answered = results[extra[0]]
            raise invalid(f"Invalid parameter: 'tool_call_id' of '{answered}' not found in 'tool_calls' of previous "
                          "message.", param=f"messages[{i}].tool_call_id")
        if missing_ids and (at < len(messages) or results):
            raise invalid("An assistant message with 'tool_calls' must be followed by tool messages responding to "
                          "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                          + ", ".join(missing_ids), param=f"messages[{owner}].role")

    for i, msg in enumerate(messages):
        if msg["role"] == "tool":
            if owner is None:
                raise invalid("Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                              "message with 'tool_calls'.", param=f"messages[{i}].role")
            results.append((i, msg["tool_call_id"]))
            continue
        if owner is not None:
            close(i)
        owner = i if msg["role"] == "assistant" and msg.get("tool_calls") else None
        calls = [c["id"] for c in msg.get("tool_calls") or ()] if owner is not None else []
        results = []
    if owner is not None:
        close(len(messages))


def _response_format(body: dict) -> OutputFormat | None:
    fmt = get_object(body, "response_format")
    if fmt is None:
        return None
    kind = check_enum(fmt.get("type"), ("text", "json_object", "json_schema"), "response_format.type")
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputFormat("json_object")
    spec = get_object(fmt, "json_schema", param="response_format.json_schema")
    if spec is None:
        raise missing("response_format.json_schema")
    return parse_json_schema_format(spec, "response_format.json_schema")


def chat_usage(prompt_tokens: int, *plans: TokenPlan, cached: int = 0) -> dict:
    """`usage`: the prompt once (`cached` of it from the prefix cache), the completion tokens (and
    reasoning tokens) of every choice summed."""
    completion = sum(p.completion_tokens for p in plans)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": sum(p.all_reasoning_tokens for p in plans),
                                      "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    }


def finish_reason(gen: Generation) -> str:
    """stop | length | tool_calls; a call forced by naming the tool finishes with "stop", as OpenAI's does."""
    reason = gen.plan.finish_reason
    if reason == "tool_calls" and gen.request.tool_choice.mode == "tool":
        return "stop"
    return reason


def tool_call_object(block: Block) -> dict:
    return {"id": block.call_id, "type": "function", "function": {"name": block.name, "arguments": block.text}}


def chat_logprobs(plan: TokenPlan) -> dict | None:
    """A choice's `logprobs`: every content token's, or None when they were not asked for."""
    if plan.logprobs is None:
        return None
    return {"content": [chat_logprob(t) for chunk in plan.logprobs for t in chunk], "refusal": None}


def chat_choice(gen: Generation) -> dict:
    """One choice of the non-streaming `chat.completion`."""
    plan = gen.plan
    calls = plan.tool_calls
    text = plan.text
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None,
                               "refusal": None, "annotations": []}
    thoughts = [b for b in plan.blocks if b.kind == "reasoning"]
    if thoughts:  # as DeepSeek and vLLM return visible reasoning
        message["reasoning_content"] = "".join(b.text for b in thoughts)
    if calls:
        message["tool_calls"] = [tool_call_object(b) for b in calls]
    return {"index": gen.index, "message": message, "logprobs": chat_logprobs(plan),
            "finish_reason": finish_reason(gen)}


def chat_completion(meta: dict, gen: Generation) -> dict:
    """The non-streaming `chat.completion` object (one choice per sequence when n > 1)."""
    return {
        **meta,
        "object": "chat.completion",
        "choices": [chat_choice(c) for c in gen.all],
        "usage": chat_usage(gen.prompt_tokens, *(c.plan for c in gen.all), cached=gen.cache.read),
        "service_tier": "default",
    }


class ChatChunkEncoder(StreamEncoder):
    """SSE bytes for one streamed `chat.completion.chunk` sequence (one per choice when n > 1).

    Chunk bytes are built from a prefix and suffix computed once, so a streamed
    token costs one json.dumps of its text, not a dict and a re-encode.
    """

    def __init__(self, meta: dict, include_usage: bool, gen: Generation | None = None, index: int = 0) -> None:
        super().__init__(gen)  # type: ignore[arg-type]
        self.meta = meta
        head = json.dumps({**meta, "object": "chat.completion.chunk"}, separators=(",", ":"))[:-1]
        self._head = f'data: {head},"service_tier":"default","choices":[{{"index":{index},"delta":'.encode()
        tail = ',"usage":null' if include_usage else ""
        self._content_tail = f'}},"logprobs":null,"finish_reason":null}}]{tail}}}\n\n'.encode()
        self._logprobs_tail = f',"refusal":null}},"finish_reason":null}}]{tail}}}\n\n'.encode()
        self._tail_usage = tail
        self._meta_head = f'data: {head},"service_tier":"default",'.encode()
        self.include_usage = include_usage
        self._call_index: dict[int, int] = {}
        self._logprobs = gen.plan.logprobs if gen is not None else None
        self._piece = 0  # the next chunk's index (for its logprobs)

    def for_choice(self, gen: Generation) -> ChatChunkEncoder:
        return ChatChunkEncoder(self.meta, self.include_usage, gen, index=gen.index)

    def opening(self) -> Iterable[bytes]:
        first = self.gen.plan.blocks[0] if self.gen is not None and self.gen.plan.blocks else None
        yield self.role(content=None if first is not None and first.kind == "tool_call" else "")

    def role(self, content: str | None = "") -> bytes:
        return (self._head + b'{"role":"assistant","content":' + json.dumps(content).encode() + b',"refusal":null'
                + self._content_tail)

    def content(self, text: str) -> bytes:
        return self._head + b'{"content":' + json_str(text) + self._content_tail

    def block_start(self, index: int, block: Block) -> bytes:
        if block.kind != "tool_call":
            return b""
        k = self._call_index.setdefault(index, len(self._call_index))
        call = {"index": k, "id": block.call_id, "type": "function", "function": {"name": block.name,
                                                                                 "arguments": ""}}
        return self._head + b'{"tool_calls":[' + _dumps(call).encode() + b"]" + self._content_tail

    def delta(self, index: int, block: Block, text: str) -> bytes:
        piece = self._piece
        self._piece = piece + 1
        if block.kind == "text":
            if self._logprobs is not None:
                content = _dumps([chat_logprob(t) for t in self._logprobs[piece]])
                return (self._head + b'{"content":' + json_str(text) + b'},"logprobs":{"content":'
                        + content.encode() + self._logprobs_tail)
            return self._head + b'{"content":' + json_str(text) + self._content_tail
        if block.kind == "reasoning":
            return self._head + b'{"reasoning_content":' + json_str(text) + self._content_tail
        return (self._head + b'{"tool_calls":[{"index":' + str(self._call_index[index]).encode()
                + b',"function":{"arguments":' + json_str(text) + b"}}]" + self._content_tail)

    def finish(self, reason: str) -> bytes:
        return (self._head + b'{},"logprobs":null,"finish_reason":' + json.dumps(reason).encode()
                + f"}}]{self._tail_usage}}}\n\n".encode())

    def usage(self, usage: dict) -> bytes:
        return self._meta_head + b'"choices":[],"usage":' + json.dumps(usage, separators=(",", ":")).encode() + b"}\n\n"

    def choice_closing(self) -> Iterable[bytes]:
        yield self.finish(finish_reason(self.gen))

    def closing(self) -> Iterable[bytes]:
        gen = self.gen
        if self.include_usage:
            yield self.usage(chat_usage(gen.prompt_tokens, *(c.plan for c in gen.all), cached=gen.cache.read))
        yield DONE

    def error_event(self, err: ApiError) -> bytes:
        """An in-band failure after the 200: a `data: {"error": {...}}` chunk, which the SDK raises as APIError."""
        return b"data: " + json.dumps(err.openai_body(), separators=(",", ":")).encode() + b"\n\n"


_PLAIN_MESSAGE = (b',"system_fingerprint":"fp_llmsim","choices":[{"index":0,"message":{"role":"assistant",'
                  b'"content":')
_PLAIN_FINISH = b',"refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"'
_PLAIN_USAGE = (b'"}],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,"prompt_tokens_details":'
                b'{"cached_tokens":%d,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":%d,'
                b'"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},'
                b'"service_tier":"default"}\n')
"""A plain `chat.completion`'s bytes around its values, in chat_completion's key order (answer_bytes)."""


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


class ChatCompletions(Api):
    """POST /v1/chat/completions."""

    name = "chat.completions"
    provider = "openai"
    paths = ("/v1/chat/completions", "/openai/v1/chat/completions")

    def parse(self, body: dict) -> Request:
        return parse_chat_request(body)

    @staticmethod
    def _meta(gen: Generation) -> dict:
        return {"id": new_id("chatcmpl-"), "object": "chat.completion", "created": gen.created,
                "model": gen.request.model, "system_fingerprint": "fp_llmsim"}

    def body(self, gen: Generation) -> dict:
        return chat_completion(self._meta(gen), gen)

    def answer_bytes(self, gen: Generation) -> bytes:
        """`body` in JSON; the usual answer (one choice of text, no logprobs) from a template, at half the cost
        of building and encoding its dicts."""
        plan = gen.plan
        if gen.choices or plan.logprobs is not None or any(b.kind != "text" for b in plan.blocks):
            return json_body(self.body(gen))
        prompt, completion = gen.prompt_tokens, plan.completion_tokens
        return b"".join((
            b'{"id":"', new_id("chatcmpl-").encode(),
            b'","object":"chat.completion","created":%d,"model":' % gen.created,
            json_str(gen.request.model), _PLAIN_MESSAGE, json_str(plan.text), _PLAIN_FINISH,
            finish_reason(gen).encode(),
            _PLAIN_USAGE % (prompt, completion, prompt + completion, gen.cache.read, plan.all_reasoning_tokens)))

    def encoder(self, gen: Generation) -> StreamEncoder:
        return ChatChunkEncoder(self._meta(gen), gen.request.include_usage, gen)
