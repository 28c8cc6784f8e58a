"""A corpus of bad input against every POST endpoint of a live `llmsim serve`.

Every answer must be the provider's JSON error envelope with a 4xx status (never a
500, never HTML, never an empty body), strictly valid JSON (no NaN/Infinity), and
the server's log must never show a traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .rawhttp import RawResponse, raw_exchange

ADMIN = "fuzz-admin-token"
LIMIT = 256 * 1024  # --max-body-bytes of the fuzzed server
OPENAI_PATHS = ["/v1/chat/completions", "/v1/responses", "/openai/v1/chat/completions", "/openai/v1/responses"]
ANTHROPIC_PATHS = ["/v1/messages", "/v1/messages/count_tokens", "/anthropic/v1/messages",
                   "/anthropic/v1/messages/count_tokens"]
ADMIN_PATH = "/llmsim/config"
ALL_PATHS = OPENAI_PATHS + ANTHROPIC_PATHS + [ADMIN_PATH]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("fuzz") / "stderr.log"
    with open(log, "w") as err:
        p = subprocess.Popen([sys.executable, "-m", "llmsim", "serve", "--port", "0", "--latency-profile", "instant",
                              "--max-body-bytes", str(LIMIT), "--admin-token", ADMIN], stdout=subprocess.PIPE,
                             stderr=err, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = p.stdout.readline()
    m = re.search(r"(http://\S+)", line)
    assert m, line + log.read_text()
    try:
        yield m.group(1), log
    finally:
        p.terminate()
        p.wait(timeout=10)


def _strict_json(data: bytes):
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(data, parse_constant=refuse)


def check_envelope(resp: RawResponse, path: str, statuses: tuple[int, ...] = (400,)) -> dict:
    """The answer is one of `statuses`, in the JSON envelope of the path's provider."""
    assert resp.status in statuses, (resp.status, resp.raw[:300])
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.raw[:300]
    body = _strict_json(resp.body)
    if path in ANTHROPIC_PATHS:
        assert body["type"] == "error" and set(body["error"]) >= {"type", "message"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    else:
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def no_traceback(log: Path) -> None:
    text = log.read_text()
    assert "Traceback" not in text and "RecursionError" not in text, text[-3000:]


def request(url: str, path: str, body: bytes, *, headers: dict[str, str] | None = None,
            chunked: bool = False) -> RawResponse:
    head = [f"POST {path} HTTP/1.1", "Host: fuzz", "Connection: close", "Content-Type: application/json"]
    if path == ADMIN_PATH:
        head.append(f"Authorization: Bearer {ADMIN}")
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if chunked:
        head.append("Transfer-Encoding: chunked")
        step = 16 * 1024
        payload = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                           for i in range(0, len(body), step)) + b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
        payload = body
    return raw_exchange(url, ("\r\n".join(head) + "\r\n\r\n").encode() + payload)


