"""OpenAI Responses: validate a request, build the `response` object and its typed SSE events.

Every streamed event carries a `sequence_number` that rises by one; the text
delta, sent once per chunk, is built from a precomputed prefix and suffix, so
a token costs one json.dumps of its text and one int formatting.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterable
from typing import Any

from ..api import Api, StreamEncoder, json_str
from ..engine import Generation, Request, new_id
from ..errors import ApiError, invalid
from ..fields import check_enum, get_bool, get_int, get_list, get_number, get_object, get_str, missing, wrong_type
from ..latency import REASONING_EFFORT_FACTORS
from ..stream import Block, TokenPlan
from ..toolcalls import OutputFormat, ToolChoice, tool_turn_mismatch
from .parts import RESPONSES_PARTS, check_parts
from .tools import parse_function, parse_json_schema_format, parse_tool_choice

INPUT_ROLES = ("user", "assistant", "system", "developer")
SUMMARY_MODES = ("auto", "concise", "detailed")
TRUNCATION_MODES = ("auto", "disabled")
MIN_OUTPUT_TOKENS = 16
"""OpenAI rejects `max_output_tokens` below 16."""
INCLUDABLE = ("file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
              "message.input_image.image_url", "computer_call_output.output.image_url",
              "code_interpreter_call.outputs", "reasoning.encrypted_content", "message.output_text.logprobs")
"""What `include` accepts (openai.types.responses.ResponseIncludable)."""
ITEM_TEXT_FIELDS = ("output", "arguments", "text")
"""Where non-message input items (tool calls and their outputs) keep the text that is counted."""


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _content(content: Any, param: str) -> None:
    if isinstance(content, list):
        check_parts(content, param, RESPONSES_PARTS)
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
            if kind in ("function_call", "function_call_output") and not isinstance(item.get("call_id"), str):
                raise missing(f"{param}.call_id")
            messages.append({"role": "tool" if kind.endswith("_output") else "assistant",
                             "content": text if text is not None else ""})
    return messages


def _tool_loop(items: list[dict]) -> None:
    """Every function_call_output answers a function_call of the input, and every function_call is answered
    (toolcalls.tool_turn_mismatch, in OpenAI's words). Only for an input that holds the whole conversation:
    with previous_response_id the calls may live in a stored response."""
    calls = [item["call_id"] for item in items if item.get("type") == "function_call"]
    results = [item["call_id"] for item in items if item.get("type") == "function_call_output"]
    unanswered, invented = tool_turn_mismatch(calls, results)
    if invented:
        raise invalid(f"No tool call found for function call output with call_id {results[invented[0]]}.",
                      param="input")
    if unanswered:
        raise invalid(f"No tool output found for function call {unanswered[0]}.", param="input")


def parse_responses_request(body: dict) -> Request:
    """Validate a Responses body as OpenAI does; 400 naming the field otherwise."""
    model = get_str(body, "model", required=True, nonempty=True) or ""
    messages = _input_messages(body)
    raw_input = body.get("input")
    items: list = raw_input if isinstance(raw_input, list) else []
    if get_str(body, "previous_response_id") is None:
        _tool_loop(items)
    answers_tool_result = bool(items) and isinstance(items[-1], dict) and \
        str(items[-1].get("type", "")).endswith("_call_output")
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
    raw_tools = get_list(body, "tools") or []
    tools = []
    for i, tool in enumerate(raw_tools):
        if not isinstance(tool, dict):
            raise wrong_type(f"tools[{i}]", "an object", tool)
        kind = tool.get("type")
        if not isinstance(kind, str):
            raise missing(f"tools[{i}].type")
        if kind == "function":  # built-in tools (web_search, file_search, ...) are accepted, never called
            tools.append(parse_function(tool, f"tools[{i}]"))
    raw_choice = body.get("tool_choice")
    if isinstance(raw_choice, dict) and raw_choice.get("type") != "function":
        raw_choice = "auto"  # a built-in tool or an allowed-tools list: the model answers in text
    choice = parse_tool_choice(raw_choice, tools) if tools or raw_choice not in (None, "auto") else ToolChoice("none")
    text = get_object(body, "text") or {"format": {"type": "text"}}
    echo = {
        "instructions": instructions,
        "max_output_tokens": max_output,
        "metadata": get_object(body, "metadata") or {},
        "parallel_tool_calls": get_bool(body, "parallel_tool_calls", default=True),
        "previous_response_id": get_str(body, "previous_response_id"),
        "reasoning": {"effort": effort, "summary": summary},
        "store": get_bool(body, "store", default=True),
        "temperature": 1.0 if temperature is None else temperature,
        "text": text,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": raw_tools,
        "top_p": 1.0 if top_p is None else top_p,
        "truncation": truncation,
        "user": get_str(body, "user"),
    }
    include = get_list(body, "include") or []
    for i, value in enumerate(include):
        check_enum(value, INCLUDABLE, f"include[{i}]")
    return Request(model=model, messages=messages, stream=stream, max_tokens=max_output,
                   max_tokens_param="max_output_tokens", prompt_param="input", effort=effort, tools=tools,
                   tool_choice=choice, parallel_tool_calls=echo["parallel_tool_calls"],
                   output_format=_text_format(text), answers_tool_result=answers_tool_result, echo=echo,
                   reasoning="visible" if summary is not None else None,
                   encrypted_reasoning="reasoning.encrypted_content" in include)


def _text_format(text: dict) -> OutputFormat | None:
    fmt = get_object(text, "format", param="text.format")
    if fmt is None:
        return None
    kind = check_enum(fmt.get("type"), ("text", "json_object", "json_schema"), "text.format.type")
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputFormat("json_object")
    return parse_json_schema_format(fmt, "text.format")


def response_usage(input_tokens: int, plan: TokenPlan, cached: int = 0) -> dict:
    """`usage`: output_tokens includes the hidden reasoning tokens, as OpenAI bills them; `cached`
    input tokens came from the prefix cache."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": plan.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": plan.all_reasoning_tokens},
        "total_tokens": input_tokens + plan.completion_tokens,
    }


