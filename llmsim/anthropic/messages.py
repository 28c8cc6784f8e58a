"""Anthropic Messages: validate a request as Anthropic does, build the message and its SSE events.

Validation errors use Anthropic's wording, `<field path>: <reason>` with dotted
paths (`messages.0.content`), and leave in Anthropic's envelope because the
routes live under Anthropic paths. The stream is Anthropic's exact event
sequence; a text delta is built from a precomputed prefix and suffix, so a
token costs one json.dumps of its text.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable
from typing import Any

from ..api import Api, StreamEncoder, json_str
from ..engine import Generation, Request, new_id
from ..errors import ApiError, invalid
from ..fields import json_type
from ..prefix_cache import ANTHROPIC_MAX_BREAKPOINTS, ANTHROPIC_TTLS, NO_CACHE, CacheUsage, Segment, segment_key
from ..stream import Block, TokenPlan
from ..tokens import message_text
from ..toolcalls import OutputFormat, Tool, ToolChoice, schema_problem, tool_turn_mismatch
from ..validation import finite_float
from .clienttools import client_tool_schema

ROLES = ("user", "assistant")
THINKING_TYPES = ("enabled", "disabled", "adaptive", "between_tools")
THINKING_DISPLAYS = ("summarized", "omitted")
MIN_THINKING_BUDGET = 1024
TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
PING = b'event: ping\ndata: {"type":"ping"}\n\n'
MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def bad(path: str, reason: str) -> ApiError:
    """A 400 in Anthropic's wording: the field path, then what is wrong with it."""
    return invalid(f"{path}: {reason}", param=path)


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
    number = finite_float(value)
    if number is None:
        raise bad(key, "Input should be a finite number")
    if number < minimum:
        raise bad(key, f"Input should be greater than or equal to {minimum}")
    if number > maximum:
        raise bad(key, f"Input should be less than or equal to {maximum}")
    return number


