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
from .tools import functions


@dataclass(frozen=True)
class Prompt:
    """One prompt as a chat message list; adapters translate it to their API's shape."""

    messages: tuple[dict[str, Any], ...]
    prompt_tokens: int | None = None
    """Tokens the client counted for it (used when the server reports no usage)."""
    cache_after: tuple[int, ...] = ()
    """Indices of messages that end a reusable prefix: Anthropic `cache_control` breakpoints (workloads.py)."""

    @classmethod
    def of_text(cls, text: str, prompt_tokens: int | None = None) -> Prompt:
        return cls(({"role": "user", "content": text},), prompt_tokens)


@dataclass
class Usage:
    """Token usage as reported by the server; None where the server said nothing."""

    prompt_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None
    """Prompt tokens served from the server's prefix cache (None: the server does not say)."""

    def update(self, other: Usage | None) -> None:
        """Take every field `other` reports (APIs like Messages spread usage over several events)."""
        if other is None:
            return
        for name in ("prompt_tokens", "output_tokens", "reasoning_tokens", "cached_tokens"):
            v = getattr(other, name)
            if v is not None:
                setattr(self, name, v)


@dataclass(slots=True)
class StreamDelta:
    """What one SSE event means for measurement. (Not frozen: one is made per event, and a frozen
    dataclass's __init__ costs three times as much; treat it as read-only.)"""

    text: str = ""
    """Visible generated content in this event: answer text or tool-call argument fragments ("" for role-only,
    usage-only or control events, and for a tool call's name)."""
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
    """How to talk to one API. Subclasses override the four methods below (and tool_fields for --tools)."""

    name = "api"
    path = "/"
    api_key_env = "OPENAI_API_KEY"
    supports_tools = False
    """Whether tool_fields can send tools (--tools)."""

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        """Headers that carry the API key."""
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def tool_fields(self, tools: list[dict[str, Any]], tool_choice: str) -> dict[str, Any]:
        """Body fields that send `tools` (Chat shape, tools.load_tools) and `tool_choice` (auto, required or
        none) in this API's own shape."""
        raise NotImplementedError(f"the {self.name} API has no tools")

    def build_request(self, prompt: Prompt, *, model: str, max_tokens: int | None, stream: bool) -> HttpRequest:
        raise NotImplementedError

    def adopt_length_field(self, status: int | None, message: str | None) -> str | None:
        """A refusal that names the field the server wants for the output length instead: send that one
        from now on, and say which (the request is then worth sending once more); None otherwise."""
        return None

    def read_event(self, event: SseEvent) -> StreamDelta:
        """Interpret one SSE event; raise MalformedStream when its data cannot be read."""
        raise NotImplementedError

    def read_body(self, body: Any) -> tuple[str, str, Usage | None]:
        """(text, reasoning, usage) of a non-streamed response body (parsed JSON)."""
        raise NotImplementedError

    @staticmethod
    def load_json(data: str) -> Any:
        try:
            obj, end = _raw_decode(data)  # json.loads without its two extra Python calls
            if end == len(data):
                return obj
        except ValueError:
            pass
        try:  # leading or trailing whitespace, or not JSON: json.loads decides
            return json.loads(data)
        except ValueError:
            raise MalformedStream(f"event data is not JSON: {data[:80]!r}") from None


_raw_decode = json.JSONDecoder().raw_decode


def _int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def openai_usage(u: Any) -> Usage | None:
    """Usage in OpenAI's Chat and legacy Completions shape (prompt, completion and cached tokens)."""
    return usage_from(u, "prompt_tokens", "completion_tokens", "completion_tokens_details", "prompt_tokens_details")


def usage_from(u: Any, prompt: str, output: str, details: str, prompt_details: str | None = None) -> Usage | None:
    """A usage object under the API's own names; reasoning tokens from `details`.reasoning_tokens, cached
    prompt tokens from `prompt_details`.cached_tokens."""
    if not isinstance(u, dict):
        return None
    d = u.get(details)
    reasoning = _int_or_none(d.get("reasoning_tokens")) if isinstance(d, dict) else None
    p = u.get(prompt_details) if prompt_details else None
    cached = _int_or_none(p.get("cached_tokens")) if isinstance(p, dict) else None
    return Usage(_int_or_none(u.get(prompt)), _int_or_none(u.get(output)), reasoning, cached)


