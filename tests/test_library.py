"""The public library API works as docs/library.md shows, in a plain (unpatched) process too."""

import subprocess
import sys

SCRIPT = r'''
import json, urllib.request
import llmsim
from llmsim import count_tokens, LatencyProfile, LoremGenerator, TokenStreamBuilder, get_encoding
assert count_tokens("hello world", "gpt-4o") == 2
assert LatencyProfile.from_model("gpt-5").ttft.mean_ms == 600
text = LoremGenerator(100).generate({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
assert count_tokens(text, "gpt-4o") == 100
assert TokenStreamBuilder(get_encoding("o200k_base")).build(text, max_tokens=10).output_tokens == 10
from gevent import monkey
assert not monkey.is_module_patched("socket")
with llmsim.testing.run_server(latency_profile="fast") as url:
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps({"model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).encode(),
        headers={"Content-Type": "application/json"})
    body = json.load(urllib.request.urlopen(req, timeout=10))
print(body["usage"]["completion_tokens"])
'''


def test_library_in_an_unpatched_process():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "3"


UNPATCHED = r'''
import json, sys, threading, time, urllib.request
from gevent import monkey
import llmsim, llmsim.cli, llmsim.cli.server, llmsim.cli.handlers, llmsim.testing, llmsim.loadtest.metrics
import llmsim.__main__
assert not any(monkey.is_module_patched(m) for m in ("socket", "threading", "time", "ssl", "select")), \
    "importing llmsim patched the process"
real_sleep = time.sleep
with llmsim.testing.run_server(latency_profile="fast", target_tokens=200) as url:
    assert threading.active_count() >= 2  # the server runs in its own thread, with its own hub
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    reply = json.load(urllib.request.urlopen(req, timeout=20))
    assert reply["usage"]["completion_tokens"] == 200, reply
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    stamps, events = [], []
    with urllib.request.urlopen(req, timeout=20) as resp:
        for line in resp:
            if line.startswith(b"data: "):
                stamps.append(time.monotonic() - t0)
                events.append(line[6:].strip())
    assert events[-1] == b"[DONE]" and len(events) >= 200, len(events)
    assert stamps[-1] - stamps[0] > 0.1  # paced (200 tokens at 1 ms), not sent in one burst
    with llmsim.testing.run_server(latency_profile="instant") as url2:  # two servers, two threads
        assert url2 != url and urllib.request.urlopen(url2 + "/health", timeout=10).status == 200
assert not monkey.is_module_patched("socket") and time.sleep is real_sleep
print("ok", len(events))
'''


def test_run_server_in_a_process_that_never_patches():
    r = subprocess.run([sys.executable, "-c", UNPATCHED], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok ") and "Traceback" not in r.stderr


ENTRY = r'''
import sys
from gevent import monkey
import llmsim.__main__ as entry
assert not monkey.is_module_patched("socket")
sys.argv = ["llmsim", "profiles"]
assert entry.main() == 0
assert monkey.is_module_patched("socket")
'''


def test_the_console_script_patches_before_running_the_cli():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "llmsim"]
    assert script.value.split()[0] == "llmsim.__main__:main"
    r = subprocess.run([sys.executable, "-c", ENTRY], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "instant" in r.stdout


SERVER_PER_TEST = r'''
import json, os, socket, time, urllib.request
import llmsim.testing
def fds():
    return len(os.listdir("/proc/self/fd"))
with llmsim.testing.run_server(latency_profile="instant"):
    pass
before = fds()
for _ in range(30):  # a suite that starts a server per test
    with llmsim.testing.run_server(latency_profile="instant") as url:
        assert urllib.request.urlopen(url + "/health", timeout=10).status == 200
after = fds()
# A stream still open when its server stops: its connection closes after the grace, the client is not left waiting.
server = llmsim.testing.start_server(latency_profile="fast", target_tokens=3000)
sock = socket.create_connection((server.url.split("//")[1].split(":")[0], int(server.url.rsplit(":", 1)[1])))
body = json.dumps({"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: %d\r\n\r\n" % len(body) + body)
assert sock.recv(65536)
sock.settimeout(10)
t0 = time.monotonic()
server.stop()
while sock.recv(65536):
    pass
print(before, after, round(time.monotonic() - t0, 2))
'''


def test_a_server_per_test_leaks_nothing_and_stop_closes_open_streams():
    """In an unpatched process each server's thread has its own hub: its event loop's descriptors go with it
    (they leaked two per server, so a long suite ran out), and stop() closes a stream still being written
    after its grace second, so the client sees the end instead of waiting for its own timeout."""
    r = subprocess.run([sys.executable, "-c", SERVER_PER_TEST], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    before, after, closed_in = r.stdout.split()
    assert int(after) - int(before) <= 2, (before, after)
    assert float(closed_in) < 5


def test_a_config_dict_keeps_what_no_keyword_overrides(tmp_path):
    """run_server's keywords override the config as flags do; those left out leave it alone."""
    import requests

    from llmsim.testing import run_server

    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    with run_server(config={"generator": "fixed:from the config", "latency_profile": "instant"}) as url:
        assert requests.post(url + "/v1/chat/completions", json=body, timeout=10).json()["choices"][0][
            "message"]["content"] == "from the config"
    path = tmp_path / "c.yaml"
    path.write_text("generator: fixed:from the file\nlatency_profile: instant\n")
    with run_server(config=str(path), generator="fixed:from the keyword") as url:
        assert requests.post(url + "/v1/chat/completions", json=body, timeout=10).json()["choices"][0][
            "message"]["content"] == "from the keyword"


def test_one_string_is_one_stop_sequence_and_one_path_and_a_body_works_for_reasoning(tmp_path):
    """Where an API takes a string or a list, the library takes one string as one item (not its characters)."""
    import pytest

    from llmsim import LoremGenerator, TokenStreamBuilder, get_encoding
    from llmsim.profiles import ProfileRegistry
    from llmsim.validation import ValidationError

    builder = TokenStreamBuilder(get_encoding("o200k_base"))
    assert builder.build("some text here", stop="te").pieces == builder.build("some text here", stop=["te"]).pieces
    assert "".join(builder.build("some text here", stop="te").pieces) == "some "
    with pytest.raises(ValidationError, match=r"^/no/such/dir: profiles_dir: is not a directory$"):
        ProfileRegistry.load(extra_dirs="/no/such/dir")
    own = tmp_path / "own.yaml"
    own.write_text("profiles:\n  - name: own\n    models: [own-model]\n    ttft: {distribution: constant, mean_ms: 5}\n"
                   "    itl: {distribution: constant, mean_ms: 1}\n")
    assert ProfileRegistry.load(extra_files=str(own)).resolve("own-model").name == "own"
    from llmsim import count_tokens

    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
    assert count_tokens(LoremGenerator(10).reasoning(body, tokens=7), "gpt-4o") == 7  # a body, as generate() takes
