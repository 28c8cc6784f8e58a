"""Response text generators: what the simulated model "says".

A generator turns a request into text of about `target_tokens` tokens, or of
exactly n tokens when asked (`generate(request, tokens=n)`: ignore_eos,
min_tokens, a profile's output-length distribution); the stream builder then
applies the request's own limits (max_tokens, stop). It also writes the prose of
visible reasoning (`reasoning()`), which is never the answer's text. With a
seed, the text depends only on (seed, model, prompt, choice), so the streamed
and the non-streamed answer to the same request are identical.
"""

from __future__ import annotations

import hashlib
import json
import random
from array import array
from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache, lru_cache
from itertools import accumulate, chain, repeat, starmap
from math import floor
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from .tokens import encode, encoding_name_for_model, get_encoding, message_text, remember, token_text

DEFAULT_TARGET_TOKENS = 100
FILLER = " the"
"""One token in every encoding llmsim uses: pads a text to an exact token count when a cut will not do."""

_LOREM = tuple((
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore "
    "magna aliqua ut enim ad minim veniam quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo "
    "consequat duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur "
    "excepteur sint occaecat cupidatat non proident sunt in culpa qui officia deserunt mollit anim id est laborum"
).split())

_RANDOM_WORDS = tuple((
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there one all we their been has when who will more no if out so said what up its about than "
    "into them can only other new some could time these two may then do first any my now such like our over man me "
    "even most made after also did many before must through back years where much your way well down should because "
    "each just those people how too little state good very make world still own see men work long get here between "
    "both life being under never day same another know while last might us great old year off come since against "
    "go came right used take three model token stream latency queue batch prompt server client request response "
    "naïve café résumé 東京 数据 данные émoji 🙂 🚀"
).split())

_REASONING_OPENERS = (
    "The user asks: \"{topic}\". Let me think about this step by step.",
    "Okay, the request is \"{topic}\".",
    "So the question is \"{topic}\". First, let me make sure I understand what is being asked.",
)
_REASONING_STEPS = (
    "I should start with what is actually being asked.",
    "Let me break this into smaller parts and handle them one at a time.",
    "One approach would be to look at the most common case first.",
    "Wait, that does not quite hold in every case, so let me reconsider.",
    "Another way to see it is to compare the options side by side.",
    "I need to check the constraints before going further.",
    "That seems consistent with what I worked out a moment ago.",
    "Hmm, there may be an edge case here worth mentioning.",
    "The key point seems to be the trade-off between simplicity and accuracy.",
    "Let me double-check the details, since a small mistake would change the answer.",
    "If I assume the usual defaults, the reasoning becomes straightforward.",
    "It would help to give a short example as well.",
    "So far the argument holds together.",
    "I should keep the answer clear and not too long.",
)
_REASONING_CLOSERS = (
    "Okay, now I can write the answer.",
    "That settles it; time to answer.",
    "I think I have enough to respond now.",
)


_UNSEEDED = random.Random()


def last_user_text(messages: list) -> str:
    """The last user message's text: what generators answer to ("" when there is none)."""
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return message_text(msg.get("content"))
    return ""


