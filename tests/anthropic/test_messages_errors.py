"""Bad Messages requests: Anthropic's envelope, type and status, and a message naming the field."""

import warnings

import anthropic
import pytest
import requests

from llmsim.testing import run_server
from llmsim.tokens import get_encoding

OK = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}


TINY = """
profiles:
  - name: tiny-context
    models: [claude-tiny]
    provider: anthropic
    encoding: cl100k_base
    context_window: 100
    max_output_tokens: 64
    ttft: {distribution: constant, mean_ms: 0}
    itl: {distribution: constant, mean_ms: 0}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Real profiles (no forced latency profile) so the model's own output limit applies;
    # every request here fails before any token is generated.
    path = tmp_path_factory.mktemp("profiles") / "tiny.yaml"
    path.write_text(TINY)
    with run_server(seed=1, profile_files=[path]) as url:
        yield url


def post(server: str, body, path: str = "/v1/messages", **kwargs) -> requests.Response:
    if isinstance(body, dict):
        return requests.post(server + path, json=body, timeout=10, **kwargs)
    return requests.post(server + path, data=body, timeout=10, headers={"content-type": "application/json"})


def assert_anthropic_error(r: requests.Response, status: int, kind: str, starts: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"type", "error", "request_id"} and body["type"] == "error"
    assert body["request_id"] == r.headers["request-id"]
    assert body["error"]["type"] == kind and set(body["error"]) == {"type", "message"}
    assert body["error"]["message"].startswith(starts), body["error"]["message"]
    return body


def without(key: str) -> dict:
    return {k: v for k, v in OK.items() if k != key}


@pytest.mark.parametrize("body, starts", [
    (without("max_tokens"), "max_tokens: Field required"),
    ({**OK, "max_tokens": "16"}, "max_tokens: Input should be a valid integer"),
    ({**OK, "max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
    (without("model"), "model: Field required"),
    (without("messages"), "messages: Field required"),
    ({**OK, "messages": []}, "messages: at least one message is required"),
    ({**OK, "messages": "Hi"}, "messages: Input should be a valid list"),
    ({**OK, "messages": ["Hi"]}, "messages.0: Input should be a valid dictionary"),
    ({**OK, "messages": [{"content": "Hi"}]}, "messages.0.role: Field required"),
    ({**OK, "messages": [{"role": "bot", "content": "Hi"}]}, "messages.0.role: Input should be 'user' or 'assistant'"),
    ({**OK, "messages": [{"role": "system", "content": "Hi"}]}, 'messages.0.role: Unexpected role "system"'),
    ({**OK, "messages": [{"role": "user"}]}, "messages.0.content: Field required"),
    ({**OK, "messages": [{"role": "user", "content": 42}]}, "messages.0.content: Input should be a valid string "
                                                             "or a list of content blocks"),
    ({**OK, "messages": [{"role": "user", "content": [{"text": "Hi"}]}]}, "messages.0.content.0.type: Field "
                                                                          "required"),
    ({**OK, "messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text: Field "
                                                                            "required"),
    ({**OK, "messages": [{"role": "user", "content": ""}]}, "messages.0: all messages must have non-empty content"),
    ({**OK, "system": 7}, "system: Input should be a valid string or a list of text blocks"),
    ({**OK, "system": [{"type": "image"}]}, "system.0.type: Input should be 'text'"),
    ({**OK, "stop_sequences": "END"}, "stop_sequences: Input should be a valid list"),
    ({**OK, "stop_sequences": [1]}, "stop_sequences.0: Input should be a valid string"),
    ({**OK, "temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
    ({**OK, "top_p": -0.1}, "top_p: Input should be greater than or equal to 0"),
    ({**OK, "top_k": 1.5}, "top_k: Input should be a valid integer"),
    ({**OK, "stream": "yes"}, "stream: Input should be a valid boolean"),
    ({**OK, "metadata": {"user_id": 5}}, "metadata.user_id: Input should be a valid string"),
    ({**OK, "tools": [{"description": "x"}]}, "tools.0.name: Field required"),
    ({**OK, "tool_choice": {"type": "sometimes"}}, "tool_choice.type: Input should be one of"),
    ({**OK, "max_tokens": 100_000}, "max_tokens: 100000 > 64000, which is the maximum allowed number of output "
                                    "tokens for claude-haiku-4-5"),
])
@pytest.mark.parametrize("path", ["/v1/messages", "/anthropic/v1/messages"])
def test_invalid_request_names_the_field(server, body, starts, path):
    assert_anthropic_error(post(server, body, path), 400, "invalid_request_error", starts)


def test_context_window_in_anthropic_words(server):
    text = "word " * 60
    body = {**OK, "model": "claude-tiny", "max_tokens": 64, "messages": [{"role": "user", "content": text}]}
    enc = get_encoding("cl100k_base")
    prompt = 3 + 3 + len(enc.encode("user")) + len(enc.encode(text))
    assert_anthropic_error(post(server, body), 400, "invalid_request_error",
                           f"input length and `max_tokens` exceed context limit: {prompt} + 64 > 100")


def test_non_json_and_non_object_bodies(server):
    assert_anthropic_error(post(server, b"{not json"), 400, "invalid_request_error", "We could not parse")
    assert_anthropic_error(post(server, b"[1, 2]"), 400, "invalid_request_error", "Invalid type for the request "
                                                                                   "body")


def test_unknown_model_is_not_found_error(server):
    body = assert_anthropic_error(post(server, {**OK, "model": "claude-nonexistent-9"}), 404, "not_found_error",
                                  "The model `claude-nonexistent-9` does not exist")
    assert "claude-nonexistent-9" in body["error"]["message"]


def test_wrong_method_and_unknown_path_keep_the_envelope(server):
    assert_anthropic_error(requests.get(server + "/v1/messages", timeout=10), 405, "invalid_request_error",
                           "Method GET is not allowed")
    assert_anthropic_error(requests.post(server + "/anthropic/v1/nothing", json={}, timeout=10), 404,
                           "not_found_error", "Invalid URL")


def test_count_tokens_validates_like_messages(server):
    assert_anthropic_error(post(server, {"model": "claude-haiku-4-5", "messages": []}, "/v1/messages/count_tokens"),
                           400, "invalid_request_error", "messages: at least one message is required")


def test_sdk_raises_its_typed_errors(server):
    client = anthropic.Anthropic(base_url=server, api_key="sk-ant-test", max_retries=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(anthropic.BadRequestError) as bad:
            client.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=[])
        with pytest.raises(anthropic.NotFoundError) as missing:
            client.messages.create(model="claude-nope", max_tokens=16, messages=OK["messages"])
    assert bad.value.status_code == 400 and bad.value.body["error"]["type"] == "invalid_request_error"
    assert missing.value.status_code == 404 and missing.value.body["error"]["type"] == "not_found_error"
    assert bad.value.request_id and bad.value.request_id.startswith("req_")


USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}
WEATHER = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]


def _turns(*messages):
    return {**OK, "tools": WEATHER, "messages": [{"role": "user", "content": "Weather?"}, *messages]}


@pytest.mark.parametrize("body, field, reason", [
    (_turns({"role": "assistant", "content": [USE]}, {"role": "user", "content": "and tomorrow?"}),
     "messages.2", "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1."),
    (_turns({"role": "assistant", "content": [USE]}, {"role": "user", "content": [{**RESULT, "tool_use_id": "x"}]}),
     "messages.2.content.0", "unexpected `tool_use_id` found in `tool_result` blocks: x."),
    (_turns({"role": "assistant", "content": "Sure."}, {"role": "user", "content": [RESULT]}),
     "messages.2.content.0", "unexpected `tool_use_id` found in `tool_result` blocks: toolu_1."),
    (_turns({"role": "assistant", "content": [USE]}, {"role": "user", "content": [{"type": "tool_result"}]}),
     "messages.2.content.0.tool_result.tool_use_id", "Field required"),
    ({**OK, "messages": [{"role": "user", "content": [{"type": "foo"}]}]},
     "messages.0.content.0", "Input tag \"foo\" found using 'type' does not match any of the expected tags: 'text'"),
    ({**OK, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
     "messages.0.content.0.image.source", "Field required"),
    (_turns({"role": "assistant", "content": [{**USE, "id": {"a": 1}}]}), "messages.1.content.0.tool_use.id",
     "Input should be a valid string"),
    ({**OK, "tools": WEATHER * 2}, "tools", "Tool names must be unique."),
])
def test_conversations_the_api_refuses(server, body, field, reason):
    """A tool loop that loses or invents a result, an unknown block, a block missing what its type needs:
    the API's 400, so a client bug shows against llmsim, not first in production. count_tokens refuses them too."""
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        assert_anthropic_error(post(server, body, path), 400, "invalid_request_error", f"{field}: {reason}")


