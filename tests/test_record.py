"""`llmsim record`: the proxy forwards unchanged, as it arrives; its JSONL holds what the client got, minus keys."""

from __future__ import annotations

import json
import time

import anthropic
import openai
import pytest
import requests

from llmsim.cli.proxy import start_proxy
from llmsim.record import REDACTED, RecordWriter, SseSplitter, event_bytes, redact_target, secrets_of
from llmsim.testing import start_server

OPENAI_KEY = "sk-test-OPENAIKEY-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-ANTHROPICKEY-fedcba9876543210"
MSGS = [{"role": "user", "content": "Say something."}]
ERRORS = {"errors": {"models": {"gpt-4o-mini*": {"rate_limit": 1.0}, "gpt-4.1-nano*": {"midstream": 1.0}}}}


@pytest.fixture(scope="module")
def upstream():
    srv = start_server(latency_profile="fast", config=ERRORS)
    yield srv
    srv.stop()


@pytest.fixture
def proxy(upstream, tmp_path):
    px = start_proxy(upstream.url, str(tmp_path / "rec.jsonl"))
    yield px
    px.stop()


def lines(px) -> list[dict]:
    with open(px.proxy.writer.path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def openai_client(px) -> openai.OpenAI:
    return openai.OpenAI(base_url=px.url + "/v1", api_key=OPENAI_KEY, max_retries=0)


def anthropic_client(px) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=px.url, api_key=ANTHROPIC_KEY, max_retries=0)


def data_events(line: dict) -> list[dict]:
    return [json.loads(e["data"]) for e in line["response"]["events"] if "data" in e and e["data"] != "[DONE]"]


def test_openai_sdk_non_streaming_body_equals_what_the_client_got(proxy):
    raw = openai_client(proxy).chat.completions.with_raw_response.create(model="gpt-4o", messages=MSGS, max_tokens=7)
    got = raw.http_response.json()
    (line,) = lines(proxy)
    assert line["llmsim"] == "record/1" and line["api"] == "chat" and line["end"] == "complete"
    assert line["request"] == {"method": "POST", "path": "/v1/chat/completions", "headers": line["request"]["headers"],
                               "body": {"model": "gpt-4o", "messages": MSGS, "max_tokens": 7}}
    assert line["response"]["status"] == 200 and line["response"]["body"] == got
    assert line["usage"] == {"prompt_tokens": got["usage"]["prompt_tokens"], "output_tokens": 7,
                             "reasoning_tokens": 0}
    assert line["response"]["headers"]["x-request-id"] == raw.http_response.headers["x-request-id"]
    assert line["response"]["headers"]["content-type"].startswith("application/json")
    assert line["timing"]["e2e_ms"] >= line["timing"]["headers_ms"] > 0 and line["timing"]["ttft_ms"] is None


def test_openai_sdk_stream_events_equal_what_the_client_got(proxy):
    stream = openai_client(proxy).chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=6, stream=True,
                                                          stream_options={"include_usage": True})
    chunks = [c.to_dict() for c in stream]
    (line,) = lines(proxy)
    assert data_events(line) == chunks
    events = line["response"]["events"]
    assert events[-1]["data"] == "[DONE]"
    times = [e["t_ms"] for e in events]
    assert times == sorted(times) and times[0] > 0
    first_content = next(e["t_ms"] for e in events if '"content":"' in e["data"] and '"content":""' not in e["data"])
    assert line["timing"]["ttft_ms"] == first_content
    assert line["usage"] == {"prompt_tokens": chunks[-1]["usage"]["prompt_tokens"], "output_tokens": 6,
                             "reasoning_tokens": 0}


def test_anthropic_sdk_stream_and_body_equal_what_the_client_got(proxy):
    client = anthropic_client(proxy)
    events = [e.to_dict() for e in client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MSGS,
                                                          stream=True)]
    message = client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MSGS)
    streamed, plain = lines(proxy)
    assert streamed["api"] == "messages" and streamed["request"]["path"] == "/v1/messages"
    # The SDK keeps ping events to itself; everything else it yields is exactly what was recorded.
    recorded = data_events(streamed)
    assert [e for e in recorded if e["type"] != "ping"] == events
    assert [e["event"] for e in streamed["response"]["events"]] == [e["type"] for e in recorded]
    assert streamed["usage"]["output_tokens"] == 5 and streamed["usage"]["prompt_tokens"] > 0
    assert plain["response"]["body"] == message.to_dict()
    assert plain["usage"] == {"prompt_tokens": message.usage.input_tokens, "output_tokens": 5,
                              "reasoning_tokens": None}
    assert plain["request"]["headers"]["anthropic-version"]


