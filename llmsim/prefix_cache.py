"""The prefix (KV) cache of one deployment: which prompt prefixes need no prefill, and what usage reports.

A profile's `cache:` section gives a deployment a cache of prompt-prefix
blocks, kept next to its scheduler (scheduler.Schedulers). Three rules decide
what is cached and what a request reuses (`CacheSpec.rule_for`: by provider
unless the section names one):

* ``vllm``: vLLM's automatic prefix caching. The prompt's token ids are cut
  into blocks of `block_tokens`; each block is keyed by a chained hash,
  hash(parent hash, block token ids), so a key names the whole prefix up to
  its block. A request reuses its leading blocks that are cached (never the
  prompt's last token: its logits start the answer), and then its own full
  blocks are cached. Least recently used blocks are evicted beyond
  `capacity_tokens`, a request's tail blocks before its head (as vLLM frees
  them). Hits shorter than `min_prefix_tokens` are not reused.
* ``openai``: the same cache, reported (and reused) as OpenAI's automatic
  caching does: nothing below 1,024 tokens, then 1,024 plus whole 128-token
  steps.
* ``anthropic``: explicit `cache_control` breakpoints (at most 4) on tools,
  system blocks and message content blocks, in that order. Only prefixes
  ending at a breakpoint are cached, each for its TTL (5 minutes, or 1 hour
  with ttl "1h"; a hit restarts it). A request reads the longest cached prefix
  ending at one of its breakpoints or at most 20 blocks before one (so a
  breakpoint that moves forward as a conversation grows still hits), and
  writes every breakpoint past it up to its last, unless the prefix is shorter
  than `min_prefix_tokens` (the model's minimum cacheable length).

The cache is pure state on the event loop: lookups never yield, so greenlets
need no lock; key material (token ids, hashes) may be computed in gevent's
threadpool (`prompt_blocks`, `segment_prefixes`), which never touches a cache.
The clock is injectable, so TTL expiry is tested without sleeping.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .tokens import OFFLOAD_CHARS, TOKENS_PER_MESSAGE, _count_slices, _in_gevent_loop, prompt_token_ids

if TYPE_CHECKING:  # pragma: no cover
    import tiktoken

    from .profiles import CacheSpec

__all__ = ["CacheUsage", "PrefixCache", "Segment", "block_hashes", "openai_cached", "prompt_blocks",
           "segment_prefixes"]

Clock = Callable[[], float]

OPENAI_MIN_TOKENS = 1024
"""OpenAI caches prompts from this many tokens..."""
OPENAI_STEP_TOKENS = 128
"""...in steps of this many."""
ANTHROPIC_TTLS = {"5m": 300.0, "1h": 3600.0}
"""Anthropic's cache_control TTLs, in seconds (5 minutes unless a breakpoint says "1h")."""
ANTHROPIC_MAX_BREAKPOINTS = 4
ANTHROPIC_LOOKBACK_BLOCKS = 20
"""A breakpoint also hits a cached prefix ending at most this many content blocks before it."""
_ROOT = hash("llmsim-prefix-cache")


@dataclass(frozen=True)
class CacheUsage:
    """What one request's prompt did with the cache: tokens read (not prefilled) and written."""

    read: int = 0
    write_5m: int = 0
    write_1h: int = 0
    """Anthropic: tokens written to the cache under each TTL (the other rules report no writes)."""

    @property
    def write(self) -> int:
        return self.write_5m + self.write_1h


NO_CACHE = CacheUsage()


@dataclass(frozen=True)
class Segment:
    """One content block of an Anthropic prompt, in prompt order (tools, system, messages)."""

    key: str
    """What identifies the block (its JSON without cache_control)."""
    text: str
    """What it adds to the prompt (counted with the model's encoding)."""
    role: str | None = None
    """Set on a message's first block: the message's framing is counted with it."""
    ttl: str | None = None
    """A cache_control breakpoint ends here: "5m" or "1h"."""


def openai_cached(hit: int) -> int:
    """OpenAI's rule: no cached tokens below 1,024, else 1,024 plus whole 128-token steps."""
    if hit < OPENAI_MIN_TOKENS:
        return 0
    return OPENAI_MIN_TOKENS + (hit - OPENAI_MIN_TOKENS) // OPENAI_STEP_TOKENS * OPENAI_STEP_TOKENS


def block_hashes(ids: Sequence[int], block_tokens: int) -> list[int]:
    """Chained hashes of the prompt's full blocks: hash(parent hash, the block's token ids)."""
    out: list[int] = []
    h = _ROOT
    for start in range(0, len(ids) - block_tokens + 1, block_tokens):
        h = hash((h, tuple(ids[start:start + block_tokens])))
        out.append(h)
    return out


