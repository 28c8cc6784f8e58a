"""Tool-call and structured-output streams (issue 10): tool-call argument deltas are generated content for
TTFT and ITL on every API; --tools/--tool-choice send tools in each API's own shape."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from llmsim.loadtest.adapters import (
    ChatCompletionsAdapter,
    CompletionsAdapter,
    MessagesAdapter,
    Prompt,
    ResponsesAdapter,
    StreamDelta,
    Usage,
)
from llmsim.loadtest.client import LlmClient
from llmsim.loadtest.options import LoadTestSettings, OptionError, add_arguments
from llmsim.loadtest.sse import SseEvent
from llmsim.loadtest.tools import ToolsError, load_tools
from llmsim.testing import run_server
from llmsim.tokens import get_encoding

from .locust_helpers import MEDIAN_ITL_MS, MESSAGES, RESPONSES, run_locust, within

PARAMS = {"type": "object", "properties": {"city": {"type": "string"},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
          "required": ["city", "days"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather forecast",
                                            "parameters": PARAMS}}]
PROMPT = Prompt.of_text("What is the weather in Lisbon?", 8)
TTFT_MS, ITL_MS = 60.0, 8.0
CONSTANT = f"""
profiles:
  - name: lt-tools
    models: [gpt-lt, claude-lt]
    encoding: o200k_base
    ttft: {{distribution: constant, mean_ms: {TTFT_MS:g}}}
    itl: {{distribution: constant, mean_ms: {ITL_MS:g}}}
    slo: {{ttft_p99_ms: 1000, itl_p99_ms: 100}}
