"""Embedding vectors: deterministic, unit length, a stable function of the model and the input tokens.

A vector carries no meaning: equal inputs (the same tokens for the same
model) always get the same vector, on any server and under any seed, and
different inputs get nearly orthogonal ones. Shorter vectors (the request's
`dimensions`) are the leading components of the full one, renormalised, as
OpenAI's text-embedding-3 models shorten theirs. Every component is a float32,
so the JSON floats and the base64 form (little-endian float32) decode to the
same numbers.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["EmbedRequest", "EmbedResult", "embedding_vector", "to_base64"]

MAX_INPUTS = 2048
"""OpenAI's limit on inputs per request."""
MAX_REQUEST_TOKENS = 300_000
"""OpenAI's limit on the tokens of all inputs of one request together."""


@dataclass
class EmbedRequest:
    """One API-neutral embeddings request: each input is a text or its token ids."""

    model: str
    inputs: list[str | list[int]]
    dimensions: int | None = None
    input_param: str = "input"
    """How the API names the inputs field (errors name `input` or `input[i]`)."""
    single: bool = False
    """The input was one value, not an array (errors then name `input`, not `input[0]`)."""
    api_key: str | None = None
    arrival: float | None = None
    forced_fault: str | None = None
    """The x-llmsim-fault header, as for generation requests."""


@dataclass
class EmbedResult:
    """The vectors (float32 values, unit length) and the input tokens they cost."""

    request: EmbedRequest
    vectors: list[list[float]] = field(default_factory=list)
    prompt_tokens: int = 0


def embedding_vector(model: str, ids: Sequence[int], native: int, dimensions: int | None = None) -> list[float]:
    """The unit vector of `ids` for `model`: `native` pseudo-random components seeded by both,
    cut to `dimensions` and renormalised, each rounded to float32."""
    key = hashlib.sha256(model.encode() + b"\0" + array("I", ids).tobytes()).digest()
    raw = random.Random(key).randbytes(4 * native)
    comps = struct.unpack(f"<{native}i", raw)[:dimensions or native]
    norm = math.sqrt(math.fsum(c * c for c in comps)) or 1.0
    return array("f", [c / norm for c in comps]).tolist()


def to_base64(vector: Sequence[float]) -> str:
    """OpenAI's `encoding_format: base64`: the vector's little-endian float32 bytes."""
    arr = array("f", vector)
    if sys.byteorder == "big":  # pragma: no cover - the wire format is little-endian
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode("ascii")
