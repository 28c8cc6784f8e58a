"""OpenAI Responses: validate a request, build the `response` object and its typed SSE events.

Every streamed event carries a `sequence_number` that rises by one; the text
delta, sent once per chunk, is built from a precomputed prefix and suffix, so
a token costs one json.dumps of its text and one int formatting.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from ..errors import ApiError, invalid
from ..fields import check_enum, get_bool, get_int, get_list, get_number, get_object, get_str, missing, wrong_type
from ..latency import REASONING_EFFORT_FACTORS
from ..stream import TokenPlan

INPUT_ROLES = ("user", "assistant", "system", "developer")
SUMMARY_MODES = ("auto", "concise", "detailed")
TRUNCATION_MODES = ("auto", "disabled")
MIN_OUTPUT_TOKENS = 16
"""OpenAI rejects `max_output_tokens` below 16."""
ITEM_TEXT_FIELDS = ("output", "arguments", "text")
"""Where non-message input items (tool calls and their outputs) keep the text that is counted."""


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


@dataclass
class ResponsesRequest:
    model: str
    messages: list[dict]
    """The input as chat-shaped messages (instructions first): what is counted and generated from."""
    stream: bool = False
    max_output_tokens: int | None = None
    effort: str | None = None
    echo: dict = field(default_factory=dict)
    """Request settings the response object repeats back."""


def _content(content: Any, param: str) -> None:
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise invalid(f"Invalid '{param}[{j}]': expected an object with a 'type'.", param=f"{param}[{j}]",
                              code="invalid_type")
    elif not isinstance(content, str):
        raise wrong_type(param, "a string or an array of content parts", content)


def _input_messages(body: dict) -> list[dict]:
    """`input` (a string or a list of items) as chat-shaped messages; 400 naming the item otherwise."""
    value = body.get("input")
    if value is None:
        raise missing("input")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise wrong_type("input", "a string or an array of input items", value)
    items = get_list(body, "input", nonempty=True) or []
    messages = []
    for i, item in enumerate(items):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise wrong_type(param, "an object", item)
        kind = item.get("type", "message")
        if not isinstance(kind, str):
            raise wrong_type(f"{param}.type", "a string", kind)
        if kind == "message":
            if "role" not in item:
                raise missing(f"{param}.role")
            check_enum(item["role"], INPUT_ROLES, f"{param}.role")
            if item.get("content") is None:
                raise missing(f"{param}.content")
            _content(item["content"], f"{param}.content")
            messages.append({"role": item["role"], "content": item["content"]})
        else:  # tool calls, their outputs, reasoning items: only their text is counted
            text = next((item[k] for k in ITEM_TEXT_FIELDS if isinstance(item.get(k), (str, list))), None)
            if text is not None:
                messages.append({"role": "tool", "content": text})
    return messages


def parse_responses_request(body: dict) -> ResponsesRequest:
    """Validate a Responses body as OpenAI does; 400 naming the field otherwise."""
    model = get_str(body, "model", required=True, nonempty=True)
    messages = _input_messages(body)
    instructions = get_str(body, "instructions")
    if instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    stream = get_bool(body, "stream")
    max_output = get_int(body, "max_output_tokens", minimum=MIN_OUTPUT_TOKENS)
    reasoning = get_object(body, "reasoning") or {}
    effort = get_str(reasoning, "effort", param="reasoning.effort")
    if effort is not None:
        check_enum(effort, tuple(REASONING_EFFORT_FACTORS), "reasoning.effort")
    summary = get_str(reasoning, "summary", param="reasoning.summary")
    if summary is not None:
        check_enum(summary, SUMMARY_MODES, "reasoning.summary")
    temperature = get_number(body, "temperature", minimum=0, maximum=2)
    top_p = get_number(body, "top_p", minimum=0, maximum=1)
    truncation = get_str(body, "truncation", default="disabled")
    check_enum(truncation, TRUNCATION_MODES, "truncation")
    tool_choice = body.get("tool_choice", "auto")
    if not isinstance(tool_choice, (str, dict)):
        raise wrong_type("tool_choice", "a string or an object", tool_choice)
    echo = {
        "instructions": instructions,
        "max_output_tokens": max_output,
        "metadata": get_object(body, "metadata") or {},
        "parallel_tool_calls": get_bool(body, "parallel_tool_calls", default=True),
        "previous_response_id": get_str(body, "previous_response_id"),
        "reasoning": {"effort": effort, "summary": summary},
        "store": get_bool(body, "store", default=True),
        "temperature": 1.0 if temperature is None else temperature,
        "text": get_object(body, "text") or {"format": {"type": "text"}},
        "tool_choice": tool_choice,
        "tools": get_list(body, "tools") or [],
        "top_p": 1.0 if top_p is None else top_p,
        "truncation": truncation,
        "user": get_str(body, "user"),
    }
    get_list(body, "include")
    return ResponsesRequest(model=model, messages=messages, stream=stream, max_output_tokens=max_output,
                            effort=effort, echo=echo)


def response_usage(input_tokens: int, plan: TokenPlan) -> dict:
    """`usage`: output_tokens includes the hidden reasoning tokens, as OpenAI bills them."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": plan.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
        "total_tokens": input_tokens + plan.completion_tokens,
    }


