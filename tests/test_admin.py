"""POST /llmsim/config: runtime changes of error rates, rate limits and the forced profile."""

from __future__ import annotations

import requests

from llmsim.testing import run_server

CHAT = "/v1/chat/completions"
TOKEN = "admin-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def chat(url: str) -> requests.Response:
    return requests.post(url + CHAT, json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                                           "max_tokens": 5}, headers={"Authorization": "Bearer sk-user"})


def test_disabled_without_admin_token():
    with run_server(latency_profile="instant") as url:
        r = requests.post(url + "/llmsim/config", json={"errors": {"server_error": 1}})
        assert r.status_code == 404 and "--admin-token" in r.json()["error"]["message"]
        assert chat(url).status_code == 200


def test_requires_the_token():
    with run_server(latency_profile="instant", admin_token=TOKEN) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": TOKEN}):
            r = requests.post(url + "/llmsim/config", json={"errors": {"server_error": 1}}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
        assert chat(url).status_code == 200
        assert requests.get(url + "/llmsim/config").status_code == 401


def test_changes_error_rates_rate_limits_and_profile_at_runtime():
    with run_server(latency_profile="instant", admin_token=TOKEN, seed=1) as url:
        assert chat(url).status_code == 200
        r = requests.post(url + "/llmsim/config", headers=AUTH, json={"errors": {"server_error": 1.0}})
        assert r.status_code == 200 and r.json()["errors"]["server_error"] == 1.0
        assert chat(url).status_code == 500
        requests.post(url + "/llmsim/config", headers=AUTH, json={"errors": None}).raise_for_status()
        assert chat(url).status_code == 200

        assert "x-ratelimit-limit-requests" not in chat(url).headers
        r = requests.post(url + "/llmsim/config", headers=AUTH,
                          json={"rate_limits": {"rpm": 1, "keys": {"sk-user-000000001": "default"}}})
        assert r.json()["rate_limits"] == {"tiers": {"default": {"rpm": 1}}, "default_tier": "default",
                                           "keys": {"sk-**********0001": "default"}}
        first, second = chat(url), chat(url)
        assert (first.status_code, second.status_code) == (200, 429)
        assert first.headers["x-ratelimit-limit-requests"] == "1"

        r = requests.post(url + "/llmsim/config", headers=AUTH, json={"latency_profile": "fast"})
        assert r.json()["latency_profile"] == "fast"
        assert requests.get(url + "/llmsim/config", headers=AUTH).json() == r.json()


def test_a_bad_change_leaves_the_running_config_untouched():
    with run_server(latency_profile="instant", admin_token=TOKEN,
                    config={"errors": {"rate_limit": 0.5}, "rate_limits": {"rpm": 100}}) as url:
        before = requests.get(url + "/llmsim/config", headers=AUTH).json()
        for change, param in (
            # the first two sections are valid; the third is not, so none may apply
            ({"errors": {"server_error": 1}, "rate_limits": {"rpm": 5}, "latency_profile": "no-such"},
             "latency_profile"),
            ({"errors": {"server_error": 2}}, "errors.server_error"),
            ({"errors": {"server_error": 0.6, "timeout": 0.6}}, "errors"),
            ({"rate_limits": {"rpm": 0}}, "rate_limits.rpm"),
            ({"auth": {"api_keys": ["x"]}}, "auth"),
        ):
            r = requests.post(url + "/llmsim/config", headers=AUTH, json=change)
            assert r.status_code == 400, change
            err = r.json()["error"]
            assert err["param"] == param and err["type"] == "invalid_request_error"
            assert requests.get(url + "/llmsim/config", headers=AUTH).json() == before
        r = requests.post(url + "/llmsim/config", headers=AUTH, data=b"[1, 2]")
        assert r.status_code == 400
        assert requests.get(url + "/llmsim/config", headers=AUTH).json() == before


def test_non_json_numbers_cannot_break_the_running_config():
    # Python's JSON parser accepts NaN and Infinity; neither may become a rate or a limit.
    with run_server(latency_profile="instant", admin_token=TOKEN) as url:
        for raw in (b'{"errors": {"rate_limit": NaN}}', b'{"rate_limits": {"rpm": Infinity}}',
                    b'{"errors": {"timeout_after_ms": Infinity}}'):
            r = requests.post(url + "/llmsim/config", headers={**AUTH, "Content-Type": "application/json"}, data=raw)
            assert r.status_code == 400, raw
        assert chat(url).status_code == 200
