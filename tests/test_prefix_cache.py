"""The prefix cache alone: block hashing, LRU eviction, OpenAI's rule, Anthropic breakpoints and TTLs
(on an injected clock), the prompt's token ids, and the profile's `cache:` section."""

from __future__ import annotations

import pytest

from llmsim import ProfileError
from llmsim.prefix_cache import (
    ANTHROPIC_LOOKBACK_BLOCKS,
    PrefixCache,
    Segment,
    block_hashes,
    openai_cached,
    segment_prefixes,
)
from llmsim.profiles import CacheSpec, parse_profiles_document
from llmsim.tokens import count_prompt_bounded, get_encoding, prompt_token_ids

ENC = get_encoding("o200k_base")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cache(capacity: int = 10_000, block: int = 16, minimum: int = 0, rule: str = "vllm",
          clock: Clock | None = None) -> PrefixCache:
    return PrefixCache(CacheSpec(capacity, block, minimum), rule, clock=clock or Clock())


def ids(n: int, start: int = 0) -> list[int]:
    return list(range(start, start + n))


# ------------------------------------------------------------------ blocks (vllm and openai rules)

def test_block_hashes_chain_the_prefix():
    a = block_hashes(ids(64), 16)
    b = block_hashes(ids(40) + [999] * 24, 16)
    assert len(a) == 4 and len(block_hashes(ids(63), 16)) == 3  # whole blocks only
    assert a[:2] == b[:2] and a[2] != b[2] and a[3] != b[3]  # one different token changes every later key
    # The same block after a different prefix is another key: a key names the whole prefix.
    assert block_hashes([7] * 16 + ids(16), 16)[1] != block_hashes([8] * 16 + ids(16), 16)[1]


def test_leading_blocks_hit_and_the_last_token_is_always_computed():
    c = cache()
    prompt = ids(100)
    first = c.use_blocks(block_hashes(prompt, 16), 100)
    assert first.read == 0 and len(c) == 6 and c.tokens == 96
    # A request sharing 70 tokens reuses its 4 whole leading blocks.
    other = ids(70) + ids(50, 5000)
    assert c.use_blocks(block_hashes(other, 16), 120).read == 64
    # The same prompt again: everything but the block holding its last token.
    assert c.use_blocks(block_hashes(prompt, 16), 100).read == 96
    exact = ids(96)
    assert c.use_blocks(block_hashes(exact, 16), 96).read == 80
    assert c.stats.queries == 100 + 120 + 100 + 96 and c.stats.hits == 64 + 96 + 80


def test_min_prefix_tokens_drops_short_hits():
    c = cache(minimum=64)
    c.use_blocks(block_hashes(ids(200), 16), 200)
    assert c.use_blocks(block_hashes(ids(50) + [9] * 50, 16), 100).read == 0  # 48 < 64
    assert c.use_blocks(block_hashes(ids(70) + [9] * 50, 16), 120).read == 64


def test_lru_evicts_the_least_recent_and_a_prompt_tail_first():
    c = cache(capacity=64)  # four blocks
    a, b = block_hashes(ids(49), 16), block_hashes(ids(49, 1000), 16)
    c.use_blocks(a, 49)
    c.use_blocks(b, 49)
    assert c.tokens == 64 and c.stats.evicted == 32
    # A's tail went first: its head block is still there.
    assert a[0] in c and a[1] not in c and a[2] not in c
    assert c.use_blocks(a, 49).read == 16
    # Reusing A made it recent again (its hit block is never evicted for its own tail):
    # B's oldest blocks (its tail) went to make room.
    assert all(k in c for k in a) and b[0] in c and b[1] not in c and b[2] not in c


def test_a_prompt_longer_than_the_cache_keeps_its_head():
    c = cache(capacity=48)
    h = block_hashes(ids(200), 16)
    c.use_blocks(h, 200)
    assert c.tokens == 48 and all(k in c for k in h[:3])
    assert c.use_blocks(h, 200).read == 48


@pytest.mark.parametrize(("hit", "cached"), [(0, 0), (1008, 0), (1023, 0), (1024, 1024), (1151, 1024),
                                             (1152, 1152), (4000, 3968), (4096, 4096)])
