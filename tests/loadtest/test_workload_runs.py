"""Each workload source end to end: Locust in-process (Environment with a local runner, the toolkit's listeners)
against llmsim (the `instant` profile) or the minimal SSE server, checking what was sent and what the report says.

Realised length distributions are checked against the requested ones within sampling error; multi-turn
prompts grow by the previous turn's output (the server's usage counts); a trace replay sends at its
recorded offsets and reports its lateness; the prefix-cache split comes from usage's cached tokens.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from pathlib import Path

import gevent
import locust
import pytest
from locust.env import Environment

from llmsim.loadtest import plugin  # noqa: F401 - registers the listeners
from llmsim.loadtest.adapters import ChatCompletionsAdapter
from llmsim.loadtest.report import format_summary
from llmsim.loadtest.users import ChatCompletionsUser, CompletionsUser, MessagesUser
from llmsim.loadtest.workloads import load_dataset, load_trace
from llmsim.testing import run_server
from llmsim.tokens import get_encoding

from .sse_server import MiniServer

REPO = Path(__file__).resolve().parents[2]
DATASETS = REPO / "datasets"
ENC = get_encoding("o200k_base")


def tokens(text: str) -> int:
    return len(ENC.encode_ordinary(text))


class Recording:
    """Keeps every (work, record) a user reports, in the class's `log`."""

    log: list = []

    def report(self, rec, work=None):
        super().report(rec, work)
        type(self).log.append((work, rec))


def user_class(base):
    return type(f"Rec{base.__name__}", (Recording, base), {"log": [], "abstract": False})


def _options(**kw):
    from locust.argument_parser import parse_options

    return parse_options([f"--{k.replace('_', '-')}={v}" for k, v in kw.items()])


def run_inprocess(base, host: str, *, users: int = 2, requests: int | None = None, timeout: float = 20.0,
                  **opts):
    """Run `users` users of `base` until `requests` are recorded (or the run stops itself); returns
    (report, [(work, record)], environment)."""
    cls = user_class(base)
    options = _options(workload_seed=7, **opts)
    env = Environment(user_classes=[cls], events=locust.events, host=host, parsed_options=options)
    runner = env.create_local_runner()
    locust.events.init.fire(environment=env, runner=runner, web_ui=None)
    runner.start(users, spawn_rate=users)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            gevent.sleep(0.05)
            if requests is not None and len(cls.log) >= requests:
                break
            if requests is None and runner.state == "stopped":
                break
        else:
            raise AssertionError(f"the run did not finish in {timeout} s ({len(cls.log)} requests)")
    finally:
        runner.quit()
    return env.llmsim.report(), list(cls.log), env


@pytest.fixture(scope="module")
def llmsim_url():
    with run_server(latency_profile="instant") as url:
        yield url


def within_sampling_error(values, mean, sd, k=4.0):
    """The sample mean is within k standard errors of `mean`, and the sample stddev within 25 % of `sd`
    (a stddev estimate from a few hundred draws of a skewed distribution is itself noisy)."""
    m = statistics.fmean(values)
    ok_mean = abs(m - mean) <= k * sd / math.sqrt(len(values)) + 0.5
    ok_sd = sd == 0 or abs(statistics.pstdev(values) - sd) <= 0.25 * sd + 0.5
    return ok_mean and ok_sd


# --------------------------------------------------------------------------- synthetic lengths

def test_synthetic_length_distributions_are_realised(llmsim_url):
    report, log, _ = run_inprocess(ChatCompletionsUser, llmsim_url, users=2, requests=400,
                                   llm_model="gpt-4o", llm_profile="instant", llm_trace="off",
                                   prompt_tokens="lognormal:300,100", max_tokens="uniform:10,60")
    ok = [(w, r) for w, r in log if r.ok]
    assert len(ok) == len(log) >= 400
    content = [tokens(w.prompt.messages[-1]["content"]) for w, _ in ok]
    # The server counts the chat framing on top of the text: the same few tokens for every request.
    assert len({r.prompt_tokens - n for (_, r), n in zip(ok, content, strict=False)}) == 1
    assert all(r.prompt_tokens == w.prompt.prompt_tokens for w, r in ok)  # client and server count alike
    assert within_sampling_error(content, 300, 100)
    # ignore_eos/min_tokens: each answer has exactly the drawn length, and the draws are uniform on 10..60.
    assert all(r.output_tokens == w.max_tokens and w.exact_sent for w, r in ok)
    assert within_sampling_error([r.output_tokens for _, r in ok], 35, 51 / math.sqrt(12))
    assert min(r.output_tokens for _, r in ok) >= 10 and max(r.output_tokens for _, r in ok) <= 60
    w = report["workload"]
    assert w["source"] == "synthetic" and w["prompt_tokens"]["spec"] == "lognormal:300,100"
    assert w["realised"]["requests"] == report["requests"]["ok"]
    assert abs(w["realised"]["output_tokens"]["mean"] - statistics.fmean(r.output_tokens for _, r in ok)) < 2
    assert w["exact_output"]["requests_exact"] == w["exact_output"]["requests_checked"] > 0


