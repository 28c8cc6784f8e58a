"""Tool calls and structured outputs on all three APIs, through the official SDKs and raw streams."""

import json
import time
import warnings
from typing import Literal

import anthropic
import openai
import pytest
import requests
from jsonschema import validate
from pydantic import BaseModel, Field

from llmsim.testing import run_server
from tests.sse import parse_sse, stream_events

WEATHER = {"type": "object", "properties": {"city": {"type": "string"},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "unit", "days"], "additionalProperties": False}
SEARCH = {"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}},
          "required": ["query"]}
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                                                "parameters": WEATHER, "strict": True}},
              {"type": "function", "function": {"name": "search", "parameters": SEARCH}}]
RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True},
                   {"type": "function", "name": "search", "parameters": SEARCH, "strict": False}]
ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "Weather by city", "input_schema": WEATHER},
                   {"name": "search", "input_schema": SEARCH}]
SCHEMAS = {"get_weather": WEATHER, "search": SEARCH}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
CLAUDE = "claude-haiku-4-5"


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=120)
    email: str | None = None
    skills: list[str]


class Team(BaseModel):
    title: str
    members: list[Person] = Field(min_length=1, max_length=3)


@pytest.fixture(scope="module")
def url():
    # tools: auto calls a tool on every turn that does not answer a tool result.
    with run_server(latency_profile="instant", seed=11,
                    config={"tools": {"call_probability": 1.0, "max_parallel_calls": 3}}) as u:
        yield u


@pytest.fixture(scope="module")
def oai(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)


@pytest.fixture(scope="module")
def claude(url):
    warnings.simplefilter("ignore", DeprecationWarning)
    return anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)


def check_call(name: str, arguments: str | dict) -> None:
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    validate(args, SCHEMAS[name])


# ---------------------------------------------------------------- structured outputs

def test_chat_parse_returns_the_pydantic_object(oai):
    for i in range(5):
        r = oai.chat.completions.parse(model="gpt-4o", messages=[{"role": "user", "content": f"team {i}"}],
                                       response_format=Team)
        team = r.choices[0].message.parsed
        assert isinstance(team, Team) and 1 <= len(team.members) <= 3
        assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens > 5


class Card(BaseModel):
    kind: Literal["card"]
    number: str = Field(pattern=r"^\d{4}-\d{4}-\d{4}-\d{4}$")


class Iban(BaseModel):
    kind: Literal["iban"]
    iban: str = Field(pattern=r"^[A-Z]{2}\d{2}[A-Z0-9]{11,30}$")


