"""Bad input answers in OpenAI's envelope, naming the field; the server survives everything."""

import socket
import time

import pytest
import requests

from llmsim.testing import start_server

OK_MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def srv():
    s = start_server(latency_profile="fast", max_body_bytes=4096)
    yield s
    s.stop()


def post(srv, body=None, raw=None, path="/v1/chat/completions", **kw):
    if raw is not None:
        return requests.post(srv.url + path, data=raw, headers={"Content-Type": "application/json"}, **kw)
    return requests.post(srv.url + path, json=body, **kw)


def assert_openai_error(r, status, param, code=None, words=()):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    for w in words:
        assert w in err["message"]
    return err


@pytest.mark.parametrize("raw,code", [(b"{not json", "invalid_json"), (b"[1,2]", "invalid_type"),
                                      (b'"text"', "invalid_type"), (b"\xff\xfe", "invalid_json")])
def test_body_not_json_or_not_object(srv, raw, code):
    err = assert_openai_error(post(srv, raw=raw), 400, None, code)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("body,param,code", [
    ({"messages": OK_MESSAGES}, "model", "missing_required_parameter"),
    ({"model": 5, "messages": OK_MESSAGES}, "model", "invalid_type"),
    ({"model": "gpt-4o"}, "messages", "missing_required_parameter"),
    ({"model": "gpt-4o", "messages": "hi"}, "messages", "invalid_type"),
    ({"model": "gpt-4o", "messages": []}, "messages", "empty_array"),
    ({"model": "gpt-4o", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "invalid_value"),
    ({"model": "gpt-4o", "messages": [{"content": "x"}]}, "messages[0].role", "missing_required_parameter"),
    ({"model": "gpt-4o", "messages": ["hi"]}, "messages[0]", "invalid_type"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_type"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "max_tokens": 0}, "max_tokens", "integer_below_min_value"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "max_tokens": -3}, "max_tokens", "integer_below_min_value"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "max_tokens": "9"}, "max_tokens", "invalid_type"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "max_tokens": 16385}, "max_tokens", "invalid_value"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "max_completion_tokens": 0}, "max_completion_tokens",
     "integer_below_min_value"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "n": 129}, "n", "integer_above_max_value"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "n": 0}, "n", "integer_below_min_value"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "top_logprobs": 3}, "top_logprobs", "invalid_value"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "logprobs": True, "top_logprobs": 21}, "top_logprobs",
     "integer_above_max_value"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "logprobs": True, "top_logprobs": -1}, "top_logprobs",
     "integer_below_min_value"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "logprobs": "yes"}, "logprobs", "invalid_type"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "seed": "x"}, "seed", "invalid_type"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "max_tokens": 10, "min_tokens": 11}, "min_tokens",
     "invalid_value"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "min_tokens": -1}, "min_tokens", "integer_below_min_value"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "ignore_eos": "yes"}, "ignore_eos", "invalid_type"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "stream": "yes"}, "stream", "invalid_type"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "stream_options": {"include_usage": True}}, "stream_options",
     "invalid_value"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "temperature": 3}, "temperature", "decimal_above_max_value"),
    ({"model": "gpt-4o", "messages": OK_MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop",
     "array_above_max_length"),
    ({"model": "o3", "messages": OK_MESSAGES, "reasoning_effort": "extreme"}, "reasoning_effort", "invalid_value"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages[0].content[0].text", "invalid_type"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages[0].content[0].text", "missing_required_parameter"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "bogus"}]}]},
     "messages[0].content[0].type", "invalid_value"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content[0].image_url", "missing_required_parameter"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 5}]}]},
     "messages[0].content[0].image_url", "invalid_type"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content[0].image_url.url", "missing_required_parameter"),
])
def test_field_errors_name_the_field(srv, body, param, code):
    assert_openai_error(post(srv, body), 400, param, code)


def test_max_tokens_above_model_limit_message(srv):
    err = assert_openai_error(post(srv, {"model": "gpt-4o", "messages": OK_MESSAGES, "max_tokens": 99999}), 400,
                              "max_tokens", words=("16384", "99999"))
    assert err["type"] == "invalid_request_error"


def test_context_window_exceeded():
    s = start_server(latency_profile="fast")
    try:
        r = post(s, {"model": "gpt-4", "messages": [{"role": "user", "content": "word " * 9000}]})
        assert_openai_error(r, 400, "messages", "context_length_exceeded", words=("8192",))
    finally:
        s.stop()


