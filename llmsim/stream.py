"""Text -> BPE tokens -> timed chunks, paced on absolute deadlines.

Two steps, so each can be tested alone:
- TokenStreamBuilder.build() cuts the text (stop sequences, max_tokens) and
  splits it into chunk texts of k tokens, never splitting a UTF-8 character;
- Pacer.paced() releases those chunks at t0 + ttft + Σ itl·slowdown, sleeping
  only for the time remaining, so overshoot never accumulates. A planned Cut
  (an injected mid-stream failure) ends it with StreamCut at the next deadline.
"""

from __future__ import annotations

import codecs
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

import tiktoken

from .errors import Cut, StreamCut
from .latency import LatencyProfile
from .tokens import encode


@dataclass
class TokenPlan:
    """What one response will stream: chunk texts and their token counts."""

    pieces: list[str] = field(default_factory=list)
    piece_tokens: list[int] = field(default_factory=list)
    finish_reason: str = "stop"  # "stop" | "length"
    stop_sequence: str | None = None
    reasoning_tokens: int = 0

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def output_tokens(self) -> int:
        """Visible tokens generated."""
        return sum(self.piece_tokens)

    @property
    def completion_tokens(self) -> int:
        """Visible plus hidden reasoning tokens: what the providers bill and report."""
        return self.output_tokens + self.reasoning_tokens


class TokenStreamBuilder:
    """Splits generated text into the token chunks a real model would stream."""

    def __init__(self, encoding: tiktoken.Encoding, chunk_tokens: int = 1) -> None:
        if chunk_tokens < 1:
            raise ValueError("chunk_tokens must be >= 1")
        self.encoding = encoding
        self.chunk_tokens = chunk_tokens

    def build(self, text: str, max_tokens: int | None = None, stop: Sequence[str] | None = None) -> TokenPlan:
        """Apply stop sequences, then max_tokens (which wins with "length"), then chunk."""
        finish, stop_hit = "stop", None
        if stop:
            cut = min(((text.find(s), s) for s in stop if s and s in text), default=None)
            if cut is not None:
                text, stop_hit = text[:cut[0]], cut[1]
        ids = encode(text, self.encoding)
        if max_tokens is not None and len(ids) > max_tokens:
            ids, finish, stop_hit = ids[:max_tokens], "length", None
        plan = TokenPlan(finish_reason=finish, stop_sequence=stop_hit)
        self._chunk(ids, plan)
        return plan

    def _chunk(self, ids: list[int], plan: TokenPlan) -> None:
        # A token may end inside a multi-byte character: the incremental decoder
        # holds those bytes back, and the token rides along with the next chunk.
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        token_bytes = self.encoding.decode_single_token_bytes
        k = self.chunk_tokens
        buf, pending = "", 0
        for tok in ids:
            pending += 1
            buf += decoder.decode(token_bytes(tok))
            if buf and pending >= k:
                plan.pieces.append(buf)
                plan.piece_tokens.append(pending)
                buf, pending = "", 0
        buf += decoder.decode(b"", final=True)
        if buf:
            plan.pieces.append(buf)
            plan.piece_tokens.append(pending)
        elif pending and plan.pieces:
            plan.piece_tokens[-1] += pending


class Slot(Protocol):
    """A decode slot from the scheduler: its multiplier changes as the batch fills."""

    def multiplier(self) -> float: ...


class _FullSpeed:
    def multiplier(self) -> float:
        return 1.0


FULL_SPEED: Slot = _FullSpeed()


def _gevent_sleep(seconds: float) -> None:
    import gevent

    gevent.sleep(seconds)


class Pacer:
    """Releases chunks on absolute deadlines derived from a latency profile."""

    def __init__(self, latency: LatencyProfile, rng: random.Random, *, prompt_tokens: int = 0,
                 slot: Slot = FULL_SPEED, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = _gevent_sleep, cut: Cut | None = None) -> None:
        self.latency = latency
        self.rng = rng
        self.prompt_tokens = prompt_tokens
        self.slot = slot
        self.clock = clock
        self.sleep = sleep
        self.cut = cut
        self.sent_tokens = 0  # visible tokens released so far (what a cut stream really delivered)

    def _itl_s(self) -> float:
        return self.latency.sample_itl_ms(self.rng) * self.slot.multiplier() / 1000.0

    def first_deadline(self, start: float, reasoning_tokens: int) -> float:
        """start + TTFT (+prefill) + one ITL per hidden reasoning token."""
        t = start + self.latency.sample_ttft_ms(self.rng, self.prompt_tokens) / 1000.0
        for _ in range(reasoning_tokens):
            t += self._itl_s()
        return t

    def paced(self, plan: TokenPlan, start: float | None = None) -> Iterator[str]:
        """Yield each chunk text at its deadline; a k-token chunk waits for its k-th token.

        With a cut planned after n chunks, raise StreamCut at the deadline of chunk n+1
        (or right after the last one): the model "fails" while generating.
        """
        cut = self.cut
        now = self.clock()
        deadline = self.first_deadline(now if start is None else start, plan.reasoning_tokens)
        for i, (piece, ntok) in enumerate(zip(plan.pieces, plan.piece_tokens)):
            extra = ntok - 1 if i == 0 else ntok
            for _ in range(extra):
                deadline += self._itl_s()
            wait = deadline - self.clock()
            if wait > 0:
                self.sleep(wait)
            if cut is not None and i >= cut.after_pieces:
                raise StreamCut(cut)
            self.sent_tokens += ntok
            yield piece
        if cut is not None:
            raise StreamCut(cut)

    def wait_all(self, plan: TokenPlan, start: float | None = None) -> None:
        """Take exactly as long as the stream would (non-streaming responses)."""
        for _ in self.paced(plan, start):
            pass