class ChatCompletionsAdapter(ApiAdapter):
    """OpenAI `POST /v1/chat/completions` (and every server that copies it)."""

    name = "chat"
    path = "/v1/chat/completions"
    max_tokens_field = "max_tokens"
    """The length field sent; OpenAI's reasoning models refuse it and want `max_completion_tokens`, which
    adopt_length_field switches to on that refusal (or set it in a subclass)."""
    supports_tools = True

    def adopt_length_field(self, status: int | None, message: str | None) -> str | None:
        if status != 400 or self.max_tokens_field != "max_tokens" or not message or \
                "max_completion_tokens" not in message or "'max_tokens'" not in message:
            return None
        self.max_tokens_field = "max_completion_tokens"
        return self.max_tokens_field

    def tool_fields(self, tools: list[dict[str, Any]], tool_choice: str) -> dict[str, Any]:
        return {"tools": list(tools), "tool_choice": tool_choice}

    def build_request(self, prompt: Prompt, *, model: str, max_tokens: int | None, stream: bool) -> HttpRequest:
        body: dict[str, Any] = {"model": model, "messages": list(prompt.messages), "stream": stream}
        if max_tokens is not None:
            body[self.max_tokens_field] = max_tokens
        if stream:
            body["stream_options"] = {"include_usage": True}
        return HttpRequest(self.path, body)

    @staticmethod
    def _usage(u: Any) -> Usage | None:
        return openai_usage(u)

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
            calls = delta.get("tool_calls")
            if calls:  # argument fragments are generated content; the first delta's id and name are not
                text += _arguments(calls, "delta.tool_calls")
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
            if msg.get("tool_calls"):
                text += _arguments(msg["tool_calls"], "message.tool_calls")
        return text, reasoning, self._usage(body.get("usage"))


def _arguments(calls: Any, where: str) -> str:
    """The argument text of Chat `tool_calls` (a delta's fragments, or a message's whole arguments)."""
    if not isinstance(calls, list):
        raise MalformedStream(f"{where} is not a list")
    out = ""
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        args = fn.get("arguments") if isinstance(fn, dict) else None
        if args:
            if not isinstance(args, str):
                raise MalformedStream(f"{where}[].function.arguments is not a string")
            out += args
    return out


def _object(data: str, load: Any) -> dict[str, Any]:
    obj = load(data)
    if not isinstance(obj, dict):
        raise MalformedStream(f"event data is not a JSON object: {data[:80]!r}")
    return obj


def _error_text(err: Any) -> str:
    return str(err.get("message", err) if isinstance(err, dict) else err)