def test_legacy_completions_prompts_have_exactly_the_drawn_tokens(llmsim_url):
    """Legacy Completions counts the prompt text alone: the server's count is the drawn length itself."""
    report, log, _ = run_inprocess(CompletionsUser, llmsim_url, users=2, requests=200,
                                   llm_model="gpt-3.5-turbo-instruct", llm_profile="instant", llm_trace="off",
                                   prompt_tokens="uniform:50,150", max_tokens="30,8")
    assert all(r.ok for _, r in log)
    drawn = [tokens(w.prompt.messages[-1]["content"]) for w, _ in log]
    assert [r.prompt_tokens for _, r in log] == drawn
    assert within_sampling_error(drawn, 100, 101 / math.sqrt(12))
    assert all(r.output_tokens == w.max_tokens for w, r in log)  # ignore_eos and min_tokens on /v1/completions
    assert within_sampling_error([r.output_tokens for _, r in log], 30, 8)
    p = report["workload"]["realised"]["prompt_tokens"]
    assert 50 <= p["min"] and p["max"] <= 150


def test_dataset_jsonl_lengths(llmsim_url):
    dataset = load_dataset(str(DATASETS / "sample.jsonl"))
    own = {e.output_tokens for e in dataset.entries if e.output_tokens}
    report, log, _ = run_inprocess(ChatCompletionsUser, llmsim_url, users=2, requests=120,
                                   llm_model="gpt-4o", llm_profile="instant", llm_trace="off",
                                   dataset=str(DATASETS / "sample.jsonl"), max_tokens="25")
    assert all(r.ok for _, r in log)
    assert {w.max_tokens for w, _ in log} <= own | {25}
    assert 25 in {w.max_tokens for w, _ in log} and len({w.max_tokens for w, _ in log}) > 5
    assert all(r.output_tokens == w.max_tokens for w, r in log)
    assert all(r.prompt_tokens == w.prompt.prompt_tokens for w, r in log)
    texts = {e.messages[-1]["content"] for e in dataset.entries}
    assert {w.prompt.messages[-1]["content"] for w, _ in log} <= texts
    assert report["workload"]["source"] == "dataset" and report["workload"]["format"] == "jsonl"
    assert report["workload"]["entries"] == len(dataset.entries)


# --------------------------------------------------------------------------- multi-turn sessions

def _sessions(log):
    by = defaultdict(list)
    for w, r in log:
        by[id(w.session)].append((w, r))
    return [sorted(v, key=lambda x: x[0].turn) for v in by.values()]


def test_multi_turn_prompts_grow_by_the_previous_output(llmsim_url):
    report, log, _ = run_inprocess(ChatCompletionsUser, llmsim_url, users=2, requests=60,
                                   llm_model="gpt-4o", llm_profile="instant", llm_trace="off",
                                   turns="3", think_time="0.05", prompt_tokens="30", max_tokens="uniform:15,25")
    pairs = 0
    for session in _sessions(log):
        assert [w.turn for w, _ in session] == list(range(1, len(session) + 1))
        for (_w1, r1), (w2, r2) in zip(session, session[1:], strict=False):
            assert r1.ok and r2.ok
            reply = w2.prompt.messages[-2]
            assert reply == {"role": "assistant", "content": r1.text}  # the text the client received
            # The server's count: the previous prompt, the reply (3 + 1 tokens of framing) and a new
            # 30-token user message (3 + 1 of framing).
            assert r2.prompt_tokens == r1.prompt_tokens + (tokens(r1.text) + 4) + (30 + 4)
            assert abs(tokens(r1.text) - r1.output_tokens) <= 2  # the reply is the streamed answer
            assert r2.start_time - r1.end_time >= 0.045  # the think time
            pairs += 1
    assert pairs >= 20
    turns = report["workload"]["per_turn"]
    assert [t["turn"] for t in turns] == [1, 2, 3]
    means = [t["prompt_tokens_mean"] for t in turns]
    assert means[0] < means[1] < means[2] and means[1] - means[0] > 30 + 15
    assert all(t["ttft_ms"]["count"] == t["ok"] > 0 for t in turns)
    assert "turn   requests" in format_summary(report)


