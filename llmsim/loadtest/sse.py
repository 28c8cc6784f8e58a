"""A general Server-Sent Events parser that keeps each event's arrival time.

It understands the whole wire format (`event:`, `data:`, `id:`, `retry:`,
comments, multi-line data), so the same parser serves OpenAI chat chunks,
Anthropic's named events and the Responses API. Lines are fed with the time
their bytes arrived; an event carries the arrival time of its first `data:`
line, which is the moment the generated content reached the client.
"""

from __future__ import annotations

from dataclasses import dataclass


class MalformedStream(ValueError):
    """The bytes are not a well-formed event stream (bad UTF-8, bad JSON, junk lines)."""


@dataclass(slots=True)
class SseEvent:
    """One dispatched event: its type (None when the stream gave none), its data and arrival time."""

    event: str | None
    data: str
    t: float


class SseParser:
    """Feed lines (without their line ending) in order; complete events come out."""

    __slots__ = ("_event", "_data", "_t", "junk_lines")

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []
        self._t = 0.0
        self.junk_lines = 0
        """Lines that are neither a field nor a comment nor blank (a sign of a non-SSE body)."""

    def feed(self, line: bytes, t: float) -> SseEvent | None:
        """Process one line that completed at time `t`; return an event when a blank line ends one."""
        if not line:
            return self._dispatch()
        if line[0] == 0x3A:  # ":" comment / keep-alive
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
