"""The measuring client: one request in, one RequestRecord out, for any ApiAdapter.

The loop stamps nothing itself: each SSE event carries the arrival time of
its bytes (transport.py, sse.py: the kernel's receive time where the system
gives it), and JSON parsing and token counting happen after that stamp. Every
time of one request is in the connection's clock (`HttpConnection.clock`).
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from .adapters import ApiAdapter, Prompt, Usage
from .metrics import (
    CONNECTION,
    MALFORMED_SSE,
    MIDSTREAM_CUT,
    NO_TERMINATOR,
    STREAM_ERROR,
    RequestRecord,
    apply_trace,
    build_body_record,
    build_stream_record,
    failed_record,
    http_error_kind,
)
from .sse import MalformedStream, SseParser
from .transport import HttpConnection, TransportError

ERROR_BODY_LIMIT = 300
_REQUEST_ID = re.compile(r',?\s*"request_id"\s*:\s*"[^"]*"')
"""An error body's per-request id (Anthropic's carry one): left out of the failure's message, so that Locust's
error table and _failures.csv group one kind of failure on one row, not one row per request."""
TRACE_HEADER = "x-llmsim-trace"
"""Asks an llmsim server for its own timings of the request (a `: llmsim-trace {json}` comment)."""


def retry_after_seconds(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """The server's retry hint, read as the official SDKs read it: retry-after-ms first, then
    retry-after in seconds or as an HTTP date. None when there is no usable hint."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        if seconds == seconds and seconds >= 0 and seconds != float("inf"):
            return seconds
    value = headers.get("retry-after")
    if value:
        parsed = email.utils.parsedate_tz(value)
        if parsed is not None:
            return max(0.0, email.utils.mktime_tz(parsed) - now())
    return None


def _after_start(kind: str) -> str:
    """A connection that breaks once the response has begun cuts the response short."""
    return MIDSTREAM_CUT if kind == CONNECTION else kind