def test_sharegpt_conversations_replay_their_turns(llmsim_url):
    report, log, _ = run_inprocess(ChatCompletionsUser, llmsim_url, users=2, requests=60,
                                   llm_model="gpt-4o", llm_profile="instant", llm_trace="off",
                                   dataset=str(DATASETS / "sharegpt-sample.json"), turns="3")
    dataset = load_dataset(str(DATASETS / "sharegpt-sample.json"))
    firsts = {e.messages[-1]["content"]: e for e in dataset.entries}
    checked = 0
    for session in _sessions(log):
        (w1, r1) = session[0]
        entry = firsts[w1.prompt.messages[-1]["content"]]
        assert w1.max_tokens == tokens(entry.reply) and r1.output_tokens == w1.max_tokens
        assert len(session) <= min(3, 1 + len(entry.later))
        for k, (w, r) in enumerate(session[1:]):
            assert w.prompt.messages[-1]["content"] == entry.later[k].text
            prev_w, prev_r = session[k]
            assert r.prompt_tokens == prev_r.prompt_tokens + tokens(prev_r.text) + 4 + tokens(entry.later[k].text) + 4
            checked += 1
    assert checked >= 5
    assert report["workload"]["format"] == "sharegpt" and report["workload"]["skipped"] == 1


# --------------------------------------------------------------------------- shared prefixes and the cache split

def test_shared_prefix_cache_hits_and_ttft_split():
    srv = MiniServer(ttft_ms=40.0, itl_ms=1.0).start()
    try:
        report, log, _ = run_inprocess(ChatCompletionsUser, srv.url, users=2, requests=40,
                                       llm_model="mode-cache", llm_trace="off", shared_prefix_tokens="200",
                                       prefix_groups="2", prompt_tokens="20", max_tokens="5")
    finally:
        srv.stop()
    systems = {w.prompt.messages[0]["content"] for w, _ in log}
    assert len(systems) == 2 and all(tokens(s) == 200 for s in systems)
    assert all(r.ok for _, r in log)
    c = report["workload"]["prefix_cache"]
    n = report["requests"]["ok"]
    assert c["requests"] == n and c["cached_requests"] == n - 2  # the first request of each group fills it
    assert c["cached_tokens"] == 200 * (n - 2)
    # The server answers cached requests in a quarter of the TTFT (10 ms instead of 40 ms).
    assert 9.0 <= c["ttft_cached_ms"]["p50"] <= 20.0
    assert 39.0 <= c["ttft_uncached_ms"]["p50"] <= 55.0 and c["ttft_uncached_ms"]["count"] == 2
    assert f"prefix cache: {n - 2} of {n} requests" in format_summary(report)


def test_messages_sends_cache_breakpoints_that_llmsim_accepts():
    with run_server(latency_profile="instant") as url:
        report, log, _ = run_inprocess(MessagesUser, url, users=1, requests=10, llm_model="claude-sonnet-4-5",
                                       llm_profile="instant", llm_trace="off", shared_prefix_tokens="50",
                                       turns="2", prompt_tokens="5", max_tokens="8")
    assert all(r.ok for _, r in log), [r.error_message for _, r in log]
    assert all(w.prompt.cache_after[0] == 0 for w, _ in log)
    assert report["workload"]["exact_output"]["requests_with_fields"] == 0  # Messages has no ignore_eos


CACHE_PROFILES = """\
profiles:
  - name: lt-cache
    models: [cache-model]
    ttft: {distribution: constant, mean_ms: 5}
    itl: {distribution: constant, mean_ms: 1}
    prefill: {tokens_per_s: 20000}
    cache: {capacity_tokens: 1000000, block_tokens: 16, min_prefix_tokens: 0}
  - name: lt-cache-claude
    models: [claude-cache-model]
    provider: anthropic
    ttft: {distribution: constant, mean_ms: 5}
    itl: {distribution: constant, mean_ms: 1}
    prefill: {tokens_per_s: 20000}
    cache: {capacity_tokens: 1000000, block_tokens: 16, min_prefix_tokens: 1024}
"""
PREFILL_TOKENS_PER_MS = 20.0