def error_code(err: ApiError) -> str:
    """The Responses `error.code` for an ApiError (a ResponseError code where one fits)."""
    if err.kind == "rate_limit":
        return "rate_limit_exceeded"
    if err.kind == "invalid_request":
        return err.code or "invalid_prompt"
    return "server_error"


def encrypted_content(tokens: int) -> str:
    """An opaque stand-in for encrypted reasoning (Fernet-shaped), longer for longer reasoning."""
    return "gAAAAA" + base64.urlsafe_b64encode(os.urandom(48 + min(tokens, 4096) * 3)).decode()


class ResponseBuilder:
    """The `response` object of one request in each of its states, and its output items.

    Output items: a reasoning item first when the model reasons, then one item
    per answer block (a `message` for text, a `function_call` for a tool call).
    Visible reasoning (a reasoning block) is that reasoning item: its `summary`
    when the request set `reasoning.summary`, else its `content` (reasoning_text,
    as open-weight reasoning models answer). Hidden reasoning is an item with
    an empty summary.
    """

    def __init__(self, gen: Generation) -> None:
        self.gen = gen
        self.reasoning_id = new_id("rs_") if gen.plan.reasoning_tokens > 0 else None
        self.offset = 1 if self.reasoning_id else 0
        self.item_ids = [new_id("msg_" if b.kind == "text" else "fc_" if b.kind == "tool_call" else "rs_")
                         for b in gen.plan.blocks]
        self.summary = bool((gen.request.echo.get("reasoning") or {}).get("summary"))
        """A visible reasoning block streams as the reasoning summary (else as reasoning text)."""
        self.encrypted = (encrypted_content(gen.plan.all_reasoning_tokens)
                          if gen.request.encrypted_reasoning else None)
        self._base: dict[str, Any] = {
            "id": new_id("resp_"), "object": "response", "created_at": gen.created, "status": "in_progress",
            "background": False, "error": None, "incomplete_details": None, "instructions": None,
            "max_output_tokens": None, "max_tool_calls": None, "model": gen.request.model, "output": [],
            "parallel_tool_calls": True, "previous_response_id": None, "reasoning": {"effort": None,
                                                                                    "summary": None},
            "service_tier": "default", "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": [], "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled",
            "usage": None, "user": None, "metadata": {},
        }
        self._base.update(gen.request.echo)
        reasons = self.reasoning_id or any(b.kind == "reasoning" for b in gen.plan.blocks)
        if reasons and self._base["reasoning"].get("effort") is None:
            # A reasoning model reasons at medium effort unless told otherwise, and says so.
            self._base["reasoning"] = {**self._base["reasoning"], "effort": "medium"}

    @property
    def status(self) -> str:
        return "incomplete" if self.gen.plan.finish_reason == "length" else "completed"

    def snapshot(self, status: str = "in_progress", **extra: Any) -> dict:
        return {**self._base, "status": status, **extra}

    def reasoning_item(self) -> dict:
        item: dict = {"id": self.reasoning_id, "type": "reasoning", "summary": []}
        if self.encrypted is not None:
            item["encrypted_content"] = self.encrypted
        return item

    def reasoning_part(self, text: str) -> dict:
        return {"type": "summary_text" if self.summary else "reasoning_text", "text": text}

    @staticmethod
    def text_part(text: str) -> dict:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def item(self, index: int, status: str, done: bool) -> dict:
        """Block `index` as an output item: just opened (done False) or finished."""
        block = self.gen.plan.blocks[index]
        item_id = self.item_ids[index]
        if block.kind == "reasoning":
            parts = [self.reasoning_part(block.text)] if done and block.text else []
            item: dict = {"id": item_id, "type": "reasoning", "summary": parts if self.summary else []}
            if not self.summary:
                item["content"] = parts
            if self.encrypted is not None:
                item["encrypted_content"] = self.encrypted
            return item
        if block.kind == "tool_call":
            return {"id": item_id, "type": "function_call", "status": status,
                    "arguments": block.text if done else "", "call_id": block.call_id, "name": block.name}
        content = [self.text_part(block.text)] if done else []
        return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def final(self, *, output_text: bool = False) -> dict:
        """The finished response: `completed`, or `incomplete` when max_output_tokens cut it."""
        plan = self.gen.plan
        status = self.status
        cut = status == "incomplete"
        output = [self.reasoning_item()] if self.reasoning_id else []
        output += [self.item(i, status, True) for i in range(len(plan.blocks))]
        body = self.snapshot(status, completed_at=None if cut else int(time.time()),
                             incomplete_details={"reason": "max_output_tokens"} if cut else None,
                             output=output, usage=response_usage(self.gen.prompt_tokens, plan,
                                                                  cached=self.gen.cache.read))
        if output_text:
            body["output_text"] = plan.text
        return body