def error_code(err: ApiError) -> str:
    """The Responses `error.code` for an ApiError (a ResponseError code where one fits)."""
    if err.kind == "rate_limit":
        return "rate_limit_exceeded"
    if err.kind == "invalid_request":
        return err.code or "invalid_prompt"
    return "server_error"


class ResponseBuilder:
    """The `response` object of one request in each of its states, and its output items."""

    def __init__(self, response_id: str, model: str, created_at: int, echo: dict, *, reasoning: bool,
                 message_id: str, reasoning_id: str) -> None:
        self.message_id = message_id
        self.reasoning_id = reasoning_id if reasoning else None
        self._base = {
            "id": response_id, "object": "response", "created_at": created_at, "status": "in_progress",
            "background": False, "error": None, "incomplete_details": None, "instructions": None,
            "max_output_tokens": None, "max_tool_calls": None, "model": model, "output": [],
            "parallel_tool_calls": True, "previous_response_id": None, "reasoning": {"effort": None,
                                                                                    "summary": None},
            "service_tier": "default", "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": [], "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled",
            "usage": None, "user": None, "metadata": {},
        }
        self._base.update(echo)
        if reasoning and self._base["reasoning"].get("effort") is None:
            # A reasoning model reasons at medium effort unless told otherwise, and says so.
            self._base["reasoning"] = {**self._base["reasoning"], "effort": "medium"}

    @property
    def message_index(self) -> int:
        """The message follows the reasoning item when there is one."""
        return 1 if self.reasoning_id else 0

    def snapshot(self, status: str = "in_progress", **extra: Any) -> dict:
        return {**self._base, "status": status, **extra}

    def reasoning_item(self) -> dict:
        return {"id": self.reasoning_id, "type": "reasoning", "summary": []}

    @staticmethod
    def text_part(text: str) -> dict:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def message_item(self, text: str | None, status: str) -> dict:
        """The assistant message item; text None means just opened (no content part yet)."""
        content = [] if text is None else [self.text_part(text)]
        return {"id": self.message_id, "type": "message", "status": status, "role": "assistant",
                "content": content}

    def final(self, plan: TokenPlan, input_tokens: int, *, output_text: bool = False) -> dict:
        """The finished response: `completed`, or `incomplete` when max_output_tokens cut it."""
        cut = plan.finish_reason == "length"
        status = "incomplete" if cut else "completed"
        output = [self.reasoning_item()] if self.reasoning_id else []
        output.append(self.message_item(plan.text, status))
        body = self.snapshot(status, completed_at=None if cut else int(time.time()),
                             incomplete_details={"reason": "max_output_tokens"} if cut else None,
                             output=output, usage=response_usage(input_tokens, plan))
        if output_text:
            body["output_text"] = plan.text
        return body


