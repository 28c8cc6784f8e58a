"""A general Server-Sent Events parser that keeps each event's arrival time.

It understands the whole wire format (`event:`, `data:`, `id:`, `retry:`,
comments, multi-line data), so the same parser serves OpenAI chat chunks,
Anthropic's named events and the Responses API. Lines are fed with the time
their bytes arrived; an event carries the arrival time of its first `data:`
line, which is the moment the generated content reached the client.

Comments are skipped, except llmsim's trace comment (`: llmsim-trace {json}`,
sent just before the terminator when the request asked for it with
`x-llmsim-trace: 1`), whose JSON text is kept in `SseParser.trace`.

feed() takes one line; feed_piece() takes body bytes as they come off the
socket and splits the lines itself (the fast path of the measuring client).
"""

from __future__ import annotations

from dataclasses import dataclass

TRACE_PREFIX = b": llmsim-trace "


class MalformedStream(ValueError):
    """The bytes are not a well-formed event stream (bad UTF-8, bad JSON, junk lines)."""


@dataclass(slots=True)
class SseEvent:
    """One dispatched event: its type (None when the stream gave none), its data and arrival time."""

    event: str | None
    data: str
    t: float


class SseParser:
    """Feed lines (without their line ending) in order, or raw body pieces; complete events come out."""

    __slots__ = ("_event", "_data", "_t", "junk_lines", "trace", "_pending")

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []
        self._t = 0.0
        self.junk_lines = 0
        """Lines that are neither a field nor a comment nor blank (a sign of a non-SSE body)."""
        self.trace: bytes | None = None
        """The JSON of the last `: llmsim-trace` comment, as sent."""
        self._pending = b""

    def feed(self, line: bytes, t: float) -> SseEvent | None:
        """Process one line that completed at time `t`; return an event when a blank line ends one."""
        if not line:
            return self._dispatch()
        if line[0] == 0x3A:  # ":" comment / keep-alive
            if line.startswith(TRACE_PREFIX):
                self.trace = line[len(TRACE_PREFIX):]
            return None
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedStream("stream is not valid UTF-8") from None
        name, sep, value = text.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            if not self._data:
                self._t = t
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name in ("id", "retry"):
            pass
        else:
            self.junk_lines += 1
        return None

    def feed_piece(self, data: bytes, t: float) -> list[SseEvent]:
        """Body bytes that arrived at time `t`: every line they complete is fed; the events that ends come out.

        The same as feeding each complete line (without its CR LF or LF) to feed(), with the same `t`.
        """
        if self._pending:
            data = self._pending + data
        lines = data.split(b"\n")
        self._pending = lines.pop()
        out: list[SseEvent] = []
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                if self._data:
                    out.append(SseEvent(self._event, "\n".join(self._data), self._t))
                    self._data = []
                self._event = None
            elif line[:5] == b"data:":
                try:
                    value = (line[6:] if line[5:6] == b" " else line[5:]).decode("utf-8")
                except UnicodeDecodeError:
                    raise MalformedStream("stream is not valid UTF-8") from None
                if not self._data:
                    self._t = t
                self._data.append(value)
            else:
                self.feed(line, t)  # a comment or another field: never ends an event
        return out

    def end_of_body(self, t: float) -> list[SseEvent]:
        """The body ended: a last line without its line ending is fed (at `t`), then any event still open
        is dispatched (lenient, unlike the spec)."""
        out = []
        if self._pending:
            line, self._pending = self._pending, b""
            ev = self.feed(line[:-1] if line[-1:] == b"\r" else line, t)
            if ev is not None:
                out.append(ev)
        ev = self.finish()
        if ev is not None:
            out.append(ev)
        return out

    def finish(self) -> SseEvent | None:
        """At end of stream: an event still waiting for its blank line (lenient, unlike the spec)."""
        return self._dispatch()

    def _dispatch(self) -> SseEvent | None:
        if not self._data:
            self._event = None
            return None
        ev = SseEvent(self._event, "\n".join(self._data), self._t)
        self._event = None
        self._data = []
        return ev