class Payment(BaseModel):
    amount: float = Field(gt=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    method: Card | Iban = Field(discriminator="kind")


def test_chat_parse_gives_a_discriminated_union_and_patterns(oai):
    """pydantic writes the union as a oneOf, and the strings with patterns: each answer validates."""
    kinds = set()
    for i in range(12):
        r = oai.chat.completions.parse(model="gpt-4o", messages=[{"role": "user", "content": f"pay {i}"}],
                                       response_format=Payment)
        payment = r.choices[0].message.parsed
        assert isinstance(payment, Payment), r.choices[0].message.content
        kinds.add(payment.method.kind)
    assert kinds == {"card", "iban"}


def test_responses_parse_returns_the_pydantic_object(oai):
    r = oai.responses.parse(model="gpt-4o", input="who?", text_format=Person)
    assert isinstance(r.output_parsed, Person) and 0 <= r.output_parsed.age <= 120


def test_json_object_mode_gives_an_object_and_streams_it(oai):
    r = oai.chat.completions.create(model="gpt-4o", messages=USER, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    pieces = [c.choices[0].delta.content for c in oai.chat.completions.create(
        model="gpt-4o", messages=USER, response_format={"type": "json_object"}, stream=True)
        if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 5 and isinstance(json.loads("".join(pieces)), dict)


def test_structured_output_cut_by_max_tokens_is_length(oai):
    r = oai.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=4, response_format={
        "type": "json_schema", "json_schema": {"name": "team", "schema": Team.model_json_schema()}})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4
    with pytest.raises(ValueError):
        json.loads(r.choices[0].message.content)


def test_anthropic_structured_output_through_parse(claude):
    m = claude.messages.parse(model=CLAUDE, max_tokens=400, messages=USER, output_format=Team)
    assert isinstance(m.parsed_output, Team) and m.stop_reason == "end_turn"


# ---------------------------------------------------------------- tool calls: Chat

def test_chat_tool_calls_nonstreaming(oai):
    r = oai.chat.completions.create(model="gpt-4o", messages=USER, tools=CHAT_TOOLS, tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert 1 <= len(choice.message.tool_calls) <= 3
    for call in choice.message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        check_call(call.function.name, call.function.arguments)


def test_chat_stream_helper_accumulates_valid_tool_calls(oai):
    with oai.chat.completions.stream(model="gpt-4o", messages=USER, tools=CHAT_TOOLS,
                                     tool_choice={"type": "function", "function": {"name": "get_weather"}}) as s:
        deltas = [e for e in s if e.type == "tool_calls.function.arguments.delta"]
        final = s.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather"] and len(deltas) > 3
    assert calls[0].function.parsed_arguments == json.loads(calls[0].function.arguments)
    check_call("get_weather", calls[0].function.arguments)
    assert final.choices[0].finish_reason == "stop"  # a named tool choice finishes with "stop", as OpenAI's does


def test_tool_choice_none_and_parallel_off(oai):
    r = oai.chat.completions.create(model="gpt-4o", messages=USER, tools=CHAT_TOOLS, tool_choice="none")
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content
    counts = {len(oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"q{i}"}],
                                              tools=CHAT_TOOLS, parallel_tool_calls=False)
                  .choices[0].message.tool_calls) for i in range(8)}
    assert counts == {1}
    parallel = {len(oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"p{i}"}],
                                                tools=CHAT_TOOLS).choices[0].message.tool_calls) for i in range(20)}
    assert parallel <= {1, 2, 3} and len(parallel) > 1


def test_agent_loop_ends_with_a_text_answer(oai):
    messages = list(USER)
    r = oai.chat.completions.create(model="gpt-4o", messages=messages, tools=CHAT_TOOLS, parallel_tool_calls=False)
    call = r.choices[0].message.tool_calls[0]
    messages += [r.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    final = oai.chat.completions.create(model="gpt-4o", messages=messages, tools=CHAT_TOOLS)
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content
    assert final.usage.prompt_tokens > r.usage.prompt_tokens  # the call and its result are prompt now


def test_chat_raw_tool_call_stream_order(url):
    r, events = stream_events(url + "/v1/chat/completions", {
        "model": "gpt-4o", "messages": USER, "tools": CHAT_TOOLS, "tool_choice": "required", "stream": True,
        "parallel_tool_calls": False, "stream_options": {"include_usage": True}})
    data = [d for _, d in events]
    assert data[-1] == "[DONE]"
    first = data[0]["choices"][0]["delta"]
    assert first["role"] == "assistant" and first["content"] is None
    opening = data[1]["choices"][0]["delta"]["tool_calls"][0]
    assert opening["index"] == 0 and opening["id"].startswith("call_") and opening["type"] == "function"
    assert opening["function"]["arguments"] == "" and opening["function"]["name"] in SCHEMAS
    frags = [d["choices"][0]["delta"]["tool_calls"][0] for d in data[2:-3]]
    assert all(set(f) == {"index", "function"} and set(f["function"]) == {"arguments"} for f in frags)
    check_call(opening["function"]["name"], "".join(f["function"]["arguments"] for f in frags))
    assert data[-3]["choices"][0]["finish_reason"] == "tool_calls"
    assert data[-2]["choices"] == [] and data[-2]["usage"]["completion_tokens"] == len(frags)


# ---------------------------------------------------------------- tool calls: Responses

def test_responses_function_calls(oai):
    r = oai.responses.create(model="gpt-4o", input="weather?", tools=RESPONSES_TOOLS, tool_choice="required")
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and all(c.status == "completed" and c.call_id.startswith("call_") for c in calls)
    for c in calls:
        check_call(c.name, c.arguments)


def test_responses_stream_function_call_events(oai):
    with oai.responses.stream(model="gpt-4o", input="weather?", tools=RESPONSES_TOOLS, parallel_tool_calls=False,
                              tool_choice={"type": "function", "name": "search"}) as s:
        events = list(s)
        final = s.get_final_response()
    types = [e.type for e in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "response.completed"]
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    done = events[-3]
    assert "".join(deltas) == done.arguments and done.name == "search"
    check_call("search", done.arguments)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output[0].type == "function_call" and final.output[0].arguments == done.arguments


def test_responses_agent_loop(oai):
    r = oai.responses.create(model="gpt-4o", input="weather?", tools=RESPONSES_TOOLS, parallel_tool_calls=False)
    call = r.output[0]
    follow = oai.responses.create(model="gpt-4o", tools=RESPONSES_TOOLS, input=[
        {"role": "user", "content": "weather?"}, call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "18C"}])
    assert follow.output[0].type == "message" and follow.output_text