def test_openai_rule(hit, cached):
    assert openai_cached(hit) == cached


def test_openai_rule_rounds_the_block_hit():
    c = cache(rule="openai")
    prompt = ids(3000)
    c.use_blocks(block_hashes(prompt, 16), 3000)
    # A 2,000-token shared prefix: 1,984 in whole blocks, reported (and reused) as 1,024 + 7 x 128.
    other = ids(2000) + ids(500, 90_000)
    assert c.use_blocks(block_hashes(other, 16), 2500).read == 1920
    small = ids(1000)
    assert c.use_blocks(block_hashes(small, 16), 1000).read == 0
    assert c.stats.hits == 1920


# ------------------------------------------------------------------ anthropic rule

def seg(text: str, ttl: str | None = None, role: str | None = None) -> Segment:
    return Segment(key=text, text=text, role=role, ttl=ttl)


def anthropic(c: PrefixCache, segments: list[Segment], prompt_tokens: int | None = None):
    hashes, ends = segment_prefixes(segments, ENC)
    return c.use_breakpoints(hashes, ends, segments, prompt_tokens or ends[-1] + 3)


DOC = "lorem ipsum dolor sit amet " * 400  # about 2,000 tokens
OTHER = "consectetur adipiscing elit " * 400


def test_breakpoint_written_then_read_and_the_rest_is_input():
    c = cache(capacity=1_000_000, minimum=1024, rule="anthropic")
    first = [seg(DOC, "5m", "system"), seg("Question one?", role="user")]
    _, ends = segment_prefixes(first, ENC)
    u = anthropic(c, first)
    assert u.read == 0 and u.write == u.write_5m == ends[0] and u.write_1h == 0
    u2 = anthropic(c, [seg(DOC, "5m", "system"), seg("Another question entirely?", role="user")])
    assert u2.read == ends[0] and u2.write == 0
    assert len(c) == 1 and c.stats.hits == ends[0]


def test_no_write_below_the_minimum_and_only_at_breakpoints():
    c = cache(capacity=1_000_000, minimum=1024, rule="anthropic")
    short = [seg("Be brief.", "5m", "system"), seg("Hi", role="user")]
    assert anthropic(c, short).write == 0 and len(c) == 0
    # Without a breakpoint nothing is cached, however long.
    anthropic(c, [seg(DOC, None, "system"), seg("Hi", "5m", "user")])
    assert anthropic(c, [seg(DOC, "5m", "system"), seg("Yo", role="user")]).read == 0


def test_several_breakpoints_split_writes_by_ttl_and_read_the_longest():
    c = cache(capacity=1_000_000, minimum=1024, rule="anthropic")
    segments = [seg(DOC, "1h", "system"), seg(OTHER, "5m", "user"), seg("And?", role="assistant")]
    _, ends = segment_prefixes(segments, ENC)
    u = anthropic(c, segments)
    assert (u.read, u.write_1h, u.write_5m) == (0, ends[0], ends[1] - ends[0])
    again = anthropic(c, segments[:2] + [seg("Something else", role="assistant")])
    assert again.read == ends[1] and again.write == 0
    # A new second block: the first breakpoint still hits, the new one is written.
    changed = anthropic(c, [segments[0], seg(DOC + "!", "5m", "user"), seg("x", role="assistant")])
    assert changed.read == ends[0] and changed.write_5m > 0 and changed.write_1h == 0


def test_ttl_expiry_and_refresh_on_an_injected_clock():
    clock = Clock()
    c = cache(capacity=1_000_000, minimum=1024, rule="anthropic", clock=clock)
    five = [seg(DOC, "5m", "system"), seg("q", role="user")]
    hour = [seg(OTHER, "1h", "system"), seg("q", role="user")]
    anthropic(c, five)
    anthropic(c, hour)
    clock.now += 299
    assert anthropic(c, five).read > 0  # a hit restarts the 5 minutes
    clock.now += 299
    assert anthropic(c, five).read > 0
    clock.now += 301
    u = anthropic(c, five)
    assert u.read == 0 and u.write_5m > 0  # expired: written again
    assert anthropic(c, hour).read > 0  # 899 s: the 1-hour entry lives
    clock.now += 3601
    c.sweep()
    assert len(c) == 0 and c.stats.expired > 0