@pytest.fixture(scope="module")
def cache_server(tmp_path_factory):
    """llmsim serving two profiles with a prefix cache (the vLLM rule and the Anthropic rule): a constant
    5 ms TTFT plus 1 ms per 20 prompt tokens that the cache did not hold."""
    from llmsim.profiles import ProfileError, load_profile_file

    f = tmp_path_factory.mktemp("cache") / "cache.yaml"
    f.write_text(CACHE_PROFILES)
    try:
        load_profile_file(str(f))
    except ProfileError:
        pytest.skip("this llmsim has no prefix cache (profiles have no cache: section)")
    with run_server(profile_files=[str(f)]) as url:
        yield url, f


def predicted_ttft(rec) -> float:
    """What the profile says: 5 ms plus the prefill of the prompt tokens the cache did not hold."""
    return 5.0 + (rec.prompt_tokens - (rec.cached_tokens or 0)) / PREFILL_TOKENS_PER_MS


def assert_ttft_as_predicted(log):
    diffs = [r.ttft_ms - predicted_ttft(r) for _, r in log]
    assert min(diffs) > -1.0, diffs  # never faster than the profile allows
    # Late only by scheduling delays: most by well under a millisecond, a few by whatever a busy machine adds.
    assert statistics.median(diffs) < 3.0 and sorted(diffs)[int(0.8 * len(diffs))] < 15.0, diffs


def test_shared_prefix_hits_llmsim_cache_and_cuts_ttft_as_the_profile_predicts(cache_server):
    url, profile = cache_server
    report, log, _ = run_inprocess(ChatCompletionsUser, url, users=1, requests=24, llm_model="cache-model",
                                   llm_profile=str(profile), llm_trace="off", shared_prefix_tokens="1024",
                                   prefix_groups="2", prompt_tokens="32", max_tokens="4")
    assert all(r.ok for _, r in log)
    first_of_group = {}
    for w, r in log:
        system = w.prompt.messages[0]["content"]
        if system not in first_of_group:
            first_of_group[system] = r
            assert r.cached_tokens == 0
        else:  # the prefix (and its framing) is reused block by block
            assert 1024 <= r.cached_tokens <= r.prompt_tokens - 32 and r.cached_tokens % 16 == 0
    assert len(first_of_group) == 2
    assert_ttft_as_predicted(log)
    c = report["workload"]["prefix_cache"]
    n = report["requests"]["ok"]
    assert (c["requests"], c["cached_requests"], c["ttft_uncached_ms"]["count"]) == (n, n - 2, 2)
    # 1024 cached tokens are about 51 ms of prefill that the cached requests skip.
    saved = c["ttft_uncached_ms"]["p50"] - c["ttft_cached_ms"]["p50"]
    assert 1024 / PREFILL_TOKENS_PER_MS - 5 < saved < 1024 / PREFILL_TOKENS_PER_MS + 15
    # Scoring counts only the prefill the server did: the run passes against its own profile.
    assert report["verdict"] == "PASS", [v for v in report["verdicts"] if v["verdict"] == "FAIL"]


def test_multi_turn_reuses_the_history_in_llmsim_cache(cache_server):
    url, profile = cache_server
    report, log, _ = run_inprocess(ChatCompletionsUser, url, users=2, requests=24, llm_model="cache-model",
                                   llm_profile=str(profile), llm_trace="off", turns="4", prompt_tokens="200",
                                   max_tokens="30")
    pairs = 0
    for session in _sessions(log):
        for (_, r1), (_, r2) in zip(session, session[1:], strict=False):
            assert r1.ok and r2.ok
            # The previous prompt's whole blocks are reused (not its last token); the reply and the new
            # message are prefilled.
            assert r1.prompt_tokens - 32 <= r2.cached_tokens <= r1.prompt_tokens
            pairs += 1
    assert pairs >= 10
    assert_ttft_as_predicted(log)
    turns = report["workload"]["per_turn"]
    # Turn 3's prompt is ~690 tokens (~40 ms of prefill uncached); it prefills only the previous reply and
    # the new message (~250 tokens, ~17 ms).
    t3 = turns[2]
    assert t3["prompt_tokens_mean"] > 600
    assert t3["ttft_ms"]["p50"] < 5 + t3["prompt_tokens_mean"] / PREFILL_TOKENS_PER_MS - 15


