"""In-band stream errors: every encoder's error_event() is what its official SDK understands as a failure.

The fault injector cuts a stream by sending error_event(err) after some
chunks; here each API's opening events, a token, then the error are served
verbatim and read back with the provider's SDK.
"""

import warnings

import anthropic
import openai
import pytest

from llmsim.anthropic.messages import Messages
from llmsim.errors import ApiError
from llmsim.openai.chat import ChatCompletions
from llmsim.openai.responses import Responses
from tests.sse import canned_stream, opening_and_first_token, parse_sse

OVERLOADED = ApiError("overloaded", "Overloaded")
SERVER_ERROR = ApiError("server_error", "The server had an error while processing your request.")


def test_chat_error_chunk_raises_in_the_openai_sdk():
    enc, events = opening_and_first_token(ChatCompletions(), "gpt-4o", "Hel")
    chunk = enc.error_event(SERVER_ERROR)
    assert parse_sse(chunk.decode()) == [(None, {"error": {"message": SERVER_ERROR.message, "type": "server_error",
                                                           "param": None, "code": None}})]
    with canned_stream(events + [chunk]) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        stream = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}],
                                                stream=True)
        got = []
        with pytest.raises(openai.APIError, match="The server had an error"):
            for c in stream:
                got.append(c.choices[0].delta.content)
    assert got == ["", "Hel"]


def test_anthropic_error_event_raises_in_the_anthropic_sdk():
    enc, events = opening_and_first_token(Messages(), "claude-haiku-4-5", "Hel")
    event = enc.error_event(OVERLOADED)
    assert parse_sse(event.decode()) == [("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                               "message": "Overloaded"}})]
    assert [name for name, _ in parse_sse(b"".join(events).decode())] == [
        "message_start", "content_block_start", "ping", "content_block_delta"]
    with canned_stream(events + [event]) as url:
        client = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
        got = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
                with client.messages.stream(model="claude-haiku-4-5", max_tokens=10,
                                            messages=[{"role": "user", "content": "x"}]) as stream:
                    for text in stream.text_stream:
                        got.append(text)
    assert got == ["Hel"]


def test_responses_error_then_failed_parse_in_the_openai_sdk():
    enc, events = opening_and_first_token(Responses(), "gpt-4o", "Hel")
    failure = enc.error_event(SERVER_ERROR)
    (n1, err), (n2, failed) = parse_sse(failure.decode())
    assert (n1, n2) == ("error", "response.failed")
    assert err == {"type": "error", "code": "server_error", "message": SERVER_ERROR.message, "param": None,
                   "sequence_number": 5}
    assert failed["sequence_number"] == 6 and failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "server_error", "message": SERVER_ERROR.message}
    with canned_stream(events + [failure]) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        events = list(client.responses.create(model="gpt-4o", input="x", stream=True))
    assert [e.type for e in events][-3:] == ["response.output_text.delta", "error", "response.failed"]
    assert events[-2].code == "server_error" and events[-1].response.error.code == "server_error"
    assert [e.sequence_number for e in events] == list(range(7))


def test_responses_rate_limit_code():
    enc, _ = opening_and_first_token(Responses(), "gpt-4o")
    failure = enc.error_event(ApiError("rate_limit", "Slow down"))
    assert parse_sse(failure.decode())[0][1]["code"] == "rate_limit_exceeded"
