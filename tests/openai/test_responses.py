"""OpenAI Responses end to end: the official openai SDK and raw SSE against a live server."""

import time

import openai
import pytest
import requests

from llmsim.testing import run_server
from llmsim.tokens import count_tokens, get_encoding
from tests.sse import parse_sse, stream_events

MODEL = "gpt-4o"
INSTRUCTIONS = "You are terse."
INPUT = "Tell me about token streaming, please."
O200K = get_encoding("o200k_base")


def n_tokens(text: str) -> int:
    return len(O200K.encode(text))


# Input accounting (docs/endpoints.md, "Token accounting"): 3 reply-priming tokens, then per message 3
# framing tokens + its role + its text; instructions are a leading system message.
EXPECTED_INPUT = 3 + (3 + n_tokens("system") + n_tokens(INSTRUCTIONS)) + (3 + n_tokens("user") + n_tokens(INPUT))

REASONER = """
profiles:
  - name: test-reasoner
    models: [test-reasoner]
    provider: openai
    encoding: o200k_base
    context_window: 100000
    max_output_tokens: 10000
    ttft: {distribution: constant, mean_ms: 5}
    itl: {distribution: constant, mean_ms: 2}
    reasoning: {tokens_per_output_token: 1}
"""


@pytest.fixture(scope="module")
def server():
    with run_server(latency_profile="fast", seed=11) as url:
        yield url


@pytest.fixture(scope="module", params=["/v1", "/openai/v1"])
def client(server, request):
    return openai.OpenAI(base_url=server + request.param, api_key="sk-test", max_retries=0)


@pytest.fixture(scope="module")
def reasoner(tmp_path_factory):
    path = tmp_path_factory.mktemp("profiles") / "reasoner.yaml"
    path.write_text(REASONER)
    with run_server(seed=11, profile_files=[path]) as url:
        yield url


def test_create_returns_a_completed_response(client):
    r = client.responses.create(model=MODEL, input=INPUT, instructions=INSTRUCTIONS)
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed" and r.model == MODEL
    assert r.incomplete_details is None and r.error is None and r.instructions == INSTRUCTIONS
    assert len(r.output) == 1
    msg = r.output[0]
    assert msg.type == "message" and msg.id.startswith("msg_") and msg.role == "assistant"
    assert msg.status == "completed" and len(msg.content) == 1
    assert msg.content[0].type == "output_text" and msg.content[0].annotations == []
    assert r.output_text == msg.content[0].text
    u = r.usage
    assert u.input_tokens == EXPECTED_INPUT
    assert u.output_tokens == count_tokens(r.output_text, MODEL) == 100  # lorem target
    assert u.output_tokens_details.reasoning_tokens == 0 and u.input_tokens_details.cached_tokens == 0
    assert u.total_tokens == u.input_tokens + u.output_tokens


def test_non_streaming_body_has_output_text(server):
    body = requests.post(server + "/v1/responses", json={"model": MODEL, "input": INPUT}, timeout=30).json()
    assert body["output_text"] == body["output"][0]["content"][0]["text"]
    assert body["object"] == "response" and body["status"] == "completed" and body["completed_at"] >= body["created_at"]


def test_stream_deltas_equal_final_response_and_create(client):
    full = client.responses.create(model=MODEL, input=INPUT, instructions=INSTRUCTIONS)
    deltas, kinds = [], []
    with client.responses.stream(model=MODEL, input=INPUT, instructions=INSTRUCTIONS) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    streamed = "".join(deltas)
    assert streamed == final.output_text == full.output_text  # same seed, same prompt
    assert final.status == "completed" and final.usage.input_tokens == EXPECTED_INPUT
    assert final.usage.output_tokens == count_tokens(streamed, MODEL) == len(deltas)  # one delta per token
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"