def valid_body(path: str) -> dict:
    if path == ADMIN_PATH:
        return {"errors": {"server_error": 0}}
    if "responses" in path:
        return {"model": "gpt-4o", "input": "hi"}
    if "messages" in path:
        return {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def max_tokens_field(path: str) -> str:
    return {"responses": "max_output_tokens", "count_tokens": "system"}.get(path.rsplit("/", 1)[-1], "max_tokens")


def nest(depth: int, inner: str = "") -> str:
    return "[" * depth + inner + "]" * depth


def in_body(path: str, fragment: str) -> bytes:
    """A valid body with `fragment` as the value of a field that every endpoint reads or echoes."""
    body = json.dumps(valid_body(path))
    key = "errors" if path == ADMIN_PATH else "metadata"
    return (body[:-1] + f', "{key}": {fragment}}}').encode()


CORPUS: dict[str, object] = {
    "empty": lambda p: b"",
    "truncated": lambda p: json.dumps(valid_body(p)).encode()[:-3],
    "array top level": lambda p: b"[1, 2]",
    "string top level": lambda p: b'"hello"',
    "null": lambda p: b"null",
    "number": lambda p: b"42",
    "not json": lambda p: b"model=gpt-4o&messages=hi",
    "non-utf8": lambda p: b'{"model": "\xff\xfe\xfa", "messages": []}',
    "non-utf8 bom latin1": lambda p: "{\"model\": \"gpt-4o\u00e9\"}".encode("latin-1"),
    "nested arrays 1000": lambda p: nest(1000).encode(),
    "nested objects 1000": lambda p: ('{"a":' * 1000 + "1" + "}" * 1000).encode(),
    "nested arrays 100000": lambda p: nest(100_000).encode(),
    "nested 1000 inside valid body": lambda p: in_body(p, nest(1000)),
    "nested 900 inside valid body": lambda p: in_body(p, nest(900)),
    "nested 500 inside valid body": lambda p: in_body(p, nest(500)),
    "NaN inside body": lambda p: in_body(p, '{"x": NaN}'),
    "Infinity inside body": lambda p: in_body(p, '{"x": [Infinity]}'),
    "-Infinity inside body": lambda p: in_body(p, "-Infinity"),
    "overflowing float": lambda p: in_body(p, "1e999"),
    "huge integer": lambda p: in_body(p, "1" * 5000),
    "model wrong type": lambda p: json.dumps({**valid_body(p), "model": ["gpt-4o"]}).encode(),
    "messages wrong type": lambda p: json.dumps({**valid_body(p), "messages": "hi", "input": 5}).encode(),
    "max tokens wrong type": lambda p: json.dumps({**valid_body(p), max_tokens_field(p): 5.5}).encode(),
    "stream wrong type": lambda p: json.dumps({**valid_body(p), "stream": "yes"}).encode()
    if "count_tokens" not in p else None,
    "lone surrogate": lambda p: in_body(p, '"\\ud800"'),
}


@pytest.mark.parametrize("case", list(CORPUS))
def test_bad_bodies_get_envelopes_on_every_endpoint(server, case):
    url, log = server
    for path in ALL_PATHS:
        body = CORPUS[case](path)  # type: ignore[operator]
        if body is None:
            continue  # the endpoint has no such field
        resp = request(url, path, body)
        if case == "lone surrogate" and resp.status == 200:
            continue  # a lone surrogate is valid JSON; answering it is fine, crashing is not
        check_envelope(resp, path, (400, 404))
    no_traceback(log)


@pytest.mark.parametrize("field", ["temperature", "top_p", "presence_penalty", "frequency_penalty"])
@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999", "1" + "0" * 400, "-" + "9" * 400],
                         ids=["NaN", "Infinity", "-Infinity", "1e999", "10**400", "-(10**400-1)"])
def test_non_finite_numbers_are_refused_by_name(server, field, constant):
    """Refused by name, never a 500: an integer too large for a float is as unusable as an infinity."""
    url, log = server
    for path in OPENAI_PATHS + ANTHROPIC_PATHS:
        if field not in ("temperature", "top_p") and "chat" not in path:
            continue
        if "count_tokens" in path and constant.lstrip("-").isdigit():
            continue  # counting reads no sampling field: a parsed number there is ignored, not a 500
        body = json.dumps(valid_body(path))
        resp = request(url, path, (body[:-1] + f', "{field}": {constant}}}').encode())
        err = check_envelope(resp, path)
        assert field in err["message"], (path, err)
        if path not in ANTHROPIC_PATHS:
            assert err["param"] == field
    no_traceback(log)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_bodies_are_413(server, chunked):
    url, log = server
    for path in ALL_PATHS:
        body = in_body(path, json.dumps("x" * (LIMIT + 1000)))
        err = check_envelope(request(url, path, body, chunked=chunked), path, (413,))
        assert str(LIMIT) in err["message"]
    no_traceback(log)


def test_a_body_just_under_the_limit_is_read_whole_when_chunked(server):
    url, log = server
    path = "/v1/messages/count_tokens"
    body = json.dumps({**valid_body(path), "messages": [{"role": "user", "content": "hi " * 1000}]}).encode()
    body += b" " * (LIMIT - len(body) - 10)
    resp = request(url, path, body, chunked=True)
    assert resp.status == 200, resp.raw[:300]
    assert json.loads(resp.body)["input_tokens"] > 1000
    no_traceback(log)


