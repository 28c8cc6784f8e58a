"""Anthropic Messages end to end: the official anthropic SDK and raw SSE against a live server."""

import warnings

import anthropic
import pytest

from llmsim.testing import run_server
from llmsim.tokens import count_tokens, get_encoding
from tests.sse import stream_events

MODEL = "claude-haiku-4-5"
SYSTEM = "You are terse."
MESSAGES = [{"role": "user", "content": "Tell me about token streaming, please."}]
CL100K = get_encoding("cl100k_base")


def n_tokens(text: str) -> int:
    return len(CL100K.encode(text))


# Input accounting (docs/endpoints.md, "Token accounting"): 3 reply-priming tokens, then per message 3
# framing tokens + its role + its text; the system prompt is the first message.
EXPECTED_INPUT = 3 + (3 + n_tokens("system") + n_tokens(SYSTEM)) + sum(
    3 + n_tokens(m["role"]) + n_tokens(m["content"]) for m in MESSAGES)


@pytest.fixture(autouse=True)
def _no_sdk_deprecation_noise():
    # The SDK warns about model names it considers deprecated; irrelevant here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


@pytest.fixture(scope="module")
def server():
    with run_server(latency_profile="fast", seed=7) as url:
        yield url


@pytest.fixture(scope="module", params=["/anthropic", ""], ids=["anthropic-prefix", "root"])
def client(server, request):
    # base_url/anthropic -> /anthropic/v1/messages; the root -> /v1/messages.
    return anthropic.Anthropic(base_url=server + request.param, api_key="sk-ant-test", max_retries=0)


def test_create_returns_a_complete_message(client):
    m = client.messages.create(model=MODEL, max_tokens=1024, system=SYSTEM, messages=MESSAGES)
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant" and m.model == MODEL
    assert len(m.content) == 1 and m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.usage.input_tokens == EXPECTED_INPUT
    assert m.usage.output_tokens == count_tokens(m.content[0].text, MODEL) == 100  # lorem target


def test_stream_text_equals_final_message_and_create(client):
    full = client.messages.create(model=MODEL, max_tokens=1024, system=SYSTEM, messages=MESSAGES)
    deltas = []
    with client.messages.stream(model=MODEL, max_tokens=1024, system=SYSTEM, messages=MESSAGES) as stream:
        for text in stream.text_stream:
            deltas.append(text)
        final = stream.get_final_message()
    streamed = "".join(deltas)
    assert streamed == final.content[0].text == full.content[0].text  # same seed, same prompt
    assert final.stop_reason == "end_turn" and final.stop_sequence is None
    assert final.usage.input_tokens == EXPECTED_INPUT
    assert final.usage.output_tokens == count_tokens(streamed, MODEL) == len(deltas)  # one delta per token


def test_every_raw_sdk_event_parses(client):
    events = list(client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES, stream=True))
    kinds = [e.type for e in events]  # the SDK drops `ping` itself
    assert kinds == ["message_start", "content_block_start"] + ["content_block_delta"] * 5 + [
        "content_block_stop", "message_delta", "message_stop"]
    assert events[0].message.usage.input_tokens > 0 and events[0].message.stop_reason is None
    assert all(e.delta.type == "text_delta" and e.index == 0 for e in events[2:7])
    assert events[-2].delta.stop_reason == "max_tokens" and events[-2].usage.output_tokens == 5