def _object(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise bad(path, "Input should be a valid dictionary")
    return value


def _list(value: Any, path: str) -> list:
    if not isinstance(value, list):
        raise bad(path, "Input should be a valid list")
    return value


BLOCK_TYPES = ("text", "image", "document", "search_result", "thinking", "redacted_thinking", "tool_use",
               "tool_result", "server_tool_use", "web_search_tool_result", "web_fetch_tool_result",
               "code_execution_tool_result", "bash_code_execution_tool_result",
               "text_editor_code_execution_tool_result", "tool_search_tool_result", "mcp_tool_use",
               "mcp_tool_result", "container_upload")
"""Content block types a request may carry (Anthropic's input block union)."""
_BLOCK_FIELDS = {"image": ("source",), "document": ("source",), "tool_use": ("id", "name", "input"),
                 "tool_result": ("tool_use_id",)}
"""Fields a block of these types must have."""


def _blocks(blocks: list, path: str, *, text_only: bool = False) -> None:
    """Content blocks: objects with a known `type` and its required fields; text blocks carry non-empty text."""
    for j, block in enumerate(blocks):
        where = f"{path}.{j}"
        _object(block, where)
        kind = block.get("type")
        if not isinstance(kind, str):
            raise bad(f"{where}.type", "Field required" if kind is None else "Input should be a valid string")
        if text_only and kind != "text":
            raise bad(f"{where}.type", f"Input should be 'text', got {kind!r}")
        if kind not in BLOCK_TYPES:
            expected = ", ".join(f"'{t}'" for t in BLOCK_TYPES)
            raise bad(where, f"Input tag {_dumps(kind)} found using 'type' does not match any of the expected tags: "
                             f"{expected}")
        for field in _BLOCK_FIELDS.get(kind, ()):
            if block.get(field) is None:
                raise bad(f"{where}.{kind}.{field}", "Field required")
            if field in ("id", "name", "tool_use_id") and not isinstance(block[field], str):
                raise bad(f"{where}.{kind}.{field}", "Input should be a valid string")
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
    _tool_pairs(messages)
    return messages


def _block_ids(content: Any, kind: str, key: str) -> list[tuple[int, Any]]:
    """(index, id) of the content's blocks of one type."""
    if not isinstance(content, list):
        return []
    return [(j, b.get(key)) for j, b in enumerate(content) if isinstance(b, dict) and b.get("type") == kind]


def _tool_pairs(messages: list[dict]) -> None:
    """Each tool_use is answered by a tool_result in the next message, and each tool_result answers a tool_use
    of the message before it (toolcalls.tool_turn_mismatch, in Anthropic's words)."""
    calls: list[Any] = []  # the tool_use ids of the message before (an assistant's)
    for i, msg in enumerate(messages):
        results = _block_ids(msg["content"], "tool_result", "tool_use_id")
        missing, extra = tool_turn_mismatch(calls, [r for _, r in results])
        if extra:
            j, answered = results[extra[0]]
            raise bad(f"messages.{i}.content.{j}", f"unexpected `tool_use_id` found in `tool_result` blocks: "
                                                   f"{answered}. Each `tool_result` block must have a "
                                                   f"corresponding `tool_use` block in the previous message.")
        if missing:
            raise bad(f"messages.{i}", f"`tool_use` ids were found without `tool_result` blocks immediately "
                                       f"after: {', '.join(map(str, missing))}. Each `tool_use` block must "
                                       f"have a corresponding `tool_result` block in the next message.")
        calls = [u for _, u in _block_ids(msg["content"], "tool_use", "id")] if msg["role"] == "assistant" else []


def _system(body: dict) -> str | list | None:
    system = body.get("system")
    if system is None or isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise bad("system", f"Input should be a valid string or a list of text blocks, got {json_type(system)}")
    _blocks(system, "system", text_only=True)
    return system


def _tools(body: dict) -> tuple[list[Tool], ToolChoice]:
    """Custom tools (name + input_schema) and Anthropic-defined client tools (bash, text editor, computer,
    memory) become callable; server tools (web search, ...) are accepted, never called: a turn forced to
    use one answers in text, as after the server ran it."""
    tools: list[Tool] = []
    server_tools: list[str] = []
    raw = body.get("tools")
    for i, tool in enumerate(_list(raw, "tools") if raw is not None else []):
        where = f"tools.{i}"
        _object(tool, where)
        if not isinstance(tool.get("name"), str):
            raise bad(f"{where}.name", "Field required")
        kind = tool.get("type", "custom")
        if kind not in (None, "custom"):
            schema = client_tool_schema(kind) if isinstance(kind, str) else None
            if schema is None:
                server_tools.append(tool["name"])
            else:
                tools.append(Tool(tool["name"], schema))
            continue
        name = tool["name"]
        if not TOOL_NAME.match(name):
            raise bad(f"{where}.custom.name", "String should match pattern '^[a-zA-Z0-9_-]{1,128}$'")
        schema = tool.get("input_schema")
        if schema is None:
            raise bad(f"{where}.custom.input_schema", "Field required")
        _object(schema, f"{where}.custom.input_schema")
        if schema.get("type") != "object":
            raise bad(f"{where}.custom.input_schema.type", "Input should be 'object'")
        problem = schema_problem(schema)
        if problem:
            raise bad(f"{where}.custom.input_schema", f"JSON schema {problem}")
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise bad(f"{where}.custom.description", "Input should be a valid string")
        tools.append(Tool(name, schema, description or "", bool(tool.get("strict"))))
    names = [t.name for t in tools] + server_tools
    if len(set(names)) != len(names):
        raise bad("tools", "Tool names must be unique.")
    choice = body.get("tool_choice")
    if choice is None:
        return tools, ToolChoice("auto")
    _object(choice, "tool_choice")
    kind = choice.get("type")
    if kind not in TOOL_CHOICE_TYPES:
        allowed = ", ".join(f"'{t}'" for t in TOOL_CHOICE_TYPES)
        raise bad("tool_choice.type", f"Input should be one of {allowed}")
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad("tool_choice.disable_parallel_tool_use", "Input should be a valid boolean")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            raise bad("tool_choice.name", "Field required")
        if name in server_tools and all(t.name != name for t in tools):
            return tools, ToolChoice("none")
        if all(t.name != name for t in tools):
            raise bad("tool_choice.name", f"Tool '{name}' not found in provided tools")
        return tools, ToolChoice("tool", name)
    if kind == "any" and not tools:
        if server_tools:
            return tools, ToolChoice("none")
        raise bad("tool_choice", "tool_choice.type 'any' requires tools to be provided")
    return tools, ToolChoice({"any": "required"}.get(kind, kind))


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


def parse_count_tokens_request(body: dict) -> Request:
    """What /v1/messages/count_tokens takes: the prompt half of a Messages request, and its thinking settings
    (counted or not, a request Messages would refuse is refused)."""
    req = _prompt_request(body)
    _thinking(body, req)
    return req


def _prompt_request(body: dict) -> Request:
    """The prompt half of a Messages request."""
    model = _model(body)
    messages = _messages(body)
    system = _system(body)
    tools, choice = _tools(body)
    last = messages[-1]
    answers = last["role"] == "user" and isinstance(last["content"], list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in last["content"])
    parallel = not (body.get("tool_choice") or {}).get("disable_parallel_tool_use", False) \
        if isinstance(body.get("tool_choice"), dict) else True
    return Request(model=model, messages=prompt_messages(messages, system), tools=tools, tool_choice=choice,
                   parallel_tool_calls=parallel, answers_tool_result=answers, call_id_prefix="toolu_",
                   cache_segments=cache_segments(body, messages, system))


# ---------------------------------------------------------------- prompt caching

def _cache_control(value: Any, path: str) -> str:
    """A `cache_control` object validated: its TTL ("5m" unless it says "1h")."""
    _object(value, path)
    kind = value.get("type")
    if kind is None:
        raise bad(f"{path}.type", "Field required")
    if kind != "ephemeral":
        raise bad(f"{path}.type", "Input should be 'ephemeral'")
    ttl = value.get("ttl")
    if ttl is None:
        return "5m"
    if ttl not in ANTHROPIC_TTLS:
        raise bad(f"{path}.ttl", "Input should be '5m' or '1h'")
    return ttl


def _tool_text(tool: dict) -> str:
    """What a tool definition adds to the prompt (a custom tool as toolcalls.tools_prompt_text writes it)."""
    if tool.get("type", "custom") in (None, "custom"):
        return json.dumps({"name": tool.get("name"), "description": tool.get("description") or "",
                           "parameters": tool.get("input_schema")}, separators=(",", ":"), ensure_ascii=False)
    return segment_key(tool)


def cache_segments(body: dict, messages: list[dict], system: str | list | None) -> list[Segment] | None:
    """The prompt's content blocks in cache order (tools, system, messages) with their `cache_control`
    breakpoints, the top-level `cache_control` marking the last block; None when there is none."""
    segments: list[Segment] = []

    def add(block: Any, path: str, text: str, role: str | None = None) -> None:
        control = block.get("cache_control") if isinstance(block, dict) else None
        ttl = None if control is None else _cache_control(control, f"{path}.cache_control")
        key = segment_key(block) if isinstance(block, dict) else json.dumps(block)
        segments.append(Segment(key, text, role, ttl))

    for i, tool in enumerate(body.get("tools") or []):
        add(tool, f"tools.{i}", _tool_text(tool))
    if isinstance(system, str) and system:
        add({"type": "text", "text": system}, "system", system, "system")
    elif isinstance(system, list):
        for j, block in enumerate(system):
            add(block, f"system.{j}", _block_text(block), "system" if j == 0 else None)
    for i, msg in enumerate(messages):
        content = msg["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for j, block in enumerate(blocks):
            add(block, f"messages.{i}.content.{j}", _block_text(block), msg["role"] if j == 0 else None)
    top = body.get("cache_control")
    if top is not None:  # automatic caching: a breakpoint on the last block
        ttl = _cache_control(top, "cache_control")
        if segments and segments[-1].ttl is None:
            last = segments[-1]
            segments[-1] = Segment(last.key, last.text, last.role, ttl)
    found = sum(1 for s in segments if s.ttl is not None)
    if found > ANTHROPIC_MAX_BREAKPOINTS:
        raise invalid(f"A maximum of {ANTHROPIC_MAX_BREAKPOINTS} blocks with cache_control may be provided. "
                      f"Found {found}.")
    return segments if found else None


def parse_messages_request(body: dict) -> Request:
    """Validate a Messages body by Anthropic's rules; 400 `invalid_request_error` naming the field otherwise."""
    req = _prompt_request(body)
    req.max_tokens = _integer(body, "max_tokens", required=True, minimum=1)
    req.stop = _stop_sequences(body)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("stream", "Input should be a valid boolean")
    req.stream = bool(stream)
    temperature = _number(body, "temperature", 0, 1)
    top_p = _number(body, "top_p", 0, 1)
    top_k = _integer(body, "top_k", minimum=0)
    metadata = body.get("metadata")
    if metadata is not None:
        user_id = _object(metadata, "metadata").get("user_id")
        if user_id is not None and not isinstance(user_id, str):
            raise bad("metadata.user_id", "Input should be a valid string")
    _thinking(body, req)
    if req.reasoning in ("visible", "omitted"):  # thinking on: the sampling limits Anthropic enforces
        if temperature is not None and temperature != 1:
            raise bad("temperature", "`temperature` may only be set to 1 when thinking is enabled or in adaptive "
                                     "mode.")
        if top_k is not None:
            raise bad("top_k", "`top_k` must be unset when thinking is enabled or in adaptive mode.")
        if top_p is not None and top_p < 0.95:
            raise bad("top_p", "`top_p` must be greater than or equal to 0.95 or unset when thinking is enabled or "
                               "in adaptive mode.")
        if req.tool_choice.mode in ("required", "tool"):
            raise bad("tool_choice", "Thinking may not be enabled when tool_choice forces tool use.")
    req.output_format = _output_format(body)
    return req


def _thinking(body: dict, req: Request) -> None:
    """`thinking`: enabled (with budget_tokens >= 1024 and < max_tokens) or adaptive makes the model think
    in a visible `thinking` block (display "omitted": an empty one, the tokens still spent); disabled or
    between_tools: no thinking. Without `thinking`, the profile decides (Claude: no thinking)."""
    thinking = body.get("thinking")
    if thinking is None:
        return
    _object(thinking, "thinking")
    kind = thinking.get("type")
    if kind is None:
        raise bad("thinking.type", "Field required")
    if kind not in THINKING_TYPES:
        tags = ", ".join(f"'{t}'" for t in THINKING_TYPES)
        raise bad("thinking", f"Input tag {_dumps(kind)} found using 'type' does not match any of the expected "
                              f"tags: {tags}")
    if kind in ("disabled", "between_tools"):
        req.reasoning = "off"
        return
    display = thinking.get("display")
    if display is not None and display not in THINKING_DISPLAYS:
        raise bad("thinking.display", "Input should be 'summarized' or 'omitted'")
    req.reasoning = "omitted" if display == "omitted" else "visible"
    _thinking_leads_the_tool_turn(body.get("messages") or [])
    if kind == "adaptive":
        return
    budget = thinking.get("budget_tokens")
    path = "thinking.budget_tokens"
    if budget is None:
        raise bad(path, "Field required")
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise bad(path, "Input should be a valid integer")
    if budget < MIN_THINKING_BUDGET:
        raise bad(path, f"Input should be greater than or equal to {MIN_THINKING_BUDGET}")
    if req.max_tokens is not None and budget >= req.max_tokens:
        raise invalid("`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                      "documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
                      "#max-tokens-and-context-window-size", param=path)
    req.reasoning_budget = budget


def _thinking_leads_the_tool_turn(messages: list) -> None:
    """With thinking on, the assistant turn whose tool calls the last message answers must start with its
    thinking block, as Claude produced it (a client that drops thinking blocks from its history fails here)."""
    last = messages[-1] if messages else None
    if not isinstance(last, dict) or last.get("role") != "user" or not _block_ids(last.get("content"), "tool_result",
                                                                                    "tool_use_id"):
        return
    i = len(messages) - 2
    turn = messages[i] if i >= 0 else None
    if not isinstance(turn, dict) or turn.get("role") != "assistant":
        return
    content = turn.get("content")
    first = content[0] if isinstance(content, list) and content else None
    kind = first.get("type") if isinstance(first, dict) else "text"
    if kind not in ("thinking", "redacted_thinking"):
        raise bad(f"messages.{i}.content.0.type",
                  f"Expected `thinking` or `redacted_thinking`, but found `{kind}`. When `thinking` is enabled, a "
                  "final `assistant` message must start with a thinking block (preceeding the lastmost set of "
                  "`tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous "
                  "turns. To avoid this requirement, disable `thinking`. Please consult our documentation at "
                  "https://docs.claude.com/en/docs/build-with-claude/extended-thinking")


def _output_format(body: dict) -> OutputFormat | None:
    """Structured outputs: `output_config.format` (or the beta's top-level `output_format`)."""
    config = body.get("output_config")
    fmt, where = None, "output_config.format"
    if config is not None:
        fmt = _object(config, "output_config").get("format")
    if fmt is None and body.get("output_format") is not None:
        fmt, where = body["output_format"], "output_format"
    if fmt is None:
        return None
    _object(fmt, where)
    if fmt.get("type") != "json_schema":
        raise bad(f"{where}.type", "Input should be 'json_schema'")
    schema = fmt.get("schema")
    if schema is None:
        raise bad(f"{where}.schema", "Field required")
    problem = schema_problem(schema)
    if problem:
        raise bad(f"{where}.schema", f"JSON schema {problem}")
    return OutputFormat("json_schema", schema)


# ---------------------------------------------------------------- token accounting

def _block_text(block: Any) -> str:
    """What a content block adds to the prompt: text, tool inputs and tool results."""
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_use":
        return str(block.get("name", "")) + json.dumps(block.get("input", {}), ensure_ascii=False)
    if kind == "tool_result":
        return message_text(block.get("content"))
    if kind == "thinking":
        return str(block.get("thinking", ""))
    return ""


def prompt_messages(messages: list[dict], system: str | list | None) -> list[dict]:
    """The prompt as chat-shaped messages, the system prompt first: what is counted and generated from.

    Claude's tokenizer is not public; the profile's encoding (cl100k_base for
    Claude) approximates it, and OpenAI's per-message framing keeps one
    accounting rule across the simulator.
    """
    out = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str)
            else "".join(_block_text(b) for b in m["content"])} for m in messages]
    if system:
        out.insert(0, {"role": "system", "content": message_text(system)})
    return out