"""
ENC = get_encoding("o200k_base")
ADAPTERS = [(ChatCompletionsAdapter(), "gpt-lt"), (ResponsesAdapter(), "gpt-lt"), (MessagesAdapter(), "claude-lt")]


def ev(data: dict | str, event: str | None = None) -> SseEvent:
    return SseEvent(event, data if isinstance(data, str) else json.dumps(data), 0.0)


def count(text: str) -> int:
    return len(ENC.encode_ordinary(text))


# ---------------------------------------------------------------- request shapes

def test_each_adapter_sends_the_tools_in_its_own_shape():
    assert ChatCompletionsAdapter().tool_fields(TOOLS, "required") == {"tools": TOOLS, "tool_choice": "required"}
    assert ResponsesAdapter().tool_fields(TOOLS, "auto") == {
        "tools": [{"type": "function", "name": "get_weather", "description": "Weather forecast", "parameters": PARAMS,
                   "strict": False}], "tool_choice": "auto"}
    for choice, anthropic in (("auto", "auto"), ("required", "any"), ("none", "none")):
        assert MessagesAdapter().tool_fields(TOOLS, choice) == {
            "tools": [{"name": "get_weather", "description": "Weather forecast", "input_schema": PARAMS}],
            "tool_choice": {"type": anthropic}}
    bare = [{"type": "function", "function": {"name": "ping", "strict": True}}]
    empty = {"type": "object", "properties": {}}
    assert MessagesAdapter().tool_fields(bare, "auto")["tools"] == [{"name": "ping", "input_schema": empty}]
    assert ResponsesAdapter().tool_fields(bare, "auto")["tools"] == [
        {"type": "function", "name": "ping", "strict": True, "parameters": empty}]
    assert not CompletionsAdapter().supports_tools
    with pytest.raises(NotImplementedError):
        CompletionsAdapter().tool_fields(TOOLS, "auto")


def test_the_client_adds_the_tools_to_every_request_body():
    client = LlmClient("http://127.0.0.1:9", MessagesAdapter(), model="m", count_tokens=count, tools=TOOLS,
                       tool_choice="required")
    assert client.body_fields["tool_choice"] == {"type": "any"}
    assert LlmClient("http://127.0.0.1:9", MessagesAdapter(), model="m", count_tokens=count).body_fields == {}


# ---------------------------------------------------------------- event reading

def test_chat_tool_call_argument_deltas_are_content():
    a = ChatCompletionsAdapter()
    head = {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}}]}
    assert a.read_event(ev(head)) == StreamDelta()  # the id and name are not generated content
    frag = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}}]}
    assert a.read_event(ev(frag)) == StreamDelta(text='{"ci')
    two = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}},
                                                              {"index": 1, "function": {"arguments": "{"}}]}}]}
    assert a.read_event(ev(two)) == StreamDelta(text="1}{")
    text, _, _ = a.read_body({"choices": [{"message": {"content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}}]})
    assert text == '{"a": 1}'


def test_responses_function_call_argument_deltas_are_content():
    a = ResponsesAdapter()
    added = {"type": "response.output_item.added", "item": {"type": "function_call", "name": "get_weather"}}
    assert a.read_event(ev(added)) == StreamDelta()
    assert a.read_event(ev({"type": "response.function_call_arguments.delta", "delta": '{"ci'})) == \
        StreamDelta(text='{"ci')
    assert a.read_event(ev({"type": "response.function_call_arguments.done", "arguments": "{}"})) == StreamDelta()
    text, _, usage = a.read_body({"output": [{"type": "function_call", "name": "f", "arguments": '{"a": 1}'}],
                                  "usage": {"input_tokens": 3, "output_tokens": 5}})
    assert (text, usage) == ('{"a": 1}', Usage(3, 5))


def test_messages_input_json_deltas_are_content():
    a = MessagesAdapter()
    start = {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "name": "f"}}
    assert a.read_event(ev(start)) == StreamDelta()
    frag = {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"c'}}
    assert a.read_event(ev(frag)) == StreamDelta(text='{"c')
    empty = {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ""}}
    assert a.read_event(ev(empty)) == StreamDelta()
    text, _, _ = a.read_body({"content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}],
                              "usage": {"input_tokens": 3, "output_tokens": 5}})
    assert text == '{"a": 1}'


# ---------------------------------------------------------------- the tools file and the options

def test_load_tools_names_the_file_the_tool_and_the_reason(tmp_path):
    good = tmp_path / "tools.json"
    good.write_text(json.dumps(TOOLS))
    assert load_tools(good) == TOOLS
    cases = [("[]", "non-empty JSON list"), ("{", "not JSON"),
             ('[{"type": "function", "function": {"name": "a b"}}]', "tools[0].function.name"),
             ('[{"name": "f", "input_schema": {}}]', 'tools[0]: expected {"type": "function"'),
             ('[{"type": "function", "function": {"name": "f", "parameters": []}}]', "tools[0].function.parameters"),
             ('[{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]',
              "defined twice")]
    for text, message in cases:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ToolsError, match=message.replace("[", r"\[").replace("{", r"\{")) as e:
            load_tools(bad)
        assert str(bad) in str(e.value)
    with pytest.raises(ToolsError, match="cannot read"):
        load_tools(tmp_path / "missing.json")


def _options(*args: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(args))


def test_tools_options(tmp_path):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(TOOLS))
    s = LoadTestSettings.from_options(_options("--tools", str(path), "--tool-choice", "required"))
    assert s.tools == TOOLS and s.tool_choice == "required"
    s = LoadTestSettings.from_options(_options("--tools", str(path)))
    assert s.tool_choice == "auto"
    assert LoadTestSettings.from_options(_options()).tools is None
    with pytest.raises(OptionError, match="--tool-choice needs --tools"):
        LoadTestSettings.from_options(_options("--tool-choice", "none"))
    with pytest.raises(SystemExit):
        _options("--tool-choice", "any")


# ---------------------------------------------------------------- the client against llmsim

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "lt.yaml"
    path.write_text(CONSTANT)
    with run_server(profile_files=[path], latency_profile="lt-tools", config={"tools": {"call_probability": 1.0}},
                    seed=5) as url:
        yield url


def measure(url: str, adapter: Any, model: str, *, stream: bool = True, **kw: Any):
    client = LlmClient(url, adapter, model=model, count_tokens=count, timeout=10, **kw)
    try:
        return client.run(PROMPT, max_tokens=200, stream=stream)
    finally:
        client.close()


def assert_profile_timing(rec) -> None:
    """TTFT is the profile's (deadlines only run late), the ITL median is the profile's, and there is one
    sample per streamed token after the first: the token count is the server's usage."""
    assert rec.ok, rec.error_message
    assert rec.usage_reported and rec.output_tokens >= 5
    assert within(rec.ttft_ms, TTFT_MS), rec.ttft_ms
    assert len(rec.itl_ms) == rec.output_tokens - 1
    assert within(sorted(rec.itl_ms)[len(rec.itl_ms) // 2], ITL_MS, MEDIAN_ITL_MS, MEDIAN_ITL_MS), rec.itl_ms
    assert rec.tpot_ms is not None and within(rec.tpot_ms, ITL_MS, MEDIAN_ITL_MS, 5.0)


@pytest.mark.parametrize("adapter, model", ADAPTERS, ids=lambda a: getattr(a, "name", a))
def test_tool_call_streams_are_timed_like_text(server, adapter, model):
    """tool_choice required: the answer is only a tool call, whose argument fragments carry the timing."""
    rec = measure(server, adapter, model, tools=TOOLS, tool_choice="required")
    assert_profile_timing(rec)
    # The same request unstreamed: the arguments validate, and the client's count of them is the server's.
    text, usage = _post(server, adapter, model, adapter.tool_fields(TOOLS, "required"))
    jsonschema.validate(json.loads(text), PARAMS)
    assert usage is not None and usage.output_tokens == count(text)


def _post(url: str, adapter: Any, model: str, fields: dict | None = None) -> tuple[str, Usage | None]:
    """The adapter's request, not streamed, sent with `requests`: the answer's text and usage."""
    import requests

    req = adapter.build_request(PROMPT, model=model, max_tokens=200, stream=False)
    headers = {"Content-Type": "application/json", **adapter.auth_headers("sk-test")}
    body = requests.post(url + req.path, json={**req.body, **(fields or {})}, headers=headers, timeout=10).json()
    text, _, usage = adapter.read_body(body)
    return text, usage


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "tags": {"type": "array",
                                                                                "items": {"type": "string"}}},
          "required": ["name", "tags"], "additionalProperties": False}