def test_responses_stream_usage_is_recorded(proxy):
    stream = openai_client(proxy).responses.create(model="gpt-4o", input="hi", max_output_tokens=16, stream=True)
    done = [e for e in stream][-1]
    (line,) = lines(proxy)
    assert line["api"] == "responses"
    assert line["usage"]["output_tokens"] == done.response.usage.output_tokens
    assert line["usage"]["prompt_tokens"] == done.response.usage.input_tokens


def test_keys_and_cookies_are_never_written(proxy, upstream):
    openai_client(proxy).chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=2)
    list(anthropic_client(proxy).messages.create(model="claude-haiku-4-5", max_tokens=2, messages=MSGS, stream=True))
    requests.get(proxy.url + "/v1/models?api_key=QUERYSECRET-123&limit=2",
              headers={"Cookie": "session=COOKIESECRET-456; theme=dark", "X-Api-Key": "XKEYSECRET-789"})
    text = open(proxy.proxy.writer.path, encoding="utf-8").read()
    for secret in (OPENAI_KEY, ANTHROPIC_KEY, "QUERYSECRET-123", "COOKIESECRET-456", "XKEYSECRET-789"):
        assert secret not in text
    for name in ("authorization", "x-api-key", "cookie"):
        assert f'"{name}"' not in text
    recorded = lines(proxy)
    assert recorded[2]["request"]["path"] == "/v1/models?api_key=%5Bredacted%5D&limit=2"
    assert recorded[2]["response"]["status"] == 200 and recorded[2]["response"]["body"]["object"] == "list"


def test_the_key_reaches_the_upstream(tmp_path):
    srv = start_server(latency_profile="instant", config={"auth": {"api_keys": [OPENAI_KEY]}})
    px = start_proxy(srv.url, str(tmp_path / "rec.jsonl"))
    try:
        ok = openai_client(px).chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=2)
        assert ok.usage.completion_tokens == 2
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=px.url + "/v1", api_key="sk-wrong-key-000000", max_retries=0
                          ).chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=2)
        text = open(tmp_path / "rec.jsonl", encoding="utf-8").read()
        assert OPENAI_KEY not in text and "sk-wrong-key-000000" not in text
    finally:
        px.stop()
        srv.stop()


def test_upstream_errors_pass_through_and_are_recorded(proxy):
    with pytest.raises(openai.RateLimitError) as exc:
        openai_client(proxy).chat.completions.create(model="gpt-4o-mini", messages=MSGS, max_tokens=2)
    (line,) = lines(proxy)
    assert line["response"]["status"] == 429
    assert line["response"]["body"] == exc.value.response.json()
    assert line["response"]["headers"]["retry-after"] == exc.value.response.headers["retry-after"]
    assert any(k.startswith("x-ratelimit-") or k.startswith("retry-after") for k in line["response"]["headers"])


def test_a_stream_the_upstream_cuts_is_cut_for_the_client_too(proxy):
    with pytest.raises(Exception) as exc:
        list(openai_client(proxy).chat.completions.create(model="gpt-4.1-nano", messages=MSGS, max_tokens=30,
                                                          stream=True))
    assert not isinstance(exc.value, AssertionError)
    time.sleep(0.1)
    (line,) = lines(proxy)
    assert line["end"] == "upstream_error" and "broke off" in line["error"]
    assert line["response"]["status"] == 200 and line["response"]["events"][-1].get("data") != "[DONE]"


