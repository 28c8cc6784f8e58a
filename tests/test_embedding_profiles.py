"""The `embedding:` profile section: parsing, errors naming the key, and what `llmsim profiles` shows."""

from __future__ import annotations

import pytest

from llmsim.profiles import ProfileError, parse_profiles_document


def one(body: str):
    return parse_profiles_document("x.yaml", "profiles:\n  - name: emb\n    models: [emb]\n" + body)[0]


def test_an_embedding_profile_needs_no_token_timing():
    p = one("    embedding: {dimensions: 64, base_ms: 5, per_token_ms: 0.5}\n    capacity: {max_concurrent: 2}\n")
    e = p.embedding
    assert (e.dimensions, e.base_ms, e.per_token_ms, e.max_input_tokens, e.dimensions_param) == (64, 5, 0.5, 8192,
                                                                                                 False)
    assert e.latency_ms(10) == 10.0 and p.capacity.max_concurrent == 2
    assert p.to_dict()["embedding"]["dimensions"] == 64 and "ttft" not in p.to_dict()


@pytest.mark.parametrize("body, key, reason", [
    ("    embedding: {base_ms: 5}\n", "profiles[emb].embedding.dimensions", "is required"),
    ("    embedding: {dimensions: 0}\n", "profiles[emb].embedding.dimensions", "must be >= 1"),
    ("    embedding: {dimensions: 8, dimensions_param: 1}\n", "profiles[emb].embedding.dimensions_param",
     "true or false"),
    ("    embedding: {dimensions: 8, per_token_ms: -1}\n", "profiles[emb].embedding.per_token_ms", "must be >= 0"),
    ("    embedding: {dimensions: 8, size: 3}\n", "profiles[emb].embedding.size", "unknown key"),
    ("    embedding: {dimensions: 8}\n    ttft: {mean_ms: 1}\n", "profiles[emb].ttft", "generates no tokens"),
    ("    embedding: {dimensions: 8}\n    context_window: 10\n", "profiles[emb].context_window",
     "generates no tokens"),
])
def test_errors_name_the_key(body, key, reason):
    with pytest.raises(ProfileError) as e:
        one(body)
    assert e.value.key == key and reason in e.value.reason