def test_a_moved_breakpoint_hits_within_the_lookback():
    c = cache(capacity=1_000_000, minimum=1024, rule="anthropic")
    turn1 = [seg(DOC, role="user"), seg("first question", "5m")]
    u1 = anthropic(c, turn1)
    # The conversation grows; the breakpoint moves to its last block and still reads turn 1's prefix.
    turn2 = [seg(DOC, role="user"), seg("first question"), seg("an answer", role="assistant"),
             seg("second question", "5m", "user")]
    u2 = anthropic(c, turn2)
    assert u2.read == u1.write and u2.write > 0
    # Beyond the lookback window the old prefix is not found.
    far = [seg(DOC, role="user"), seg("first question")] + [
        seg(f"block {i}") for i in range(ANTHROPIC_LOOKBACK_BLOCKS)] + [seg("end", "5m")]
    assert anthropic(c, far).read == 0


# ------------------------------------------------------------------ the prompt's token ids

@pytest.mark.parametrize("framing", [True, False])
def test_prompt_token_ids_are_as_many_as_counted(framing):
    long = " ".join(f"token{i} and more, words." for i in range(6000))  # counted in slices
    for messages, extra in (([{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "Hi there", "name": "bob"}], ""),
                            ([{"role": "user", "content": long}], '[{"name":"f","parameters":{}}]')):
        got = prompt_token_ids(messages, ENC, extra_text=extra, framing=framing)
        assert len(got) == count_prompt_bounded(messages, ENC, extra_text=extra, framing=framing)[0]


def test_the_next_turn_shares_the_reply_priming():
    one = [{"role": "user", "content": "Hello"}]
    two = [*one, {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "More"}]
    a, b = prompt_token_ids(one, ENC), prompt_token_ids(two, ENC)
    assert b[:len(a)] == a  # the priming is the assistant message's opening


# ------------------------------------------------------------------ the profile section

BASE = """profiles:
  - name: p
    models: [p]
    provider: {provider}
    ttft: {{mean_ms: 1}}
    itl: {{mean_ms: 1}}
    cache: {cache}
"""


def parse(cache_yaml: str, provider: str = "any"):
    return parse_profiles_document("test.yaml", BASE.format(provider=provider, cache=cache_yaml))[0]


def test_cache_section_defaults_rule_and_show():
    p = parse("{capacity_tokens: 1000}")
    assert p.cache == CacheSpec(1000, 16, 0, None) and p.cache.rule_for(p.provider) == "vllm"
    assert parse("{capacity_tokens: 1000}", "openai").cache.rule_for("openai") == "openai"
    assert parse("{capacity_tokens: 1000, rule: vllm}", "openai").cache.rule_for("openai") == "vllm"
    shown = parse("{capacity_tokens: 4096, block_tokens: 32, min_prefix_tokens: 1024}", "anthropic").to_dict()
    assert shown["cache"] == {"capacity_tokens": 4096, "block_tokens": 32, "min_prefix_tokens": 1024,
                              "rule": "anthropic"}


@pytest.mark.parametrize(("cache_yaml", "key", "reason"), [
    ("{block_tokens: 16}", "cache.capacity_tokens", "is required"),
    ("{capacity_tokens: -5}", "cache.capacity_tokens", "must be >= 1"),
    ("{capacity_tokens: 1000, block_tokens: 0}", "cache.block_tokens", "must be >= 1"),
    ("{capacity_tokens: 8}", "cache.capacity_tokens", "must hold at least one block (16 tokens), got 8"),
    ("{capacity_tokens: 1000, min_prefix_tokens: 1.5}", "cache.min_prefix_tokens", "must be a whole number"),
    ("{capacity_tokens: 1000, rule: sglang}", "cache.rule", "must be one of vllm, openai, anthropic"),
    ("{capacity_tokens: 1000, blocks: 16}", "cache.blocks", "unknown key"),
    ("[1000]", "cache", "must be a mapping"),
])
def test_cache_section_errors_name_file_key_and_reason(cache_yaml, key, reason):
    with pytest.raises(ProfileError) as e:
        parse(cache_yaml)
    assert e.value.source == "test.yaml" and e.value.key == f"profiles[p].{key}" and reason in e.value.reason


