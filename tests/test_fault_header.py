"""The x-llmsim-fault request header: every fault kind on every generation API, through the official SDKs.

A test forces an exact failure for one request, with no config change; the
config's `errors.header: false` turns the header off, and with auth on a
caller whose key is not allowed gets its 401 first.
"""

from __future__ import annotations

import time

import anthropic
import openai
import pytest
import requests

from llmsim.testing import run_server

APIS = ("chat", "responses", "completions", "messages")
HOLD_MS = 300


@pytest.fixture(scope="module")
def server():
    # The header's faults take their knobs from the fault plan's scope: a short timeout hold here.
    with run_server(config={"errors": {"timeout_after_ms": HOLD_MS}}, latency_profile="fast", seed=2) as url:
        yield url


def call(url: str, api: str, fault: str | None, *, stream: bool = False, key: str = "sk-test") -> list:
    """One small request on `api` with the header; a stream is read to its end. Returns the streamed events."""
    headers = {"x-llmsim-fault": fault} if fault is not None else {}
    if api == "messages":
        c = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
        out = c.messages.create(model="claude-haiku-4-5", max_tokens=20, stream=stream, extra_headers=headers,
                                messages=[{"role": "user", "content": "Say something."}])
    else:
        o = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        if api == "chat":
            out = o.chat.completions.create(model="gpt-4o", max_tokens=20, stream=stream, extra_headers=headers,
                                            messages=[{"role": "user", "content": "Say something."}])
        elif api == "responses":
            out = o.responses.create(model="gpt-4o", input="Say something.", max_output_tokens=20, stream=stream,
                                     extra_headers=headers)
        else:
            out = o.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say something.", max_tokens=20,
                                       stream=stream, extra_headers=headers)
    events: list = []
    if stream:
        for event in out:
            events.append(event)
    return events


def has_content(api: str, events: list) -> bool:
    """At least one token arrived before the failure."""
    for e in events:
        if api == "chat" and e.choices and e.choices[0].delta.content:
            return True
        if api == "completions" and e.choices and e.choices[0].text:
            return True
        if api == "responses" and e.type == "response.output_text.delta":
            return True
        if api == "messages" and e.type == "content_block_delta":
            return True
    return False


OPENAI_STATUS = {"rate_limit": (openai.RateLimitError, 429), "server_error": (openai.InternalServerError, 500),
                 "unavailable": (openai.InternalServerError, 503), "overloaded": (openai.InternalServerError, 503)}
ANTHROPIC_STATUS = {"rate_limit": (anthropic.RateLimitError, 429),
                    "server_error": (anthropic.InternalServerError, 500),
                    "unavailable": (anthropic.InternalServerError, 503),
                    "overloaded": (anthropic.OverloadedError, 529)}


@pytest.mark.parametrize("kind", sorted(OPENAI_STATUS))
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [False, True])
def test_status_kinds(server, api, kind, stream):
    exc, status = (ANTHROPIC_STATUS if api == "messages" else OPENAI_STATUS)[kind]
    with pytest.raises(exc) as e:
        call(server, api, kind, stream=stream)
    assert e.value.status_code == status
    if kind == "rate_limit" and api != "messages":
        assert "injected fault (x-llmsim-fault header)" in e.value.body["message"]
        assert e.value.response.headers["retry-after-ms"] == "1000"


@pytest.mark.parametrize("api", APIS)
def test_timeout_holds_then_drops(server, api):
    t0 = time.monotonic()
    with pytest.raises((openai.APIConnectionError, anthropic.APIConnectionError)):
        call(server, api, "timeout")
    assert time.monotonic() - t0 >= HOLD_MS / 1000 - 0.02


@pytest.mark.parametrize("fault", ["midstream", "midstream:drop"])
@pytest.mark.parametrize("api", APIS)
def test_midstream_drop_cuts_the_stream(server, api, fault):
    events: list = []
    with pytest.raises(Exception) as e:  # noqa: PT011 - each SDK surfaces the cut its own way
        for ev in _stream(server, api, fault):
            events.append(ev)
    # openai: APIConnectionError; anthropic: that, or its transport's incomplete-body error.
    assert isinstance(e.value, (openai.APIConnectionError, anthropic.APIConnectionError)) or \
        "incomplete" in str(e.value).lower(), repr(e.value)
    assert has_content(api, events)


def _stream(url: str, api: str, fault: str):
    """The stream's events one by one, so the ones before a cut are kept."""
    headers = {"x-llmsim-fault": fault}
    if api == "messages":
        c = anthropic.Anthropic(base_url=url, api_key="sk", max_retries=0)
        return c.messages.create(model="claude-haiku-4-5", max_tokens=20, stream=True, extra_headers=headers,
                                 messages=[{"role": "user", "content": "Say something."}])
    o = openai.OpenAI(base_url=url + "/v1", api_key="sk", max_retries=0)
    if api == "chat":
        return o.chat.completions.create(model="gpt-4o", max_tokens=20, stream=True, extra_headers=headers,
                                         messages=[{"role": "user", "content": "Say something."}])
    if api == "responses":
        return o.responses.create(model="gpt-4o", input="Say something.", max_output_tokens=20, stream=True,
                                  extra_headers=headers)
    return o.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say something.", max_tokens=20,
                                stream=True, extra_headers=headers)