class MessagesAdapter(ApiAdapter):
    """Anthropic `POST /v1/messages`: system messages become the top-level `system`, usage comes in two events."""

    name = "messages"
    path = "/v1/messages"
    api_key_env = "ANTHROPIC_API_KEY"
    anthropic_version = "2023-06-01"
    default_max_tokens = 4096
    """Messages requires max_tokens; sent when the run gives none."""
    supports_tools = True
    TOOL_CHOICE = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}

    def tool_fields(self, tools: list[dict[str, Any]], tool_choice: str) -> dict[str, Any]:
        out = []
        for fn in functions(tools):
            tool = {"name": fn["name"], "input_schema": fn["parameters"]}
            if fn.get("description"):
                tool["description"] = fn["description"]
            out.append(tool)
        return {"tools": out, "tool_choice": self.TOOL_CHOICE[tool_choice]}

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"anthropic-version": self.anthropic_version}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def build_request(self, prompt: Prompt, *, model: str, max_tokens: int | None, stream: bool) -> HttpRequest:
        system = [m["content"] for m in prompt.messages if m.get("role") in ("system", "developer")]
        messages = [m for m in prompt.messages if m.get("role") not in ("system", "developer")]
        body: dict[str, Any] = {"model": model, "max_tokens": max_tokens or self.default_max_tokens,
                                "messages": messages, "stream": stream}
        if system:
            body["system"] = "\n\n".join(s if isinstance(s, str) else json.dumps(s) for s in system)
        if prompt.cache_after:
            self._cache_control(body, prompt, len(system))
        return HttpRequest(self.path, body)

    @staticmethod
    def _cache_control(body: dict[str, Any], prompt: Prompt, n_system: int) -> None:
        """Anthropic caches only up to explicit breakpoints: mark the system prompt and the messages that
        end a reusable prefix (`Prompt.cache_after`) with `cache_control: ephemeral`."""
        def block(content: Any) -> list[Any]:
            mark = {"cache_control": {"type": "ephemeral"}}
            if isinstance(content, list) and content and isinstance(content[-1], dict):
                return [*content[:-1], {**content[-1], **mark}]
            text = content if isinstance(content, str) else json.dumps(content)
            return [{"type": "text", "text": text, **mark}]

        roles = [m.get("role") for m in prompt.messages]
        if n_system and any(roles[i] in ("system", "developer") for i in prompt.cache_after if i < len(roles)):
            body["system"] = block(body["system"])
        others = [i for i, r in enumerate(roles) if r not in ("system", "developer")]
        marked = set(prompt.cache_after)
        body["messages"] = [{**m, "content": block(m.get("content"))} if i in marked else m
                            for i, m in zip(others, body["messages"], strict=True)]

    @staticmethod
    def _usage(u: Any, *, output: bool = True) -> Usage | None:
        if not isinstance(u, dict):
            return None
        # message_start's output_tokens is a placeholder (1); only message_delta's count is final.
        # input_tokens leaves out the cached and the newly cached tokens: the prompt is their sum.
        prompt = _int_or_none(u.get("input_tokens"))
        read = _int_or_none(u.get("cache_read_input_tokens"))
        created = _int_or_none(u.get("cache_creation_input_tokens"))
        if prompt is not None and (read or created):
            prompt += (read or 0) + (created or 0)
        if not output:
            return Usage(prompt, cached_tokens=read)
        d = u.get("output_tokens_details")  # thinking tokens, where the server breaks them out
        thinking = _int_or_none(d.get("thinking_tokens")) if isinstance(d, dict) else None
        return Usage(prompt, _int_or_none(u.get("output_tokens")), thinking, cached_tokens=read)

    def read_event(self, event: SseEvent) -> StreamDelta:
        obj = _object(event.data, self.load_json)
        kind = obj.get("type") or event.event
        if kind == "content_block_delta":
            delta = obj.get("delta") or {}
            # a tool_use block's input streams as input_json_delta fragments: generated content like text
            text, thinking = delta.get("text") or delta.get("partial_json") or "", delta.get("thinking") or ""
            if not isinstance(text, str) or not isinstance(thinking, str):
                raise MalformedStream("delta text is not a string")
            return StreamDelta(text=text, reasoning=thinking) if text or thinking else NOTHING
        if kind == "message_start":
            usage = self._usage((obj.get("message") or {}).get("usage"), output=False)
            return StreamDelta(usage=usage) if usage else NOTHING
        if kind == "message_delta":
            usage = self._usage(obj.get("usage"))
            return StreamDelta(usage=usage) if usage else NOTHING
        if kind == "message_stop":
            return StreamDelta(done=True)
        if kind == "error":
            return StreamDelta(error=_error_text(obj.get("error")))
        return NOTHING  # ping, content_block_start/stop, and event types added later

    def read_body(self, body: Any) -> tuple[str, str, Usage | None]:
        if not isinstance(body, dict) or not isinstance(body.get("content"), list):
            raise MalformedStream("response body has no content")
        blocks = [b for b in body["content"] if isinstance(b, dict)]
        text = "".join((b.get("text") or "") if b.get("type") == "text" else json.dumps(b.get("input") or {})
                       for b in blocks if b.get("type") in ("text", "tool_use"))
        thinking = "".join(b.get("thinking") or "" for b in blocks if b.get("type") == "thinking")
        return text, thinking, self._usage(body.get("usage"))


