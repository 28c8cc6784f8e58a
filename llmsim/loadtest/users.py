"""Locust users that send LLM requests through an ApiAdapter and report what they measured.

Each request reports three kinds of Locust rows:
- the request row (the API path), with E2E as response time and output tokens as response length;
- a `TTFT` row, one entry per successful streamed request;
- an `ITL` row, one entry per ITL sample.
The request and TTFT rows go through events.request. The ITL samples of a
request are logged into Locust's ITL row in one batch (log_samples): the row
is the same as with one request event per sample, at a fraction of the cost,
which at thousands of tokens/s was most of the client's work.
Locust's rows are for the UI and --csv; the summary and the scores use the
toolkit's own histograms (aggregate.py), which Locust's 1 ms buckets cannot match.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import gevent
import locust.stats
from gevent import GreenletExit
from locust import User, constant, task

from ..tokens import get_encoding
from .adapters import ApiAdapter, ChatCompletionsAdapter, CompletionsAdapter, MessagesAdapter, Prompt, ResponsesAdapter
from .client import LlmClient
from .metrics import RequestRecord
from .openloop import OpenLoopSource
from .plugin import get_run, log
from .workloads import TRACE_MAX_IN_FLIGHT, TraceReplay, Work

METRIC_ROW_TYPE = "LLM"
RETRY_ROW = "429 retry"
NO_HINT_WAIT_S = 1.0
"""--retry-429 without a retry-after hint: wait 1 s, then 2 s, 4 s, ..."""
MAX_RETRY_WAIT_S = 120.0
"""A longer hint is not retried (the 429 stands), as the official SDKs do."""


def log_samples(environment: Any, request_type: str, name: str, values_ms: Sequence[float]) -> None:
    """Log successful samples into a Locust stats row (and its total) in one go.

    The row ends up exactly as if each value had been fired as a request event
    (StatsEntry.log once per value): count, per-second counts, sum, min, max and
    Locust's rounded response-time buckets. Listeners of events.request other
    than Locust's own stats do not see these samples. A Locust whose StatsEntry
    looks different gets one request event per value instead.
    """
    if not values_ms:
        return
    stats = environment.stats
    entries = (stats.get(name, request_type), stats.total)
    if not all(hasattr(e, a) for e in entries for a in _ENTRY_FIELDS):  # pragma: no cover - other internals
        fire = environment.events.request.fire
        for v in values_ms:
            fire(request_type=request_type, name=name, response_time=v, response_length=0, exception=None,
                 context={})
        return
    now = time.time()
    second = int(now)
    n = len(values_ms)
    total = sum(values_ms)
    low, high = min(values_ms), max(values_ms)
    bucket = locust.stats.bucket_response_time  # looked up here: Locust lets users replace it
    buckets: dict[int, int] = {}
    for v in values_ms:
        b = bucket(v)
        buckets[b] = buckets.get(b, 0) + 1
    for e in entries:
        last = e.last_request_timestamp
        if e.use_response_times_cache and last and second > int(last):
            e._cache_response_times(second - 1)
        e.num_requests += n
        e.num_reqs_per_sec[second] += n
        e.last_request_timestamp = now
        e.total_response_time += total
        e.min_response_time = low if e.min_response_time is None else min(e.min_response_time, low)
        e.max_response_time = max(e.max_response_time, high)
        rt = e.response_times
        for b, k in buckets.items():
            rt[b] += k


_ENTRY_FIELDS = ("last_request_timestamp", "use_response_times_cache", "_cache_response_times", "num_requests",
                 "num_reqs_per_sec", "total_response_time", "min_response_time", "max_response_time",
                 "response_times")
"""The StatsEntry attributes log_samples updates (StatsEntry.log's own bookkeeping)."""


@contextlib.contextmanager
def _no_tracking(_intended: float) -> Iterator[None]:
    yield


class LlmRequestFailed(Exception):
    """How a failed LLM request shows in Locust's failures table: '<kind>: <message>'."""


class LlmUser(User):
    """Base class: set `adapter` to an ApiAdapter; the task sends one request after another."""

    abstract = True
    adapter: ApiAdapter = ChatCompletionsAdapter()
    wait_time = constant(0)

    def on_start(self) -> None:
        run = get_run(self.environment)
        self.settings = run.settings
        self._run = run
        self._rng = run.user_rng()
        self.workload = run.workload
        self.works = self.workload.stream(self._rng)
        """This user's requests (workloads.py): lengths, prompts, the session in progress."""
        self.llm = self.new_client()
        self.replay_source: OpenLoopSource | None = None

    def new_client(self) -> LlmClient:
        """A client (one keep-alive connection) for this user; a user with several requests in flight needs one each."""
        encode = get_encoding(self.settings.encoding).encode_ordinary
        api_key = self.settings.api_key or os.environ.get(self.adapter.api_key_env)
        return LlmClient(self.host or "", self.adapter, model=self.settings.model, api_key=api_key,
                         timeout=self.settings.timeout_s,
                         count_tokens=lambda text: len(encode(text)), trace=self.settings.trace,
                         tools=self.settings.tools, tool_choice=self.settings.tool_choice,
                         keep_text=self.workload.multi_turn)

    def next_work(self) -> Work:
        """The next request of the workload: its prompt, its length, its turn and think time (sessions)."""
        return self.works.next()

    def next_prompt(self) -> Prompt:
        """The prompt of the next request (next_work().prompt: for single requests, not sessions)."""
        return self.next_work().prompt

    def on_stop(self) -> None:
        if self.replay_source is not None:
            self.replay_source.stop()
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()

    @task
    def complete(self) -> None:
        if self.workload.trace is not None:
            self.replay()
            return
        work = self.next_work()
        if work.think_s > 0:
            gevent.sleep(work.think_s)
        self.send(work=work)

    def replay(self) -> None:
        """--trace: send this process's share of the trace at its recorded times, each request on its own
        connection (open loop), until it is all sent and answered; then wait for the run to end."""
        replay = self._run.trace_replay()
        if self.replay_source is None:
            self.replay_source = OpenLoopSource(
                None, TRACE_MAX_IN_FLIGHT, new_client=self.new_client,
                send=lambda client, _intended, work: self._replay_one(replay, client, work),
                track=_no_tracking, schedule=replay.arrivals(), rng=self._rng)
            self.replay_source.run()
        gevent.sleep(1.0)  # this user's part is done: idle until the run ends (end_run, or -t)

    def _replay_one(self, replay: TraceReplay, client: LlmClient, work: Work) -> None:
        try:
            self.send(client=client, work=work)
        finally:
            replay.done_one()

    def send(self, prompt: Prompt | None = None, *, max_tokens: int | None = None,
             stream: bool | None = None, client: LlmClient | None = None, work: Work | None = None) -> RequestRecord:
        """Send one request (the workload's next by default), report and return its record.

        `client` defaults to the user's own connection. A `prompt` (and `max_tokens`) given here is sent
        instead of the workload's.
        """
        s = self.settings
        if work is None:
            if prompt is None:
                work = self.next_work()
            else:  # the caller's own prompt: its max_tokens (or --max-tokens) is an asked length only if given
                work = Work(prompt, max_tokens or s.max_tokens,
                            length_asked=max_tokens is not None or self.workload.spec.max_tokens_given)
        elif max_tokens:
            work.max_tokens = max_tokens
        client = client or self.llm
        stream = s.stream if stream is None else stream
        warmup = self._run.begin_request()
        extra = self._run.exact_fields(self.adapter.name, work)
        for attempt in range(s.retry_429 + 1):
            try:
                rec = client.run(work.prompt, max_tokens=work.max_tokens, stream=stream, extra=extra)
                if extra and not rec.ok and self._run.exact_refusal(rec):
                    extra = None  # the server refuses ignore_eos/min_tokens: once more without, and no more
                    rec = client.run(work.prompt, max_tokens=work.max_tokens, stream=stream)
                field = None if rec.ok else self.adapter.adopt_length_field(rec.status, rec.error_message)
                if field is not None:
                    log.warning("The server refused the %s length field (%s); sending %s from now on",
                                self.adapter.name, (rec.error_message or "")[:160], field)
                    rec = client.run(work.prompt, max_tokens=work.max_tokens, stream=stream, extra=extra)
            except GreenletExit:  # the run stopped while this request waited for its answer
                if not warmup:
                    self._run.record_unfinished()
                raise
            wait = self.retry_wait(rec, attempt)
            if wait is None:
                break
            self.report_retry(wait, warmup)
            gevent.sleep(wait)
        work.exact_sent = extra is not None
        rec.warmup = warmup
        self.works.finished(work, rec.ok, rec.text)
        self.report(rec, work)
        return rec

    def retry_wait(self, rec: RequestRecord, attempt: int) -> float | None:
        """How long to wait before retrying this answer, or None to keep it (--retry-429)."""
        if rec.status != 429 or attempt >= self.settings.retry_429:
            return None
        wait = rec.retry_after_s if rec.retry_after_s is not None else NO_HINT_WAIT_S * 2 ** attempt
        return wait if wait <= MAX_RETRY_WAIT_S else None

    def report_retry(self, wait_s: float, warmup: bool = False) -> None:
        """A retried 429 is never silent: a Locust row (its wait as response time) and the summary count
        (unless it belongs to a warm-up request)."""
        self.environment.events.request.fire(request_type=METRIC_ROW_TYPE, name=RETRY_ROW,
                                             response_time=wait_s * 1000, response_length=0, exception=None,
                                             context={})
        if not warmup:
            self._run.record_retry(wait_s)

    def report(self, rec: RequestRecord, work: Work | None = None) -> None:
        """Fire the Locust rows and count the record in the toolkit's own figures."""
        fire = self.environment.events.request.fire
        exc = None if rec.ok else LlmRequestFailed(f"{rec.error_kind}: {(rec.error_message or '')[:160]}")
        ctx: dict[str, Any] = {}
        fire(request_type="POST", name=self.adapter.path, response_time=rec.e2e_ms,
             response_length=rec.output_tokens, exception=exc, context=ctx)
        if rec.ok and rec.ttft_ms is not None:
            fire(request_type=METRIC_ROW_TYPE, name="TTFT", response_time=rec.ttft_ms, response_length=0,
                 exception=None, context=ctx)
            log_samples(self.environment, METRIC_ROW_TYPE, "ITL", rec.itl_ms)
        self._run.record(rec, work)


class ChatCompletionsUser(LlmUser):
    """OpenAI Chat Completions (`POST /v1/chat/completions`)."""

    abstract = True
    adapter = ChatCompletionsAdapter()


class MessagesUser(LlmUser):
    """Anthropic Messages (`POST /v1/messages`; key from $ANTHROPIC_API_KEY)."""

    abstract = True
    adapter = MessagesAdapter()


class ResponsesUser(LlmUser):
    """OpenAI Responses (`POST /v1/responses`)."""

    abstract = True
    adapter = ResponsesAdapter()


class CompletionsUser(LlmUser):
    """OpenAI legacy Completions (`POST /v1/completions`)."""

    abstract = True
    adapter = CompletionsAdapter()
