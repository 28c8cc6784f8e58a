"""The shared body parser and number readers: deep nesting and non-finite numbers are 400s naming the
field, and nothing the server sends can carry NaN or Infinity."""

from __future__ import annotations

import json
import time

import pytest
import requests

from llmsim.errors import ApiError
from llmsim.fields import MAX_JSON_DEPTH, get_number, parse_json_object
from llmsim.testing import run_server


def refused(raw: bytes) -> ApiError:
    with pytest.raises(ApiError) as e:
        parse_json_object(raw)
    assert e.value.http_status("openai") == 400
    return e.value


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 100_000])
def test_deep_nesting_is_invalid_json_never_a_recursion_error(depth):
    for raw in (b"[" * depth + b"]" * depth,
                b'{"model": "m", "x": ' + b"[" * depth + b"]" * depth + b"}",
                b'{"a":' * depth + b"1" + b"}" * depth):
        err = refused(raw)
        assert err.code == "invalid_json" and f"more than {MAX_JSON_DEPTH} levels" in err.message


def test_nesting_up_to_the_limit_is_accepted():
    inner = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)  # the top-level object is level 1
    assert parse_json_object(f'{{"x": {inner}}}'.encode())["x"]
    many = json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}] * 5000})
    assert len(parse_json_object(many.encode())["messages"]) == 5000


@pytest.mark.parametrize("text, path", [
    ('{"temperature": NaN}', "temperature"),
    ('{"top_p": Infinity}', "top_p"),
    ('{"presence_penalty": -Infinity}', "presence_penalty"),
    ('{"frequency_penalty": 1e999}', "frequency_penalty"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"x": [1, -1e400]}]}', "messages[1].x[1]"),
    ('{"a": 1.5, "b": {"c": NaN, "d": Infinity}}', "b.c"),
])
def test_non_finite_numbers_are_refused_by_field(text, path):
    err = refused(text.encode())
    assert err.param == path and err.code == "invalid_value"
    assert path in err.message and path in err.body("anthropic")["error"]["message"]


def test_finite_numbers_and_big_integers_pass():
    body = parse_json_object(b'{"t": 0.7, "n": 12345678901234567890, "e": 1e308, "z": -0.0}')
    assert body == {"t": 0.7, "n": 12345678901234567890, "e": 1e308, "z": -0.0}
    assert type(body["t"]) is float


def test_number_readers_refuse_non_finite_values_that_bypass_the_parser():
    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ApiError) as e:
            get_number({"temperature": value}, "temperature", minimum=0, maximum=2)
        assert e.value.param == "temperature"


def test_parsing_cost_stays_linear():
    # A large body with many containers and floats: the depth and NaN checks add little.
    raw = json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}] * 20_000,
                      "v": [i / 7 for i in range(50_000)]}).encode()
    t = time.perf_counter()
    json.loads(raw)
    plain = time.perf_counter() - t
    t = time.perf_counter()
    parse_json_object(raw)
    ours = time.perf_counter() - t
    assert ours < 10 * plain + 0.05, (ours, plain)


def test_responses_never_echo_non_finite_numbers():
    with run_server(latency_profile="instant") as url:
        for constant in ("NaN", "Infinity", "-Infinity"):
            r = requests.post(url + "/v1/responses", data=f'{{"model": "gpt-4o", "input": "hi", "temperature": '
                                                          f'{constant}, "top_p": 0.5}}',
                              headers={"Content-Type": "application/json"})
            assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
            assert constant not in r.text.replace(f"{constant} is not", "")


def test_the_app_cannot_emit_nan():
    from llmsim.cli.body import StrictJSONProvider
    from llmsim.cli.config import resolve_config
    from llmsim.cli.server import build_server

    server, _ = build_server(resolve_config({"port": 0, "latency_profile": "instant"}, env={}))
    try:
        app = server.application
        assert isinstance(app.json, StrictJSONProvider)
        with app.app_context():  # keeps the app's compact, unsorted output
            assert app.json.response({"b": 1, "a": [1, 2]}).get_data() == b'{"b":1,"a":[1,2]}\n'

        with pytest.raises(ValueError):
            app.json.dumps({"temperature": float("nan")})
    finally:
        server.close()


def test_an_integer_too_large_for_a_float_is_refused_by_every_number_reader():
    """float(10**400) and math.isfinite(10**400) raise OverflowError: each reader says what is wrong instead."""
    from llmsim.validation import ValidationError, finite_float, number

    assert finite_float(10**400) is None and finite_float(True) is None and finite_float(3) == 3.0
    with pytest.raises(ApiError) as e:
        get_number({"temperature": 10**400}, "temperature", minimum=0, maximum=2)
    assert e.value.param == "temperature" and "an integer of 401 digits" in str(e.value)
    with pytest.raises(ValidationError, match=r"must be a number, got an integer of 401 digits"):
        number("f.yaml", "rpm", 10**400)
