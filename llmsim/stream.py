"""Output blocks -> BPE tokens -> timed chunks, paced on absolute deadlines.

Two steps, so each can be tested alone:
- TokenStreamBuilder.build()/build_blocks() cut the output (stop sequences,
  max_tokens) and split every block (text, reasoning, tool call) into chunk
  texts of k tokens, never splitting a UTF-8 character, on one flat timeline;
- Pacer.paced() releases those chunks at t0 + ttft + Σ itl·slowdown, sleeping
  only for the time remaining, so overshoot never accumulates; given a
  PreciseTimer it wakes just before each deadline and finishes the wait on it.
  A planned Cut (an injected mid-stream failure) ends it with StreamCut at the
  next deadline.
"""

from __future__ import annotations

import codecs
import random
import time
from array import array
from collections.abc import Callable, Iterator, MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import tiktoken

from .errors import Cut, StreamCut
from .latency import LatencyProfile
from .precise import PRECISE_MARGIN_S, PreciseTimer
from .tokens import encode, known_pieces, token_text, token_texts

BLOCK_KINDS = ("text", "reasoning", "tool_call")


@dataclass(slots=True)
class Block:
    """One typed part of an answer: text, visible reasoning, or a tool call.

    `text` is what the block says (for a tool call: its JSON arguments). Once
    planned, the block's tokens are the plan's chunks `start` to `end`.
    """

    kind: str = "text"
    text: str = ""
    call_id: str | None = None
    name: str | None = None
    start: int = 0
    end: int = 0

    def __post_init__(self) -> None:
        if self.kind not in BLOCK_KINDS:
            raise ValueError(f"block kind must be one of {', '.join(BLOCK_KINDS)}, not {self.kind!r}")


@dataclass(slots=True)
class TokenPlan:
    """What one response will stream: chunk texts and their token counts, on one timeline.

    `blocks` say which chunks belong to which block (empty for a plain text
    plan, whose text is all its chunks).
    """

    pieces: list[str] = field(default_factory=list)
    piece_tokens: MutableSequence[int] = field(default_factory=list)
    finish_reason: str = "stop"  # "stop" | "length" | "tool_calls"
    stop_sequence: str | None = None
    reasoning_tokens: int = 0
    """Hidden reasoning: spent before the first chunk, never streamed."""
    blocks: list[Block] = field(default_factory=list)
    piece_ids: list[list[int]] | None = None
    """Each chunk's token ids, kept only when asked (logprobs need them)."""
    logprobs: list[list[Any]] | None = None
    """Each chunk's tokens with their log-probabilities (logprobs.TokenLogprob; [] outside text blocks)."""
    prompt_logprobs: list[Any] | None = None
    """The echoed prompt's tokens with their log-probabilities (legacy Completions' `echo` with `logprobs`)."""

    def block_text(self, block: Block) -> str:
        return "".join(self.pieces[block.start:block.end])

    def block_tokens(self, block: Block) -> int:
        return sum(self.piece_tokens[block.start:block.end])

    @property
    def text(self) -> str:
        """The visible answer text (text blocks only)."""
        if not self.blocks:
            return "".join(self.pieces)
        # A planned block holds its text already (build_blocks): not joined again from its chunks.
        return "".join(b.text or self.block_text(b) for b in self.blocks if b.kind == "text")

    @property
    def tool_calls(self) -> list[Block]:
        return [b for b in self.blocks if b.kind == "tool_call"]

    @property
    def visible_reasoning_tokens(self) -> int:
        return sum(self.block_tokens(b) for b in self.blocks if b.kind == "reasoning")

    @property
    def output_tokens(self) -> int:
        """Tokens streamed (text, visible reasoning and tool-call arguments)."""
        return sum(self.piece_tokens)

    @property
    def completion_tokens(self) -> int:
        """Streamed plus hidden reasoning tokens: what the providers bill and report."""
        return self.output_tokens + self.reasoning_tokens

    @property
    def all_reasoning_tokens(self) -> int:
        """Hidden and visible reasoning: what usage reports as reasoning tokens."""
        return self.reasoning_tokens + self.visible_reasoning_tokens

    def piece_blocks(self) -> list[int]:
        """The block index of every chunk (all 0 for a plain text plan)."""
        owner = [0] * len(self.pieces)
        for i, b in enumerate(self.blocks):
            owner[b.start:b.end] = [i] * (b.end - b.start)
        return owner


