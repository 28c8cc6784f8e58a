"""Prompt sources: a synthetic prompt of exactly N tokens, or a JSONL file.

A JSONL line is a JSON string (the user message), an object with "prompt"
(a string) or "messages" (a chat message list), or a bare message list.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import tiktoken

from ..tokens import count_chat_tokens
from ..validation import not_utf8
from .adapters import Prompt

# Common English words; each is checked to be exactly one token (with its
# leading space) in the encoding before use.
_WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an "
          "they you were her she there been one all we their has would when if so no will more can out up about "
          "time them some could into other then two these may first any new like now people only my over just "
          "made after also did many before must through back years where much your way well down should because "
          "each long even here old both good same under great last").split()


class PromptError(ValueError):
    """A prompts file is unusable; str() is one line naming the file, the line and the reason."""


def _single_token_words(enc: tiktoken.Encoding) -> list[str]:
    return [" " + w for w in _WORDS if len(enc.encode_ordinary(" " + w)) == 1]


def synthetic_prompt(n_tokens: int, enc: tiktoken.Encoding, seed: int = 0) -> str:
    """Text of exactly `n_tokens` tokens in `enc` (words drawn with a fixed seed, so runs repeat)."""
    if n_tokens < 1:
        raise ValueError("a prompt needs at least 1 token")
    words = _single_token_words(enc)
    rng = random.Random(seed)
    pieces = ["Write"] + [rng.choice(words) for _ in range(n_tokens - 1)]
    text = "".join(pieces)
    # BPE may merge neighbouring words; trim or pad until the count is exact.
    ids = enc.encode_ordinary(text)
    while len(ids) != n_tokens:
        if len(ids) > n_tokens:
            text = enc.decode(ids[:n_tokens])
        else:
            text += rng.choice(words)
        ids = enc.encode_ordinary(text)
    return text


def _prompt_from_json(obj: Any, where: str) -> tuple[dict[str, Any], ...]:
    if isinstance(obj, str):
        if not obj:
            raise PromptError(f"{where}: empty prompt")
        return ({"role": "user", "content": obj},)
    if isinstance(obj, dict) and "messages" in obj:
        obj = obj["messages"]
    elif isinstance(obj, dict) and "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"]:
            raise PromptError(f"{where}: \"prompt\" must be a non-empty string")
        return ({"role": "user", "content": obj["prompt"]},)
    if isinstance(obj, list) and obj and all(isinstance(m, dict) and "role" in m for m in obj):
        return tuple(obj)
    raise PromptError(f"{where}: expected a string, {{\"prompt\": ...}}, {{\"messages\": [...]}} "
                      "or a list of messages with a \"role\"")


def load_prompts(path: str | Path) -> list[tuple[dict[str, Any], ...]]:
    """Message lists from a JSONL file (blank lines skipped); PromptError on the first bad line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise PromptError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise PromptError(f"{path}: {not_utf8(e)}") from None
    out = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptError(f"{path}:{no}: invalid JSON ({e.msg})") from None
        out.append(_prompt_from_json(obj, f"{path}:{no}"))
    if not out:
        raise PromptError(f"{path}: no prompts in the file")
    return out


def make_prompts(messages_list: list[tuple[dict[str, Any], ...]], enc: tiktoken.Encoding) -> list[Prompt]:
    """Prompts with their client-side token count (OpenAI chat accounting)."""
    return [Prompt(m, count_chat_tokens(m, enc)) for m in messages_list]