class ResponsesAdapter(ApiAdapter):
    """OpenAI `POST /v1/responses`: typed events; the stream ends with response.completed or .incomplete."""

    name = "responses"
    path = "/v1/responses"
    TEXT_DELTAS = ("response.output_text.delta", "response.function_call_arguments.delta")
    REASONING_DELTAS = ("response.reasoning_text.delta", "response.reasoning_summary_text.delta")
    TERMINAL = ("response.completed", "response.incomplete")
    supports_tools = True

    def tool_fields(self, tools: list[dict[str, Any]], tool_choice: str) -> dict[str, Any]:
        # Responses function tools are flat, and strict unless told otherwise: keep Chat's default (not strict).
        return {"tools": [{"type": "function", "strict": False, **fn} for fn in functions(tools)],
                "tool_choice": tool_choice}

    def build_request(self, prompt: Prompt, *, model: str, max_tokens: int | None, stream: bool) -> HttpRequest:
        body: dict[str, Any] = {"model": model, "input": list(prompt.messages), "stream": stream}
        if max_tokens is not None:
            body["max_output_tokens"] = max_tokens
        return HttpRequest(self.path, body)

    @staticmethod
    def _usage(u: Any) -> Usage | None:
        return usage_from(u, "input_tokens", "output_tokens", "output_tokens_details", "input_tokens_details")

    def read_event(self, event: SseEvent) -> StreamDelta:
        obj = _object(event.data, self.load_json)
        kind = obj.get("type") or event.event
        if kind in self.TEXT_DELTAS or kind in self.REASONING_DELTAS:
            delta = obj.get("delta")
            if not isinstance(delta, str):
                raise MalformedStream(f"{kind} delta is not a string")
            if not delta:
                return NOTHING
            return StreamDelta(text=delta) if kind in self.TEXT_DELTAS else StreamDelta(reasoning=delta)
        if kind in self.TERMINAL:
            return StreamDelta(done=True, usage=self._usage((obj.get("response") or {}).get("usage")))
        if kind == "error":
            return StreamDelta(error=_error_text(obj))
        if kind == "response.failed":
            return StreamDelta(error=_error_text((obj.get("response") or {}).get("error") or "response failed"))
        return NOTHING

    def read_body(self, body: Any) -> tuple[str, str, Usage | None]:
        if not isinstance(body, dict) or not isinstance(body.get("output"), list):
            raise MalformedStream("response body has no output")
        text, reasoning = [], []
        for item in body["output"]:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "message":
                text += [c.get("text") or "" for c in item.get("content") or [] if isinstance(c, dict)
                         and c.get("type") == "output_text"]
            elif item.get("type") == "function_call":
                text.append(item.get("arguments") or "")
            elif item.get("type") == "reasoning":
                reasoning += [c.get("text") or "" for c in (item.get("content") or []) + (item.get("summary") or [])
                              if isinstance(c, dict)]
        return "".join(text), "".join(reasoning), self._usage(body.get("usage"))


class CompletionsAdapter(ApiAdapter):
    """OpenAI legacy `POST /v1/completions` (what `vllm bench serve` sends by default): a plain-text prompt.

    A chat-shaped prompt becomes its messages' texts joined by blank lines. The API's
    default max_tokens is only 16, so a run without --max-tokens sends `default_max_tokens`.
    """

    name = "completions"
    path = "/v1/completions"
    default_max_tokens = 256

    @staticmethod
    def prompt_text(prompt: Prompt) -> str:
        return "\n\n".join(c if isinstance(c := m.get("content"), str) else json.dumps(c) for m in prompt.messages)

    def build_request(self, prompt: Prompt, *, model: str, max_tokens: int | None, stream: bool) -> HttpRequest:
        body: dict[str, Any] = {"model": model, "prompt": self.prompt_text(prompt),
                                "max_tokens": max_tokens or self.default_max_tokens, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return HttpRequest(self.path, body)

    @staticmethod
    def _usage(u: Any) -> Usage | None:
        return openai_usage(u)

    def read_event(self, event: SseEvent) -> StreamDelta:
        data = event.data
        if data == "[DONE]":
            return StreamDelta(done=True)
        obj = _object(data, self.load_json)
        if "error" in obj and not obj.get("choices"):
            return StreamDelta(error=_error_text(obj["error"]))
        text = ""
        choices = obj.get("choices")
        if choices:
            text = choices[0].get("text") or ""
            if not isinstance(text, str):
                raise MalformedStream("choice text is not a string")
        usage = self._usage(obj.get("usage"))
        if text or usage:
            return StreamDelta(text=text, usage=usage)
        return NOTHING

    def read_body(self, body: Any) -> tuple[str, str, Usage | None]:
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            raise MalformedStream("response body has no choices")
        text = body["choices"][0].get("text") or "" if body["choices"] else ""
        return text, "", self._usage(body.get("usage"))