class TokenStreamBuilder:
    """Splits generated output into the token chunks a real model would stream."""

    def __init__(self, encoding: tiktoken.Encoding, chunk_tokens: int = 1) -> None:
        if chunk_tokens < 1:
            raise ValueError("chunk_tokens must be >= 1")
        self.encoding = encoding
        self.chunk_tokens = chunk_tokens

    def build(self, text: str, max_tokens: int | None = None, stop: str | Sequence[str] | None = None) -> TokenPlan:
        """Apply stop sequences (one string is one sequence, as the APIs take it), then max_tokens (which wins
        with "length"), then chunk."""
        plan = self.build_blocks([Block("text", text)], max_tokens, [stop] if isinstance(stop, str) else stop)
        plan.blocks = []
        return plan

    def build_blocks(self, blocks: Sequence[Block], max_tokens: int | None = None,
                     stop: Sequence[str] | None = None, *, keep_ids: bool = False) -> TokenPlan:
        """Plan every block in order on one timeline; max_tokens counts across them all.

        Stop sequences cut text blocks (and end the answer there); max_tokens
        cuts wherever the budget runs out, even inside a tool call's arguments
        (as a real model's would, leaving invalid JSON), and wins with "length".
        With keep_ids, `piece_ids` holds every chunk's token ids.
        """
        plan = TokenPlan()
        if keep_ids:
            plan.piece_ids = []
        budget = max_tokens
        calls = False
        for spec in blocks:
            text, stopped = spec.text, False
            if stop and spec.kind == "text":
                cut = min(((text.find(s), s) for s in stop if s and s in text), default=None)
                if cut is not None:
                    text, plan.stop_sequence, stopped = text[:cut[0]], cut[1], True
            ids = encode(text, self.encoding)
            if budget is not None and len(ids) > budget:
                ids, plan.finish_reason, plan.stop_sequence, stopped = ids[:budget], "length", None, True
            start = len(plan.pieces)
            known = known_pieces(text, self.encoding) if self.chunk_tokens == 1 and not keep_ids else None
            whole = ""  # the block's text when its chunks are the whole text, known without joining them
            if known is not None:  # the generator built the text from tokens: a chunk a token, as it says
                plan.pieces += known[:len(ids)]
                plan.piece_tokens.extend([1] * len(ids))
                whole = text if len(known) == len(ids) else ""
            else:
                self._chunk(ids, plan)
            if budget is not None:
                budget -= len(ids)
            calls = calls or spec.kind == "tool_call"
            plan.blocks.append(Block(spec.kind, whole, spec.call_id, spec.name, start, len(plan.pieces)))
            if stopped:
                break
        if len(plan.blocks) > 1:  # an empty text block says nothing beside other blocks
            plan.blocks = [b for b in plan.blocks if b.end > b.start or b.kind != "text"]
        for b in plan.blocks:
            if not b.text:
                b.text = plan.block_text(b)
        if calls and plan.finish_reason != "length":
            plan.finish_reason = "tool_calls"
        return plan

    def _chunk(self, ids: list[int], plan: TokenPlan) -> None:
        # A token may end inside a multi-byte character: the incremental decoder
        # holds those bytes back, and the token rides along with the next chunk.
        # Most tokens are whole characters: their text comes from a table, decoded once.
        texts = token_texts(self.encoding)
        if self.chunk_tokens == 1 and plan.piece_ids is None:
            # A chunk a token, every token a whole character run seen before: one look-up each.
            whole = list(map(texts.get, ids))
            if None not in whole and "" not in whole:
                plan.pieces.extend(whole)  # type: ignore[arg-type]
                plan.piece_tokens.extend([1] * len(whole))
                return
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        token_bytes = self.encoding.decode_single_token_bytes
        k = self.chunk_tokens
        pieces, counts = plan.pieces, plan.piece_tokens
        buf, pending, partial = "", 0, False
        keep = plan.piece_ids
        start = 0  # index in ids of the pending chunk's first token
        for j, tok in enumerate(ids):
            pending += 1
            text = None
            if not partial:
                text = texts.get(tok, _MISSING)
                if text is _MISSING:
                    text = token_text(self.encoding, tok)
            if text is None:
                text = decoder.decode(token_bytes(tok))
                partial = bool(decoder.getstate()[0])
            buf += text
            if buf and pending >= k:
                pieces.append(buf)
                counts.append(pending)
                if keep is not None:
                    keep.append(ids[start:j + 1])
                buf, pending, start = "", 0, j + 1
        buf += decoder.decode(b"", final=True)
        if buf and not pending and pieces:
            # The last token went out with its chunk and left bytes of a character behind (an answer
            # cut by max_tokens inside one): their U+FFFD belongs to that chunk, not to a chunk of 0 tokens.
            pieces[-1] += buf
        elif buf:
            pieces.append(buf)
            counts.append(pending)
            if keep is not None:
                keep.append(ids[start:])
        elif pending and pieces:
            counts[-1] += pending
            if keep is not None:
                keep[-1] = keep[-1] + ids[start:]