def test_malformed_chunked_encoding_is_a_400(server):
    url, log = server
    for path in (OPENAI_PATHS[0], ANTHROPIC_PATHS[0], ADMIN_PATH):
        head = [f"POST {path} HTTP/1.1", "Host: fuzz", "Connection: close", "Transfer-Encoding: chunked",
                f"Authorization: Bearer {ADMIN}"]
        resp = raw_exchange(url, ("\r\n".join(head) + "\r\n\r\n").encode() + b"zz\r\n{}\r\n0\r\n\r\n")
        check_envelope(resp, path, (400,))
    no_traceback(log)


def _raw_head(path: str, *extra: str, version: str = "HTTP/1.1", method: str = "POST") -> bytes:
    lines = [f"{method} {path} {version}", "Host: fuzz", "Connection: close", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


PROTOCOL: dict[str, tuple[bytes, tuple[int, ...]]] = {
    "101 headers": (_raw_head("/v1/chat/completions", *(f"X-H{i}: {i}" for i in range(101)),
                              "Content-Length: 0"), (431,)),
    "header line too long": (_raw_head("/v1/chat/completions", "X-Big: " + "a" * 70_000, "Content-Length: 0"),
                             (431,)),
    "content-length not a number": (_raw_head("/v1/chat/completions", "Content-Length: abc"), (400,)),
    "content-length negative": (_raw_head("/v1/chat/completions", "Content-Length: -5"), (400,)),
    "bad http version": (_raw_head("/v1/chat/completions", "Content-Length: 0", version="HTTP/x.y"), (400,)),
    "unsupported http version": (_raw_head("/v1/chat/completions", "Content-Length: 0", version="HTTP/2.0"),
                                 (400, 505)),
    "not http": (_raw_head("/v1/chat/completions", "Content-Length: 0", version="SPDY/3"), (400,)),
    "request line too long": (_raw_head("/v1/chat/completions?" + "q" * 9000, "Content-Length: 0"), (414,)),
    "garbage request line": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n", (400,)),
    "four words": (b"POST / HTTP/1.1 extra\r\nHost: fuzz\r\n\r\n", (400,)),
}


@pytest.mark.parametrize("case", list(PROTOCOL))
def test_protocol_errors_get_a_json_envelope_and_one_log_line(server, case):
    url, log = server
    before = log.read_text().count("\n")
    data, statuses = PROTOCOL[case]
    resp = raw_exchange(url, data, timeout=10, until_close=True)
    assert resp.status in statuses, (resp.status, resp.raw[:300])
    assert resp.headers.get("content-type") == "application/json"
    body = _strict_json(resp.body)
    assert set(body) == {"error"} and body["error"]["message"] and body["error"]["type"] == "invalid_request_error"
    assert resp.closed  # the connection cannot be trusted after a protocol error
    no_traceback(log)
    lines = log.read_text().splitlines()[before:]
    assert len(lines) == 1, lines
    assert str(resp.status) in lines[0]


def test_non_utf8_header_values_do_not_break_anything(server):
    url, log = server
    body = json.dumps(valid_body("/v1/chat/completions")).encode()
    data = _raw_head("/v1/chat/completions", "Authorization: Bearer \xff\xfekey", f"Content-Length: {len(body)}",
                     "Content-Type: application/json").replace(b"\xc3\xbf\xc3\xbe", b"\xff\xfe") + body
    resp = raw_exchange(url, data)
    assert resp.status == 200, resp.raw[:300]
    no_traceback(log)


def test_non_utf8_paths_get_a_404_envelope(server):
    url, log = server
    for path in (b"/v1/chat/completions\xff", b"/anthropic/v1/\xc3\x28messages", b"/v1/%ff%fe"):
        resp = raw_exchange(url, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                 b"Content-Length: 2\r\n\r\n{}")
        provider_path = ANTHROPIC_PATHS[0] if b"anthropic" in path else OPENAI_PATHS[0]
        check_envelope(resp, provider_path, (404,))
    no_traceback(log)
