"""Scripted conversations: text, tool-call, mixed and error turns, exhaustion and per-conversation cursors."""

import json
import re
import time
import warnings

import anthropic
import openai
import pytest

from llmsim.generator import ScriptError, ScriptGenerator
from llmsim.testing import run_server

SCRIPT = """
on_exhausted: repeat_last
cursor: conversation
turns:
  - kind: tool_calls
    tool_calls:
      - name: get_weather
        arguments: {city: Paris}
        id: call_fixed1
  - text: "Let me also check"
    tool_calls:
      - {name: search, arguments: '{"query": "umbrella"}'}
  - "It is sunny in Paris."
"""
TIMED = """
profiles:
  - name: scripted
    models: [scripted]
    ttft: {distribution: constant, mean_ms: 120}
    itl: {distribution: constant, mean_ms: 5}
"""


@pytest.fixture()
def script(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(SCRIPT)
    return path


def chat(client, text, conversation=None):
    headers = {"x-llmsim-conversation": conversation} if conversation else None
    return client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": text}],
                                          extra_headers=headers).choices[0]


def test_turns_play_in_order_per_conversation_with_profile_timing(tmp_path, script):
    profiles = tmp_path / "p.yaml"
    profiles.write_text(TIMED)
    with run_server(generator=f"script:{script}", profile_files=[profiles]) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        t0 = time.monotonic()
        first = chat(client, "weather?", "a")
        assert time.monotonic() - t0 >= 0.12  # scripted turns keep the profile's timing
        call = first.message.tool_calls[0]
        assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
            "call_fixed1", "get_weather", {"city": "Paris"})
        assert first.finish_reason == "tool_calls" and first.message.content is None
        other = chat(client, "weather?", "b")  # another conversation starts from turn 1
        assert other.message.tool_calls[0].id == "call_fixed1"
        mixed = chat(client, "weather?", "a")
        assert mixed.message.content == "Let me also check"
        assert mixed.message.tool_calls[0].function.name == "search"
        assert chat(client, "x", "a").message.content == "It is sunny in Paris."
        assert chat(client, "x", "a").message.content == "It is sunny in Paris."  # repeat_last
        # Without the header, the first user message keys the conversation.
        assert chat(client, "fresh question").message.tool_calls[0].id == "call_fixed1"


def test_scripted_tool_use_on_messages(script):
    with run_server(generator=f"script:{script}", latency_profile="instant") as url:
        warnings.simplefilter("ignore", DeprecationWarning)
        client = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
        m = client.messages.create(model="claude-haiku-4-5", max_tokens=100,
                                   messages=[{"role": "user", "content": "go"}])
        assert m.stop_reason == "tool_use" and m.content[0].input == {"city": "Paris"}


def test_error_turns_and_exhaustion(tmp_path):
    path = tmp_path / "errors.yaml"
    path.write_text("on_exhausted: error\nturns:\n  - error: rate_limit\n  - error: {status: 418, message: teapot}\n"
                    "  - error: midstream\n  - ok\n")
    with run_server(generator=f"script:{path}", latency_profile="instant") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        msgs = [{"role": "user", "content": "x"}]
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="gpt-4o", messages=msgs)
        with pytest.raises(openai.APIStatusError, match="teapot") as e:
            client.chat.completions.create(model="gpt-4o", messages=msgs)
        assert e.value.status_code == 418
        with pytest.raises(openai.APIError):  # the in-band error chunk after some tokens
            for _ in client.chat.completions.create(model="gpt-4o", messages=msgs, stream=True):
                pass
        assert client.chat.completions.create(model="gpt-4o", messages=msgs).choices[0].message.content == "ok"
        with pytest.raises(openai.InternalServerError, match="exhausted"):
            client.chat.completions.create(model="gpt-4o", messages=msgs)


@pytest.mark.parametrize("text, message", [
    ("turns: []", "non-empty list"),
    ("turns:\n  - {tool_calls: [{arguments: {}}]}", "turns[0].tool_calls[0].name"),
    ("turns:\n  - {error: nope}", "unknown fault kind"),
    ("turns:\n  - {kind: text, tool_calls: [{name: f}]}", "turns[0].kind"),
    ("on_exhausted: never\nturns: [a]", "on_exhausted"),
    ("turns:\n  - {text: hi, error: rate_limit}", "an error turn has no text"),
])
def test_bad_scripts_name_file_turn_and_reason(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScriptError, match=re.escape(message)) as e:
        ScriptGenerator(str(path))
    assert str(path) in str(e.value)


def test_plain_list_scripts_still_cycle(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("- first\n- second\n")
    g = ScriptGenerator(str(path))
    assert [g.generate() for _ in range(3)] == ["first", "second", "first"]
