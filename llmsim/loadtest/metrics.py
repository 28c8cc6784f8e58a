"""The per-request record and the metric definitions (DESIGN.md, "Metric definitions").

TTFT   request write -> first event carrying generated content (text or reasoning).
ITL    gap between consecutive content events; an event of k > 1 tokens gives k samples of gap/k.
       k comes from the server's count of streamed tokens when usage reports it (split_tokens), else
       from tiktoken on the event's text.
TPOT   (E2E - TTFT) / (visible_tokens - 1), requests with >= 2 visible tokens; visible tokens are
       output_tokens minus the hidden reasoning tokens usage reports (hidden reasoning is inside TTFT).
       Reasoning that arrived as events (streamed reasoning) is not hidden: hidden reasoning is the usage's
       reasoning count minus the reasoning tokens the client received (hidden_reasoning).
E2E    request write -> end of stream (the terminator event).
output_tokens  the server's usage when present, else tiktoken on the received text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from ..itl import split_gaps
from .adapters import Usage

# Error kinds (the keys of "errors by kind"). HTTP errors are "http_<status>".
CONNECTION = "connection"
TIMEOUT = "timeout"
MALFORMED_SSE = "malformed_sse"
NO_TERMINATOR = "no_terminator"
EMPTY_OUTPUT = "empty_output"
STREAM_ERROR = "stream_error"
MIDSTREAM_CUT = "midstream_cut"
"""The connection broke after the response had begun (a cut stream, a truncated body)."""

FAILURE_CLASSES = ("429", "4xx", "5xx", "timeout", "connection", "midstream_cut", "malformed_stream")
"""What the summary counts failures by; each error kind falls in exactly one."""
_CLASS_OF_KIND = {TIMEOUT: "timeout", CONNECTION: "connection", MIDSTREAM_CUT: "midstream_cut",
                  NO_TERMINATOR: "midstream_cut", STREAM_ERROR: "midstream_cut",
                  MALFORMED_SSE: "malformed_stream", EMPTY_OUTPUT: "malformed_stream"}


def http_error_kind(status: int) -> str:
    return f"http_{status}"


def failure_class(kind: str) -> str:
    """The summary's class of an error kind: a stream that ended without its terminator, broke off
    or reported an error inside is a mid-stream cut, whatever had arrived before it."""
    if kind.startswith("http_"):
        status = kind[5:]
        return "429" if status == "429" else "5xx" if status.startswith("5") else "4xx"
    return _CLASS_OF_KIND.get(kind, "connection")


@dataclass
class RequestRecord:
    """Everything measured about one request. Times are in ms; None where a metric does not apply."""

    start_time: float
    """Wall-clock (time.time()) start, for the measured window across processes."""
    end_time: float
    e2e_ms: float
    status: int | None = None
    error_kind: str | None = None
    error_message: str | None = None
    ttft_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    tpot_ms: float | None = None
    output_tokens: int = 0
    prompt_tokens: int = 0
    reasoning_tokens: int | None = None
    """Hidden reasoning tokens: the reasoning tokens the server reported (usage details) minus those it streamed
    (hidden_reasoning); None when the server reported none."""
    streamed_reasoning_tokens: int = 0
    """Reasoning tokens that arrived as events (or in the body): visible, timed at ITL like text."""
    usage_reported: bool = False
    retry_after_s: float | None = None
    """An HTTP error's retry hint (retry-after-ms / retry-after), for --retry-429."""
    warmup: bool = False
    """A warm-up request (--llm-warmup): left out of every figure."""
    kernel_stamps: bool = False
    """Its times come from the kernel's receive timestamps (else from user-space stamps)."""
    traced: bool = False
    """The server sent its own timings for it (x-llmsim-trace); the fields below compare them."""
    ttft_error_ms: float | None = None
    """Client TTFT minus the server's (request arrival to first content written): the client's own error
    plus the network's transit time both ways."""
    gap_errors_ms: list[float] = field(default_factory=list)
    """Per gap between content events: the client's gap minus the gap the server emitted."""
    server_ttft_vs_plan_ms: float | None = None
    server_gaps_vs_plan_ms: list[float] = field(default_factory=list)
    """The server's own pacing error: what it emitted minus what it planned."""
    trace_mismatch: bool = False
    """The trace did not fit: the server counted another number of content events than the client."""
    cached_tokens: int | None = None
    """Prompt tokens the server's usage says came from its prefix cache (None: usage does not say)."""
    text: str | None = None
    """The visible text received, kept only when a client is asked to (multi-turn sessions carry it on)."""

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @property
    def visible_tokens(self) -> int:
        """Output tokens minus hidden reasoning: the tokens that were streamed (visible reasoning included)."""
        return max(0, self.output_tokens - (self.reasoning_tokens or 0))


