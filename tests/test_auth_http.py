"""Optional API keys: 401 in the provider's envelope; keys never reach logs or stats."""

from __future__ import annotations

import anthropic
import openai
import pytest
import requests

from llmsim.auth import AuthConfig, request_api_key
from llmsim.errors import ApiError
from llmsim.profiles import ProfileError
from llmsim.testing import run_server

CHAT = "/v1/chat/completions"
GOOD = "sk-llmsim-good-key-0001"
SECRET = "sk-secret-never-logged-4242"


def test_which_header_carries_the_key():
    assert request_api_key({"authorization": "Bearer sk-1"}, "openai") == "sk-1"
    assert request_api_key({"authorization": "bearer  sk-1 "}, "openai") == "sk-1"
    assert request_api_key({"x-api-key": "sk-ant"}, "openai") is None  # OpenAI reads only Authorization
    assert request_api_key({"x-api-key": "sk-ant", "authorization": "Bearer b"}, "anthropic") == "sk-ant"
    assert request_api_key({"authorization": "Bearer b"}, "anthropic") == "b"
    assert request_api_key({"authorization": "Basic abc"}, "openai") is None
    assert request_api_key({}, "anthropic") is None


def test_auth_config():
    assert AuthConfig.parse("f", None) is None and AuthConfig.parse("f", {}) is None
    assert AuthConfig.parse("f", {"api_keys": ["a", "b"]}).api_keys == {"a", "b"}
    with pytest.raises(ProfileError, match=r"^f: auth.api_keys\[1\]: must be a non-empty string$"):
        AuthConfig.parse("f", {"api_keys": ["a", ""]})
    with pytest.raises(ProfileError, match=r"^f: auth: unknown key at position 2 \(not shown") as e:
        AuthConfig.parse("f", {"api_keys": ["a"], "sk-live-0123456789abcdef": ["a"]})
    assert "0123456789" not in str(e.value)
    with pytest.raises(ProfileError, match=r"^f: auth.keys: unknown key \(did you mean api_keys\?"):
        AuthConfig.parse("f", {"keys": ["a"]})


def test_401_envelopes_per_provider():
    cfg = AuthConfig.parse("f", {"api_keys": [GOOD]})
    cfg.check(GOOD)
    with pytest.raises(ApiError) as missing:
        cfg.check(None)
    assert missing.value.http_status("anthropic") == 401
    assert missing.value.anthropic_body() == {"type": "error", "error": {"type": "authentication_error",
                                                                         "message": "x-api-key header is required"}}
    with pytest.raises(ApiError) as wrong:
        cfg.check(SECRET)
    assert wrong.value.anthropic_body()["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
    assert wrong.value.openai_body()["error"] == {
        "message": "Incorrect API key provided: sk-********************4242. You can find your API key at "
                   "https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}


def test_openai_sdk_gets_authentication_error():
    with run_server(config={"auth": {"api_keys": [GOOD]}}, latency_profile="instant") as url:
        good = openai.OpenAI(base_url=url + "/v1", api_key=GOOD, max_retries=0)
        assert good.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=3).choices[0].message.content
        assert good.models.list().data
        bad = openai.OpenAI(base_url=url + "/v1", api_key=SECRET, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            bad.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        assert SECRET not in e.value.body["message"]
        missing = requests.post(url + CHAT, json={"model": "gpt-4o", "messages": []})
        assert missing.status_code == 401
        assert missing.json()["error"]["message"].startswith("You didn't provide an API key.")
        assert missing.json()["error"]["code"] is None
        # Only the provider APIs are guarded.
        assert requests.get(url + "/health").status_code == 200
        assert requests.get(url + "/metrics").status_code == 200


def test_anthropic_sdk_at_the_root_models_path_is_checked_like_any_api_call():
    """The Anthropic SDK pointed at the server root lists models at OpenAI's /v1/models path: the allow-list
    holds there too, the 401 comes in Anthropic's envelope, and every answer carries its request id."""
    with run_server(config={"auth": {"api_keys": [GOOD]}}, latency_profile="instant") as url:
        bad = anthropic.Anthropic(base_url=url, api_key=SECRET, max_retries=0)
        for call in (bad.models.list, lambda: bad.models.retrieve("claude-haiku-4-5")):
            with pytest.raises(anthropic.AuthenticationError) as e:
                call()
            assert e.value.body["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
            assert e.value.request_id and e.value.request_id.startswith("req_")
        good = anthropic.Anthropic(base_url=url, api_key=GOOD, max_retries=0)
        raw = good.models.with_raw_response.list()
        assert raw.parse().data[0].id.startswith("claude-")
        assert raw.headers["request-id"].startswith("req_") and raw.headers["x-request-id"] == raw.headers["request-id"]
        with pytest.raises(anthropic.NotFoundError) as missing:
            good.models.retrieve("no-such-model")
        assert missing.value.request_id.startswith("req_")
        assert missing.value.body["request_id"] == missing.value.request_id
        # An OpenAI client's 401 on the same path stays OpenAI's
        r = requests.get(url + "/v1/models", headers={"Authorization": f"Bearer {SECRET}"}, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_keys_never_appear_in_logs_or_stats(capfd):
    settings = {"auth": {"api_keys": [SECRET]}, "rate_limits": {"rpm": 100, "keys": {SECRET: "default"}},
                "errors": {"server_error": 0.3, "midstream": 0.3}}
    with run_server(config=settings, latency_profile="instant", seed=3, access_log=True) as url:
        for key in (SECRET, SECRET[::-1], None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            for stream in (False, True):
                requests.post(url + CHAT, headers=headers, json={
                    "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
        # A malformed body gets its 400 without the key showing up anywhere either.
        requests.post(url + CHAT, headers={"Authorization": f"Bearer {SECRET}"}, data=b"{not json")
        exposed = requests.get(url + "/llmsim/stats").text + requests.get(url + "/metrics").text
    out, err = capfd.readouterr()
    assert "POST /v1/chat/completions" in err  # the access log was on
    for text in (exposed, out, err):
        assert SECRET not in text and SECRET[::-1] not in text


def test_keys_are_compared_in_constant_time(monkeypatch):
    import llmsim.auth as auth_mod

    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(auth_mod.hmac, "compare_digest", spy)
    cfg = AuthConfig.parse("f", {"api_keys": ["sk-b", GOOD]})
    cfg.check(GOOD)
    # every allowed key is compared, whichever matches (no early exit), through compare_digest
    assert sorted(calls) == sorted([(GOOD.encode(), b"sk-b"), (GOOD.encode(), GOOD.encode())])
    calls.clear()
    with pytest.raises(ApiError):
        cfg.check("sk-llmsim-good-key-0002")
    assert len(calls) == 2


def test_non_ascii_keys_get_a_401_not_a_500():
    with run_server(latency_profile="instant", config={"auth": {"api_keys": [GOOD]}}) as url:
        for value in ("Bearer cl\u00e9", "Bearer \u00ff\u00fe"):
            r = requests.post(url + CHAT, json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
                              headers={"Authorization": value.encode("latin-1")})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