@pytest.mark.parametrize("path", ["/v1/messages", "/anthropic/v1/messages"])
def test_raw_event_sequence_and_headers(server, path):
    body = {"model": MODEL, "max_tokens": 1024, "stream": True, "messages": MESSAGES}
    r, events = stream_events(server + path, body, headers={"x-api-key": "sk-ant-test",
                                                            "anthropic-version": "2023-06-01"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    assert "Content-Length" not in r.headers and r.headers["request-id"].startswith("req_")
    names = [name for name, _ in events]
    n = names.count("content_block_delta")
    assert names == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * n + [
        "content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)  # `event:` always names the data's type
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["stop_sequence"] is None
    assert start["usage"]["input_tokens"] == 3 + sum(3 + n_tokens(m["role"]) + n_tokens(m["content"])
                                                     for m in MESSAGES)
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    text = "".join(d["delta"]["text"] for name, d in events if name == "content_block_delta")
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == count_tokens(text, MODEL) == n


def test_max_tokens_honoured_exactly(client):
    m = client.messages.create(model=MODEL, max_tokens=7, messages=MESSAGES)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 7
    assert count_tokens(m.content[0].text, MODEL) == 7
    with client.messages.stream(model=MODEL, max_tokens=7, messages=MESSAGES) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(deltas) == 7 and final.stop_reason == "max_tokens" and final.usage.output_tokens == 7


def test_stop_sequence_cuts_and_is_reported(client):
    text = client.messages.create(model=MODEL, max_tokens=1024, messages=MESSAGES).content[0].text
    stop = " " + text.split()[6]
    m = client.messages.create(model=MODEL, max_tokens=1024, messages=MESSAGES, stop_sequences=["NEVER", stop])
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == stop
    assert m.content[0].text == text[:text.index(stop)]
    assert m.usage.output_tokens == count_tokens(m.content[0].text, MODEL)
    with client.messages.stream(model=MODEL, max_tokens=1024, messages=MESSAGES, stop_sequences=[stop]) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    assert streamed == m.content[0].text
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_system_blocks_content_blocks_and_optional_fields_are_accepted(client):
    m = client.messages.create(
        model=MODEL, max_tokens=3,
        system=[{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"},
                                               {"type": "image", "source": {"type": "base64",
                                                                            "media_type": "image/png",
                                                                            "data": "iVBORw0KGgo="}}]},
                  {"role": "assistant", "content": "Hello."},
                  {"role": "user", "content": "Again"},
                  {"role": "assistant", "content": ""}],  # an empty final assistant turn is allowed
        # this SDK version has no sampling keywords; the API still takes them
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 40}, metadata={"user_id": "u-1"},
        tools=[{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
        tool_choice={"type": "none"})
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 3
    # text only is counted: the image adds nothing, the empty assistant turn adds its framing
    expected = 3 + (3 + n_tokens("system") + n_tokens(SYSTEM)) + (3 + n_tokens("user") + n_tokens("Hi")) + (
        3 + n_tokens("assistant") + n_tokens("Hello.")) + (3 + n_tokens("user") + n_tokens("Again")) + (
        3 + n_tokens("assistant")) + n_tokens(  # tool definitions count too, as compact JSON
        '[{"name":"get_weather","description":"Weather","parameters":{"type":"object"}}]')
    assert m.usage.input_tokens == expected


def test_count_tokens_matches_create(client):
    counted = client.messages.count_tokens(model=MODEL, system=SYSTEM, messages=MESSAGES)
    assert counted.input_tokens == EXPECTED_INPUT


def test_schemas_asking_for_huge_or_endless_values_are_answered(server):
    """A schema may ask for a hundred million items, or refer to itself with no finite instance: the value is
    generated only as far as max_tokens could send it (without that, this call outlives its timeout and the
    server's memory), and a loop in the schema gives a bounded value, not a 500."""
    client = anthropic.Anthropic(base_url=server, api_key="k", max_retries=0, timeout=30)
    huge = {"type": "object", "required": ["x"],
            "properties": {"x": {"type": "array", "items": {"type": "integer"}, "minItems": 100_000_000}}}
    m = client.messages.create(model=MODEL, max_tokens=20, messages=MESSAGES, tool_choice={"type": "any"},
                               tools=[{"name": "save", "input_schema": huge}])
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 20
    looped = {"type": "object", "properties": {"note": {"type": "string"}}, "allOf": [{"$ref": "#"}]}
    m = client.messages.create(model=MODEL, max_tokens=200, messages=MESSAGES, tool_choice={"type": "any"},
                               tools=[{"name": "save", "input_schema": looped}])
    assert m.stop_reason == "tool_use" and isinstance(m.content[-1].input, dict)
    m = client.messages.create(model=MODEL, max_tokens=200, messages=MESSAGES,
                               output_config={"format": {"type": "json_schema", "schema": looped}})
    assert m.stop_reason in ("end_turn", "max_tokens") and m.content[0].text.startswith("{")


@pytest.mark.parametrize("tool, key, value", [
    ({"type": "bash_20250124", "name": "bash"}, "command", None),
    ({"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}, "command", "view"),
    ({"type": "computer_20250124", "name": "computer", "display_width_px": 1024, "display_height_px": 768},
     "action", "screenshot"),
    ({"type": "memory_20250818", "name": "memory"}, "command", "view"),
])
def test_anthropic_client_tools_are_called_with_their_documented_input(server, tool, key, value):
    client = anthropic.Anthropic(base_url=server, api_key="k", max_retries=0)
    for choice in ({"type": "any"}, {"type": "tool", "name": tool["name"]}):
        m = client.messages.create(model=MODEL, max_tokens=300, messages=MESSAGES, tools=[tool], tool_choice=choice)
        call = m.content[-1]
        assert m.stop_reason == "tool_use" and call.type == "tool_use" and call.name == tool["name"]
        assert isinstance(call.input[key], str) and (value is None or call.input[key] == value)


def test_a_turn_forced_to_a_server_tool_answers_in_text(server):
    client = anthropic.Anthropic(base_url=server, api_key="k", max_retries=0)
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]
    for choice in ({"type": "any"}, {"type": "tool", "name": "web_search"}):
        m = client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES, tools=tools, tool_choice=choice)
        assert m.content[0].type == "text" and m.stop_reason in ("end_turn", "max_tokens")
    with pytest.raises(anthropic.BadRequestError, match="not found in provided tools"):
        client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES, tools=tools,
                               tool_choice={"type": "tool", "name": "web_fetch"})
