"""Bad Responses requests: OpenAI's envelope with `param` naming the field."""

import openai
import pytest
import requests

from llmsim.testing import run_server

OK = {"model": "gpt-4o", "input": "Hi"}


@pytest.fixture(scope="module")
def server():
    with run_server(seed=1) as url:  # real profiles: the model's own output limit applies
        yield url


def without(key: str) -> dict:
    return {k: v for k, v in OK.items() if k != key}


@pytest.mark.parametrize("body, param, code", [
    (without("model"), "model", "missing_required_parameter"),
    (without("input"), "input", "missing_required_parameter"),
    ({**OK, "input": 5}, "input", "invalid_type"),
    ({**OK, "input": []}, "input", "empty_array"),
    ({**OK, "input": ["Hi"]}, "input[0]", "invalid_type"),
    ({**OK, "input": [{"content": "Hi"}]}, "input[0].role", "missing_required_parameter"),
    ({**OK, "input": [{"role": "bot", "content": "Hi"}]}, "input[0].role", "invalid_value"),
    ({**OK, "input": [{"role": "user"}]}, "input[0].content", "missing_required_parameter"),
    ({**OK, "input": [{"role": "user", "content": 3}]}, "input[0].content", "invalid_type"),
    ({**OK, "input": [{"role": "user", "content": [{"text": "x"}]}]}, "input[0].content[0]", "invalid_type"),
    ({**OK, "input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]},
     "input[0].content[0].text", "invalid_type"),
    ({**OK, "input": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
     "input[0].content[0].type", "invalid_value"),
    ({**OK, "instructions": ["x"]}, "instructions", "invalid_type"),
    ({**OK, "max_output_tokens": 8}, "max_output_tokens", "integer_below_min_value"),
    ({**OK, "max_output_tokens": "16"}, "max_output_tokens", "invalid_type"),
    ({**OK, "max_output_tokens": 20_000}, "max_output_tokens", "invalid_value"),  # gpt-4o: at most 16384
    ({**OK, "reasoning": {"effort": "extreme"}}, "reasoning.effort", "invalid_value"),
    ({**OK, "reasoning": {"summary": "long"}}, "reasoning.summary", "invalid_value"),
    ({**OK, "reasoning": "high"}, "reasoning", "invalid_type"),
    ({**OK, "stream": "yes"}, "stream", "invalid_type"),
    ({**OK, "temperature": 3}, "temperature", "decimal_above_max_value"),
    ({**OK, "truncation": "sometimes"}, "truncation", "invalid_value"),
    ({**OK, "tool_choice": 1}, "tool_choice", "invalid_type"),
])
@pytest.mark.parametrize("path", ["/v1/responses", "/openai/v1/responses"])
def test_invalid_request_names_the_field(server, body, param, code, path):
    r = requests.post(server + path, json=body, timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["code"] == code
    assert param.split("[")[0].split(".")[0] in err["message"]


def test_context_window_names_input(server):
    r = requests.post(server + "/v1/responses", json={"model": "gpt-4", "input": "word " * 9000}, timeout=10)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["param"] == "input"
    assert err["message"].startswith("This model's maximum context length is 8192 tokens.")


def test_non_json_body_and_unknown_model(server):
    r = requests.post(server + "/v1/responses", data=b"{oops", headers={"content-type": "application/json"},
                      timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = requests.post(server + "/v1/responses", json={**OK, "model": "gpt-nope"}, timeout=10)
    assert r.status_code == 404
    assert r.json()["error"] == {"message": "The model `gpt-nope` does not exist or you do not have access to it.",
                                 "type": "invalid_request_error", "param": "model", "code": "model_not_found"}


def test_sdk_raises_its_typed_errors(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="gpt-4o", input="Hi", max_output_tokens=1)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-nope", input="Hi")
    assert bad.value.param == "max_output_tokens"