class JsonSchemaChat(ChatCompletionsAdapter):
    def build_request(self, prompt, **kw):
        req = super().build_request(prompt, **kw)
        req.body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "item", "schema": SCHEMA, "strict": True}}
        return req


class JsonSchemaResponses(ResponsesAdapter):
    def build_request(self, prompt, **kw):
        req = super().build_request(prompt, **kw)
        req.body["text"] = {"format": {"type": "json_schema", "name": "item", "schema": SCHEMA, "strict": True}}
        return req


class JsonSchemaMessages(MessagesAdapter):
    def build_request(self, prompt, **kw):
        req = super().build_request(prompt, **kw)
        req.body["output_config"] = {"format": {"type": "json_schema", "schema": SCHEMA}}
        return req


@pytest.mark.parametrize("adapter, model", [(JsonSchemaChat(), "gpt-lt"), (JsonSchemaResponses(), "gpt-lt"),
                                            (JsonSchemaMessages(), "claude-lt")], ids=lambda a: getattr(a, "name", a))
def test_structured_output_streams_are_timed_like_text(server, adapter, model):
    """A json_schema answer is plain text content: same timing, and the streamed text is the schema's JSON."""
    assert_profile_timing(measure(server, adapter, model))
    text, usage = _post(server, adapter, model)
    jsonschema.validate(json.loads(text), SCHEMA)
    assert usage is not None and usage.output_tokens == count(text)


@pytest.mark.slow
@pytest.mark.parametrize("locustfile", [None, RESPONSES, MESSAGES], ids=["chat", "responses", "messages"])
def test_locust_run_with_tools(tmp_path, locustfile):
    """A headless run with --tools and --tool-choice required against the embedded server: every answer is a
    tool call, measured and scored like text."""
    from .locust_helpers import CHAT, PROFILES

    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    proc, report = run_locust(tmp_path, "--llm-profile", str(PROFILES / "steady.yaml"), "--tools", str(tools),
                              "--tool-choice", "required", "-u", "4", "-r", "4", "-t", "3s",
                              "--llm-tolerance", "10%,25ms", locustfile=locustfile or CHAT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = report["metrics"]
    assert report["requests"]["failed"] == 0 and report["requests"]["ok"] >= 10
    assert within(m["ttft"]["p50"], 50.0) and within(m["itl"]["p50"], 5.0, MEDIAN_ITL_MS, MEDIAN_ITL_MS)
    assert m["itl"]["count"] == report["tokens"]["output"] - report["requests"]["ok"]