def itl_samples(event_times: Sequence[float], event_tokens: Sequence[int]) -> list[float]:
    """ITL samples (ms) from content-event arrival times (s) and their token counts (llmsim/itl.py)."""
    return split_gaps([(b - a) * 1000.0 for a, b in pairwise(event_times)], event_tokens[1:])


def split_tokens(texts: Sequence[str], streamed: int | None, count: Callable[[str], int]) -> list[int]:
    """Tokens per content event (the k of the ITL split; DESIGN.md, "ITL split").

    `streamed` is the server's count of the tokens it streamed, when its usage
    reports one. Then the counts add up to it: one token per event when the
    events equal the tokens (no tokenizer involved), else `streamed` shared out
    in proportion to tiktoken's count of each event's text (largest remainder,
    at least one per event). A server that reports fewer tokens than events
    gets one per event: a gap is never split into less than one sample.
    With no count from the server, tiktoken on each event's text decides.
    """
    n = len(texts)
    if streamed is None:
        return [max(1, count(t)) for t in texts]
    if streamed <= n:
        return [1] * n
    weights = [max(1, count(t)) for t in texts]
    total = sum(weights)
    shares = [streamed * w / total for w in weights]
    out = [max(1, int(x)) for x in shares]
    rest = streamed - sum(out)
    if rest > 0:  # the largest remainders get one more
        for i in sorted(range(n), key=lambda i: out[i] - shares[i])[:rest]:
            out[i] += 1
    while rest < 0:  # min-1 bumps overshot: take back from the events most over their share
        i = max((i for i in range(n) if out[i] > 1), key=lambda i: out[i] - shares[i])
        out[i] -= 1
        rest += 1
    return out


def streamed_reasoning(texts: Sequence[str], count: Callable[[str], int]) -> int:
    """The reasoning tokens a response carried: tiktoken on their text, and at least one per event
    (a server on another tokenizer may count more than tiktoken; too many only makes hidden reasoning 0)."""
    if not texts:
        return 0
    return max(len(texts), count("".join(texts)))


def hidden_reasoning(reported: int | None, streamed: int) -> int | None:
    """Hidden reasoning tokens: what usage reports as reasoning beyond the reasoning tokens that were streamed.

    A server that reports streamed reasoning in its reasoning count (DeepSeek's and vLLM's
    reasoning_content, Anthropic thinking, a Responses summary) hides none of it: those tokens were
    timed at ITL after the first token, not inside TTFT. None when usage reports no reasoning count.
    """
    return None if reported is None else max(0, reported - streamed)


def tpot_ms(e2e_ms: float, ttft_ms: float | None, visible_tokens: int) -> float | None:
    """(E2E - TTFT) / (visible_tokens - 1): the tokens streamed after the first one share that time."""
    if ttft_ms is None or visible_tokens < 2:
        return None
    return (e2e_ms - ttft_ms) / (visible_tokens - 1)


def build_stream_record(*, start_time: float, t_sent: float, t_end: float, status: int,
                        event_times: Sequence[float], event_texts: Sequence[str], usage: Usage,
                        prompt_tokens_local: int, count: Callable[[str], int],
                        error_kind: str | None = None, error_message: str | None = None,
                        reasoning_texts: Sequence[str] = ()) -> RequestRecord:
    """Turn the raw observations of one streamed response into a record.

    `event_times` are the arrival stamps (s) of the content events, in the
    clock of `t_sent`, and `event_texts` their text (visible plus reasoning);
    `reasoning_texts` is the reasoning text of each event that carried some.
    `count` counts tokens in the model's encoding. Only the reasoning tokens
    usage reports beyond those that were streamed are hidden (hidden_reasoning).
    Token counting happens here, after the stream, so it never delays a timestamp.
    """
    e2e = (t_end - t_sent) * 1000.0
    ttft = (event_times[0] - t_sent) * 1000.0 if event_times else None
    streamed_reasoning_tokens = streamed_reasoning(reasoning_texts, count)
    hidden = hidden_reasoning(usage.reasoning_tokens, streamed_reasoning_tokens)
    if usage.output_tokens is not None:
        output_tokens, reported = usage.output_tokens, True
        streamed: int | None = max(0, output_tokens - (hidden or 0))
    else:
        output_tokens, reported = count("".join(event_texts)), False
        streamed = None
    event_tokens = split_tokens(event_texts, streamed, count)
    if error_kind is None and not event_times:
        error_kind, error_message = EMPTY_OUTPUT, "the stream carried no generated content"
    return RequestRecord(
        start_time=start_time, end_time=start_time + e2e / 1000.0, e2e_ms=e2e, status=status,
        error_kind=error_kind, error_message=error_message, ttft_ms=ttft,
        itl_ms=itl_samples(event_times, event_tokens),
        tpot_ms=tpot_ms(e2e, ttft, streamed if streamed is not None else output_tokens),
        output_tokens=output_tokens,
        prompt_tokens=usage.prompt_tokens if usage.prompt_tokens is not None else prompt_tokens_local,
        reasoning_tokens=hidden, streamed_reasoning_tokens=streamed_reasoning_tokens, usage_reported=reported,
    )


