"""Response text generators: what the simulated model "says".

A generator turns a request into text of about `target_tokens` tokens; the
stream builder then applies the request's own limits (max_tokens, stop). With a
seed, the text depends only on (seed, model, prompt), so the streamed and the
non-streamed answer to the same request are identical.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .tokens import encode, encoding_name_for_model, get_encoding, message_text

DEFAULT_TARGET_TOKENS = 100

_LOREM = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore "
    "magna aliqua ut enim ad minim veniam quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo "
    "consequat duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur "
    "excepteur sint occaecat cupidatat non proident sunt in culpa qui officia deserunt mollit anim id est laborum"
).split()

_RANDOM_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there one all we their been has when who will more no if out so said what up its about than "
    "into them can only other new some could time these two may then do first any my now such like our over man me "
    "even most made after also did many before must through back years where much your way well down should because "
    "each just those people how too little state good very make world still own see men work long get here between "
    "both life being under never day same another know while last might us great old year off come since against "
    "go came right used take three model token stream latency queue batch prompt server client request response "
    "naïve café résumé 東京 数据 данные émoji 🙂 🚀"
).split()


@dataclass
class GenerationRequest:
    """What a generator may look at: the prompt text, the model, the seed."""

    prompt: str = ""
    model: str = "gpt-5"
    seed: int | None = None
    encoding: str | None = None

    @classmethod
    def from_body(cls, body: dict, seed: int | None = None, encoding: str | None = None) -> "GenerationRequest":
        """From a Chat Completions / Messages / Responses request body: the last user text is the prompt."""
        prompt = ""
        messages = body.get("messages")
        if messages is None and "input" in body:
            messages = body["input"] if isinstance(body["input"], list) else [{"role": "user", "content": body["input"]}]
        for msg in reversed(messages or []):
            if isinstance(msg, dict) and msg.get("role") == "user":
                prompt = message_text(msg.get("content"))
                break
        return cls(prompt=prompt, model=str(body.get("model", "gpt-5")), seed=seed, encoding=encoding)

    def rng(self) -> random.Random:
        """Seeded from (seed, model, prompt) when a seed is set; fresh otherwise."""
        if self.seed is None:
            return random.Random()
        digest = hashlib.blake2b(f"{self.seed}\x00{self.model}\x00{self.prompt}".encode(), digest_size=8).digest()
        return random.Random(int.from_bytes(digest, "big"))

    def encoding_name(self) -> str:
        return self.encoding or encoding_name_for_model(self.model)


def _cut_to_tokens(text: str, n: int, encoding_name: str) -> str:
    enc = get_encoding(encoding_name)
    ids = encode(text, enc)
    if len(ids) <= n:
        return text
    return enc.decode(ids[:n])


class Generator:
    """Base class: subclasses implement `_text`; `generate` trims it to the target."""

    name = "base"

    def __init__(self, target_tokens: int = DEFAULT_TARGET_TOKENS) -> None:
        if target_tokens < 1:
            raise ValueError("target_tokens must be >= 1")
        self.target_tokens = target_tokens

    def generate(self, request: GenerationRequest | dict | None = None) -> str:
        """Text of at most `target_tokens` tokens in the request model's encoding."""
        if request is None:
            request = GenerationRequest()
        elif isinstance(request, dict):
            request = GenerationRequest.from_body(request)
        return _cut_to_tokens(self._text(request), self.target_tokens, request.encoding_name())

    def _text(self, request: GenerationRequest) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _words(self, vocabulary: list[str], request: GenerationRequest, sentence: bool) -> str:
        # About one token a word: 1.2x the target is always enough to cut from.
        rng = request.rng()
        n = int(self.target_tokens * 1.2) + 8
        words = [rng.choice(vocabulary) for _ in range(n)]
        if not sentence:
            return " ".join(words)
        out, i = [], 0
        while i < n:
            k = rng.randint(6, 14)
            chunk = words[i:i + k]
            out.append(" ".join(chunk).capitalize() + ".")
            i += k
        return " ".join(out)


class LoremGenerator(Generator):
    """Lorem-ipsum sentences: realistic token shapes, obviously fake text."""

    name = "lorem"

    def _text(self, request: GenerationRequest) -> str:
        return self._words(_LOREM, request, sentence=True)


class RandomGenerator(Generator):
    """Random words, including multi-byte UTF-8 and emoji, to exercise tokenisation edges."""

    name = "random"

    def _text(self, request: GenerationRequest) -> str:
        return self._words(_RANDOM_WORDS, request, sentence=False)


class EchoGenerator(Generator):
    """Repeats the last user message (cut to the target), handy for end-to-end assertions."""

    name = "echo"

    def _text(self, request: GenerationRequest) -> str:
        return request.prompt


class FixedGenerator(Generator):
    """Always the same text."""

    name = "fixed"

    def __init__(self, text: str, target_tokens: int = 1_000_000) -> None:
        super().__init__(target_tokens)
        self.text = text

    def _text(self, request: GenerationRequest) -> str:
        return self.text


class SequenceGenerator(Generator):
    """"1 2 3 …": a lost, duplicated or reordered chunk is visible at a glance."""

    name = "sequence"

    def _text(self, request: GenerationRequest) -> str:
        return " ".join(str(i) for i in range(1, self.target_tokens + 1))


class ScriptGenerator(Generator):
    """Replies from a YAML/JSON list of strings, in turn (cycling): scripted conversations."""

    name = "script"

    def __init__(self, path: str, target_tokens: int = 1_000_000) -> None:
        super().__init__(target_tokens)
        try:
            replies = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: cannot read the script ({e})") from None
        if not isinstance(replies, list) or not replies or not all(isinstance(r, str) for r in replies):
            raise ValueError(f"{path}: a script must be a non-empty list of strings")
        self.replies = replies
        self._next = 0

    def _text(self, request: GenerationRequest) -> str:
        reply = self.replies[self._next % len(self.replies)]
        self._next += 1
        return reply


GENERATOR_NAMES = ("lorem", "echo", "fixed:TEXT", "random", "sequence", "script:FILE")


def make_generator(spec: str, target_tokens: int = DEFAULT_TARGET_TOKENS) -> Generator:
    """A generator from its CLI spelling; ValueError names what is accepted."""
    kind, _, arg = spec.partition(":")
    simple: dict[str, Any] = {"lorem": LoremGenerator, "echo": EchoGenerator, "random": RandomGenerator,
                              "sequence": SequenceGenerator}
    if kind in simple and not arg:
        return simple[kind](target_tokens)
    if kind == "fixed" and arg:
        return FixedGenerator(arg)
    if kind == "script" and arg:
        return ScriptGenerator(arg)
    raise ValueError(f"unknown generator {spec!r} (expected one of: {', '.join(GENERATOR_NAMES)})")