# ---------------------------------------------------------------- tool calls: Messages

def test_anthropic_tool_use_create_and_stream(claude):
    m = claude.messages.create(model=CLAUDE, max_tokens=300, messages=USER, tools=ANTHROPIC_TOOLS,
                               tool_choice={"type": "any"})
    uses = [b for b in m.content if b.type == "tool_use"]
    assert m.stop_reason == "tool_use" and uses and all(b.id.startswith("toolu_") for b in uses)
    for b in uses:
        check_call(b.name, b.input)
    with claude.messages.stream(model=CLAUDE, max_tokens=300, messages=USER, tools=ANTHROPIC_TOOLS,
                                tool_choice={"type": "tool", "name": "get_weather"}) as s:
        final = s.get_final_message()
    assert [b.name for b in final.content] == ["get_weather"] and final.stop_reason == "tool_use"
    check_call("get_weather", final.content[0].input)


SHIP = {"type": "object", "required": ["country", "weight_kg"], "properties": {
    "country": {"enum": ["US", "CA"]}, "postcode": {"type": "string"},
    "weight_kg": {"type": "number", "minimum": 0.1, "maximum": 30, "not": {"minimum": 20}},
    "labels": {"type": "array", "items": {"type": "string"}, "contains": {"const": "fragile"}, "maxItems": 3}},
    "if": {"properties": {"country": {"const": "US"}}},
    "then": {"properties": {"postcode": {"pattern": r"^\d{5}$"}}, "required": ["postcode"]},
    "else": {"properties": {"postcode": {"pattern": r"^[A-Z]\d[A-Z] \d[A-Z]\d$"}}, "required": ["postcode"]}}


def test_tool_schemas_beyond_strict_mode_give_valid_arguments_through_both_sdks(oai, claude):
    """A non-strict tool may use if/then/else, not and contains: its arguments still validate, on all three APIs."""
    chat_tools = [{"type": "function", "function": {"name": "ship", "parameters": SHIP}}]
    for _ in range(4):
        r = oai.chat.completions.create(model="gpt-4o", messages=USER, tools=chat_tools,
                                        tool_choice={"type": "function", "function": {"name": "ship"}})
        assert r.choices[0].message.tool_calls
        for call in r.choices[0].message.tool_calls:
            validate(json.loads(call.function.arguments), SHIP)
        resp = oai.responses.create(model="gpt-4o", input="Ship it", tool_choice="required",
                                    tools=[{"type": "function", "name": "ship", "parameters": SHIP, "strict": False}])
        calls = [o for o in resp.output if o.type == "function_call"]
        assert calls
        for call in calls:
            validate(json.loads(call.arguments), SHIP)
        m = claude.messages.create(model=CLAUDE, max_tokens=300, messages=USER, tool_choice={"type": "any"},
                                   tools=[{"name": "ship", "input_schema": SHIP}])
        assert m.content
        for b in m.content:
            assert b.type == "tool_use"
            validate(b.input, SHIP)