class ResponseEventEncoder:
    """Typed SSE events (`event:` + `data:` lines) for one streamed response, numbered from 0."""

    def __init__(self, builder: ResponseBuilder) -> None:
        self.builder = builder
        self.seq = 0
        ids = f'"item_id":{_dumps(builder.message_id)},"output_index":{builder.message_index},"content_index":0'
        self._ids = ids
        self._delta_head = ('event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                            f'{ids},"delta":').encode()
        self._delta_mid = b',"logprobs":[],"sequence_number":'

    def event(self, name: str, data: dict) -> bytes:
        body = _dumps({"type": name, **data, "sequence_number": self.seq})
        self.seq += 1
        return f"event: {name}\ndata: {body}\n\n".encode()

    def _item(self, name: str, index: int, item: dict) -> bytes:
        return self.event(name, {"output_index": index, "item": item})

    def _part(self, name: str, text: str) -> bytes:
        b = self.builder
        return self.event(name, {"item_id": b.message_id, "output_index": b.message_index, "content_index": 0,
                                 "part": b.text_part(text)})

    def created(self) -> bytes:
        return self.event("response.created", {"response": self.builder.snapshot()})

    def in_progress(self) -> bytes:
        return self.event("response.in_progress", {"response": self.builder.snapshot()})

    def reasoning_added(self) -> bytes:
        return self._item("response.output_item.added", 0, self.builder.reasoning_item())

    def reasoning_done(self) -> bytes:
        return self._item("response.output_item.done", 0, self.builder.reasoning_item())

    def message_added(self) -> bytes:
        return self._item("response.output_item.added", self.builder.message_index,
                          self.builder.message_item(None, "in_progress"))

    def part_added(self) -> bytes:
        return self._part("response.content_part.added", "")

    def delta(self, text: str) -> bytes:
        seq = self.seq
        self.seq += 1
        return self._delta_head + json.dumps(text).encode() + self._delta_mid + str(seq).encode() + b"}\n\n"

    def text_done(self, text: str) -> bytes:
        b = self.builder
        return self.event("response.output_text.done", {"item_id": b.message_id, "output_index": b.message_index,
                                                        "content_index": 0, "text": text, "logprobs": []})

    def part_done(self, text: str) -> bytes:
        return self._part("response.content_part.done", text)

    def message_done(self, text: str, status: str) -> bytes:
        return self._item("response.output_item.done", self.builder.message_index,
                          self.builder.message_item(text, status))

    def finished(self, response: dict) -> bytes:
        """`response.completed`, or `response.incomplete` when the response was cut short."""
        name = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return self.event(name, {"response": response})

    def error_event(self, err: ApiError) -> bytes:
        """An in-band failure after the 200: an `error` event, then `response.failed` with the error."""
        code = error_code(err)
        failed = self.builder.snapshot("failed", error={"code": code, "message": err.message})
        return (self.event("error", {"code": code, "message": err.message, "param": err.param})
                + self.event("response.failed", {"response": failed}))


def response_events(enc: ResponseEventEncoder, plan: TokenPlan, paced: Callable[[], Iterable[str]],
                    input_tokens: int) -> Iterator[bytes]:
    """The whole stream, in the real API's order.

    created, in_progress (and the reasoning item being added) go out at once;
    `paced()` is called only then (it may wait for a batch slot) and yields the
    chunk texts on their deadlines, so the first arrives after TTFT plus the
    reasoning time. Just before it the reasoning item closes and the
    message item and its text part open; after the last chunk everything
    closes and the finished response goes out with its usage.
    """
    b = enc.builder
    yield enc.created()
    yield enc.in_progress()
    if b.reasoning_id:
        yield enc.reasoning_added()
    opened = False
    for piece in paced():
        if not opened:
            yield from _open_message(enc)
            opened = True
        yield enc.delta(piece)
    if not opened:
        yield from _open_message(enc)
    final = b.final(plan, input_tokens)
    text = plan.text
    yield enc.text_done(text)
    yield enc.part_done(text)
    yield enc.message_done(text, final["status"])
    yield enc.finished(final)


def _open_message(enc: ResponseEventEncoder) -> Iterator[bytes]:
    if enc.builder.reasoning_id:
        yield enc.reasoning_done()
    yield enc.message_added()
    yield enc.part_added()