def test_messages_shared_prefix_reads_anthropic_breakpoints(cache_server):
    url, profile = cache_server
    report, log, _ = run_inprocess(MessagesUser, url, users=1, requests=12, llm_model="claude-cache-model",
                                   llm_profile=str(profile), llm_trace="off", shared_prefix_tokens="2048",
                                   prompt_tokens="20", max_tokens="4")
    assert all(r.ok for _, r in log), [r.error_message for _, r in log]
    first, *rest = [r for _, r in log]
    assert first.cached_tokens == 0 and all(r.cached_tokens >= 2048 for r in rest)
    # Anthropic's input_tokens leaves the cache out: the prompt is the sum, the same for every request.
    assert len({r.prompt_tokens for _, r in log}) == 1 and first.prompt_tokens > 2048 + 20
    assert_ttft_as_predicted(log)
    c = report["workload"]["prefix_cache"]
    assert c["cached_requests"] == len(log) - 1 and c["token_share"] > 0.9


# --------------------------------------------------------------------------- exact output lengths

def test_exact_output_degrades_when_the_server_refuses_it():
    srv = MiniServer(ttft_ms=2.0, itl_ms=0.5).start()
    try:
        report, log, _ = run_inprocess(ChatCompletionsUser, srv.url, users=1, requests=10, llm_model="mode-strict",
                                       llm_trace="off", max_tokens="6")
    finally:
        srv.stop()
    assert all(r.ok for _, r in log) and report["requests"]["failed"] == 0
    sent = [("ignore_eos" in body, "min_tokens" in body) for _, body in srv.received]
    assert sent[0] == (True, True) and all(s == (False, False) for s in sent[1:])
    # The refused request went out again at once, without the fields (and one more may be in flight at the end).
    assert srv.received[0][1]["messages"] == srv.received[1][1]["messages"]
    assert len(log) + 1 <= len(srv.received) <= len(log) + 2
    e = report["workload"]["exact_output"]
    assert "ignore_eos" in e["refused"] and e["requests_with_fields"] == 0
    assert "the server refused ignore_eos/min_tokens" in format_summary(report)


def test_a_reasoning_model_that_refuses_max_tokens_gets_max_completion_tokens():
    """OpenAI's reasoning models answer max_tokens with a 400 naming max_completion_tokens: the refused
    request goes out again at once with that field, and so does every later one."""
    srv = MiniServer(ttft_ms=2.0, itl_ms=0.5).start()
    ChatCompletionsUser.adapter = ChatCompletionsAdapter()  # the switch lives on the class's adapter
    try:
        report, log, _ = run_inprocess(ChatCompletionsUser, srv.url, users=1, requests=6,
                                       llm_model="mode-reasoning", llm_trace="off", max_tokens="6")
    finally:
        srv.stop()
        ChatCompletionsUser.adapter = ChatCompletionsAdapter()
    assert report["requests"]["failed"] == 0 and all(r.ok and r.output_tokens == 6 for _, r in log)
    fields = [("max_tokens" in body, body.get("max_completion_tokens")) for _, body in srv.received]
    assert fields[0] == (True, None) and all(f == (False, 6) for f in fields[1:])
    assert srv.received[0][1]["messages"] == srv.received[1][1]["messages"]


def test_the_length_field_is_switched_only_on_that_refusal():
    a = ChatCompletionsAdapter()
    assert a.adopt_length_field(400, "Unrecognized request argument supplied: ignore_eos") is None
    assert a.adopt_length_field(429, "Use 'max_completion_tokens' instead of 'max_tokens'") is None
    assert a.max_tokens_field == "max_tokens"
    assert a.adopt_length_field(400, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                     "Use 'max_completion_tokens' instead.") == "max_completion_tokens"
    assert a.max_tokens_field == "max_completion_tokens"
    assert a.adopt_length_field(400, "'max_tokens' ... 'max_completion_tokens'") is None  # once only


