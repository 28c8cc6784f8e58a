"""Token log-probabilities: plausible values for the tokens an answer streams, and k alternatives each.

API-neutral: `token_logprobs()` gives one `TokenLogprob` per token id (its exact
BPE string and bytes, a log-probability <= 0 and up to 20 alternatives sorted
most likely first), and each API formats them its own way (`chat_logprob()` for
Chat Completions' `logprobs.content`). Computed only when a request asks.

The numbers are a model of a sampler, not of a language: the chosen token is
usually the most likely one (a peaked distribution), sometimes the second; the
alternatives share the remaining probability mass, so the probabilities of
one position never add up to more than 1.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

import tiktoken

MAX_TOP_LOGPROBS = 20

_ALTERNATIVE_WORDS = (
    " the", " a", " and", " of", " to", " in", " is", " that", " for", " it", " as", " with", " on", " this",
    " be", " are", " or", " by", " not", " an", " at", " from", " but", " which", " can", " will", " has",
    " more", " also", " one", " all", " would", " there", " their", " so", " if", " about", " these", " then",
    ",", ".", ":", ";", "!", "?", "\n", " (", " -", " I", " we", " you", " they", " he", " she", " The",
    " A", " In", " It", " This", " time", " way", " first", " new", " other", " some", " only", " very",
)


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    bytes: list[int]
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token: its string, bytes and log-probability, and the most likely tokens there."""

    token: str
    bytes: list[int]
    logprob: float
    top: list[TopLogprob]


def token_string(raw: bytes) -> str:
    """A token's text as OpenAI shows it: the UTF-8 text, or `bytes:\\xNN…` for a partial character."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


@lru_cache(maxsize=8)
def _alternatives(enc: tiktoken.Encoding) -> tuple[int, ...]:
    """Common single tokens of an encoding: the plausible runners-up at any position."""
    out = []
    for word in _ALTERNATIVE_WORDS:
        ids = enc.encode_ordinary(word)
        if len(ids) == 1 and ids[0] not in out:
            out.append(ids[0])
    return tuple(out)


def _masses(rng: random.Random, k: int) -> tuple[float, list[float]]:
    """(the chosen token's probability, the k likeliest other tokens' probabilities, descending).

    Usually the sampler took the most likely token (p >= 0.5); with k >= 2,
    sometimes the runner-up, so one alternative is more likely than it.
    """
    if k < 2 or rng.random() < 0.85:
        p_chosen = 1.0 - rng.betavariate(1.0, 6.0) * 0.5
        first = None
    else:
        first = rng.uniform(0.4, 0.6)
        p_chosen = min(rng.uniform(0.1, 0.95 - first), first * 0.95)
    rest = 1.0 - p_chosen - (first or 0.0)
    share = min(rest * rng.uniform(0.2, 0.45), p_chosen * 0.9)  # the tail sums to at most 0.9 rest
    others = [] if first is None else [first]
    while len(others) < k:
        others.append(max(share, 1e-9))
        share *= rng.uniform(0.2, 0.5)
    return p_chosen, others


def token_logprobs(enc: tiktoken.Encoding, ids: list[int], top: int, rng: random.Random) -> list[TokenLogprob]:
    """One TokenLogprob per token id, each with `top` alternatives (0-20): the chosen token
    among them at its rank, then the likeliest other tokens, sorted by log-probability."""
    token_bytes = enc.decode_single_token_bytes
    pool = _alternatives(enc)
    out = []
    for tok in ids:
        raw = token_bytes(tok)
        text, blist = token_string(raw), list(raw)
        p_chosen, others = _masses(rng, top)
        lp = round(math.log(p_chosen), 6)
        entries: list[TopLogprob] = []
        if top:
            candidates = [t for t in rng.sample(pool, min(len(pool), top + 1)) if t != tok]
            entries = [TopLogprob(token_string(token_bytes(t)), list(token_bytes(t)), round(math.log(p), 6))
                       for t, p in zip(candidates, others, strict=False)]
            entries.append(TopLogprob(text, blist, lp))
            entries.sort(key=lambda e: -e.logprob)
            del entries[top:]  # the chosen token ranks first or second: it always stays
        out.append(TokenLogprob(text, blist, lp, entries))
    return out


def chat_logprob(t: TokenLogprob) -> dict:
    """One entry of Chat Completions' `logprobs.content`."""
    return {"token": t.token, "logprob": t.logprob, "bytes": t.bytes,
            "top_logprobs": [{"token": a.token, "logprob": a.logprob, "bytes": a.bytes} for a in t.top]}


def legacy_logprobs(entries: list[TokenLogprob], text_offset: int = 0) -> dict:
    """Legacy Completions' `logprobs` object for these tokens (`logprobs: k` there, 0-5): the tokens,
    their log-probabilities, each position's alternatives as {token: logprob}, and each token's
    character offset in the text, counted from `text_offset`."""
    offsets, at = [], text_offset
    for e in entries:
        offsets.append(at)
        at += len(bytes(e.bytes).decode("utf-8", "ignore"))
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{a.token: a.logprob for a in e.top} for e in entries], "text_offset": offsets}