@dataclass
class GenerationRequest:
    """What a generator may look at: the prompt text, the model, the seed."""

    prompt: str = ""
    model: str = "gpt-5"
    seed: int | None = None
    encoding: str | None = None
    conversation: str | None = None
    """Which conversation the request continues (a scripted cursor per conversation keys on it)."""
    choice: int = 0
    """Which of the request's `n` choices this is: each seeded choice says something different."""

    @classmethod
    def from_body(cls, body: dict, seed: int | None = None, encoding: str | None = None) -> GenerationRequest:
        """From a Chat Completions / Messages / Responses request body: the last user text is the prompt."""
        messages = body.get("messages")
        if messages is None and "input" in body:
            value = body["input"]
            messages = value if isinstance(value, list) else [{"role": "user", "content": value}]
        return cls(prompt=last_user_text(messages or []), model=str(body.get("model", "gpt-5")), seed=seed,
                   encoding=encoding)

    @classmethod
    def of(cls, request: GenerationRequest | dict | None) -> GenerationRequest:
        """What a generator's callers may pass (a request, a request body, nothing) as a request."""
        if request is None:
            return cls()
        return cls.from_body(request) if isinstance(request, dict) else request

    def rng(self, salt: str = "") -> random.Random:
        """Seeded from (seed, model, prompt, choice, salt) when a seed is set; fresh otherwise.

        `salt` separates what one request draws (the answer, its reasoning, its logprobs).
        """
        if self.seed is None:
            return _UNSEEDED
        key = f"{self.seed}\x00{self.model}\x00{self.prompt}"
        if self.choice:
            key += f"\x00choice:{self.choice}"
        if salt:
            key += f"\x00{salt}"
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return random.Random(int.from_bytes(digest, "big"))

    def encoding_name(self) -> str:
        return self.encoding or encoding_name_for_model(self.model)


def _cut_to_tokens(text: str, n: int, encoding_name: str) -> str:
    enc = get_encoding(encoding_name)
    ids = encode(text, enc)
    if len(ids) <= n:
        return text
    return enc.decode(ids[:n])


def fit_tokens(text: str, n: int, encoding_name: str) -> str:
    """`text` cut (or padded) to exactly `n` tokens, as the stream builder will count it again.

    A cut inside a word may re-tokenise differently; then the text is cut back
    to a space (a token boundary in o200k_base and cl100k_base) and padded
    with one-token filler words.
    """
    if n <= 0:
        return ""
    enc = get_encoding(encoding_name)
    ids = encode(text, enc)
    if len(ids) >= n:
        cut = enc.decode(ids[:n])
        if len(encode(cut, enc)) == n:
            return cut
        text = cut
    while text and len(encode(text, enc)) > n:
        head, sep, _ = text.rpartition(" ")
        text = head if sep else ""
    have = len(encode(text, enc))
    text += FILLER * (n - have)
    while len(encode(text, enc)) > n:  # never expected: a filler merged with the text before it
        text = text[:-1]
    return text


