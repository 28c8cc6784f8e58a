"""Config mistakes in `rate_limits:` and `auth:` are reported by path, never by value (an API key
must not reach stderr or a response), and a tier reference that is a list or a mapping is a
one-line start-up error (exit 2) and a 400 from POST /llmsim/config, never a TypeError."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests
import yaml

from llmsim.testing import run_server

SECRET = "sk-live-7f3a9c2e1b5d4a8f"
TOKEN = "admin-token-for-tests"

BAD_SECTIONS = {
    "api key as a rate_limits setting": {"rate_limits": {"rpm": 5, SECRET: "default"}},
    "api key as a tier": {"rate_limits": {"tiers": {SECRET: "pro"}}},
    "api key inside a tier": {"rate_limits": {"tiers": {"pro": {"rpm": 5, SECRET: 1}}}},
    "api key as a limit value": {"rate_limits": {"tiers": {"pro": {"rpm": SECRET}}}},
    "api key and tier swapped": {"rate_limits": {"tiers": {"pro": {"rpm": 5}}, "keys": {"pro": SECRET}}},
    "tier name is a list": {"rate_limits": {"tiers": {"pro": {"rpm": 5}}, "keys": {SECRET: ["pro"]}}},
    "tier name is a mapping": {"rate_limits": {"tiers": {"pro": {"rpm": 5}}, "keys": {SECRET: {"tier": "pro"}}}},
    "default tier is a list": {"rate_limits": {"tiers": {"pro": {"rpm": 5}}, "default_tier": ["pro"]}},
    "default tier is a mapping": {"rate_limits": {"tiers": {"pro": {"rpm": 5}}, "default_tier": {"pro": 1}}},
    "api key as an auth setting": {"auth": {SECRET: True}},
    "api key list misplaced in auth": {"auth": {"api_keys": [SECRET], "sk-other-1234567890abcdef": [SECRET]}},
    "api key that is not a string": {"auth": {"api_keys": [SECRET, {"key": SECRET}]}},
}


@pytest.mark.parametrize("case", list(BAD_SECTIONS))
def test_startup_error_is_one_line_exit_2_without_the_secret(tmp_path, case):
    path = tmp_path / "llmsim.yaml"
    path.write_text(yaml.safe_dump(BAD_SECTIONS[case]))
    r = subprocess.run([sys.executable, "-m", "llmsim", "serve", "--port", "0", "--config", str(path)],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"llmsim: {path}: "), r.stderr
    section = next(iter(BAD_SECTIONS[case]))
    assert f": {section}" in lines[0]  # the path names the section (and more, where it can)
    assert "7f3a9c2e" not in r.stderr + r.stdout and "Traceback" not in r.stderr


@pytest.mark.parametrize("case", [c for c in BAD_SECTIONS if "rate_limits" in BAD_SECTIONS[c]])
def test_runtime_change_is_a_400_without_the_secret(case):
    with run_server(latency_profile="instant", admin_token=TOKEN) as url:
        r = requests.post(url + "/llmsim/config", json=BAD_SECTIONS[case],
                          headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"].startswith("rate_limits") and "Nothing was changed" in err["message"]
        assert "7f3a9c2e" not in r.text
        assert requests.get(url + "/llmsim/config", headers={"Authorization": f"Bearer {TOKEN}"}).json()[
            "rate_limits"] is None