def test_a_complete_tool_loop_and_a_final_tool_use_are_accepted(server):
    done = _turns({"role": "assistant", "content": [{"type": "text", "text": "Checking."}, USE]},
                  {"role": "user", "content": [RESULT, {"type": "text", "text": "thanks"}]})
    assert post(server, done).status_code == 200
    pending = _turns({"role": "assistant", "content": [USE]})  # the last turn: no next message to answer it yet
    assert post(server, pending).status_code == 200


@pytest.mark.parametrize("change, field", [
    ({"model": "text-embedding-3-small"}, "model"),
    ({"thinking": {"type": "enabled", "budget_tokens": 5}}, "thinking.budget_tokens"),
    ({"thinking": {"type": "bogus"}}, "thinking"),
])
def test_count_tokens_refuses_what_messages_refuses(server, change, field):
    body = {k: v for k, v in {**OK, **change}.items() if k != "max_tokens"}
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        r = post(server, {**body, "max_tokens": 16} if path == "/v1/messages" else body, path)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", (path, r.text)
        assert field in r.json()["error"]["message"] or r.json()["error"]["message"].startswith(field), r.text


def test_with_thinking_the_answered_tool_turn_starts_with_its_thinking_block(server):
    """A client that drops Claude's thinking blocks from its history gets the API's 400; one that keeps them
    (or turns thinking off) goes on."""
    thinking = {"type": "enabled", "budget_tokens": 1024}
    dropped = {**_turns({"role": "assistant", "content": [USE]}, {"role": "user", "content": [RESULT]}),
               "max_tokens": 2048, "thinking": thinking}
    assert_anthropic_error(post(server, dropped), 400, "invalid_request_error",
                           "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                           "`tool_use`.")
    kept = {**dropped, "messages": [dropped["messages"][0],
                                    {"role": "assistant", "content": [
                                        {"type": "thinking", "thinking": "Look it up.", "signature": "sig"}, USE]},
                                    dropped["messages"][2]]}
    assert post(server, kept).status_code == 200
    assert post(server, {**dropped, "thinking": {"type": "disabled"}}).status_code == 200