def test_raw_event_sequence_and_sequence_numbers(server):
    body = {"model": MODEL, "input": INPUT, "instructions": INSTRUCTIONS, "stream": True}
    r, events = stream_events(server + "/v1/responses", body)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    assert "Content-Length" not in r.headers
    names = [name for name, _ in events]
    n = names.count("response.output_text.delta")
    assert n == 100
    assert names == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added"] + ["response.output_text.delta"] * n + [
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    assert all(data["type"] == name for name, data in events)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))  # strictly rising from 0
    created, in_progress = events[0][1]["response"], events[1][1]["response"]
    for snap in (created, in_progress):
        assert snap["status"] == "in_progress" and snap["output"] == [] and snap["usage"] is None
    item = events[2][1]
    msg_id = item["item"]["id"]
    assert item["output_index"] == 0 and item["item"] == {"id": msg_id, "type": "message", "status": "in_progress",
                                                          "role": "assistant", "content": []}
    part = events[3][1]
    assert (part["item_id"], part["output_index"], part["content_index"]) == (msg_id, 0, 0)
    assert part["part"]["type"] == "output_text" and part["part"]["text"] == ""
    deltas = [d for name, d in events if name == "response.output_text.delta"]
    assert all((d["item_id"], d["output_index"], d["content_index"]) == (msg_id, 0, 0) for d in deltas)
    text = "".join(d["delta"] for d in deltas)
    done, part_done, item_done, completed = (d for _, d in events[-4:])
    assert done["text"] == text and part_done["part"]["text"] == text
    assert item_done["item"]["status"] == "completed" and item_done["item"]["content"][0]["text"] == text
    final = completed["response"]
    assert final["id"] == created["id"] and final["status"] == "completed"
    assert final["output"] == [item_done["item"]]
    assert final["usage"]["input_tokens"] == EXPECTED_INPUT
    assert final["usage"]["output_tokens"] == count_tokens(text, MODEL) == n


def test_max_output_tokens_makes_it_incomplete(client, server):
    r = client.responses.create(model=MODEL, input=INPUT, max_output_tokens=16)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 16 == count_tokens(r.output_text, MODEL)
    assert r.output[0].status == "incomplete" and r.max_output_tokens == 16
    _, events = stream_events(server + "/v1/responses",
                              {"model": MODEL, "input": INPUT, "max_output_tokens": 16, "stream": True})
    names = [name for name, _ in events]
    assert names.count("response.output_text.delta") == 16
    assert names[-1] == "response.incomplete"  # the real API's terminal event for a cut response
    final = events[-1][1]["response"]
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["usage"]["output_tokens"] == 16 and events[-2][1]["item"]["status"] == "incomplete"


def test_input_items_and_optional_fields(client):
    items = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi."}]},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "72F"},
        {"role": "user", "content": "Again"},
    ]
    r = client.responses.create(model=MODEL, input=items, temperature=0.3, top_p=0.5, store=False,
                                metadata={"k": "v"}, tools=[{"type": "function", "name": "f", "parameters": {}}],
                                tool_choice="auto", max_output_tokens=20, truncation="auto")
    assert r.temperature == 0.3 and r.top_p == 0.5 and r.metadata == {"k": "v"} and r.truncation == "auto"
    assert len(r.tools) == 1 and r.tool_choice == "auto"
    expected = 3 + sum(3 + n_tokens(role) + n_tokens(text) for role, text in [
        ("developer", "Be brief."), ("user", "Hello"), ("assistant", "Hi."), ("assistant", "{}"), ("tool", "72F"),
        ("user", "Again")])
    # Tool definitions are prompt tokens too: their compact JSON (name, description, parameters).
    expected += n_tokens('[{"name":"f","description":"","parameters":{}}]')
    assert r.usage.input_tokens == expected


def test_a_tool_loop_that_loses_or_invents_an_output_is_refused(client):
    """Without previous_response_id the input is the whole conversation: each function_call_output answers a
    function_call in it, and each function_call has its output (OpenAI's 400s, param `input`)."""
    call = {"type": "function_call", "call_id": "call_a", "name": "f", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "call_a", "output": "ok"}
    user = {"role": "user", "content": "go"}
    r = client.responses.create(model=MODEL, input=[user, call, output], max_output_tokens=16)
    assert r.output and r.usage.output_tokens == 16
    cases = [([user, {**output, "call_id": "call_zz"}],
              "No tool call found for function call output with call_id call_zz."),
             ([user, call], "No tool output found for function call call_a."),
             ([user, call, output, {**call, "call_id": "call_b"}], "No tool output found for function call call_b.")]
    for items, message in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model=MODEL, input=items, max_output_tokens=16)
        assert e.value.body["message"] == message and e.value.body["param"] == "input"
        assert e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input=[user, {k: v for k, v in call.items() if k != "call_id"}])
    assert e.value.body["param"] == "input[1].call_id"
    # With previous_response_id the calls may be in the stored response: an output alone is fine.
    r = client.responses.create(model=MODEL, input=[output], previous_response_id="resp_1", max_output_tokens=16)
    assert r.output and r.usage.output_tokens == 16


