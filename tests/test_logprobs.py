"""llmsim/logprobs.py: plausible, well-formed token log-probabilities for every API to format."""

import math
import random

import pytest

from llmsim.logprobs import chat_logprob, legacy_logprobs, token_logprobs, token_string
from llmsim.tokens import get_encoding

TEXT = "Hello 東京 world 🙂, naïve café. " * 20


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
@pytest.mark.parametrize("k", [0, 1, 2, 5, 20])
def test_every_position_is_a_distribution(encoding, k):
    enc = get_encoding(encoding)
    ids = enc.encode_ordinary(TEXT)
    entries = token_logprobs(enc, ids, k, random.Random(k))
    assert len(entries) == len(ids)
    assert b"".join(bytes(e.bytes) for e in entries) == TEXT.encode()
    for tok, e in zip(ids, entries):
        assert bytes(e.bytes) == enc.decode_single_token_bytes(tok) and e.logprob <= 0
        assert len(e.top) == k and len({a.token for a in e.top}) == k
        tops = [a.logprob for a in e.top]
        assert tops == sorted(tops, reverse=True) and sum(math.exp(t) for t in tops) <= 1 + 1e-6
        if k:  # the chosen token is first, or second behind a likelier one that was not taken
            assert (e.token, e.logprob) in [(a.token, a.logprob) for a in e.top[:2]]
        if k == 1:
            assert e.top[0].token == e.token


def test_mostly_confident_and_seeded():
    enc = get_encoding("o200k_base")
    ids = enc.encode_ordinary(TEXT)
    a = token_logprobs(enc, ids, 3, random.Random(5))
    assert a == token_logprobs(enc, ids, 3, random.Random(5))
    assert sum(e.logprob > math.log(0.5) for e in a) / len(a) > 0.7


def test_token_strings_and_shapes():
    assert token_string(b" caf\xc3\xa9") == " café"
    assert token_string(b"\xe6\x9d") == "bytes:\\xe6\\x9d"
    enc = get_encoding("o200k_base")
    entries = token_logprobs(enc, enc.encode_ordinary("hi there"), 2, random.Random(1))
    assert set(chat_logprob(entries[0])) == {"token", "logprob", "bytes", "top_logprobs"}
    legacy = legacy_logprobs(entries, text_offset=4)
    assert legacy["tokens"] == ["hi", " there"] and legacy["text_offset"] == [4, 6]
    assert len(legacy["top_logprobs"][0]) == 2 and legacy["token_logprobs"][0] == entries[0].logprob
