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
