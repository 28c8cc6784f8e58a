"""`llmsim replay`: recorded answers for matching requests, on recorded timing; the generator or a 404 for the rest."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import anthropic
import openai
import pytest
import requests

from llmsim.cli.proxy import start_proxy
from llmsim.replay import ReplayBook, ReplayError, match_key
from llmsim.testing import start_server

MSGS = [{"role": "user", "content": "Tell me a story."}]
ERRORS = {"errors": {"models": {"gpt-4o-mini*": {"rate_limit": 1.0}, "gpt-4.1-nano*": {"midstream": 1.0}}}}


def record(tmp_path, send, **server) -> str:
    """Run `send(proxy_url)` through a recording proxy in front of llmsim; the record file."""
    out = str(tmp_path / "rec.jsonl")
    srv = start_server(**{"latency_profile": "fast", **server})
    px = start_proxy(srv.url, out)
    try:
        send(px.url)
    finally:
        px.stop()
        srv.stop()
    return out


def replay_server(path: str, **kw):
    return start_server(latency_profile="instant", replay=ReplayBook.load([path], **kw))


def chat(url: str, **body) -> requests.Response:
    return requests.post(url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": MSGS, **body}, timeout=10)


def test_exact_match_replays_body_and_stream_with_sdks(tmp_path):
    got = {}

    def send(url):
        oa = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        got["body"] = oa.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=8).to_dict()
        got["chunks"] = [c.to_dict() for c in oa.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=8,
                                                                         stream=True)]
        an = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
        got["events"] = [e.to_dict() for e in an.messages.create(model="claude-haiku-4-5", max_tokens=8,
                                                                 messages=MSGS, stream=True)]

    path = record(tmp_path, send)
    srv = replay_server(path)
    try:
        oa = openai.OpenAI(base_url=srv.url + "/v1", api_key="other-key", max_retries=0)
        assert oa.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=8).to_dict() == got["body"]
        assert [c.to_dict() for c in oa.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=8,
                                                                stream=True)] == got["chunks"]
        an = anthropic.Anthropic(base_url=srv.url, api_key="k", max_retries=0)
        assert [e.to_dict() for e in an.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=MSGS,
                                                        stream=True)] == got["events"]
    finally:
        srv.stop()


def test_unmatched_requests_fall_back_to_the_generator_or_404_with_strict(tmp_path):
    path = record(tmp_path, lambda url: chat(url, max_tokens=4))
    srv = replay_server(path)
    try:
        recorded = chat(srv.url, max_tokens=4).json()
        other = chat(srv.url, max_tokens=9).json()  # another body: generated
        assert other["usage"]["completion_tokens"] == 9 and other["id"] != recorded["id"]
    finally:
        srv.stop()
    srv = replay_server(path, strict=True)
    try:
        assert chat(srv.url, max_tokens=4).json()["id"] == recorded["id"]
        r = chat(srv.url, max_tokens=9)
        assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
        assert "no recording matches POST /v1/chat/completions" in r.json()["error"]["message"]
        r = requests.post(srv.url + "/v1/messages", json={"model": "claude-haiku-4-5", "max_tokens": 3,
                                                          "messages": MSGS})
        assert r.status_code == 404 and r.json()["type"] == "error" and r.json()["error"]["type"] == "not_found_error"
        assert requests.get(srv.url + "/health").status_code == 200  # llmsim's own endpoints are never replayed
    finally:
        srv.stop()


def test_match_on_fields_and_recordings_of_one_key_answer_in_turn(tmp_path):
    path = record(tmp_path, lambda url: [chat(url, max_tokens=3) for _ in range(2)])
    first, second = (json.loads(line)["response"]["body"]["id"] for line in open(path, encoding="utf-8"))
    srv = replay_server(path, fields=["model", "messages"])
    try:
        ids = [chat(srv.url, max_tokens=n).json()["id"] for n in (3, 50, 7)]  # max_tokens is not matched on
        assert ids == [first, second, first]
        # stream always takes part: a non-streamed recording does not answer a stream
        r = requests.post(srv.url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": MSGS,
                                                                   "stream": True}, stream=True)
        assert "text/event-stream" in r.headers["content-type"]
        assert chat(srv.url, messages=[{"role": "user", "content": "else"}]).json()["id"] not in (first, second)
    finally:
        srv.stop()


def test_recorded_errors_and_cut_streams_replay_as_such(tmp_path):
    def send(url):
        chat(url, model="gpt-4o-mini", max_tokens=3)  # 429 with retry-after
        try:
            with requests.post(url + "/v1/chat/completions", stream=True, json={
                    "model": "gpt-4.1-nano", "messages": MSGS, "max_tokens": 30, "stream": True}) as r:
                list(r.iter_lines())
        except requests.RequestException:
            pass

    path = record(tmp_path, send, config=ERRORS)
    lines = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert lines[0]["response"]["status"] == 429 and lines[1]["end"] == "upstream_error"
    srv = replay_server(path)
    try:
        r = chat(srv.url, model="gpt-4o-mini", max_tokens=3)
        assert r.status_code == 429 and r.json() == lines[0]["response"]["body"]
        assert r.headers["retry-after"] == lines[0]["response"]["headers"]["retry-after"]
        got, complete = [], True
        try:
            with requests.post(srv.url + "/v1/chat/completions", stream=True, json={
                    "model": "gpt-4.1-nano", "messages": MSGS, "max_tokens": 30, "stream": True}) as r:
                for line in r.iter_lines(decode_unicode=True):
                    if line.startswith("data: "):
                        got.append(line[6:])
        except requests.RequestException:
            complete = False
        assert not complete and "[DONE]" not in got
        assert got == [e["data"] for e in lines[1]["response"]["events"]]
    finally:
        srv.stop()


def test_replayed_stream_keeps_recorded_gaps(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("profiles:\n  - name: gappy\n    ttft: {distribution: normal, mean_ms: 120, stddev_ms: 40}\n"
                    "    itl: {distribution: normal, mean_ms: 40, stddev_ms: 20}\n")

    def send(url):
        with requests.post(url + "/v1/chat/completions", stream=True, json={
                "model": "gpt-4o", "messages": MSGS, "max_tokens": 8, "stream": True}) as r:
            list(r.iter_lines())

    path = record(tmp_path, send, latency_profile="gappy", profile_files=[str(prof)])
    events = json.loads(open(path, encoding="utf-8").readline())["response"]["events"]
    recorded = [e["t_ms"] for e in events]
    assert recorded[-1] - recorded[0] > 200  # 8 tokens of 40±20 ms: gaps worth keeping
    srv = replay_server(path)
    try:
        t0 = time.monotonic()
        arrivals = []
        with requests.post(srv.url + "/v1/chat/completions", stream=True, json={
                "model": "gpt-4o", "messages": MSGS, "max_tokens": 8, "stream": True}) as r:
            for line in r.iter_lines(chunk_size=1, decode_unicode=True):
                if line.startswith("data: "):
                    arrivals.append((time.monotonic() - t0) * 1000)
    finally:
        srv.stop()
    assert len(arrivals) == len(recorded)
    content = [i for i, e in enumerate(events) if '"content":"' in e["data"] and '"content":""' not in e["data"]]
    # Absolute deadlines from arrival: every content event lands at its recorded time plus one constant offset
    # (the request's trip), so the recorded gaps are kept. Medians: one late wake-up on a busy machine moves one
    # event, not the others.
    offsets = sorted(arrivals[i] - recorded[i] for i in content)
    median = offsets[len(offsets) // 2]
    spread = sorted(abs(o - median) for o in offsets)[len(offsets) // 2]
    assert -5 < median < 25 and spread < 5, (offsets, recorded)


def test_match_keys():
    body = {"model": "m", "messages": MSGS, "max_tokens": 3}
    assert match_key("post", "/openai/v1/chat/completions", body) == match_key("POST", "/v1/chat/completions",
                                                                                dict(reversed(body.items())))
    assert match_key("POST", "/v1/chat/completions", body) != match_key("POST", "/v1/chat/completions",
                                                                         {**body, "max_tokens": 4})
    fields = ["model", "messages"]
    assert match_key("POST", "/v1/x", body, fields) == match_key("POST", "/v1/x", {**body, "max_tokens": 4}, fields)
    assert match_key("POST", "/v1/x", body, fields) != match_key("POST", "/v1/x", {**body, "stream": True}, fields)


def test_bad_record_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"llmsim": "record/1", "request": {"method": "POST", "path": "/v1/x"}, "response": null}\n'
                   "not json\n")
    with pytest.raises(ReplayError, match=r"bad.jsonl:2: not JSON"):
        ReplayBook.load([str(bad)])
    other = tmp_path / "other.jsonl"
    other.write_text('{"llmsim": "requests/1"}\n')
    with pytest.raises(ReplayError, match=r"other.jsonl:1: not an `llmsim record` line"):
        ReplayBook.load([str(other)])
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\n\xff\xfe\x00garbage\n")
    with pytest.raises(ReplayError, match=r"binary.jsonl:2: not UTF-8 text \(byte 0xff at column 1\)$"):
        ReplayBook.load([str(binary)])
    for command in (["replay", str(binary), "--port", "0"], ["profile", "fit", str(binary)]):
        r = subprocess.run([sys.executable, "-m", "llmsim", *command], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "binary.jsonl:2: not UTF-8 text" in r.stderr


def test_replay_command_line(tmp_path):
    path = record(tmp_path, lambda url: chat(url, max_tokens=2))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "llmsim", "replay", path, "--match", "model,messages", "--strict",
                          "--port", "0", "--latency-profile", "instant"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = p.stdout.readline()
        assert "1 recordings under 1 keys, matched on fields model,messages (and stream); unmatched: 404" in first
        url = re.search(r"serving on (http://\S+)", p.stdout.readline()).group(1)
        assert chat(url, max_tokens=99).json()["usage"]["completion_tokens"] == 2
        assert chat(url, model="gpt-4.1").status_code == 404
    finally:
        p.terminate()
        p.wait(timeout=10)
    r = subprocess.run([sys.executable, "-m", "llmsim", "replay", str(tmp_path / "missing.jsonl")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "missing.jsonl: cannot read" in r.stderr and "Traceback" not in r.stderr