# ---------------------------------------------------------------- response bodies

def stop_reason(plan: TokenPlan) -> str:
    """Anthropic's stop_reason for a plan: max_tokens, stop_sequence, tool_use or end_turn."""
    if plan.finish_reason == "length":
        return "max_tokens"
    if plan.stop_sequence is not None:
        return "stop_sequence"
    if plan.finish_reason == "tool_calls":
        return "tool_use"
    return "end_turn"


def cache_fields(prompt_tokens: int, cache: CacheUsage) -> dict:
    """The prompt's share of `usage`: input_tokens is what was neither read from nor written to the cache."""
    return {"input_tokens": max(0, prompt_tokens - cache.read - cache.write),
            "cache_creation_input_tokens": cache.write, "cache_read_input_tokens": cache.read}


def message_usage(prompt_tokens: int, output_tokens: int, thinking_tokens: int = 0,
                  cache: CacheUsage = NO_CACHE) -> dict:
    """`usage`: output_tokens includes thinking, which output_tokens_details breaks out when there is some."""
    usage: dict[str, Any] = {**cache_fields(prompt_tokens, cache),
                             "cache_creation": {"ephemeral_5m_input_tokens": cache.write_5m,
                                                "ephemeral_1h_input_tokens": cache.write_1h},
                             "output_tokens": output_tokens, "service_tier": "standard"}
    if thinking_tokens:
        usage["output_tokens_details"] = {"thinking_tokens": thinking_tokens}
    return usage


