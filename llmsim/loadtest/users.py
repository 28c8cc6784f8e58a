"""Locust users that send LLM requests through an ApiAdapter and report what they measured.

Each request reports three kinds of Locust rows:
- the request row (the API path), with E2E as response time and output tokens as response length;
- a `TTFT` row, one entry per successful streamed request;
- an `ITL` row, one entry per ITL sample.
Locust's rows are for the UI and --csv; the summary and the scores use the
toolkit's own histograms (aggregate.py), which Locust's 1 ms buckets cannot match.
"""

from __future__ import annotations

import os
import random
from typing import Any

import gevent
from locust import User, constant, task

from ..tokens import get_encoding
from .adapters import ApiAdapter, ChatCompletionsAdapter, Prompt
from .client import LlmClient
from .metrics import RequestRecord
from .plugin import get_run

METRIC_ROW_TYPE = "LLM"
YIELD_EVERY = 16
"""Locust rows fired between two yields to the event loop (about 0.1 ms of work)."""


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
        self.llm = self.new_client()
        self._rng = random.Random()

    def new_client(self) -> LlmClient:
        """A client (one keep-alive connection) for this user; a user with several requests in flight needs one each."""
        encode = get_encoding(self.settings.profile.encoding).encode_ordinary
        api_key = self.settings.api_key or os.environ.get(self.adapter.api_key_env)
        return LlmClient(self.host, self.adapter, model=self.settings.model, api_key=api_key,
                         count_tokens=lambda text: len(encode(text)))

    def next_prompt(self) -> Prompt:
        """The prompt of the next request: the only one, or one at random from --prompts."""
        prompts = self.settings.prompts
        return prompts[0] if len(prompts) == 1 else self._rng.choice(prompts)

    def on_stop(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()

    @task
    def complete(self) -> None:
        self.send()

    def send(self, prompt: Prompt | None = None, *, max_tokens: int | None = None,
             stream: bool | None = None, client: LlmClient | None = None) -> RequestRecord:
        """Send one request (a prompt from --prompts/--prompt-tokens by default), report and return its record.

        `client` defaults to the user's own connection.
        """
        s = self.settings
        rec = (client or self.llm).run(prompt or self.next_prompt(), max_tokens=max_tokens or s.max_tokens,
                                       stream=s.stream if stream is None else stream)
        self.report(rec)
        return rec

    def report(self, rec: RequestRecord) -> None:
        """Fire the Locust rows and count the record in the toolkit's own figures."""
        fire = self.environment.events.request.fire
        exc = None if rec.ok else LlmRequestFailed(f"{rec.error_kind}: {(rec.error_message or '')[:160]}")
        ctx: dict[str, Any] = {}
        fire(request_type="POST", name=self.adapter.path, response_time=rec.e2e_ms,
             response_length=rec.output_tokens, exception=exc, context=ctx)
        if rec.ok and rec.ttft_ms is not None:
            fire(request_type=METRIC_ROW_TYPE, name="TTFT", response_time=rec.ttft_ms, response_length=0,
                 exception=None, context=ctx)
            for i, gap in enumerate(rec.itl_ms, 1):
                fire(request_type=METRIC_ROW_TYPE, name="ITL", response_time=gap, response_length=0,
                     exception=None, context=ctx)
                if i % YIELD_EVERY == 0:
                    # Let other users stamp the events that arrived meanwhile: a long burst
                    # of bookkeeping here would otherwise show up in their ITL tail.
                    gevent.sleep(0)
        self._run.record(rec)


class ChatCompletionsUser(LlmUser):
    """OpenAI Chat Completions (`POST /v1/chat/completions`)."""

    abstract = True
    adapter = ChatCompletionsAdapter()