class ResponseEventEncoder(StreamEncoder):
    """Typed SSE events (`event:` + `data:` lines) for one streamed response, numbered from 0.

    A text delta is built from a precomputed prefix and suffix, so a token
    costs one json.dumps of its text and one int formatting.
    """

    def __init__(self, builder: ResponseBuilder) -> None:
        super().__init__(builder.gen)
        self.builder = builder
        self.seq = 0
        self._heads: dict[int, tuple[bytes, bytes]] = {}

    def _head(self, index: int, block: Block) -> bytes:
        b = self.builder
        ids = f'"item_id":{_dumps(b.item_ids[index])},"output_index":{b.offset + index}'
        if block.kind == "reasoning":
            if b.summary:
                return ('event: response.reasoning_summary_text.delta\ndata: {"type":'
                        f'"response.reasoning_summary_text.delta",{ids},"summary_index":0,"delta":').encode()
            return ('event: response.reasoning_text.delta\ndata: {"type":"response.reasoning_text.delta",'
                    f'{ids},"content_index":0,"delta":').encode()
        if block.kind == "tool_call":
            return ('event: response.function_call_arguments.delta\ndata: {"type":'
                    f'"response.function_call_arguments.delta",{ids},"delta":').encode()
        return ('event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                f'{ids},"content_index":0,"delta":').encode()

    def event(self, name: str, data: dict) -> bytes:
        body = _dumps({"type": name, **data, "sequence_number": self.seq})
        self.seq += 1
        return f"event: {name}\ndata: {body}\n\n".encode()

    def _ids(self, index: int) -> dict:
        return {"item_id": self.builder.item_ids[index], "output_index": self.builder.offset + index}

    def opening(self) -> Iterable[bytes]:
        b = self.builder
        yield self.event("response.created", {"response": b.snapshot()})
        yield self.event("response.in_progress", {"response": b.snapshot()})
        if b.reasoning_id:
            yield self.event("response.output_item.added", {"output_index": 0, "item": b.reasoning_item()})

    def block_start(self, index: int, block: Block) -> bytes:
        b = self.builder
        out = b""
        if index == 0 and b.reasoning_id:
            out += self.event("response.output_item.done", {"output_index": 0, "item": b.reasoning_item()})
        out += self.event("response.output_item.added", {"output_index": b.offset + index,
                                                         "item": b.item(index, "in_progress", False)})
        if block.kind == "text":
            out += self.event("response.content_part.added", {**self._ids(index), "content_index": 0,
                                                              "part": b.text_part("")})
        elif block.kind == "reasoning" and block.end > block.start:
            if b.summary:
                out += self.event("response.reasoning_summary_part.added", {**self._ids(index), "summary_index": 0,
                                                                            "part": b.reasoning_part("")})
            else:
                out += self.event("response.content_part.added", {**self._ids(index), "content_index": 0,
                                                                  "part": b.reasoning_part("")})
        self._heads[index] = (self._head(index, block), b',"logprobs":[],"sequence_number":'
                              if block.kind == "text" else b',"sequence_number":')
        return out

    def delta(self, index: int, block: Block, text: str) -> bytes:
        head, mid = self._heads[index]
        seq = self.seq
        self.seq += 1
        return head + json_str(text) + mid + str(seq).encode() + b"}\n\n"

    def block_stop(self, index: int, block: Block) -> bytes:
        b = self.builder
        status = b.status
        ids = self._ids(index)
        if block.kind == "reasoning":
            out = b""
            if block.end > block.start and b.summary:
                out = self.event("response.reasoning_summary_text.done", {**ids, "summary_index": 0,
                                                                          "text": block.text})
                out += self.event("response.reasoning_summary_part.done", {**ids, "summary_index": 0,
                                                                           "part": b.reasoning_part(block.text)})
            elif block.end > block.start:
                out = self.event("response.reasoning_text.done", {**ids, "content_index": 0, "text": block.text})
                out += self.event("response.content_part.done", {**ids, "content_index": 0,
                                                                 "part": b.reasoning_part(block.text)})
        elif block.kind == "tool_call":
            out = self.event("response.function_call_arguments.done", {**ids, "name": block.name,
                                                                         "arguments": block.text})
        else:
            out = self.event("response.output_text.done", {**ids, "content_index": 0, "text": block.text,
                                                           "logprobs": []})
            out += self.event("response.content_part.done", {**ids, "content_index": 0,
                                                             "part": b.text_part(block.text)})
        return out + self.event("response.output_item.done", {"output_index": b.offset + index,
                                                              "item": b.item(index, status, True)})

    def closing(self) -> Iterable[bytes]:
        """`response.completed`, or `response.incomplete` when the response was cut short."""
        final = self.builder.final()
        name = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        yield self.event(name, {"response": final})

    def error_event(self, err: ApiError) -> bytes:
        """An in-band failure after the 200: an `error` event, then `response.failed` with the error."""
        code = error_code(err)
        failed = self.builder.snapshot("failed", error={"code": code, "message": err.message})
        return (self.event("error", {"code": code, "message": err.message, "param": err.param})
                + self.event("response.failed", {"response": failed}))


class Responses(Api):
    """POST /v1/responses."""

    name = "responses"
    provider = "openai"
    paths = ("/v1/responses", "/openai/v1/responses")

    def parse(self, body: dict) -> Request:
        return parse_responses_request(body)

    def body(self, gen: Generation) -> dict:
        return ResponseBuilder(gen).final(output_text=True)

    def encoder(self, gen: Generation) -> StreamEncoder:
        return ResponseEventEncoder(ResponseBuilder(gen))