class LlmClient:
    """Sends requests built by an adapter over one keep-alive connection and measures them."""

    def __init__(self, base_url: str, adapter: ApiAdapter, *, model: str, count_tokens: Callable[[str], int],
                 api_key: str | None = None, timeout: float = 600.0, verify: bool = True,
                 kernel_stamps: bool = True, trace: bool = False, tools: list[dict[str, Any]] | None = None,
                 tool_choice: str = "auto", keep_text: bool = False) -> None:
        self.adapter = adapter
        self.keep_text = keep_text
        """Keep each response's visible text in RequestRecord.text (multi-turn sessions send it back)."""
        self.model = model
        self.count_tokens = count_tokens
        self.conn = HttpConnection(base_url, timeout=timeout, verify=verify, kernel_stamps=kernel_stamps)
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json",
                        "User-Agent": "llmsim-loadtest", **adapter.auth_headers(api_key)}
        if trace:
            self.headers[TRACE_HEADER] = "1"
        self.body_fields = adapter.tool_fields(tools, tool_choice) if tools else {}
        """Sent in every request's body: the tools (--tools, --tool-choice) in the adapter's shape."""

    def close(self) -> None:
        self.conn.close()

    def run(self, prompt: Prompt, *, max_tokens: int | None, stream: bool = True,
            extra: Mapping[str, object] | None = None) -> RequestRecord:
        """Send one request and measure it. Never raises for a failed request: the record says why.

        `extra` fields are added to the adapter's body (ignore_eos, min_tokens: workloads.py).
        """
        req = self.adapter.build_request(prompt, model=self.model, max_tokens=max_tokens, stream=stream)
        if self.body_fields:
            req.body.update(self.body_fields)
        if extra:
            req.body.update(extra)
        body = json.dumps(req.body).encode()
        headers = {**self.headers, **req.headers}
        local_prompt_tokens = prompt.prompt_tokens or 0
        clock = self.conn.clock
        start_time = time.time()
        t0 = clock()
        try:
            resp = self.conn.request("POST", req.path, headers, body)
        except TransportError as e:
            return failed_record(start_time=start_time, t_sent=t0, t_end=self.conn.clock(), kind=e.kind,
                                 message=str(e), prompt_tokens_local=local_prompt_tokens)
        t_sent = resp.t_sent
        start_time += t_sent - t0
        if resp.status >= 400:
            try:
                raw = resp.read()[:4 * ERROR_BODY_LIMIT].decode("utf-8", "replace")
                detail = _REQUEST_ID.sub("", raw)[:ERROR_BODY_LIMIT]
            except TransportError:
                detail = ""
            rec = failed_record(start_time=start_time, t_sent=t_sent, t_end=self.conn.clock(),
                                kind=http_error_kind(resp.status), status=resp.status,
                                message=f"HTTP {resp.status} {resp.reason}: {detail}".strip(),
                                prompt_tokens_local=local_prompt_tokens)
            rec.retry_after_s = retry_after_seconds(resp.headers)
            return rec
        if not stream:
            return self._read_body(resp, start_time, t_sent, local_prompt_tokens)
        return self._read_stream(resp, start_time, t_sent, local_prompt_tokens)

    def _read_body(self, resp, start_time: float, t_sent: float, local_prompt_tokens: int) -> RequestRecord:
        clock = self.conn.clock
        try:
            raw = resp.read()
            t_end = clock()
            text, reasoning, usage = self.adapter.read_body(json.loads(raw))
        except TransportError as e:
            return failed_record(start_time=start_time, t_sent=t_sent, t_end=clock(),
                                 kind=_after_start(e.kind), message=str(e), status=resp.status,
                                 prompt_tokens_local=local_prompt_tokens)
        except (ValueError, MalformedStream) as e:
            return failed_record(start_time=start_time, t_sent=t_sent, t_end=clock(), kind=MALFORMED_SSE,
                                 message=f"unreadable response body: {e}", status=resp.status,
                                 prompt_tokens_local=local_prompt_tokens)
        rec = build_body_record(start_time=start_time, t_sent=t_sent, t_end=t_end, status=resp.status,
                                text=reasoning + text, usage=usage, prompt_tokens_local=local_prompt_tokens,
                                count=self.count_tokens, reasoning=reasoning)
        rec.kernel_stamps = self.conn.kernel_stamps
        if usage is not None:
            rec.cached_tokens = usage.cached_tokens
        if self.keep_text:
            rec.text = text
        return rec

    def _read_stream(self, resp, start_time: float, t_sent: float, local_prompt_tokens: int) -> RequestRecord:
        read_event = self.adapter.read_event
        parser = SseParser()
        times: list[float] = []
        texts: list[str] = []
        usage = Usage()
        error_kind = error_message = None
        t_end = None
        reasoning: list[str] = []
        visible: dict[int, str] = {}
        """The visible part of the events that also carried reasoning (by index in texts)."""
        pieces = resp.iter_pieces()
        try:
            for piece, t in pieces:
                for ev in parser.feed_piece(piece, t):
                    delta = read_event(ev)
                    if delta.text or delta.reasoning:
                        times.append(ev.t)
                        if delta.reasoning:
                            reasoning.append(delta.reasoning)
                            visible[len(texts)] = delta.text
                            texts.append(delta.reasoning + delta.text)
                        else:
                            texts.append(delta.text)
                    if delta.usage is not None:
                        usage.update(delta.usage)
                    if delta.error is not None:
                        error_kind, error_message = STREAM_ERROR, delta.error
                        t_end = ev.t
                        break
                    if delta.done:
                        t_end = ev.t
                        break
                if t_end is not None:
                    break
            else:
                for ev in parser.end_of_body(self.conn.clock()):
                    delta = read_event(ev)
                    if delta.usage is not None:
                        usage.update(delta.usage)
                    if delta.done:
                        t_end = ev.t
                if t_end is None:
                    if parser.junk_lines and not times:
                        error_kind = MALFORMED_SSE
                        error_message = "the response body is not an event stream"
                    else:
                        error_kind = NO_TERMINATOR
                        error_message = "the stream ended without its terminator"
        except MalformedStream as e:
            error_kind, error_message = MALFORMED_SSE, str(e)
        except TransportError as e:
            error_kind, error_message = _after_start(e.kind), str(e)
        finally:
            if t_end is not None and error_kind is None:
                try:  # read the rest of the body (the last chunk) so the connection can be reused
                    for _ in pieces:
                        pass
                except TransportError:
                    pass
            pieces.close()  # an unfinished body closes the connection
        if t_end is None:
            t_end = self.conn.clock()
        rec = build_stream_record(start_time=start_time, t_sent=t_sent, t_end=t_end, status=resp.status,
                                  event_times=times, event_texts=texts, usage=usage,
                                  prompt_tokens_local=local_prompt_tokens, count=self.count_tokens,
                                  error_kind=error_kind, error_message=error_message,
                                  reasoning_texts=reasoning)
        rec.kernel_stamps = self.conn.kernel_stamps
        rec.cached_tokens = usage.cached_tokens
        if self.keep_text:
            rec.text = "".join(visible.get(i, t) for i, t in enumerate(texts)) if visible else "".join(texts)
        if parser.trace is not None and rec.ok:
            try:
                trace = json.loads(parser.trace)
            except ValueError:
                trace = None
            if isinstance(trace, dict):
                apply_trace(rec, times, trace)
        return rec