def test_unreachable_upstream_is_a_502_in_the_providers_envelope(tmp_path):
    px = start_proxy("http://127.0.0.1:9", str(tmp_path / "rec.jsonl"))
    try:
        r = requests.post(px.url + "/v1/messages",
                          json={"model": "claude-haiku-4-5", "messages": MSGS, "max_tokens": 2})
        assert r.status_code == 502 and r.json()["type"] == "error" and "unreachable" in r.json()["error"]["message"]
        r = requests.post(px.url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": MSGS})
        assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]
    finally:
        px.stop()
    first = json.loads(open(tmp_path / "rec.jsonl", encoding="utf-8").readline())
    assert first["response"] is None and first["end"] == "upstream_error" and "unreachable" in first["error"]


def test_upstream_base_path_and_any_method(upstream, tmp_path):
    px = start_proxy(upstream.url + "/openai", str(tmp_path / "rec.jsonl"))
    try:
        r = requests.get(px.url + "/v1/models/gpt-4o")
        assert r.status_code == 200 and r.json()["id"] == "gpt-4o"
        r = requests.delete(px.url + "/v1/models/gpt-4o")
        assert r.status_code == 405
    finally:
        px.stop()
    got = [json.loads(s) for s in open(tmp_path / "rec.jsonl", encoding="utf-8")]
    assert [(g["request"]["method"], g["response"]["status"]) for g in got] == [("GET", 200), ("DELETE", 405)]
    assert got[0]["upstream"].endswith("/openai") and got[0]["request"]["path"] == "/v1/models/gpt-4o"


def test_chunks_are_forwarded_as_they_arrive(tmp_path):
    """With 60 ms between tokens, the first token reaches the client through the proxy long before the last."""
    srv = start_server(config={"models": {"allow_unknown": True}}, profile_files=[_slow_profile(tmp_path)],
                       latency_profile="slow-itl")
    px = start_proxy(srv.url, str(tmp_path / "rec.jsonl"))
    try:
        t0 = time.monotonic()
        arrivals = []
        with requests.post(px.url + "/v1/chat/completions", stream=True,
                           json={"model": "gpt-4o", "messages": MSGS, "max_tokens": 5, "stream": True}) as r:
            for line in r.iter_lines(chunk_size=1, decode_unicode=True):
                if '"content":"' in line and '"content":""' not in line:
                    arrivals.append(time.monotonic() - t0)
        assert len(arrivals) == 5
        gaps = sorted(b - a for a, b in zip(arrivals, arrivals[1:]))
        # Not batched: the tokens came one by one over the 240 ms they took (one late wake-up may shorten a gap).
        assert arrivals[-1] - arrivals[0] > 0.12 and gaps[1] > 0.03, gaps
    finally:
        px.stop()
        srv.stop()


def _slow_profile(tmp_path) -> str:
    path = tmp_path / "slow.yaml"
    path.write_text("profiles:\n  - name: slow-itl\n    ttft: {mean_ms: 20}\n    itl: {mean_ms: 60}\n")
    return str(path)


def test_sse_splitter_stamps_events_when_complete_and_round_trips():
    sp = SseSplitter()
    sp.feed(b"event: a\ndata: {\"x\":", 1.0)
    sp.feed(b"1}\n\n: keep-alive\n\ndata: one\r\ndata: two\r\n\r\ndata: [DONE]", 2.5)
    sp.finish(3.0)
    assert sp.events == [{"t_ms": 2.5, "event": "a", "data": '{"x":1}'}, {"t_ms": 2.5, "comment": "keep-alive"},
                         {"t_ms": 2.5, "data": "one\ntwo"}, {"t_ms": 3.0, "data": "[DONE]"}]
    assert event_bytes(sp.events[0]) == b'event: a\ndata: {"x":1}\n\n'
    assert event_bytes(sp.events[1]) == b": keep-alive\n\n"
    assert event_bytes(sp.events[2]) == b"data: one\ndata: two\n\n"


def test_secrets_and_redaction_rules():
    got = secrets_of([("Authorization", "Bearer sk-abcdef"), ("x-api-key", "k-123456"), ("cookie", "a=b12345; c=d")],
                     "/v1/x?key=qwerty&n=1")
    assert {"Bearer sk-abcdef", "sk-abcdef", "k-123456", "b12345", "qwerty"} <= set(got)
    assert redact_target("/v1/x?key=qwerty&n=1") == "/v1/x?key=%5Bredacted%5D&n=1"
    assert redact_target("/v1/x?n=1") == "/v1/x?n=1"