def test_an_embedding_profile_has_no_cache():
    text = """profiles:
  - name: e
    models: [e]
    embedding: {dimensions: 8}
    cache: {capacity_tokens: 1000}
"""
    with pytest.raises(ProfileError) as e:
        parse_profiles_document("emb.yaml", text)
    assert e.value.key == "profiles[e].cache"


# ------------------------------------------------------------------ across --workers

def test_worker_totals_add_cache_counters_and_work_the_hit_rate_out_again():
    from llmsim.cli import workerstats as ws

    def doc(queries, hits, cached):
        pc = cache(capacity=10_000)
        pc.stats.queries, pc.stats.hits, pc.tokens = queries, hits, cached
        return {"prefix_cache": {"queries_total": queries, "hits_total": hits,
                                 "hit_rate": round(hits / queries, 6), "models": {}},
                "schedulers": {"p": {"admitted": 1, "prefix_cache": pc.snapshot()}}}

    merged = ws.merge_stats([doc(1000, 500, 320), doc(3000, 0, 160)])
    pc = merged["schedulers"]["p"]["prefix_cache"]
    assert pc["queries_total"] == 4000 and pc["hits_total"] == 500 and pc["hit_rate"] == 0.125
    assert pc["cached_tokens"] == 480 and pc["capacity_tokens"] == 20_000  # the fleet's caches
    assert pc["block_tokens"] == 16 and pc["rule"] == "vllm"
    assert merged["prefix_cache"]["hit_rate"] == 0.125
    retired = ws.counters_only(doc(1000, 1000, 320))
    assert "cached_tokens" not in retired["schedulers"]["p"]["prefix_cache"]
    again = ws.merge_stats([doc(1000, 0, 0)], retired)
    assert again["prefix_cache"]["hit_rate"] == 0.5 and again["schedulers"]["p"]["prefix_cache"]["hit_rate"] == 0.5


def test_worker_metrics_sum_the_vllm_cache_counters():
    from llmsim.cli import workerstats as ws

    text = ('# HELP vllm:prefix_cache_hits_total Prefix cache hits.\n# TYPE vllm:prefix_cache_hits_total counter\n'
            'vllm:prefix_cache_hits_total{model_name="m"} %d\n')
    own, other = (ws.Snapshot(i, 100 + i, 0.0, 0.0, {}, text % v) for i, v in ((0, 30), (1, 12)))
    merged = ws.cluster_metrics(text % 30, own, [other], {"count": 0, "stats": {}, "metrics": ""})
    assert 'vllm:prefix_cache_hits_total{model_name="m"} 42' in merged


def test_builtin_profiles_cache_as_their_providers_do():
    from llmsim.profiles import default_registry

    reg = default_registry()

    def rule(model):
        p = reg.resolve(model)
        return p.cache.rule_for(p.provider), p.cache.block_tokens, p.cache.min_prefix_tokens

    assert rule("gpt-4o") == ("openai", 128, 1024) and rule("gpt-5") == ("openai", 128, 1024)
    assert rule("meta-llama/Llama-3.1-8B-Instruct") == ("vllm", 16, 0)
    assert rule("openai/gpt-oss-20b") == ("vllm", 16, 0)  # served by vLLM, whoever made it
    assert rule("claude-sonnet-4-5")[::2] == ("anthropic", 1024)
    assert rule("claude-haiku-4-5")[::2] == ("anthropic", 4096)
    assert reg.resolve("gpt-3.5-turbo").cache is None  # OpenAI caches gpt-4o and newer
    assert reg.get("fast").cache is None and reg.get("instant").cache is None


def test_a_forced_latency_profile_brings_its_own_cache():
    from llmsim.engine import Engine

    assert Engine(latency_profile="fast").resolve_profile("gpt-4o").cache is None
    forced = Engine(latency_profile="llama-3-small").resolve_profile("gpt-4o")
    assert forced.cache is not None and forced.cache.rule_for(forced.provider) == "openai"  # the model's API rule