def _offload(fn: Callable[[], Any], chars: int) -> Any:
    """Run fn in gevent's threadpool when the prompt is big (tiktoken releases the GIL there)."""
    if chars > OFFLOAD_CHARS and _in_gevent_loop():
        import gevent

        return gevent.get_hub().threadpool.apply(fn)
    return fn()


def prompt_blocks(messages: Sequence[dict], encoding: tiktoken.Encoding, block_tokens: int, *,
                  extra_text: str = "", framing: bool = True,
                  ids: Sequence[int] | None = None) -> tuple[int, list[int]]:
    """(prompt tokens, block hashes) of a prompt: its token ids as tokens.count_prompt_bounded counts
    them (so the count is the same), cut into blocks; `ids`: a prompt given as token ids."""
    if ids is not None:
        given = ids
        return len(given), _offload(lambda: block_hashes(given, block_tokens), len(given))

    def work() -> tuple[int, list[int]]:
        toks = prompt_token_ids(messages, encoding, extra_text=extra_text, framing=framing)
        return len(toks), block_hashes(toks, block_tokens)

    chars = len(extra_text) + sum(len(str(v)) for m in messages for v in m.values())
    return _offload(work, chars)


def segment_prefixes(segments: Sequence[Segment], encoding: tiktoken.Encoding) -> tuple[list[int], list[int]]:
    """(prefix hash, prefix length in tokens) at the end of every segment."""

    def work() -> tuple[list[int], list[int]]:
        hashes, ends = [], []
        h, total = _ROOT, 0
        for seg in segments:
            h = hash((h, seg.role, seg.key))
            total += _count_slices(seg.text, encoding, None)[0] if seg.text else 0  # no second threadpool hop
            if seg.role is not None:
                total += TOKENS_PER_MESSAGE + len(encoding.encode_ordinary(seg.role))
            hashes.append(h)
            ends.append(total)
        return hashes, ends

    return _offload(work, sum(len(s.text) for s in segments))


def segment_key(block: dict) -> str:
    """A content block's identity for the cache: its JSON without cache_control."""
    return json.dumps({k: v for k, v in block.items() if k != "cache_control"}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)


@dataclass
class CacheStats:
    """Cumulative counters of one cache, in prompt tokens (vLLM's prefix_cache_queries and _hits)."""

    queries: int = 0
    """Prompt tokens looked up."""
    hits: int = 0
    """Prompt tokens reused (not prefilled)."""
    requests: int = 0
    hit_requests: int = 0
    written: int = 0
    """Tokens written (Anthropic breakpoints; the other rules cache every full block)."""
    evicted: int = 0
    """Tokens evicted to make room (not counting expiry)."""
    expired: int = 0
    """Tokens whose TTL ran out."""


@dataclass
class _Entry:
    tokens: int
    expires: float = math.inf
    ttl_s: float = math.inf