def test_exact_output_on_does_not_degrade():
    srv = MiniServer(ttft_ms=2.0, itl_ms=0.5).start()
    try:
        report, log, _ = run_inprocess(ChatCompletionsUser, srv.url, users=1, requests=5, llm_model="mode-strict",
                                       llm_trace="off", max_tokens="6", exact_output="on")
    finally:
        srv.stop()
    assert all(r.status == 400 for _, r in log) and report["workload"]["exact_output"]["refused"] is None
    assert all("ignore_eos" in body for _, body in srv.received)


# --------------------------------------------------------------------------- trace replay

def _write_trace(path: Path, gaps_ms: list[int], block: int) -> list[dict]:
    import json

    rows, t = [], 1000  # the first timestamp need not be 0
    for i, gap in enumerate(gaps_ms):
        t += gap
        root = [0, 1] if i % 3 else [0, 2]
        rows.append({"timestamp": t, "input_length": block * 3 + 5 + i, "output_length": 4 + i % 5,
                     "hash_ids": root + [100 + i, 200 + i]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.mark.parametrize("speed", [1.0, 2.0])
def test_trace_replay_sends_at_the_recorded_offsets(tmp_path, speed):
    gaps = [0, 0, 40, 5, 120, 60, 0, 30, 200, 15, 80, 80, 10, 150, 0, 45, 300, 20, 20, 90]
    rows = _write_trace(tmp_path / "t.jsonl", gaps, block=16)
    srv = MiniServer(ttft_ms=5.0, itl_ms=1.0).start()
    try:
        report, log, env = run_inprocess(ChatCompletionsUser, srv.url, users=1, timeout=20,
                                         llm_model="trace-model", llm_trace="off", trace=str(tmp_path / "t.jsonl"),
                                         trace_speed=str(speed), trace_block_tokens="16")
    finally:
        srv.stop()
    assert len(srv.received) == len(rows) == len(log) and all(r.ok for _, r in log)
    replay = env.llmsim.replay
    assert replay.finished and replay.sent == len(rows)
    # When each request reached the server, against when the trace says it was due.
    late = []
    bodies = sorted(srv.received, key=lambda x: x[0])
    intended = sorted(replay.t0 + (r["timestamp"] - rows[0]["timestamp"]) / 1000.0 / speed for r in rows)
    for (arrived, _), due in zip(bodies, intended, strict=False):
        late.append((arrived - due) * 1000.0)
    assert min(late) > -1.0, late  # never early (the precise timer may end a wait up to 0.3 ms before)
    # Within a few ms; the worst one takes whatever a busy machine adds.
    assert statistics.median(late) < 5.0 and max(late) < 60.0, late
    # Lengths: each prompt has exactly input_length tokens, each answer asks for output_length.
    by_len = {r["input_length"]: r for r in rows}
    texts = {}
    for _, body in srv.received:
        content = body["messages"][0]["content"]
        row = by_len[tokens(content)]
        assert body["max_tokens"] == row["output_length"] and body["ignore_eos"] is True
        texts[tuple(row["hash_ids"])] = ENC.encode_ordinary(content)
    # Equal hash ids give equal blocks of 16 tokens; different ids differ.
    a, b = texts[(0, 1, 101, 201)], texts[(0, 1, 102, 202)]
    c = texts[(0, 2, 100, 200)]
    assert a[:32] == b[:32] and a[32:48] != b[32:48]
    assert a[:16] == c[:16] and a[16:32] != c[16:32]
    rp = report["workload"]["replay"]
    assert rp["requests"] == len(rows) and rp["lateness_ms"]["p50"] < 5.0
    assert rp["from_intended_ms"]["ttft"]["count"] == len(rows)
    assert rp["from_intended_ms"]["ttft"]["p50"] >= report["metrics"]["ttft"]["p50"]
    assert "trace replay: 20 requests sent late by" in format_summary(report)


# --------------------------------------------------------------------------- headless runs (subprocesses)

@pytest.mark.slow
def test_headless_trace_replay_ends_by_itself(tmp_path):
    from .locust_helpers import run_locust

    t0 = time.monotonic()
    proc, report = run_locust(tmp_path, "-u", "1", "-t", "60s", "--llm-model", "gpt-4o", "--llm-profile", "instant",
                              "--llm-score", "off", "--trace", str(DATASETS / "mooncake-sample.jsonl"),
                              "--trace-speed", "4", timeout=90)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.monotonic() - t0 < 40  # the trace lasts 1.5 s at 4x: the run did not wait for -t
    w = report["workload"]
    assert w["source"] == "trace" and w["entries"] == 40 and w["trace"]["speed"] == 4.0
    assert w["replay"]["requests"] == 40 and report["requests"]["ok"] == 40
    trace = load_trace(str(DATASETS / "mooncake-sample.jsonl"))
    assert w["realised"]["output_tokens"]["mean"] == pytest.approx(statistics.fmean(e.output_length
                                                                                    for e in trace.entries))
    assert "trace replay: 40 requests sent late by" in proc.stdout
    assert "Trace replay: 40 requests sent and answered" in proc.stderr


@pytest.mark.slow
def test_headless_trace_replay_split_over_processes(tmp_path):
    from .locust_helpers import run_locust

    proc, report = run_locust(tmp_path, "--processes", "2", "-u", "2", "-r", "2", "-t", "60s", "--llm-model", "gpt-4o",
                              "--llm-profile", "instant", "--llm-score", "off",
                              "--trace", str(DATASETS / "mooncake-sample.jsonl"), "--trace-speed", "4", timeout=90)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["workload"]["replay"]["requests"] == 40 and report["requests"]["ok"] == 40
    assert sorted(w["requests"] for w in report["workers"].values()) == [20, 20]
    assert "every worker has sent its share" in proc.stderr


@pytest.mark.slow
def test_headless_responses_with_distributions_states_the_workload(tmp_path):
    from .locust_helpers import RESPONSES, run_locust

    proc, report = run_locust(tmp_path, "-u", "2", "-r", "2", "-t", "3s", "--llm-model", "gpt-4o", "--llm-profile",
                              "instant", "--llm-score", "off", "--prompt-tokens", "uniform:100,200",
                              "--max-tokens", "40", "--shared-prefix-tokens", "64", "--workload-seed", "11",
                              locustfile=RESPONSES)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w = report["workload"]
    assert (w["source"], w["seed"], w["shared_prefix"]) == ("synthetic", 11, {"tokens": 64, "groups": 1})
    assert w["prompt_tokens"] == {"spec": "uniform:100,200", "distribution": "uniform", "min": 100, "max": 200}
    p = w["realised"]["prompt_tokens"]
    framing = p["min"] - 100  # the shared prefix and the framing, the same for every request
    assert 64 < framing < 90 and p["max"] <= 200 + framing
    assert abs(p["mean"] - (150 + framing)) < 4 * 29 / math.sqrt(p["count"]) + 1
    # Responses has no ignore_eos: nothing is sent, and the answers are the server's own length up to 40.
    assert w["exact_output"]["requests_with_fields"] == 0 and w["realised"]["output_tokens"]["max"] <= 40
    assert "workload: synthetic, prompt tokens uniform:100,200, max tokens 40; shared prefix 64 tokens" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("args, needle", [
    (["--trace", str(DATASETS / "mooncake-sample.jsonl")], "--trace replays the trace's own arrival times"),
    (["--turns", "2", "--arrival-rate", "1"], "--turns needs each reply"),
])
def test_capacity_refuses_workloads_it_cannot_run(tmp_path, args, needle):
    from .locust_helpers import REPO as ROOT
    from .locust_helpers import run_locust

    proc, report = run_locust(tmp_path, "--llm-profile", "fast", *args, "-t", "5s", timeout=60,
                              locustfile=str(ROOT / "locustfiles" / "capacity.py"))
    assert proc.returncode == 2 and report is None
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and needle in errors[0], proc.stderr


@pytest.mark.slow
def test_capacity_test_runs_sessions_from_a_dataset(tmp_path):
    """The capacity test takes the same workload options: ShareGPT sessions, and capacity.json states them."""
    from .test_capacity import run_capacity

    proc, result = run_capacity(tmp_path, "--llm-profile", "fast", "--start-users", "1", "--step-users", "1",
                                "--step-time", "2", "--max-users", "2", "--dataset",
                                str(DATASETS / "sharegpt-sample.json"), "--turns", "3", "--max-tokens", "12")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w = result["workload"]
    assert w["source"] == "dataset" and w["format"] == "sharegpt" and w["turns"] == 3
    assert [t["turn"] for t in w["per_turn"]][:2] == [1, 2] and w["realised"]["requests"] > 0
    assert len(result["steps"]) == 2