@pytest.mark.parametrize("api", APIS)
def test_midstream_error_ends_the_stream_with_the_in_band_error(server, api):
    events: list = []
    if api == "responses":  # the SDK hands the error and response.failed events over as events
        events = call(server, api, "midstream:error", stream=True)
        assert [e.type for e in events][-2:] == ["error", "response.failed"]
    elif api == "messages":
        with pytest.raises(anthropic.APIStatusError) as e:
            for ev in _stream(server, api, "midstream:error"):
                events.append(ev)
        assert e.value.body["error"]["type"] == "overloaded_error"
    else:
        with pytest.raises(openai.APIError) as e:
            for ev in _stream(server, api, "midstream:error"):
                events.append(ev)
        assert e.value.body["type"] == "server_error"
    assert has_content(api, events)


@pytest.mark.parametrize("api", APIS)
def test_midstream_on_a_non_streaming_request(server, api):
    with pytest.raises((openai.InternalServerError, anthropic.InternalServerError)) as e:
        call(server, api, "midstream:error")
    assert e.value.status_code == 500
    with pytest.raises((openai.APIConnectionError, anthropic.APIConnectionError)):
        call(server, api, "midstream:drop")


@pytest.mark.parametrize("api", APIS)
def test_unknown_kind_is_a_400_naming_the_header(server, api):
    with pytest.raises((openai.BadRequestError, anthropic.BadRequestError)) as e:
        call(server, api, "explode")
    body = e.value.response.json()
    message = body["error"]["message"]
    assert "'x-llmsim-fault'" in message and "'explode'" in message and "midstream:error" in message
    if api != "messages":
        assert body["error"]["param"] == "x-llmsim-fault"


def test_no_header_no_fault_and_the_header_beats_the_plan(server):
    before = requests.get(server + "/llmsim/stats", timeout=10).json()["faults_injected"].get("rate_limit", 0)
    for api in APIS:
        call(server, api, None)
        call(server, api, None, stream=True)
        with pytest.raises((openai.RateLimitError, anthropic.RateLimitError)):
            call(server, api, "rate_limit")
    stats = requests.get(server + "/llmsim/stats", timeout=10).json()
    assert stats["faults_injected"]["rate_limit"] == before + len(APIS)  # the header's faults count like the plan's
    with run_server(config={"errors": {"server_error": 1.0}}, latency_profile="fast") as url:
        with pytest.raises(openai.RateLimitError):
            call(url, "chat", "rate_limit")
        with pytest.raises(openai.InternalServerError):
            call(url, "chat", None)


def test_the_header_case_does_not_matter(server):
    with pytest.raises(openai.RateLimitError):
        call(server, "chat", "RATE_Limit")


def test_switched_off_in_config_and_at_runtime():
    with run_server(config={"errors": {"header": False}}, latency_profile="fast") as url:
        for api in APIS:
            call(url, api, "server_error")  # ignored: a normal answer
            call(url, api, "explode")  # not even read
    with run_server(latency_profile="fast", admin_token="tok") as url:
        with pytest.raises(openai.InternalServerError):
            call(url, "completions", "server_error")
        admin = {"Authorization": "Bearer tok"}
        r = requests.post(url + "/llmsim/config", json={"errors": {"header": False}}, headers=admin, timeout=10)
        assert r.status_code == 200 and r.json()["errors"]["header"] is False
        call(url, "completions", "server_error")
        r = requests.post(url + "/llmsim/config", json={"errors": {"header": "no"}}, headers=admin, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["param"] == "errors.header"


def test_a_caller_whose_key_is_not_allowed_gets_its_401_not_the_fault():
    with run_server(config={"auth": {"api_keys": ["sk-allowed"]}}, latency_profile="fast") as url:
        for api in APIS:
            with pytest.raises((openai.AuthenticationError, anthropic.AuthenticationError)):
                call(url, api, "rate_limit", key="sk-intruder")
            with pytest.raises((openai.RateLimitError, anthropic.RateLimitError)):
                call(url, api, "rate_limit", key="sk-allowed")
        r = requests.post(url + "/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"},
                          headers={"x-llmsim-fault": "rate_limit", "Authorization": "Bearer sk-intruder"},
                          timeout=10)
        assert r.status_code == 401
        stats = requests.get(url + "/llmsim/stats", timeout=10).json()
        assert stats["faults_injected"] == {"rate_limit": 4}  # only the allowed caller's
