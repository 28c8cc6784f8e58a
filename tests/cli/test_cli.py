"""The `llmsim` binary: start-up line, clean signals, one-line start-up errors, `profiles`."""

import os
import re
import signal
import subprocess
import sys

import pytest
import requests
import yaml

from llmsim.profiles import default_registry

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def llmsim(*args, **kw):
    return subprocess.run([sys.executable, "-m", "llmsim", *args], capture_output=True, text=True, timeout=60,
                          env=ENV, **kw)


def start(*args):
    p = subprocess.Popen([sys.executable, "-m", "llmsim", "serve", "--port", "0", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=ENV)
    line = p.stdout.readline()
    m = re.match(r"llmsim serving on (http://127\.0\.0\.1:\d+) \(generator (\S+), (.+)\)$", line.strip())
    assert m, line + p.stderr.read() if p.poll() is not None else line
    return p, m


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_one_line_and_stops_cleanly(sig):
    p, m = start("--latency-profile", "fast", "--generator", "echo")
    try:
        url = m.group(1)
        assert m.group(2) == "echo" and "profile fast for every model" in m.group(3)
        r = requests.post(url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": [
            {"role": "user", "content": "ping pong"}]})
        assert r.json()["choices"][0]["message"]["content"] == "ping pong"
    finally:
        p.send_signal(sig)
        assert p.wait(timeout=10) == 0
    assert "Traceback" not in p.stderr.read()


def test_env_variables_configure_serve(tmp_path):
    (tmp_path / "extra.yaml").write_text("profiles:\n  - name: mine\n    models: [my-model]\n"
                                         "    ttft: {mean_ms: 0}\n    itl: {mean_ms: 0}\n")
    env = {**ENV, "LLMSIM_PROFILES_DIR": str(tmp_path), "LLMSIM_GENERATOR": "sequence",
           "LLMSIM_TARGET_TOKENS": "5"}
    p = subprocess.Popen([sys.executable, "-m", "llmsim", "serve", "--port", "0"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = re.search(r"(http://\S+)", p.stdout.readline()).group(1)
        r = requests.post(url + "/v1/chat/completions", json={"model": "my-model", "messages": [
            {"role": "user", "content": "count"}]}).json()
        assert r["usage"]["completion_tokens"] == 5 and r["choices"][0]["message"]["content"].startswith("1 2 3")
    finally:
        p.terminate()
        p.wait(timeout=10)


@pytest.mark.parametrize("content,key,reason", [
    ("profiles:\n  - name: bad\n    ttft: {mean_ms: 5}\n", "profiles[bad].itl", "is required"),
    ("profiles:\n  - name: bad\n    ttft: {distribution: gamma, mean_ms: 5}\n    itl: {mean_ms: 1}\n",
     "profiles[bad].ttft.distribution", "must be one of"),
    ("profiles:\n  - name: bad\n    ttft: {mean_ms: -5}\n    itl: {mean_ms: 1}\n", "profiles[bad].ttft.mean_ms",
     ">= 0"),
    ("profiles:\n  - name: bad\n    encoding: p50k\n    ttft: {mean_ms: 5}\n    itl: {mean_ms: 1}\n",
     "profiles[bad].encoding", "must be one of"),
    ("profiles:\n  - name: bad\n    ttft: {mean_ms: 5}\n    itl: {mean_ms: 1}\n    slo: {ttft_p42_ms: 3}\n",
     "profiles[bad].slo.ttft_p42_ms", "unknown SLO key"),
    ("profiles: {}\n", "profiles", "must be a list"),
])
def test_malformed_profile_stops_startup_with_one_line(tmp_path, content, key, reason):
    f = tmp_path / "broken.yaml"
    f.write_text(content)
    r = llmsim("serve", "--port", "0", "--profiles-dir", str(tmp_path))
    assert r.returncode == 2
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr and len(err.splitlines()) == 1
    assert str(f) in err and key in err and reason in err


def test_bad_config_and_unknown_forced_profile(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("port: 12\ngenerator: haiku\n")
    r = llmsim("serve", "--config", str(f))
    assert r.returncode == 2 and str(f) in r.stderr and "generator" in r.stderr and "unknown generator" in r.stderr
    r = llmsim("serve", "--latency-profile", "nope", "--port", "0")
    assert r.returncode == 2 and "latency_profile" in r.stderr and "no profile named 'nope'" in r.stderr
    assert "Traceback" not in r.stderr


def test_port_in_use_is_one_line():
    p, m = start("--latency-profile", "instant")
    try:
        port = m.group(1).rsplit(":", 1)[1]
        r = llmsim("serve", "--port", port)
        assert r.returncode == 2 and "cannot start" in r.stderr and "Traceback" not in r.stderr
    finally:
        p.terminate()
        p.wait(timeout=10)


def test_profiles_table_lists_every_profile():
    r = llmsim("profiles")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["PROFILE", "TTFT"]
    names = {ln.split()[0] for ln in lines[1:]}
    assert names == set(default_registry().names())
    gpt5 = next(ln for ln in lines if ln.startswith("gpt-5 "))
    assert "600±150" in gpt5 and "gpt-5.1-codex-max" in gpt5


def test_profiles_show_prints_resolved_yaml():
    r = llmsim("profiles", "show", "claude-sonnet-4-5-20250929")
    doc = yaml.safe_load(r.stdout)
    assert doc["name"] == "claude-sonnet" and doc["ttft"]["mean_ms"] == 500 and doc["encoding"] == "cl100k_base"
    r = llmsim("profiles", "show", "nope")
    assert r.returncode == 2 and "no profile covers 'nope'" in r.stderr
