"""The API protocol: what one provider API (Chat Completions, Responses, Messages) implements.

An API parses its body into the engine's neutral `Request`, builds its
non-streaming body from a Generation, and encodes the Generation's block
events (start, delta, stop) as its own stream. `stream_bytes()` drives any
encoder over the paced timeline, so every API streams text, reasoning and
tool calls the same way, and adding an API is one module.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from json.encoder import c_make_encoder  # type: ignore[attr-defined]
from json.encoder import encode_basestring_ascii as _encode_basestring_ascii
from typing import Any, ClassVar

from .engine import Generation, Request
from .errors import ApiError, StreamCut
from .fields import parse_json_object
from .stream import WAIT, Block
from .trace import trace_comment, trace_record


def json_str(text: str) -> bytes:
    """A JSON string literal, as json.dumps writes it (ASCII, escaped), without its per-call set-up: every
    streamed chunk carries one."""
    return _encode_basestring_ascii(text).encode()


def _no_json(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_ENCODE = c_make_encoder(None, _no_json, _encode_basestring_ascii, None, ":", ",", False, False, False)
"""json's own encoder, made once: compact, in the body's key order, never NaN (as Flask's provider is set). With
no circular-reference markers (an answer body is a tree built for it), it costs a third less than json.dumps."""


def json_body(obj: Any) -> bytes:
    """A JSON answer's bytes."""
    return "".join(_ENCODE(obj, 0)).encode() + b"\n"


class StreamEncoder:
    """One response's SSE bytes, event by event. Subclasses override what their API sends."""

    early_open: ClassVar[bool] = False
    """Open the first block with the opening events (before any token), as Anthropic does."""

    def __init__(self, gen: Generation) -> None:
        self.gen = gen

    def opening(self) -> Iterable[bytes]:
        """Events sent at once, before the first token (they also flush the headers)."""
        return ()

    def block_start(self, index: int, block: Block) -> bytes:
        return b""

    def delta(self, index: int, block: Block, text: str) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def block_stop(self, index: int, block: Block) -> bytes:
        return b""

    def choice_closing(self) -> Iterable[bytes]:
        """Events after one choice's last token (Chat: its finish_reason chunk)."""
        return ()

    def closing(self) -> Iterable[bytes]:
        """Events after the last token of every choice: stop reasons, usage, the terminator."""
        return ()

    def for_choice(self, gen: Generation) -> StreamEncoder:  # pragma: no cover - only APIs with `n`
        """The encoder of a further choice (n > 1) of the same response: same id, its own index."""
        raise NotImplementedError

    def error_event(self, err: ApiError) -> bytes:  # pragma: no cover - abstract
        """An in-band failure after the 200 (an injected mid-stream fault)."""
        raise NotImplementedError


class Api:
    """One provider API: its paths, its parser, its bodies and its stream encoder."""

    name: ClassVar[str]
    provider: ClassVar[str]  # whose error envelope: "openai" | "anthropic"
    paths: ClassVar[tuple[str, ...]]
    sse: ClassVar[bool] = True

    def parse(self, body: dict) -> Request:  # pragma: no cover - abstract
        raise NotImplementedError

    def parse_bytes(self, raw: bytes) -> Request:
        """parse() of a raw JSON body, or the provider's 400 saying what is wrong with it.

        A load test sends the same bodies again and again, and validating one is a good part of a
        request's set-up: a body sent lately (up to RECENT_BODY_BYTES) is parsed once, and each
        request gets its own copy of the result.
        """
        known = _RECENT.get((self.name, raw))
        if known is not None:
            return known.copy()
        req = self.parse(parse_json_object(raw))
        if len(raw) <= RECENT_BODY_BYTES:
            if len(_RECENT) >= RECENT_BODIES:
                _RECENT.clear()
            _RECENT[(self.name, raw)] = req.copy()
        return req

    def body(self, gen: Generation) -> dict:  # pragma: no cover - abstract
        """The non-streaming answer."""
        raise NotImplementedError

    def answer_bytes(self, gen: Generation) -> bytes:
        """The non-streaming answer as sent: `body` in JSON, unless an API writes its common shape faster
        (byte for byte the same: tests/test_answer_bytes.py)."""
        return json_body(self.body(gen))

    def encoder(self, gen: Generation) -> StreamEncoder:  # pragma: no cover - abstract
        raise NotImplementedError


RECENT_BODIES = 256
RECENT_BODY_BYTES = 16 * 1024
_RECENT: dict[tuple[str, bytes], Request] = {}


def _blocks(gen: Generation) -> list[Block]:
    return gen.plan.blocks or [Block("text", gen.plan.text, start=0, end=len(gen.plan.pieces))]


def stream_bytes(gen: Generation, enc: StreamEncoder) -> Iterator[bytes]:
    """The whole stream: opening events at once, block events on the paced timeline, then closing.

    A block opens with its first token (the start event and the first delta
    go out together), and closes when the next block begins or the answer
    ends; blocks with no tokens still open and close, in order. With n > 1
    choices, each choice's events interleave in time order (see stream_choices).

    Each content chunk's emit time goes into `gen.emitted` when the generator
    resumes after yielding it: the WSGI server (pywsgi) writes a yielded chunk
    to the socket before asking for the next, so the stamp is taken just after
    the chunk's bytes were handed to the kernel. A traced request (see
    llmsim/trace.py) gets its trace as an SSE comment in the same write as the
    terminator, the last event of `closing()`; `gen.ended` is stamped once the
    terminator was written.

    An empty chunk says "nothing yet": a scheduled stream's next chunk is not due
    (Pacer.scheduled_from), and its writer resumes this generator at `pacer.wake_at`.
    """
    if gen.choices:
        yield from stream_choices(gen, enc)
        return
    blocks = _blocks(gen)
    yield from enc.opening()
    current = -1
    if enc.early_open and blocks:
        yield enc.block_start(0, blocks[0])
        current = 0
    delta = enc.delta
    emitted, clock, next_due = gen.emitted, time.monotonic, gen.pacer.next_due
    due: list[bytes] = []  # chunks already due together, written in one send
    try:
        indices, owner, pieces = gen.timeline()  # gen.paced(), one generator fewer on the stream's stack
        for i in indices:
            if i == WAIT:  # a scheduled stream's next chunk is not due: its writer resumes us then
                # (never with chunks held in `due`: they are held only while the next one is due already)
                yield b""
                continue
            index, text = owner[i], pieces[i]
            if index != current:
                out = _advance(enc, blocks, current, index) + delta(index, blocks[index], text)
                current = index
            else:
                out = delta(index, blocks[index], text)
            nxt = next_due()
            if nxt is not None and nxt <= clock():
                due.append(out)  # the next chunk is due already (a late loop, or no delay at all)
                continue
            if due:
                due.append(out)
                out, n = b"".join(due), len(due)
                due.clear()
                yield out
                emitted.extend([clock()] * n)
            else:
                yield out
                emitted.append(clock())
    except StreamCut:
        if due:  # released before the cut: they go out first
            yield b"".join(due)
        raise
    # The closing events are due at once: the last block's end, the finish, the rest, in one write.
    yield from _closing(gen, enc, [_advance(enc, blocks, current, len(blocks)), *enc.choice_closing()])


def _closing(gen: Generation, enc: StreamEncoder, head: Iterable[bytes] = ()) -> Iterator[bytes]:
    """`head`, then the closing events, in one write; a traced request's trace rides in it, just
    before the terminator."""
    closing = list(enc.closing())
    if gen.trace_id is not None and closing:
        gen.trace = trace_record(gen)
        closing[-1] = trace_comment(gen.trace) + closing[-1]
    yield b"".join([*head, *closing])
    gen.ended = time.monotonic()


def stream_choices(gen: Generation, enc: StreamEncoder) -> Iterator[bytes]:
    """n choices in one stream: every choice opens at once, its chunks go out on its own timeline
    (merged in time order), it closes after its last chunk, and the response closes after all."""
    choices = gen.all
    encs = [enc] + [enc.for_choice(c) for c in choices[1:]]
    blocks = [_blocks(c) for c in choices]
    pieces = [c.plan.pieces for c in choices]
    left = [len(p) for p in pieces]
    current = [-1] * len(choices)
    stamp, clock = gen.emitted.append, time.monotonic
    for e in encs:
        yield from e.opening()
    for k, e in enumerate(encs):
        if not left[k]:  # nothing to stream: its (empty) blocks open and close, and it finishes
            yield _advance(e, blocks[k], -1, len(blocks[k])) + b"".join(e.choice_closing())
    for k, index, i in gen.paced_choices():
        e, b = encs[k], blocks[k]
        out = b""
        if index != current[k]:
            out = _advance(e, b, current[k], index)
            current[k] = index
        out += e.delta(index, b[index], pieces[k][i])
        left[k] -= 1
        if not left[k]:
            out += _advance(e, b, index, len(b)) + b"".join(e.choice_closing())
        yield out
        stamp(clock())
    yield from _closing(gen, enc)


def _advance(enc: StreamEncoder, blocks: list[Block], current: int, target: int) -> bytes:
    """Close block `current`, open and close any empty ones before `target`, open `target`."""
    out = b""
    if current >= 0:
        out += enc.block_stop(current, blocks[current])
    for i in range(current + 1, target):
        out += enc.block_start(i, blocks[i]) + enc.block_stop(i, blocks[i])
    if target < len(blocks):
        out += enc.block_start(target, blocks[target])
    return out