def test_reasoning_options_have_no_effect_on_a_model_that_does_not_reason(client):
    """gpt-4o has no reasoning: a summary asked for adds no (empty) reasoning item, and no effort is invented."""
    for stream in (False, True):
        if stream:
            with client.responses.stream(model="gpt-4o", input="Hi", reasoning={"summary": "auto"}) as s:
                r = s.get_final_response()
        else:
            r = client.responses.create(model="gpt-4o", input="Hi", reasoning={"summary": "auto"})
        assert [item.type for item in r.output] == ["message"]
        assert r.reasoning.effort is None and r.usage.output_tokens_details.reasoning_tokens == 0


def test_reasoning_tokens_are_reported_and_take_time(reasoner):
    client = openai.OpenAI(base_url=reasoner + "/v1", api_key="k", max_retries=0)
    r = client.responses.create(model="test-reasoner", input=INPUT, reasoning={"effort": "high"})
    visible = count_tokens(r.output_text, "gpt-4o")
    assert r.usage.output_tokens_details.reasoning_tokens == 2 * visible  # ratio 1 x "high" (2.0)
    assert r.usage.output_tokens == 3 * visible and r.reasoning.effort == "high"
    assert [o.type for o in r.output] == ["reasoning", "message"] and r.output[0].id.startswith("rs_")
    low = client.responses.create(model="test-reasoner", input=INPUT, reasoning={"effort": "low"})
    assert low.usage.output_tokens_details.reasoning_tokens == visible // 2
    default = client.responses.create(model="test-reasoner", input=INPUT)
    assert default.reasoning.effort == "medium" and default.usage.output_tokens_details.reasoning_tokens == visible


def test_reasoning_stream_order_and_ttft(reasoner):
    body = {"model": "test-reasoner", "input": INPUT, "reasoning": {"effort": "high"}, "stream": True}
    t0 = time.monotonic()
    r = requests.post(reasoner + "/v1/responses", json=body, stream=True, timeout=30)
    first_delta = None
    raw = []
    for line in r.iter_lines():
        if first_delta is None and line.startswith(b"event: response.output_text.delta"):
            first_delta = time.monotonic() - t0
        raw.append(line.decode())
    events = parse_sse("\n".join(raw))
    names = [n for n, _ in events]
    k = names.index("response.output_text.delta")
    assert names[:k] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.output_item.done", "response.output_item.added", "response.content_part.added"]
    assert events[2][1]["item"]["type"] == "reasoning" and events[2][1]["output_index"] == 0
    assert events[4][1]["item"]["type"] == "message" and events[4][1]["output_index"] == 1
    assert all(d["output_index"] == 1 for n, d in events if n == "response.output_text.delta")
    final = events[-1][1]["response"]
    reasoning = final["usage"]["output_tokens_details"]["reasoning_tokens"]
    assert [o["type"] for o in final["output"]] == ["reasoning", "message"] and reasoning == 200
    # 200 hidden tokens at 2 ms each come before the first visible one (a lower bound: safe on a busy machine)
    assert first_delta >= 0.005 + reasoning * 0.002 * 0.95


def test_reasoning_shares_the_max_output_tokens_budget(reasoner):
    client = openai.OpenAI(base_url=reasoner + "/v1", api_key="k", max_retries=0)
    r = client.responses.create(model="test-reasoner", input=INPUT, max_output_tokens=60)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 60
    assert r.usage.output_tokens_details.reasoning_tokens == 60 - count_tokens(r.output_text, "gpt-4o") == 30