_MISSING: Any = object()


class Slot(Protocol):
    """A decode slot from the scheduler: its multiplier changes as the batch fills."""

    def multiplier(self) -> float: ...


class _FullSpeed:
    def multiplier(self) -> float:
        return 1.0


FULL_SPEED: Slot = _FullSpeed()


WAIT = -1
"""What paced_indices yields, in place of a chunk index, when a scheduled stream's next chunk is not due
yet (see Pacer.scheduled_from)."""

PRECISE_MAX_WAITING = 8
"""Later chunks wait on the precise timer only while fewer waits than this are pending on it:
under load every distinct deadline would cost the loop a wake-up of its own (gevent's timers
share whole milliseconds), for little gain when the loop's own latency dominates. The first
chunk (TTFT) stays precise at any load."""


class Pacer:
    """Releases chunks on absolute deadlines derived from a latency profile."""

    __slots__ = ("latency", "rng", "prompt_tokens", "slot", "clock", "sleep", "_plain_sleep", "cut", "first_sleep",
                 "_ahead", "_ahead_due", "precise", "sent_tokens", "planned", "first_precise",
                 "scheduled_from", "wake_at")

    def __init__(self, latency: LatencyProfile, rng: random.Random, *, prompt_tokens: int = 0,
                 slot: Slot = FULL_SPEED, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] | None = None, cut: Cut | None = None,
                 first_sleep: Callable[[float], None] | None = None, precise: PreciseTimer | None = None) -> None:
        self.latency = latency
        self.rng = rng
        self.prompt_tokens = prompt_tokens
        self.slot = slot
        self.clock = clock
        if sleep is None:
            import gevent  # here, not per token: the default sleep is gevent's

            sleep = gevent.sleep
        self.sleep = sleep
        self._plain_sleep = sleep
        self.cut = cut
        self.first_sleep = first_sleep
        self._ahead: tuple[float, int] | None = None  # (last deadline, tokens of the next chunk)
        self._ahead_due: float | None = None
        self.precise = precise
        """Finishes each wait on its deadline (see llmsim/precise.py); None: plain sleeps."""
        self.sent_tokens = 0  # visible tokens released so far (what a cut stream really delivered)
        self.planned: list[float] | None = None
        """When a list (a traced request), every chunk's deadline is appended to it as it is set."""
        self.first_precise: float | None = None
        """The first chunk's deadline, when a precise wait ended on it (the engine tells the timer
        how late that chunk was written, see PreciseTimer.observe)."""
        self.scheduled_from: int | None = None
        """Set when a writer with no greenlet of its own drives the stream (cli/streamwriter.py):
        from this chunk on, paced_indices yields WAIT instead of sleeping for a chunk that is not
        due, and the writer resumes it at `wake_at`."""
        self.wake_at: float | None = None

    def _itl_s(self) -> float:
        itl = self.latency.itl
        if itl._point:  # type: ignore[attr-defined]  # no draw; and no gap at all, whatever the batch, when the profile has none
            return itl.mean_ms * self.slot.multiplier() / 1000.0 if itl.mean_ms else 0.0
        return itl.sample(self.rng) * self.slot.multiplier() / 1000.0

    def first_deadline(self, start: float, reasoning_tokens: int) -> float:
        """start + TTFT (+prefill) + one ITL per hidden reasoning token."""
        t = start + self.latency.sample_ttft_ms(self.rng, self.prompt_tokens) / 1000.0
        for _ in range(reasoning_tokens):
            t += self._itl_s()
        return t

    def paced(self, plan: TokenPlan, start: float | None = None) -> Iterator[str]:
        """Yield each chunk text at its deadline (see paced_indices)."""
        pieces = plan.pieces
        for i in self.paced_indices(plan.piece_tokens, plan.reasoning_tokens, start):
            yield pieces[i]

    def deadlines(self, piece_tokens: Sequence[int], reasoning_tokens: int = 0,
                  start: float | None = None) -> Iterator[float]:
        """Each chunk's deadline in turn; a k-token chunk waits for its k-th token.

        Computed lazily, as the previous chunk is released, so a gap reads the
        batch's slowdown when it starts.
        """
        itl = self._itl_s
        deadline = self.first_deadline(self.clock() if start is None else start, reasoning_tokens)
        for i, ntok in enumerate(piece_tokens):
            for _ in range(ntok - 1 if i == 0 else ntok):
                deadline += itl()
            yield deadline

    def release(self, i: int, ntok: int) -> None:
        """Chunk i (of ntok tokens) reached its deadline: it goes out, unless the planned cut comes first."""
        cut = self.cut
        if cut is not None and i >= cut.after_pieces:
            raise StreamCut(cut)
        self.sent_tokens += ntok

    def next_due(self) -> float | None:
        """The deadline of the chunk after the one just released, or None after the last."""
        if self._ahead is None:
            return None
        if self._ahead_due is None:
            due, ntok = self._ahead
            for _ in range(ntok):
                due += self._itl_s()
            self._ahead_due = due
        return self._ahead_due

    def paced_indices(self, piece_tokens: Sequence[int], reasoning_tokens: int = 0,
                      start: float | None = None) -> Iterator[int]:
        """Yield each chunk's index at its deadline; a k-token chunk waits for its k-th token.

        The first wait (TTFT) goes through `first_sleep` when given: it may
        notice that the client left. With a cut planned after n chunks, raise
        StreamCut at the deadline of chunk n+1 (or right after the last one):
        the model "fails" while generating. From chunk `scheduled_from` on, a
        chunk that is not due yields WAIT first, and goes out when resumed.
        """
        # deadlines() and release() inlined: this loop runs once per streamed token.
        cut, planned, precise = self.cut, self.planned, self.precise
        clock, itl = self.clock, self._itl_s
        deadline = self.first_deadline(clock() if start is None else start, reasoning_tokens)
        sleep = self.first_sleep or self.sleep
        every = precise is not None and precise.every_token
        # Later chunks of a stream wait on the precise timer alone (one wake-up per chunk); a wait that
        # watches the client (the first, or any of a non-streamed answer) sleeps through it until
        # just before the deadline.
        direct = self.sleep is self._plain_sleep
        last = len(piece_tokens) - 1
        if last >= 0:
            for _ in range(piece_tokens[0] - 1):
                deadline += itl()
        for i, ntok in enumerate(piece_tokens):
            if planned is not None:
                planned.append(deadline)
            wait = deadline - clock()
            if wait > 0:
                scheduled = self.scheduled_from
                if scheduled is not None and i >= scheduled:
                    self.wake_at = deadline
                    yield WAIT  # the writer resumes this generator at the deadline
                else:
                    self._wait(i == 0, deadline, wait, sleep, every, direct)
            sleep = self.sleep
            if cut is not None and i >= cut.after_pieces:
                raise StreamCut(cut)
            self.sent_tokens += ntok
            # A writer may ask for the next chunk's deadline (next_due()) before this one goes
            # out, to send chunks that are already due in one write; the next gap's draws are
            # then taken at that moment, else when the generator resumes, as always.
            self._ahead = (deadline, piece_tokens[i + 1]) if i < last else None
            self._ahead_due = None
            yield i
            if self._ahead_due is not None:
                deadline = self._ahead_due
            elif i < last:
                for _ in range(piece_tokens[i + 1]):
                    deadline += itl()
        if cut is not None:
            raise StreamCut(cut)

    def _wait(self, first: bool, deadline: float, wait: float, sleep: Callable[[float], None], every: bool,
              direct: bool) -> None:
        """Wait `wait` seconds for `deadline`: sleep to just before it, then finish precisely, always for
        the first chunk (TTFT), for later ones while few waits are pending on the precise timer."""
        precise = self.precise
        if precise is not None and (first or (every and precise.waiting < PRECISE_MAX_WAITING)):
            if wait > PRECISE_MARGIN_S and (first or not direct):
                sleep(wait - PRECISE_MARGIN_S)
            precise.until(deadline)
            if first:
                self.first_precise = deadline
        else:
            sleep(wait)

    def wait_all(self, plan: TokenPlan, start: float | None = None) -> None:
        """Take exactly as long as the stream would (non-streaming responses)."""
        self.wait_through(plan.piece_tokens, plan.reasoning_tokens, start)

    def wait_through(self, piece_tokens: Sequence[int], reasoning_tokens: int = 0, start: float | None = None,
                     stamps: MutableSequence[float] | None = None) -> None:
        """paced_indices for an answer nobody sees chunk by chunk: the same deadlines, draws and cut,
        each chunk's release time appended to `stamps`, but no generator round-trip per chunk and
        one clock and batch-slowdown read per wake-up, not per token (nothing else runs between
        chunks that are already due, so the reads would be the same)."""
        cut, planned, precise = self.cut, self.planned, self.precise
        clock, rng, slot = self.clock, self.rng, self.slot
        itl = self.latency.itl
        point = itl.is_point
        now = clock()
        deadline = self.first_deadline(now if start is None else start, reasoning_tokens)
        sleep = self.first_sleep or self.sleep
        every = precise is not None and precise.every_token
        direct = self.sleep is self._plain_sleep
        m = slot.multiplier()
        gap = itl.mean_ms * m / 1000.0
        for i, ntok in enumerate(piece_tokens):
            for _ in range(ntok - 1 if i == 0 else ntok):  # a k-token chunk waits for its k-th token
                deadline += gap if point else itl.sample(rng) * m / 1000.0
            if planned is not None:
                planned.append(deadline)
            if deadline > now:
                wait = deadline - clock()
                if wait > 0:
                    self._wait(i == 0, deadline, wait, sleep, every, direct)
                now = clock()
                m = slot.multiplier()  # the next gaps start now: the batch as it is now
                gap = itl.mean_ms * m / 1000.0
            sleep = self.sleep
            if cut is not None and i >= cut.after_pieces:
                raise StreamCut(cut)
            self.sent_tokens += ntok
            if stamps is not None:
                stamps.append(now)
            if point and not gap and i == 0:  # no gaps at all (`instant`): the rest is due with the first
                self._release_rest(piece_tokens, deadline, now, stamps)
                break
        if cut is not None:
            raise StreamCut(cut)

    def _release_rest(self, piece_tokens: Sequence[int], deadline: float, now: float,
                      stamps: MutableSequence[float] | None) -> None:
        """wait_through's loop after the first chunk when every gap is zero, in bulk."""
        cut, n = self.cut, len(piece_tokens)
        end = n if cut is None else max(1, min(n, cut.after_pieces))
        if self.planned is not None:
            self.planned.extend([deadline] * (end - 1 if cut is None or end == n else end))
        self.sent_tokens += sum(piece_tokens[1:end])
        if stamps is not None:
            if isinstance(stamps, array):  # an array grows from an array by copying, from a list by converting
                stamps.extend(array(stamps.typecode, (now,)) * (end - 1))
            else:
                stamps.extend([now] * (end - 1))