class PrefixCache:
    """One deployment's LRU cache of prompt prefixes (see the module doc for the rules)."""

    def __init__(self, spec: CacheSpec, rule: str, *, clock: Clock = time.monotonic, name: str = "") -> None:
        self.spec = spec
        self.rule = rule
        self.clock = clock
        self.name = name
        self.capacity_tokens = spec.capacity_tokens
        self.block_tokens = spec.block_tokens
        self.min_prefix_tokens = spec.min_prefix_tokens
        self.tokens = 0
        """Tokens held now."""
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._expiring = 0  # entries with a TTL: only then does snapshot() sweep
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: int) -> bool:
        return self._live(key, self.clock()) is not None

    # ------------------------------------------------------------------ storage

    def _live(self, key: int, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= now:
            self._drop(key, entry)
            self.stats.expired += entry.tokens
            return None
        return entry

    def _drop(self, key: int, entry: _Entry) -> None:
        del self._entries[key]
        self.tokens -= entry.tokens
        if entry.expires != math.inf:
            self._expiring -= 1

    def _put(self, key: int, tokens: int, ttl_s: float = math.inf, now: float = 0.0) -> None:
        """Insert or refresh `key` as the most recently used entry, evicting beyond the capacity."""
        entry = self._entries.get(key)
        expires = now + ttl_s
        if entry is not None:
            self._entries.move_to_end(key)
            expiring = entry.expires != math.inf
            entry.expires, entry.ttl_s = max(entry.expires, expires), max(entry.ttl_s, ttl_s)
            if expiring and entry.expires == math.inf:
                self._expiring -= 1
            return
        if tokens > self.capacity_tokens:
            return
        self._entries[key] = _Entry(tokens, expires, ttl_s)
        self.tokens += tokens
        if expires != math.inf:
            self._expiring += 1
        while self.tokens > self.capacity_tokens:
            old_key, old = next(iter(self._entries.items()))
            self._drop(old_key, old)
            self.stats.evicted += old.tokens

    def sweep(self) -> None:
        """Drop every expired entry now (lookups drop the ones they meet on their own)."""
        if not self._expiring:
            return
        now = self.clock()
        for key in [k for k, e in self._entries.items() if e.expires <= now]:
            self._live(key, now)

    # ------------------------------------------------------------------ vllm and openai rules

    def reusable(self, hit: int, prompt_tokens: int) -> int:
        """The cached tokens a request reuses and reports, from its block-granular hit."""
        hit = min(hit, max(0, prompt_tokens - 1))
        if hit < self.min_prefix_tokens:
            return 0
        return openai_cached(hit) if self.rule == "openai" else hit

    def use_blocks(self, hashes: Sequence[int], prompt_tokens: int) -> CacheUsage:
        """A request with these block hashes arrives: count its leading cached blocks, then cache its blocks."""
        now = self.clock()
        bt = self.block_tokens
        # The prompt's last token is always computed: a full hit stops one block short.
        usable = min(len(hashes), max(0, prompt_tokens - 1) // bt)
        hit_blocks = 0
        for key in hashes[:usable]:
            if self._live(key, now) is None:
                break
            hit_blocks += 1
        cached = self.reusable(hit_blocks * bt, prompt_tokens)
        # The prompt's blocks end most recently used in reverse order (its tail is evicted first, as
        # vLLM frees a request's blocks), and its hit blocks are never evicted to make room for the rest.
        keep = hashes[:self.capacity_tokens // bt]
        entries = self._entries
        for key in reversed(keep[:hit_blocks]):
            entries.move_to_end(key)
        for key in reversed(keep[hit_blocks:]):
            self._put(key, bt, now=now)
        for key in reversed(keep[:hit_blocks]):
            entries.move_to_end(key)
        self._count(prompt_tokens, cached)
        return CacheUsage(read=cached)

    # ------------------------------------------------------------------ anthropic rule

    def use_breakpoints(self, hashes: Sequence[int], ends: Sequence[int], segments: Sequence[Segment],
                        prompt_tokens: int) -> CacheUsage:
        """An Anthropic request: read the longest cached breakpoint prefix, write its later breakpoints."""
        now = self.clock()
        breaks = [i for i, s in enumerate(segments) if s.ttl is not None]
        best = -1
        for b in sorted(breaks, reverse=True):
            if b <= best:
                break
            for j in range(b, max(best, b - ANTHROPIC_LOOKBACK_BLOCKS), -1):
                if self._live(hashes[j], now) is not None:
                    best = j
                    break
        read = min(ends[best], prompt_tokens) if best >= 0 else 0
        if best >= 0:  # a hit restarts the entry's TTL
            entry = self._entries[hashes[best]]
            self._put(hashes[best], entry.tokens, entry.ttl_s, now)
        written = {"5m": 0, "1h": 0}
        done = read
        for b in breaks:
            end = min(ends[b], prompt_tokens)
            if b <= best or end < self.min_prefix_tokens or end <= done:
                continue
            ttl = segments[b].ttl or "5m"
            written[ttl] += end - done
            done = end
            self._put(hashes[b], end, ANTHROPIC_TTLS[ttl], now)
        usage = CacheUsage(read=read, write_5m=written["5m"], write_1h=written["1h"])
        self.stats.written += usage.write
        self._count(prompt_tokens, read)
        return usage

    # ------------------------------------------------------------------ figures

    def _count(self, queries: int, hits: int) -> None:
        st = self.stats
        st.queries += queries
        st.hits += hits
        st.requests += 1
        st.hit_requests += 1 if hits else 0

    def snapshot(self) -> dict:
        """Counters and gauges for /llmsim/stats: in tokens, hit_rate = hits / queries; cached_tokens and
        entries are what the cache holds now."""
        self.sweep()
        st = self.stats
        return {"rule": self.rule, "block_tokens": self.block_tokens, "capacity_tokens": self.capacity_tokens,
                "cached_tokens": self.tokens, "entries": len(self._entries),
                "queries_total": st.queries, "hits_total": st.hits,
                "hit_rate": round(st.hits / st.queries, 6) if st.queries else 0.0,
                "requests_total": st.requests, "hit_requests_total": st.hit_requests,
                "written_total": st.written, "evicted_total": st.evicted, "expired_total": st.expired}

    def __repr__(self) -> str:
        return f"<PrefixCache {self.name or '?'} {self.rule} {self.tokens}/{self.capacity_tokens} tokens>"