def signature() -> str:
    """An opaque thinking-block signature (what a client passes back unchanged)."""
    return base64.b64encode(os.urandom(144)).decode()


def tool_input(block: Block) -> Any:
    """A tool_use block's `input`: its arguments parsed (an object cut by max_tokens gives {})."""
    try:
        value = json.loads(block.text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def content_block(block: Block, signature: str) -> dict:
    if block.kind == "tool_call":
        return {"type": "tool_use", "id": block.call_id, "name": block.name, "input": tool_input(block)}
    if block.kind == "reasoning":
        return {"type": "thinking", "thinking": block.text, "signature": signature}
    return {"type": "text", "text": block.text}


def message_body(meta: dict, gen: Generation) -> dict:
    """The non-streaming `message` object. meta: {"id", "model"}."""
    plan = gen.plan
    return {
        "id": meta["id"],
        "type": "message",
        "role": "assistant",
        "model": meta["model"],
        "content": [content_block(b, meta.get("signature", "")) for b in plan.blocks],
        "stop_reason": stop_reason(plan),
        "stop_sequence": plan.stop_sequence,
        "usage": message_usage(gen.prompt_tokens, plan.completion_tokens, plan.all_reasoning_tokens, gen.cache),
    }


class MessageEventEncoder(StreamEncoder):
    """SSE bytes (`event:` + `data:` lines) for one streamed message.

    A delta is built from a precomputed prefix and suffix, so a token costs
    one json.dumps of its text.
    """

    early_open = True

    def __init__(self, meta: dict, gen: Generation) -> None:
        super().__init__(gen)
        self.meta = meta
        self.input_tokens = gen.prompt_tokens
        self._heads: dict[int, bytes] = {}

    @staticmethod
    def event(name: str, data: dict) -> bytes:
        return f"event: {name}\ndata: {_dumps(data)}\n\n".encode()

    def message_start(self, output_tokens: int = 1) -> bytes:
        message = {"id": self.meta["id"], "type": "message", "role": "assistant", "model": self.meta["model"],
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": message_usage(self.input_tokens, output_tokens, cache=self.gen.cache)}
        return self.event("message_start", {"type": "message_start", "message": message})

    def opening(self) -> Iterable[bytes]:
        yield self.message_start(min(1, self.gen.plan.completion_tokens))

    def block_start(self, index: int, block: Block) -> bytes:
        if block.kind == "tool_call":
            start: dict = {"type": "tool_use", "id": block.call_id, "name": block.name, "input": {}}
            kind, field_ = "input_json_delta", "partial_json"
        elif block.kind == "reasoning":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            kind, field_ = "thinking_delta", "thinking"
        else:
            start = {"type": "text", "text": ""}
            kind, field_ = "text_delta", "text"
        self._heads[index] = (f'event: content_block_delta\ndata: {{"type":"content_block_delta","index":{index},'
                              f'"delta":{{"type":"{kind}","{field_}":').encode()
        out = self.event("content_block_start", {"type": "content_block_start", "index": index,
                                                 "content_block": start})
        return out + PING if index == 0 else out

    def delta(self, index: int, block: Block, text: str) -> bytes:
        return self._heads[index] + json_str(text) + b"}}\n\n"

    def block_stop(self, index: int, block: Block) -> bytes:
        out = b""
        if block.kind == "reasoning":
            out = self.event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                "type": "signature_delta", "signature": self.meta.get("signature", "")}})
        return out + self.event("content_block_stop", {"type": "content_block_stop", "index": index})

    def message_delta(self, plan: TokenPlan) -> bytes:
        usage: dict = {**cache_fields(self.input_tokens, self.gen.cache), "output_tokens": plan.completion_tokens}
        if plan.all_reasoning_tokens:
            usage["output_tokens_details"] = {"thinking_tokens": plan.all_reasoning_tokens}
        return self.event("message_delta", {"type": "message_delta",
                                            "delta": {"stop_reason": stop_reason(plan),
                                                      "stop_sequence": plan.stop_sequence},
                                            "usage": usage})

    def closing(self) -> Iterable[bytes]:
        yield self.message_delta(self.gen.plan)
        yield MESSAGE_STOP

    def error_event(self, err: ApiError) -> bytes:
        """An in-band failure after the 200: `event: error` with Anthropic's error object."""
        return self.event("error", err.anthropic_body())


class Messages(Api):
    """POST /v1/messages (also under /anthropic)."""

    name = "messages"
    provider = "anthropic"
    paths = ("/v1/messages", "/anthropic/v1/messages")

    def parse(self, body: dict) -> Request:
        return parse_messages_request(body)

    @staticmethod
    def _meta(gen: Generation) -> dict:
        meta = {"id": new_id("msg_"), "model": gen.request.model}
        if any(b.kind == "reasoning" for b in gen.plan.blocks):
            meta["signature"] = signature()
        return meta

    def body(self, gen: Generation) -> dict:
        return message_body(self._meta(gen), gen)

    def encoder(self, gen: Generation) -> StreamEncoder:
        return MessageEventEncoder(self._meta(gen), gen)
