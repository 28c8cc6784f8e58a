"""Workload sources (workloads.py): length distributions, exact-length text, dataset and trace files, sessions,
shared prefixes, exact output lengths, cached tokens, and what the report says about them.

The end-to-end tests run Locust in-process (Environment, a local runner) against llmsim or the minimal
SSE server; the headless subprocess runs are in test_workload_runs.py.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import pytest

from llmsim.loadtest.adapters import ChatCompletionsAdapter, MessagesAdapter, Prompt, ResponsesAdapter
from llmsim.loadtest.aggregate import RunStats
from llmsim.loadtest.metrics import RequestRecord
from llmsim.loadtest.options import LoadTestSettings, OptionError
from llmsim.loadtest.report import counts_summary, workload_lines, workload_section
from llmsim.loadtest.sse import SseEvent
from llmsim.loadtest.workloads import (
    Spread,
    Work,
    WorkloadError,
    load_dataset,
    load_trace,
    refuses_exact_fields,
    words_for,
)
from llmsim.tokens import get_encoding

from .test_options import parse

REPO = Path(__file__).resolve().parents[2]
DATASETS = REPO / "datasets"


# --------------------------------------------------------------------------- length distributions

@pytest.mark.parametrize("text, kind, a, b", [
    ("128", "constant", 128, 0), ("200,50", "normal", 200, 50), ("normal:200, 50", "normal", 200, 50),
    ("lognormal:300,120", "lognormal", 300, 120), ("uniform:10,30", "uniform", 10, 30),
    ("constant:7", "constant", 7, 0),
])
def test_spread_forms(text, kind, a, b):
    s = Spread.parse(text)
    assert (s.kind, s.a, s.b) == (kind, a, b)
    assert Spread.parse(str(s)) == s  # the canonical text reads back the same


@pytest.mark.parametrize("text, reason", [
    ("0", "at least 1"), ("abc", "expected N"), ("uniform:30,10", "MIN <= MAX"), ("gamma:1,2", "unknown"),
    ("12.5", "whole numbers"), ("100,-5", "stddev"), ("uniform:5", "two numbers"), ("1,2,3", "expected N"),
    ("lognormal:0,5", "at least 1"), ("inf", "expected N"),
])
def test_spread_errors_say_why(text, reason):
    with pytest.raises(ValueError, match=reason):
        Spread.parse(text)


def test_seconds_spread_allows_zero_and_fractions():
    assert Spread.parse("0", integer=False).sample(random.Random(1)) == 0.0
    s = Spread.parse("uniform:0.5,1.5", integer=False)
    draws = [s.sample(random.Random(i)) for i in range(200)]
    assert 0.5 <= min(draws) and max(draws) <= 1.5 and len(set(draws)) > 100


@pytest.mark.parametrize("text, mean, sd", [("400,100", 400, 100), ("lognormal:300,150", 300, 150),
                                            ("uniform:100,300", 200, 200 / math.sqrt(12))])
def test_spread_draws_have_the_requested_mean_and_spread(text, mean, sd):
    s = Spread.parse(text)
    rng = random.Random(3)
    draws = [s.draw(rng) for _ in range(20000)]
    se = sd / math.sqrt(len(draws))
    assert abs(statistics.fmean(draws) - mean) < 4 * se + 0.5  # + rounding
    assert abs(statistics.pstdev(draws) - sd) < 0.05 * sd
    assert all(isinstance(d, int) and d >= 1 for d in draws)


# --------------------------------------------------------------------------- exact-length text

@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_word_text_has_exactly_n_tokens(encoding):
    enc = get_encoding(encoding)
    words = words_for(enc)
    rng = random.Random(5)
    for n in [1, 2, 3, 17, 128, 511, 512, 4000] + [rng.randrange(1, 3000) for _ in range(20)]:
        assert len(enc.encode_ordinary(words.text(n, rng))) == n
    # Blocks joined in any order stay exact too (trace prompts are built that way).
    text = "".join("".join(words.block("s", h, 64)[:k]) for h, k in [(1, 64), (9, 10), (1, 64), (4, 33)])
    assert len(enc.encode_ordinary(text)) == 64 + 10 + 64 + 33


# --------------------------------------------------------------------------- dataset files

def test_sample_datasets_load():
    jsonl = load_dataset(str(DATASETS / "sample.jsonl"))
    assert jsonl.format == "jsonl" and len(jsonl.entries) >= 24
    assert any(e.output_tokens for e in jsonl.entries) and any(e.output_tokens is None for e in jsonl.entries)
    assert any(len(e.messages) > 1 for e in jsonl.entries)
    share = load_dataset(str(DATASETS / "sharegpt-sample.json"))
    assert share.format == "sharegpt" and len(share.entries) >= 15 and share.skipped == 1
    assert all(e.conversation and e.reply for e in share.entries)
    assert max(len(e.later) for e in share.entries) >= 2
    assert len(share.sha256) == 64


def test_jsonl_line_forms(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join([
        '"plain"', '{"prompt": "p", "output_tokens": 12}',
        '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], "output_tokens": 3}',
        '[{"role": "user", "content": "bare"}]',
        '{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello there"}]}', ""]))
    d = load_dataset(str(f))
    assert d.format == "mixed"
    assert [e.messages[-1]["content"] for e in d.entries] == ["plain", "p", "u", "bare", "hi"]
    assert [e.output_tokens for e in d.entries] == [None, 12, 3, None, None]
    assert d.entries[4].reply == "hello there"


def test_sharegpt_roles_and_turns(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps([
        {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "one"},
                           {"from": "gpt", "value": "r1"}, {"from": "human", "value": "two"},
                           {"from": "gpt", "value": "r2"}, {"from": "human", "value": "three"}]},
        {"conversations": [{"from": "gpt", "value": "I speak first"}, {"from": "human", "value": "q"}]},
    ]))
    d = load_dataset(str(f))
    a, b = d.entries
    assert a.messages == ({"role": "system", "content": "Be kind."}, {"role": "user", "content": "one"})
    assert a.reply == "r1" and [(t.text, t.reply) for t in a.later] == [("two", "r2"), ("three", None)]
    assert b.messages == ({"role": "user", "content": "q"},) and b.reply is None


@pytest.mark.parametrize("name, content, where, reason", [
    ("d.jsonl", '"ok"\n{bad json', ":2:", "invalid JSON"),
    ("d.jsonl", '"ok"\n{"x": 1}', ":2:", "expected a string"),
    ("d.jsonl", '{"prompt": "p", "output_tokens": 0}', ":1:", "output_tokens"),
    ("d.jsonl", '{"prompt": ""}', ":1:", "non-empty"),
    ("d.jsonl", '{"messages": "hi"}', ":1:", "\"messages\" must be"),
    ("d.jsonl", '{"conversations": [{"from": "alien", "value": "x"}]}', ":1:", "expected human, gpt"),
    ("d.jsonl", '{"conversations": [{"from": "human"}]}', ":1:", "conversations[0]"),
    ("d.jsonl", "", "", "no prompts"),
    ("d.json", '[\n {"conversations": [{"from": "human", "value": "a"}]},\n {"conversations": 5}\n]', ":3:",
     "must be a list"),
    ("d.json", '[\n {"conversations": []},\n {oops}\n]', ":3:", "invalid JSON"),
    ("d.json", '{"conversations": []}', ":1:", "expected a JSON list"),
    ("d.json", '[{"conversations": [{"from": "gpt", "value": "x"}]}]', "", "no prompts in the file (1 conv"),
])
def test_dataset_errors_name_file_line_and_reason(tmp_path, name, content, where, reason):
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(WorkloadError) as e:
        load_dataset(str(f))
    msg = str(e.value)
    assert "\n" not in msg and reason in msg and msg.startswith(f"{f}{where}")


def test_dataset_is_local_only():
    with pytest.raises(WorkloadError, match="local files only"):
        load_dataset("https://example.com/sharegpt.json")


def test_trace_file(tmp_path):
    t = load_trace(str(DATASETS / "mooncake-sample.jsonl"))
    assert len(t.entries) == 40 and all(a.t_ms <= b.t_ms for a, b in zip(t.entries, t.entries[1:], strict=False))
    f = tmp_path / "t.jsonl"
    f.write_text('{"timestamp": 5, "input_length": 10, "output_length": 2, "hash_ids": [0]}\n'
                 '{"timestamp": 0, "input_length": 3, "output_length": 1}\n')
    t = load_trace(str(f))
    assert [e.t_ms for e in t.entries] == [0, 5] and t.entries[0].hash_ids == ()


@pytest.mark.parametrize("line, reason", [
    ('{"input_length": 1, "output_length": 1}', '"timestamp" is missing'),
    ('{"timestamp": -1, "input_length": 1, "output_length": 1}', "milliseconds >= 0"),
    ('{"timestamp": 0, "input_length": 0, "output_length": 1}', '"input_length" must be'),
    ('{"timestamp": 0, "input_length": 1, "output_length": 1.5}', '"output_length" must be'),
    ('{"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": [1, "a"]}', '"hash_ids" must be'),
    ("[1]", "expected an object"),
])
def test_trace_errors_name_the_line(tmp_path, line, reason):
    f = tmp_path / "t.jsonl"
    f.write_text('{"timestamp": 0, "input_length": 1, "output_length": 1}\n' + line + "\n")
    with pytest.raises(WorkloadError, match=reason) as e:
        load_trace(str(f))
    assert str(e.value).startswith(f"{f}:2:")


# --------------------------------------------------------------------------- options

def settings(*args: str) -> LoadTestSettings:
    return LoadTestSettings.from_options(parse(*args, "--workload-seed", "1"))


@pytest.mark.parametrize("args, needle", [
    (["--trace", str(DATASETS / "mooncake-sample.jsonl"), "--max-tokens", "5"], "excludes --max-tokens"),
    (["--trace", str(DATASETS / "mooncake-sample.jsonl"), "--turns", "2"], "excludes --turns"),
    (["--dataset", str(DATASETS / "sample.jsonl"), "--prompt-tokens", "5"], "exclude each other"),
    (["--dataset", str(DATASETS / "sample.jsonl"), "--prompts", str(DATASETS / "sample.jsonl")],
     "exclude each other"),
    (["--think-time", "1"], "--turns N"),
    (["--prefix-groups", "3"], "--shared-prefix-tokens"),
])
def test_workload_options_that_do_not_fit(args, needle):
    with pytest.raises(OptionError, match=needle):
        settings(*args)


@pytest.mark.parametrize("args, needle", [
    (["--prompt-tokens", "uniform:9,3"], "--prompt-tokens"), (["--max-tokens", "x"], "--max-tokens"),
    (["--think-time", "-1"], "--think-time"), (["--trace-speed", "0"], "--trace-speed"),
    (["--dataset", "nope.jsonl"], "nope.jsonl: cannot read"), (["--exact-output", "maybe"], "--exact-output"),
])
def test_bad_workload_values_are_one_line(capsys, args, needle):
    with pytest.raises(SystemExit):
        parse(*args)
    assert needle in capsys.readouterr().err


def test_option_values_stay_plain():
    opts = parse("--prompt-tokens", "lognormal:300,100", "--max-tokens", "uniform:5,9", "--turns", "3",
                 "--think-time", "0.5,0.1", "--shared-prefix-tokens", "64", "--prefix-groups", "2")
    assert json.dumps(vars(opts))  # msgpack/JSON-safe: Locust ships them to workers
    s = LoadTestSettings.from_options(opts)
    spec = s.workload.spec
    assert (str(spec.prompt_tokens), str(spec.max_tokens), spec.turns, spec.shared_prefix_tokens) == \
        ("lognormal:300,100", "uniform:5,9", 3, 64)
    assert s.max_tokens == 7 and spec.max_tokens_given


# --------------------------------------------------------------------------- work streams

def test_synthetic_prompts_are_new_text_of_the_drawn_length():
    s = settings("--prompt-tokens", "uniform:20,40", "--max-tokens", "30,5")
    enc = get_encoding(s.encoding)
    works = s.workload.stream(random.Random(1))
    seen = set()
    for _ in range(50):
        w = works.next()
        (msg,) = w.prompt.messages
        n = len(enc.encode_ordinary(msg["content"]))
        assert 20 <= n <= 40 and w.prompt.prompt_tokens == n + 3 + 1 + 3  # chat framing: message, role, priming
        assert w.length_asked and w.turn == 0 and w.prompt.cache_after == ()
        seen.add(msg["content"])
    assert len(seen) == 50


def test_default_max_tokens_is_a_cap_not_an_asked_length():
    s = settings()
    w = s.workload.stream(random.Random(1)).next()
    assert w.max_tokens == 64 and not w.length_asked
    assert s.workload.exact_fields("chat", w) is None
    assert settings("--exact-output", "on").workload.exact_fields("chat", w) == {"ignore_eos": True, "min_tokens": 64}
    asked = settings("--max-tokens", "64")
    w = asked.workload.stream(random.Random(1)).next()
    assert asked.workload.exact_fields("chat", w) == {"ignore_eos": True, "min_tokens": 64}
    assert asked.workload.exact_fields("completions", w) is not None
    assert asked.workload.exact_fields("messages", w) is None and asked.workload.exact_fields("responses", w) is None
    assert settings("--max-tokens", "64", "--exact-output", "off").workload.exact_fields("chat", w) is None


def test_shared_prefixes_come_from_the_groups():
    s = settings("--shared-prefix-tokens", "100", "--prefix-groups", "3", "--prompt-tokens", "10")
    enc = get_encoding(s.encoding)
    works = s.workload.stream(random.Random(2))
    systems = set()
    for _ in range(60):
        w = works.next()
        system, user = w.prompt.messages
        assert system["role"] == "system" and len(enc.encode_ordinary(system["content"])) == 100
        assert w.prompt.cache_after == (0,)
        assert w.prompt.prompt_tokens == (100 + 4) + (10 + 4) + 3
        systems.add(system["content"])
    assert len(systems) == 3
    # Every process builds the same groups from the seed.
    other = settings("--shared-prefix-tokens", "100", "--prefix-groups", "3", "--prompt-tokens", "10")
    assert set(other.workload.prefixes) == systems


def test_sessions_carry_the_history_and_end_on_failure():
    s = settings("--turns", "3", "--prompt-tokens", "10", "--max-tokens", "5", "--think-time", "0.25")
    enc = get_encoding(s.encoding)
    works = s.workload.stream(random.Random(4))
    w1 = works.next()
    assert (w1.turn, w1.think_s, len(w1.prompt.messages)) == (1, 0.0, 1)
    works.finished(w1, True, " the answer")
    w2 = works.next()
    assert (w2.turn, w2.think_s) == (2, 0.25)
    assert [m["role"] for m in w2.prompt.messages] == ["user", "assistant", "user"]
    assert w2.prompt.messages[1]["content"] == " the answer"
    assert w2.prompt.prompt_tokens == w1.prompt.prompt_tokens + (len(enc.encode_ordinary(" the answer")) + 4) + 14
    assert w2.prompt.cache_after == (2,)
    works.finished(w2, False, None)  # a failed turn ends the session
    w3 = works.next()
    assert w3.turn == 1 and len(w3.prompt.messages) == 1


def test_sharegpt_sessions_follow_the_conversation(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps([{"conversations": [
        {"from": "human", "value": "first question"}, {"from": "gpt", "value": "a reply of some words"},
        {"from": "human", "value": "second question"}, {"from": "gpt", "value": "short"}]}]))
    s = settings("--dataset", str(f), "--turns", "5")
    enc = get_encoding(s.encoding)
    works = s.workload.stream(random.Random(1))
    w1 = works.next()
    assert w1.max_tokens == len(enc.encode_ordinary("a reply of some words")) and w1.length_asked
    works.finished(w1, True, "what the server said")
    w2 = works.next()
    assert [m["content"] for m in w2.prompt.messages] == ["first question", "what the server said", "second question"]
    assert w2.max_tokens == len(enc.encode_ordinary("short")) and w2.turn == 2
    works.finished(w2, True, "again")
    assert works.next().turn == 1  # the conversation had two human turns: a new session starts


# --------------------------------------------------------------------------- adapters: cached tokens, cache_control

def _ev(data: dict) -> SseEvent:
    return SseEvent(None, json.dumps(data), 0.0)


def test_cached_tokens_from_each_api_usage():
    chat = ChatCompletionsAdapter().read_event(_ev({"choices": [], "usage": {
        "prompt_tokens": 2000, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 1536}}}))
    assert (chat.usage.prompt_tokens, chat.usage.cached_tokens) == (2000, 1536)
    resp = ResponsesAdapter().read_event(_ev({"type": "response.completed", "response": {"usage": {
        "input_tokens": 1800, "output_tokens": 9, "input_tokens_details": {"cached_tokens": 1024}}}}))
    assert (resp.usage.prompt_tokens, resp.usage.cached_tokens) == (1800, 1024)
    start = MessagesAdapter().read_event(_ev({"type": "message_start", "message": {"usage": {
        "input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 3000, "output_tokens": 1}}}))
    assert (start.usage.prompt_tokens, start.usage.cached_tokens, start.usage.output_tokens) == (3020, 3000, None)
    plain = ChatCompletionsAdapter().read_event(_ev({"choices": [], "usage": {"prompt_tokens": 7,
                                                                                "completion_tokens": 1}}))
    assert plain.usage.cached_tokens is None


def test_messages_marks_the_shared_prefix_and_the_last_turn_for_caching():
    prompt = Prompt(({"role": "system", "content": "shared"}, {"role": "user", "content": "q1"},
                     {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}), 10, (0, 3))
    body = MessagesAdapter().build_request(prompt, model="m", max_tokens=5, stream=True).body
    mark = {"type": "ephemeral"}
    assert body["system"] == [{"type": "text", "text": "shared", "cache_control": mark}]
    assert body["messages"][0] == {"role": "user", "content": "q1"}
    assert body["messages"][2] == {"role": "user", "content": [{"type": "text", "text": "q2", "cache_control": mark}]}
    plain = MessagesAdapter().build_request(Prompt(prompt.messages), model="m", max_tokens=5, stream=True).body
    assert plain["system"] == "shared"
    # Chat Completions never sends Anthropic's field.
    assert "cache_control" not in json.dumps(ChatCompletionsAdapter().build_request(
        prompt, model="m", max_tokens=5, stream=True).body)


def test_exact_field_refusals():
    assert refuses_exact_fields(400, "HTTP 400 Bad Request: Unrecognized request argument supplied: ignore_eos")
    assert refuses_exact_fields(422, "extra fields not permitted: min_tokens")
    assert not refuses_exact_fields(400, "max_tokens is too large")
    assert not refuses_exact_fields(500, "ignore_eos")


# --------------------------------------------------------------------------- figures

def _rec(ok=True, ttft=10.0, prompt=100, output=8, cached=None, start=1000.0) -> RequestRecord:
    rec = RequestRecord(start_time=start, end_time=start + 0.1, e2e_ms=100.0, status=200 if ok else 500,
                        error_kind=None if ok else "http_500", ttft_ms=ttft if ok else None, output_tokens=output,
                        prompt_tokens=prompt, usage_reported=True, itl_ms=[1.0] * (output - 1))
    rec.cached_tokens = cached
    return rec


def canon(x):
    """A wire dict with its lists of pairs (histogram buckets, turns) in one order."""
    if isinstance(x, dict):
        return {k: canon(v) for k, v in x.items()}
    if isinstance(x, list):
        items = [canon(v) for v in x]
        return sorted(items, key=json.dumps) if all(isinstance(v, list) for v in items) else items
    return x


def test_workload_stats_merge_exactly_over_the_wire():
    whole, parts = RunStats(), [RunStats(), RunStats()]
    rng = random.Random(9)
    for i in range(200):
        turn = rng.randint(1, 3)
        work = Work(Prompt(()), 8, turn=turn, intended=1000.0 - rng.random() * 0.01 if i % 2 else None,
                    exact_sent=bool(i % 3))
        cached = rng.choice([None, 0, 64])
        rec = _rec(ok=i % 17 != 0, ttft=5 + rng.random() * 20, cached=cached, output=rng.choice([8, 7]))
        whole.add(rec, False, work)
        parts[i % 2].add(rec, False, work)
    parts[1].workload.refused("HTTP 400: ignore_eos")
    merged = RunStats()
    for p in parts:
        merged.merge(RunStats.from_wire(json.loads(json.dumps(p.to_wire()))))
    whole.workload.refused("HTTP 400: ignore_eos")
    assert canon(merged.workload.to_wire()) == canon(whole.workload.to_wire())
    w = whole.workload
    assert w.cached_requests > 0 and w.cache_reported > w.cached_requests and w.scheduled == 100
    assert set(w.turns) == {1, 2, 3} and sum(t.requests for t in w.turns.values()) == 200
    assert 0 < w.exact < w.requested


def test_report_states_the_workload_and_its_realised_lengths():
    s = settings("--prompt-tokens", "100,10", "--max-tokens", "8", "--shared-prefix-tokens", "50", "--turns", "2",
                 "--think-time", "1")
    stats = RunStats()
    for i in range(10):
        stats.add(_rec(prompt=100 + i, cached=50 if i else 0, ttft=4.0 if i else 12.0),
                  False, Work(Prompt(()), 8, turn=1 + i % 2, exact_sent=True))
    section = workload_section(s.workload.describe(), stats)
    assert section["source"] == "synthetic" and section["prompt_tokens"]["spec"] == "100,10"
    assert section["realised"]["prompt_tokens"] == {"count": 10, "mean": 104.5, "p50": 104, "p90": 108,
                                                    "min": 100, "max": 109}
    assert section["realised"]["output_tokens"]["max"] == 8
    c = section["prefix_cache"]
    assert (c["requests"], c["cached_requests"], c["hit_share"]) == (10, 9, 0.9)
    assert c["ttft_cached_ms"]["p50"] == pytest.approx(4.0, abs=0.01)
    assert c["ttft_uncached_ms"]["p50"] == pytest.approx(12.0, abs=0.01)
    assert [t["turn"] for t in section["per_turn"]] == [1, 2]
    text = "\n".join(workload_lines(section))
    for needle in ("workload: synthetic, prompt tokens 100,10, max tokens 8; shared prefix 50 tokens x 1 group; "
                   "2 turns, think time 1 s; seed 1", "realised over 10 requests: prompt tokens mean 104.5",
                   "prefix cache: 9 of 10 requests (90.0%)", "10 of 10 requests got exactly", "turn   requests"):
        assert needle in text, text


def test_counts_summary_percentiles():
    assert counts_summary({1: 1, 2: 1, 3: 1, 10: 1}) == {"count": 4, "mean": 4.0, "p50": 2, "p90": 10, "min": 1,
                                                          "max": 10}
    assert counts_summary({})["mean"] is None
