"""Awkward text survives every new API's encoder byte for byte: quotes, backslashes, newlines, emoji, CJK."""

import warnings

import anthropic
import openai
import pytest

from llmsim.testing import run_server
from llmsim.tokens import count_tokens

TEXT = 'He said "hi"\\n and left.\nNew line\ttab — naïve 東京 🙂🚀 </s> <|endoftext|> data: [DONE]\n\nevent: x'


@pytest.fixture(scope="module")
def server():
    with run_server(latency_profile="instant", generator=f"fixed:{TEXT}") as url:
        yield url


def test_anthropic_stream_and_body_carry_the_exact_text(server):
    client = anthropic.Anthropic(base_url=server, api_key="k", max_retries=0)
    kwargs = dict(model="claude-haiku-4-5", max_tokens=1000, messages=[{"role": "user", "content": "x"}])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        body = client.messages.create(**kwargs)
        with client.messages.stream(**kwargs) as s:
            streamed = "".join(s.text_stream)
            final = s.get_final_message()
    assert body.content[0].text == streamed == final.content[0].text == TEXT
    assert final.usage.output_tokens == count_tokens(TEXT, "claude-haiku-4-5")


def test_responses_stream_and_body_carry_the_exact_text(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key="k", max_retries=0)
    body = client.responses.create(model="gpt-4o", input="x")
    with client.responses.stream(model="gpt-4o", input="x") as s:
        streamed = "".join(e.delta for e in s if e.type == "response.output_text.delta")
        final = s.get_final_response()
    assert body.output_text == streamed == final.output_text == TEXT
    assert final.usage.output_tokens == count_tokens(TEXT, "gpt-4o")