class Generator:
    """Base class: subclasses implement `_text`; `generate` trims it to the target."""

    name = "base"

    def __init__(self, target_tokens: int = DEFAULT_TARGET_TOKENS) -> None:
        if target_tokens < 1:
            raise ValueError("target_tokens must be >= 1")
        self.target_tokens = target_tokens

    fills_target = False
    """Writes as much as a target asks (lorem, random, sequence); others are cut to it (echo)."""
    keeps_own_length = False
    """Its replies keep their own length whatever the target (fixed, script)."""

    def generate(self, request: GenerationRequest | dict | None = None, tokens: int | None = None, *,
                 target: int | None = None) -> str:
        """Text of at most `target_tokens` tokens in the request model's encoding.

        `target` replaces target_tokens for this reply (a profile's output-length
        draw); `tokens` asks for exactly that many tokens, extending the text to
        reach it (more words, or the text repeated: ignore_eos, min_tokens).
        """
        request = GenerationRequest.of(request)
        name = request.encoding_name()
        if tokens is not None:
            return fit_tokens(self._long_text(request, tokens), tokens, name)
        if target is not None and not self.keeps_own_length:
            if self.fills_target:
                return fit_tokens(self._long_text(request, target), target, name)
            return _cut_to_tokens(self._text(request), target, name)
        return _cut_to_tokens(self._text(request), self.target_tokens, name)

    def _text(self, request: GenerationRequest) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _long_text(self, request: GenerationRequest, tokens: int) -> str:
        """Text of at least `tokens` tokens: the generator's own text, repeated as often as needed."""
        text = self._text(request).strip() or " ".join(_LOREM)
        have = len(encode(text, get_encoding(request.encoding_name())))
        return " ".join([text] * (tokens // max(1, have) + 1))

    def reasoning(self, request: GenerationRequest | dict | None = None, tokens: int = 0) -> str:
        """Visible reasoning of exactly `tokens` tokens: plausible step-by-step prose about the
        prompt, never the answer's own text (seeded like the answer, from its own draw). `request` as
        generate() takes it (a request body works too)."""
        request = GenerationRequest.of(request)
        if tokens <= 0:
            return ""
        rng = request.rng("reasoning")
        enc = get_encoding(request.encoding_name())
        words = request.prompt.split()
        topic = " ".join(words[:12]) + (" …" if len(words) > 12 else "") if words else "(no question)"
        sentences: list[str] = [rng.choice(_REASONING_OPENERS).format(topic=topic)]
        closer = rng.choice(_REASONING_CLOSERS)
        have = len(encode(sentences[0], enc)) + len(encode(" " + closer, enc))
        while have < tokens:
            sentence = rng.choice([s for s in _REASONING_STEPS if s != sentences[-1]])
            sentences.append(sentence)
            have += len(encode(" " + sentence, enc))  # the joining space belongs to the sentence's first token
        sentences.append(closer)
        # At least `tokens` tokens of prose now (a sentence's count can shift by one where it meets the next):
        # cut to exactly `tokens`; pads only in the rare case of a shortfall, never by a run of filler words.
        return fit_tokens(" ".join(sentences), tokens, request.encoding_name())

    def prepare(self, encoding_name: str) -> None:
        """Build whatever per-encoding tables the generator uses now (the server calls it at start-up)."""

    def turn(self, request: GenerationRequest) -> ScriptTurn | None:
        """A scripted turn (text, tool calls, an error), or None to let the engine decide the answer."""
        return None

    def _words(self, vocabulary: tuple[str, ...], request: GenerationRequest, sentence: bool,
               tokens: int | None = None) -> str:
        # About one token a word: 1.2x the target is always enough to cut from.
        rng = request.rng()
        n = int((tokens or self.target_tokens) * 1.2) + 8
        if sentence:
            return "".join(_sentence_forms(rng, vocabulary, n))
        return " ".join(rng.choices(vocabulary, k=n))  # one call: this runs for every request, on the event loop


@cache
def _lorem_ids(encoding_name: str) -> dict[str, tuple[int, ...]] | None:
    """Every form a lorem word takes in a sentence (`Word`, ` word`, ` Word`, `.`) and its token ids.

    The encodings split text into pieces (a word with its leading space, a run
    of punctuation) before merging tokens, and never merge across pieces, so a
    lorem text's ids are its pieces' ids end to end: no tokenising per request.
    Checked once on a long sample; None (tokenise as usual) if it does not hold.
    """
    enc = get_encoding(encoding_name)
    table: dict[str, tuple[int, ...]] = {".": tuple(enc.encode_ordinary("."))}
    for word in set(_LOREM):
        for form in (word, " " + word, word.capitalize(), " " + word.capitalize()):
            table[form] = tuple(enc.encode_ordinary(form))
    forms = _sentence_forms(random.Random(0), _LOREM, 3000)
    if [t for f in forms for t in table[f]] != enc.encode_ordinary("".join(forms)):
        return None
    return table


@cache
def _lorem_lengths(encoding_name: str) -> dict[str, int] | None:
    """Each lorem form's token count (see _lorem_ids)."""
    table = _lorem_ids(encoding_name)
    return None if table is None else {form: len(ids) for form, ids in table.items()}


@cache
def _word_forms(vocabulary: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Each word as `Word` (a text's first), ` Word` (a later sentence's first) and ` word` (the rest)."""
    return (tuple(w.capitalize() for w in vocabulary), tuple(" " + w.capitalize() for w in vocabulary),
            tuple(" " + w for w in vocabulary))


def _sentence_forms(rng: random.Random, vocabulary: tuple[str, ...], count: int) -> list[str]:
    """`count` words drawn from a lower-case vocabulary, as sentences of 6 to 14 words, in the pieces the
    tokeniser splits them into: `Word`, ` word`, `.`, ` Word` ... (joined, they are the text).

    It runs for every request, on the event loop, so the draws are made in C where they can be: the
    same draws, in the same order, as `rng.choices(vocabulary, k=count)` and then `rng.randint(6, 14)`
    per sentence (the words' draws below are random.choices' own; a sentence's length is randint's
    rejection sampling of 4 random bits).
    """
    n = float(len(vocabulary))
    words = list(map(floor, map(n.__mul__, starmap(rng.random, repeat((), count)))))
    first, capital, lower = _word_forms(vocabulary)
    getrandbits = rng.getrandbits
    forms: list[str] = []
    i = 0
    while i < count:
        r = getrandbits(4)
        while r >= 9:
            r = getrandbits(4)
        k = 6 + r
        forms.append(capital[words[i]] if forms else first[words[i]])
        forms.extend(map(lower.__getitem__, words[i + 1:i + k]))
        forms.append(".")
        i += k
    return forms


POOL_WORDS = 50_000
"""Lorem words drawn once per encoding at start-up; an unseeded answer is a window of them."""


class _Pool(NamedTuple):
    """A long lorem text drawn once per encoding, in the forms, tokens and token texts it is made of."""

    forms: list[str]
    upto: array
    """Tokens up to and including each form."""
    ids: list[int]
    """Every token of the text, in order (forms[i]'s are ids[upto[i - 1]:upto[i]]); a list, since an
    answer's ids are a list and slicing one copies pointers, not numbers into new objects."""
    pieces: list[str]
    """Each token's text: a stream of one token a chunk, ready made."""


@cache
def _lorem_pool(encoding_name: str) -> _Pool | None:
    """The text unseeded answers are windows of.

    An unseeded answer needs lorem that differs from request to request, not a
    fresh draw of every word: a window of this text from a random word (its
    first letter capitalised) costs one draw, where drawing 120 words and their
    sentences costs most of a request's set-up, and its tokens and their texts
    are slices of the pool's. Two unseeded answers start at the same word about
    once in POOL_WORDS.
    """
    table, lengths = _lorem_ids(encoding_name), _lorem_lengths(encoding_name)
    if table is None or lengths is None:
        return None
    forms = _sentence_forms(random.Random(encoding_name), _LOREM, POOL_WORDS)
    forms[0] = " " + forms[0]  # every word with its space: a window's first drops it
    ids = list(chain.from_iterable(map(table.__getitem__, forms)))
    enc = get_encoding(encoding_name)
    texts = {t: token_text(enc, t) for t in set(ids)}
    if None in texts.values():
        return None  # lorem is ASCII: every token is whole characters in the encodings llmsim knows
    return _Pool(forms, array("i", accumulate(map(lengths.__getitem__, forms))), ids,
                 list(map(texts.__getitem__, ids)))  # type: ignore[arg-type]


def _pool_window(encoding_name: str, n: int, exact: bool) -> tuple[str, list[int], list[str] | None] | None:
    """An unseeded answer of n tokens: (text, ids, each token's text), a window of the pool from a
    random word; None when the pool is too short for n, or (exact) when the word the n-th token ends
    inside says more tokens once cut."""
    pool = _lorem_pool(encoding_name)
    if pool is None:
        return None
    forms, upto, pieces = pool.forms, pool.upto, pool.pieces
    start = floor(_UNSEEDED.random() * (len(forms) - 1))
    if forms[start] == ".":
        start += 1
    first, head, head_pieces = _opening(encoding_name, forms[start])
    begin = upto[start]  # the pool's token after the first word
    end = begin + n - len(head)
    if end <= begin or end > len(pool.ids):
        return None
    last = bisect_left(upto, end, start)  # the form holding the n-th token
    if upto[last] == end:
        whole = [*head_pieces, *pieces[begin:end]]
        return "".join(whole), [*head, *pool.ids[begin:end]], whole
    before = upto[last - 1]
    partial = "".join(pieces[before:end])
    tail, tail_pieces = _word_cut(encoding_name, partial)
    if exact and len(tail) != end - before:
        return None
    out = [*head_pieces, *pieces[begin:before], *tail_pieces] if tail_pieces is not None else None
    text = "".join(out) if out is not None else first + "".join(pieces[begin:before]) + partial
    return text, [*head, *pool.ids[begin:before], *tail], out


@cache
def _opening(encoding_name: str, form: str) -> tuple[str, tuple[int, ...], tuple[str, ...]]:
    """A pool form as an answer's first word: capitalised, without its space, with its ids and token
    texts (the lorem vocabulary is small: a few hundred of these)."""
    first = form[1:].capitalize()
    enc = get_encoding(encoding_name)
    ids = tuple(enc.encode_ordinary(first))
    return first, ids, tuple(token_text(enc, t) or "" for t in ids)


@lru_cache(maxsize=4096)
def _word_cut(encoding_name: str, partial: str) -> tuple[tuple[int, ...], tuple[str, ...] | None]:
    """The ids of a word cut short (`partial`, when an answer's n-th token ends inside it), as a client
    would count the cut text (exact lengths check they are as many as were cut), and their texts (None
    when one splits a character)."""
    enc = get_encoding(encoding_name)
    ids = tuple(enc.encode_ordinary(partial))
    texts = tuple(token_text(enc, t) for t in ids)
    return ids, None if None in texts else texts  # type: ignore[return-value]


class LoremGenerator(Generator):
    """Lorem-ipsum sentences: realistic token shapes, obviously fake text."""

    name = "lorem"
    fills_target = True

    def generate(self, request: GenerationRequest | dict | None = None, tokens: int | None = None, *,
                 target: int | None = None) -> str:
        """As Generator.generate (the same text from the same draws), built from token pieces."""
        request = GenerationRequest.of(request)
        n = tokens if tokens is not None else target if target is not None else self.target_tokens
        text = self._from_pieces(request, n, exact=tokens is not None or target is not None) if n > 0 else None
        return text if text is not None else super().generate(request, tokens, target=target)

    def prepare(self, encoding_name: str) -> None:
        _lorem_pool(encoding_name)

    def _from_pieces(self, request: GenerationRequest, n: int, exact: bool) -> str | None:
        name = request.encoding_name()
        table, lengths = _lorem_ids(name), _lorem_lengths(name)
        if table is None or lengths is None:
            return None
        enc = get_encoding(name)
        if request.seed is None:
            window = _pool_window(name, n, exact)
            if window is not None:
                text, ids, pieces = window
                remember(text, enc, ids, pieces)
                return text
        forms = _sentence_forms(request.rng(), _LOREM, int(n * 1.2) + 8)
        upto = list(accumulate(map(lengths.__getitem__, forms)))
        # upto[i]: the tokens of forms[:i + 1]. The first form that reaches n holds the n-th token.
        j = bisect_left(upto, n)
        if j == len(upto):  # shorter than n: whole, or padded as fit_tokens pads
            text = "".join(forms)
            ids = list(chain.from_iterable(map(table.__getitem__, forms)))
            if exact:
                text += FILLER * (n - len(ids))
                ids += encode(FILLER, enc) * (n - len(ids))
        elif upto[j] == n:
            text = "".join(forms[:j + 1])
            ids = list(chain.from_iterable(map(table.__getitem__, forms[:j + 1])))
        else:
            before = upto[j - 1] if j else 0
            partial = enc.decode(list(table[forms[j]][:n - before]))
            tail, _ = _word_cut(name, partial)
            if exact and len(tail) != n - before:  # the rare word that re-tokenises otherwise once cut
                return fit_tokens("".join(forms), n, name)
            text = "".join(forms[:j]) + partial
            ids = [*chain.from_iterable(map(table.__getitem__, forms[:j])), *tail]
        remember(text, enc, ids)
        return text

    def _text(self, request: GenerationRequest) -> str:
        return self._words(_LOREM, request, sentence=True)

    def _long_text(self, request: GenerationRequest, tokens: int) -> str:
        return self._words(_LOREM, request, sentence=True, tokens=tokens)


class RandomGenerator(Generator):
    """Random words, including multi-byte UTF-8 and emoji, to exercise tokenisation edges."""

    name = "random"
    fills_target = True

    def _text(self, request: GenerationRequest) -> str:
        return self._words(_RANDOM_WORDS, request, sentence=False)

    def _long_text(self, request: GenerationRequest, tokens: int) -> str:
        # Multi-byte words take several tokens each: 1.2 words a token is plenty.
        return self._words(_RANDOM_WORDS, request, sentence=False, tokens=tokens)


class EchoGenerator(Generator):
    """Repeats the last user message (cut to the target), handy for end-to-end assertions."""

    name = "echo"

    def _text(self, request: GenerationRequest) -> str:
        return request.prompt


class FixedGenerator(Generator):
    """Always the same text."""

    name = "fixed"
    keeps_own_length = True

    def __init__(self, text: str, target_tokens: int = 1_000_000) -> None:
        super().__init__(target_tokens)
        self.text = text

    def _text(self, request: GenerationRequest) -> str:
        return self.text


class SequenceGenerator(Generator):
    """"1 2 3 …": a lost, duplicated or reordered chunk is visible at a glance."""

    name = "sequence"
    fills_target = True

    def _text(self, request: GenerationRequest) -> str:
        return " ".join(str(i) for i in range(1, self.target_tokens + 1))

    def _long_text(self, request: GenerationRequest, tokens: int) -> str:
        return " ".join(str(i) for i in range(1, tokens + 1))


@dataclass(frozen=True)
class ScriptTurn:
    """One scripted reply: text, tool calls (name, JSON arguments, id or None), or an error.

    `fault` is an injected fault kind (errors.FAULT_KINDS); `status`/`message`
    make a plain error answer instead.
    """

    text: str = ""
    tool_calls: tuple[tuple[str, str, str | None], ...] = ()
    fault: str | None = None
    status: int | None = None
    message: str | None = None

    @property
    def is_error(self) -> bool:
        return self.fault is not None or self.status is not None


ON_EXHAUSTED = ("loop", "repeat_last", "error")
CURSORS = ("global", "conversation")
MAX_CONVERSATIONS = 10_000
"""Per-conversation cursors kept at most (least recently used forgotten first)."""


class ScriptError(ValueError):
    """A script file is wrong; str() names the file, the turn and the reason."""


def _parse_turn(path: str, i: int, raw: Any) -> ScriptTurn:
    from .errors import FAULT_KINDS

    where = f"{path}: turns[{i}]"
    if isinstance(raw, str):
        return ScriptTurn(text=raw)
    if not isinstance(raw, dict):
        raise ScriptError(f"{where}: must be a string or a mapping (text, tool_calls, error)")
    unknown = set(raw) - {"text", "tool_calls", "error", "kind"}
    if unknown:
        raise ScriptError(f"{where}.{sorted(unknown)[0]}: unknown key (expected text, tool_calls, error)")
    text = raw.get("text", "")
    if not isinstance(text, str):
        raise ScriptError(f"{where}.text: must be a string")
    calls = []
    for j, call in enumerate(raw.get("tool_calls") or []):
        cw = f"{where}.tool_calls[{j}]"
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
            raise ScriptError(f"{cw}.name: every tool call needs a name")
        args = call.get("arguments", {})
        if isinstance(args, str):
            try:
                json.loads(args)
            except ValueError:
                raise ScriptError(f"{cw}.arguments: a string must hold JSON") from None
        elif isinstance(args, dict):
            args = json.dumps(args, ensure_ascii=False)
        else:
            raise ScriptError(f"{cw}.arguments: must be a mapping or a JSON string")
        call_id = call.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise ScriptError(f"{cw}.id: must be a string")
        calls.append((call["name"], args, call_id))
    if "tool_calls" in raw and not calls:
        raise ScriptError(f"{where}.tool_calls: must be a non-empty list")
    error = raw.get("error")
    fault = status = message = None
    if error is not None:
        if text or calls:
            raise ScriptError(f"{where}.error: an error turn has no text or tool calls")
        if isinstance(error, str):
            if error not in FAULT_KINDS:
                raise ScriptError(f"{where}.error: unknown fault kind {error!r} (known: {', '.join(FAULT_KINDS)})")
            fault = error
        elif isinstance(error, dict) and isinstance(error.get("status"), int) and 400 <= error["status"] <= 599:
            status, message = error["status"], str(error.get("message") or f"scripted error {error['status']}")
        else:
            raise ScriptError(f"{where}.error: must be a fault kind or {{status: 4xx/5xx, message: ...}}")
    kind = raw.get("kind")
    actual = "error" if error is not None else "mixed" if text and calls else "tool_calls" if calls else "text"
    if kind is not None and kind != actual:
        raise ScriptError(f"{where}.kind: says {kind!r} but the turn is {actual!r}")
    return ScriptTurn(text=text, tool_calls=tuple(calls), fault=fault, status=status, message=message)


class ScriptGenerator(Generator):
    """Replies from a YAML/JSON script, in turn: scripted conversations and deterministic agent tests.

    The file is a list of turns, or a mapping `{turns: [...], on_exhausted:
    loop|repeat_last|error, cursor: global|conversation}`. A turn is a string
    (text), or a mapping with `text`, `tool_calls` ([{name, arguments, id}])
    or both (a mixed turn), or `error` (a fault kind, or {status, message}).
    With `cursor: conversation` every conversation (the `x-llmsim-conversation`
    header, else its first user message) walks the script from the start.
    """

    name = "script"
    keeps_own_length = True

    def __init__(self, path: str, target_tokens: int = 1_000_000) -> None:
        super().__init__(target_tokens)
        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
            raise ScriptError(f"{path}: cannot read the script ({e})") from None
        options: dict[str, Any] = {}
        if isinstance(doc, dict):
            options = {k: v for k, v in doc.items() if k != "turns"}
            unknown = set(options) - {"on_exhausted", "cursor"}
            if unknown:
                raise ScriptError(f"{path}: {sorted(unknown)[0]}: unknown key (expected turns, on_exhausted, cursor)")
            doc = doc.get("turns")
        if not isinstance(doc, list) or not doc:
            raise ScriptError(f"{path}: a script must be a non-empty list of turns (or {{turns: [...]}})")
        self.turns = [_parse_turn(path, i, t) for i, t in enumerate(doc)]
        self.on_exhausted = options.get("on_exhausted", "loop")
        if self.on_exhausted not in ON_EXHAUSTED:
            raise ScriptError(f"{path}: on_exhausted: must be one of {', '.join(ON_EXHAUSTED)}")
        self.cursor = options.get("cursor", "global")
        if self.cursor not in CURSORS:
            raise ScriptError(f"{path}: cursor: must be one of {', '.join(CURSORS)}")
        self._next = 0
        self._conversations: OrderedDict[str, int] = OrderedDict()

    @property
    def replies(self) -> list[str]:
        return [t.text for t in self.turns]

    def _advance(self, conversation: str | None) -> int:
        if self.cursor == "conversation":
            key = conversation or ""
            i = self._conversations.pop(key, 0)
            self._conversations[key] = i + 1
            while len(self._conversations) > MAX_CONVERSATIONS:
                self._conversations.popitem(last=False)
            return i
        i = self._next
        self._next += 1
        return i

    def turn(self, request: GenerationRequest) -> ScriptTurn:
        i = self._advance(request.conversation)
        n = len(self.turns)
        if i < n:
            return self.turns[i]
        if self.on_exhausted == "repeat_last":
            return self.turns[-1]
        if self.on_exhausted == "error":
            return ScriptTurn(status=500, message=f"llmsim script exhausted: all {n} turns were used")
        return self.turns[i % n]

    def _text(self, request: GenerationRequest) -> str:
        return self.turn(request).text


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