def build_body_record(*, start_time: float, t_sent: float, t_end: float, status: int, text: str,
                      usage: Usage | None, prompt_tokens_local: int, count: Callable[[str], int],
                      reasoning: str = "") -> RequestRecord:
    """A non-streamed response: only E2E and tokens apply. `text` is all the generated text, `reasoning`
    the part of it that is reasoning the body returned (not hidden)."""
    usage = usage or Usage()
    shown = streamed_reasoning([reasoning] if reasoning else [], count)
    e2e = (t_end - t_sent) * 1000.0
    output_tokens = usage.output_tokens if usage.output_tokens is not None else count(text)
    error_kind = error_message = None
    if not text:
        error_kind, error_message = EMPTY_OUTPUT, "the response carried no generated content"
    return RequestRecord(
        start_time=start_time, end_time=start_time + e2e / 1000.0, e2e_ms=e2e, status=status,
        error_kind=error_kind, error_message=error_message, output_tokens=output_tokens,
        prompt_tokens=usage.prompt_tokens if usage.prompt_tokens is not None else prompt_tokens_local,
        reasoning_tokens=hidden_reasoning(usage.reasoning_tokens, shown), streamed_reasoning_tokens=shown,
        usage_reported=usage.output_tokens is not None,
    )


def failed_record(*, start_time: float, t_sent: float, t_end: float, kind: str, message: str,
                  status: int | None = None, prompt_tokens_local: int = 0) -> RequestRecord:
    e2e = (t_end - t_sent) * 1000.0
    return RequestRecord(start_time=start_time, end_time=start_time + e2e / 1000.0, e2e_ms=e2e, status=status,
                         error_kind=kind, error_message=message, prompt_tokens=prompt_tokens_local)


def apply_trace(rec: RequestRecord, event_times: Sequence[float], trace: dict) -> None:
    """Compare a successful record with the server's trace of the same request (DESIGN.md; llmsim's
    `: llmsim-trace {json}` comment): client minus server for TTFT and for each gap between content events,
    and the server's own emitted-minus-planned. A trace whose gap count differs from the client's
    sets trace_mismatch and compares TTFT only."""
    def number(v: object) -> float | None:
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    def numbers(v: object) -> list[float] | None:
        if not isinstance(v, list):
            return None
        out = [number(x) for x in v]
        return None if any(x is None for x in out) else out  # type: ignore[return-value]

    server_ttft = number(trace.get("ttft_ms"))
    gaps = numbers(trace.get("gaps_ms"))
    if server_ttft is None or gaps is None:
        return
    rec.traced = True
    if rec.ttft_ms is not None:
        rec.ttft_error_ms = rec.ttft_ms - server_ttft
    planned_ttft = number(trace.get("planned_ttft_ms"))
    if planned_ttft is not None:
        rec.server_ttft_vs_plan_ms = server_ttft - planned_ttft
    planned = numbers(trace.get("planned_gaps_ms"))
    if planned is not None and len(planned) == len(gaps):
        rec.server_gaps_vs_plan_ms = [a - b for a, b in zip(gaps, planned, strict=True)]
    if len(gaps) != len(event_times) - 1:
        rec.trace_mismatch = True
        return
    rec.gap_errors_ms = [(event_times[i + 1] - event_times[i]) * 1000.0 - g for i, g in enumerate(gaps)]