def test_anthropic_tool_choice_none_and_tool_result(claude):
    m = claude.messages.create(model=CLAUDE, max_tokens=50, messages=USER, tools=ANTHROPIC_TOOLS,
                               tool_choice={"type": "none"})
    assert [b.type for b in m.content] == ["text"] and m.stop_reason in ("end_turn", "max_tokens")
    first = claude.messages.create(model=CLAUDE, max_tokens=300, messages=USER, tools=ANTHROPIC_TOOLS,
                                   tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    use = first.content[0]
    assert len(first.content) == 1 and use.type == "tool_use"
    reply = claude.messages.create(model=CLAUDE, max_tokens=50, tools=ANTHROPIC_TOOLS, messages=[
        *USER, {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C"}]}])
    assert reply.content[0].type == "text" and reply.stop_reason in ("end_turn", "max_tokens")


def test_anthropic_raw_tool_use_event_order(url):
    r, events = stream_events(url + "/v1/messages", {
        "model": CLAUDE, "max_tokens": 300, "messages": USER, "tools": ANTHROPIC_TOOLS, "stream": True,
        "tool_choice": {"type": "tool", "name": "search"}})
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start = events[1][1]["content_block"]
    assert start["type"] == "tool_use" and start["name"] == "search" and start["input"] == {}
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert deltas and all(d["type"] == "input_json_delta" for d in deltas)
    check_call("search", "".join(d["partial_json"] for d in deltas))
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert events[-2][1]["usage"]["output_tokens"] == len(deltas)


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True,
                                                  "parameters": {"type": "object", "properties": {"a": {}}}}}]},
     "tools[0].function.parameters"),
    ({"tools": CHAT_TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format.json_schema.name"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
])
def test_chat_refuses_bad_tools_and_formats(url, body, param):
    r = requests.post(url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": USER, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


@pytest.mark.parametrize("body, where", [
    ({"tools": [{"name": "f", "input_schema": {"type": "array"}}]}, "tools.0.custom.input_schema.type"),
    ({"tools": [{"name": "f"}]}, "tools.0.custom.input_schema"),
    ({"tools": ANTHROPIC_TOOLS, "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name"),
    ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format.schema"),
])
def test_messages_refuses_bad_tools(url, body, where):
    r = requests.post(url + "/v1/messages", json={"model": CLAUDE, "max_tokens": 10, "messages": USER, **body})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(where + ":"), r.text


def test_responses_refuses_an_unknown_tool_choice(url):
    r = requests.post(url + "/v1/responses", json={"model": "gpt-4o", "input": "x", "tools": RESPONSES_TOOLS,
                                                   "tool_choice": {"type": "function", "name": "nope"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"


# ---------------------------------------------------------------- auto probability and timing

def test_auto_never_calls_at_probability_zero():
    with run_server(latency_profile="instant", config={"tools": {"call_probability": 0}}) as u:
        client = openai.OpenAI(base_url=u + "/v1", api_key="k", max_retries=0)
        for i in range(10):
            r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": str(i)}],
                                               tools=CHAT_TOOLS)
            assert r.choices[0].message.tool_calls is None


TIMED = """
profiles:
  - name: timed-tools
    models: [timed-tools]
    ttft: {distribution: constant, mean_ms: 150}
    itl: {distribution: constant, mean_ms: 15}
"""


def test_tool_call_arguments_stream_at_ttft_then_itl(tmp_path):
    path = tmp_path / "timed.yaml"
    path.write_text(TIMED)
    with run_server(profile_files=[path], seed=2) as u:
        t0 = time.monotonic()
        r = requests.post(u + "/v1/chat/completions", stream=True, json={
            "model": "timed-tools", "messages": USER, "tools": CHAT_TOOLS, "stream": True,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
        stamps = []
        for line in r.iter_lines():
            if b'"arguments":"' in line and b'"arguments":""' not in line:
                stamps.append(time.monotonic() - t0)
    n = len(stamps)
    assert n > 5
    # First fragment at TTFT, the last at TTFT + (N-1) ITL: generous upper slack for a busy machine.
    assert 0.145 <= stamps[0] <= 0.145 + 0.25
    assert 0.150 + (n - 1) * 0.015 - 0.005 <= stamps[-1] <= 0.150 + (n - 1) * 0.015 + 0.3
    assert stamps[-1] - stamps[0] >= (n - 1) * 0.015 * 0.9