def test_a_non_ascii_key_is_scrubbed_in_its_utf8_form_too(tmp_path):
    """WSGI gives a header's UTF-8 bytes as Latin-1 text; the same key echoed in a body is UTF-8 text."""
    key = "sk-caf\u00e9-123456"
    got = secrets_of([("Authorization", "Bearer " + key.encode().decode("latin-1"))], "/v1/x")
    assert key in got
    w = RecordWriter(str(tmp_path / "r.jsonl"))
    w.write({"request": {"body": {"note": key, "other": "caf\u00e9"}}}, got)
    w.close()
    text = (tmp_path / "r.jsonl").read_text(encoding="utf-8")
    assert key not in text and text.count(REDACTED) == 1 and "caf\u00e9" in text


def test_timing_is_consistent(proxy):
    with requests.post(proxy.url + "/v1/chat/completions", stream=True, json={
            "model": "gpt-4o", "messages": MSGS, "max_tokens": 5, "stream": True}) as r:
        list(r.iter_lines())
    (line,) = lines(proxy)
    t = line["timing"]
    times = [e["t_ms"] for e in line["response"]["events"]]
    # fast profile: TTFT 10 ms, ITL 1 ms; the head comes first, the end with (or after) the last event
    assert 0 < t["headers_ms"] <= times[0] <= t["ttft_ms"] <= times[-1] <= t["e2e_ms"] < t["ttft_ms"] + 200
    assert t["ttft_ms"] >= 9


def test_close_delimited_and_chunky_upstreams(tmp_path):
    """A server that is not llmsim: a body ended by closing the connection, and 3 tokens per event."""
    from tests.loadtest.sse_server import MiniServer

    srv = MiniServer(ttft_ms=20.0, itl_ms=2.0).start()
    px = start_proxy(srv.url, str(tmp_path / "rec.jsonl"))
    try:
        for model in ("mode-close", "mode-chunky", "plain"):
            r = requests.post(px.url + "/v1/chat/completions", timeout=10, json={
                "model": model, "messages": MSGS, "max_tokens": 6, "stream": True})
            assert r.status_code == 200 and "[DONE]" in r.text, (model, r.text[-200:])
    finally:
        px.stop()
        srv.stop()
    got = [json.loads(s) for s in open(tmp_path / "rec.jsonl", encoding="utf-8")]
    assert [g["end"] for g in got] == ["complete"] * 3
    assert all(g["response"]["events"][-1]["data"] == "[DONE]" for g in got)
    assert all(g["timing"]["ttft_ms"] >= 19 for g in got)


def test_record_command_line(upstream, tmp_path):
    import os
    import re
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "cli.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "llmsim", "record", "--upstream", upstream.url, "--out", str(out),
                          "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = p.stdout.readline()
        m = re.match(rf"llmsim recording on (http://127\.0\.0\.1:\d+) -> {re.escape(upstream.url)} \(to {out}\)$",
                     line.strip())
        assert m, line
        r = requests.post(m.group(1) + "/v1/chat/completions", json={"model": "gpt-4o", "messages": MSGS,
                                                                     "max_tokens": 3})
        assert r.status_code == 200
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 0
    assert "1 request recorded" in p.stderr.read()
    assert json.loads(out.read_text())["usage"]["output_tokens"] == 3
    for args, message in ((["--upstream", "ftp://x", "--out", str(out)], "must be an http:// or https:// URL"),
                          (["--upstream", upstream.url, "--out", str(tmp_path / "no" / "x.jsonl")], "cannot write"),
                          (["--upstream", upstream.url, "--out", str(out), "--port", "99999"],
                           "--port: must be between 0 and 65535, got 99999"),
                          (["--upstream", upstream.url, "--out", str(out), "--timeout", "0"],
                           "--timeout: must be a number of seconds above 0, got '0'"),
                          (["--upstream", upstream.url, "--out", str(out), "--timeout", "nan"],
                           "--timeout: must be a number of seconds above 0")):
        r = subprocess.run([sys.executable, "-m", "llmsim", "record", *args], capture_output=True, text=True,
                           timeout=60, env=env)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