def test_body_over_size_limit_is_413(srv):
    r = post(srv, {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 10000}]})
    err = assert_openai_error(r, 413, None)
    assert "4096" in err["message"]


def test_unknown_path_and_wrong_method(srv):
    r = requests.post(srv.url + "/v1/does-not-exist", json={})
    assert_openai_error(r, 404, None, words=("/v1/does-not-exist",))
    r = requests.get(srv.url + "/v1/chat/completions")
    assert_openai_error(r, 405, None, words=("GET",))
    assert "POST" in r.headers["Allow"]
    r = requests.get(srv.url + "/")
    assert r.status_code == 404 and "<html" not in r.text.lower() and "error" in r.json()


def test_health(srv):
    assert requests.get(srv.url + "/health").json()["status"] == "ok"


def _active(srv):
    return requests.get(srv.url + "/llmsim/stats").json()["active_streams"]


def test_client_disconnect_frees_the_stream():
    s = start_server(latency_profile="fast", target_tokens=5000)
    try:
        host, port = s.url.removeprefix("http://").split(":")
        socks = []
        body = b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}'
        for _ in range(5):
            sk = socket.create_connection((host, int(port)))
            sk.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            assert b"200 OK" in sk.recv(4096)
            socks.append(sk)
        deadline = time.monotonic() + 5
        while _active(s) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _active(s) == 5  # 5000 tokens at 1 ms: all still streaming
        for sk in socks:
            sk.close()
        deadline = time.monotonic() + 10
        while _active(s) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _active(s) == 0
        stats = requests.get(s.url + "/llmsim/stats").json()
        assert stats["client_disconnects_total"] == 5
        # and the server still answers
        assert post(s, {"model": "gpt-4o", "messages": OK_MESSAGES, "max_tokens": 2}).status_code == 200
    finally:
        s.stop()


def test_garbage_on_the_socket_does_not_break_the_server(srv):
    host, port = srv.url.removeprefix("http://").split(":")
    for junk in (b"\x00\x01\x02 garbage\r\n\r\n", b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 99\r\n\r\n{"):
        sk = socket.create_connection((host, int(port)))
        sk.sendall(junk)
        sk.close()
    assert post(srv, {"model": "gpt-4o", "messages": OK_MESSAGES, "max_tokens": 2}).status_code == 200


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
ASKED = {"role": "assistant", "content": None, "tool_calls": [CALL]}
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize("messages, param, words", [
    ([{"role": "user", "content": "hi"}, ASKED, {"role": "user", "content": "and?"}], "messages[1].role",
     ("must be followed by tool messages", "call_1")),
    ([{"role": "user", "content": "hi"}, ASKED, {"role": "tool", "tool_call_id": "call_9", "content": "x"}],
     "messages[2].tool_call_id", ("'call_9' not found",)),
    ([{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_1", "content": "x"}],
     "messages[1].role", ("must be a response to a preceeding message with 'tool_calls'",)),
    ([{"role": "user", "content": "hi"}, {**ASKED, "tool_calls": [{**CALL, "id": None}]}],
     "messages[1].tool_calls[0].id", ("Missing required parameter",)),
])
def test_a_tool_loop_that_loses_or_invents_a_result_is_refused(srv, messages, param, words):
    """The same rule as Anthropic's (toolcalls.tool_turn_mismatch), in OpenAI's words."""
    assert_openai_error(post(srv, {"model": "gpt-4o", "messages": messages, "tools": WEATHER}), 400, param,
                        words=words)


def test_a_complete_tool_loop_and_calls_that_end_the_conversation_are_accepted(srv):
    done = [{"role": "user", "content": "hi"}, {**ASKED, "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
            {"role": "tool", "tool_call_id": "call_2", "content": "b"},
            {"role": "tool", "tool_call_id": "call_1", "content": "a"}, {"role": "user", "content": "thanks"}]
    assert post(srv, {"model": "gpt-4o", "messages": done, "tools": WEATHER}).status_code == 200
    pending = [{"role": "user", "content": "hi"}, ASKED]
    assert post(srv, {"model": "gpt-4o", "messages": pending, "tools": WEATHER}).status_code == 200
