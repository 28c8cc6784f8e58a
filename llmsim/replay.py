"""`llmsim replay`: recorded exchanges (the `llmsim record` JSONL), matched to new requests and played back on time.

Flask-free: `ReplayBook` loads and indexes the recordings and picks one for a
request; `Replay` yields the recorded stream's events on absolute deadlines
from the request's arrival (t0 + recorded t_ms, sleeping only for the time
left), so recorded gaps survive and late wake-ups never accumulate. The HTTP
side (a before-request hook in front of the simulator's routes) is in
llmsim/cli/replaying.py.

Matching: method, path (the /openai and /anthropic prefixes dropped) and the
request body, either exactly (the whole JSON body, key order ignored) or on a
subset of top-level fields (`--match model,messages`); `stream` always takes
part, since a stream cannot answer a non-streaming request. Several
recordings under one key answer in turn, then start over.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConnectionDrop
from .record import RECORD_FORMAT, event_bytes, jsonl_lines

__all__ = ["Replay", "ReplayBook", "ReplayError", "match_key"]

REPLAYED_HEADERS_SKIPPED = frozenset({"content-length", "content-encoding", "transfer-encoding", "connection",
                                      "x-request-id", "date"})
"""Recorded headers not sent again: they describe the original bytes or connection (llmsim sets its own
x-request-id)."""


class ReplayError(ValueError):
    """A record file cannot be replayed; str() is one line: file:line: reason."""


def normalize_path(path: str) -> str:
    p = path.split("?", 1)[0].rstrip("/") or "/"
    for prefix in ("/openai", "/anthropic"):
        if p.startswith(prefix + "/v1"):
            return p[len(prefix):]
    return p


def match_key(method: str, path: str, body: Any, fields: Sequence[str] | None = None) -> str:
    """The key a request is matched on (see the module docstring)."""
    if isinstance(body, dict):
        if fields:
            picked: Any = {f: body.get(f) for f in fields}
            picked["stream"] = bool(body.get("stream"))
        else:
            picked = body
        text = json.dumps(picked, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    elif body is None:
        text = ""
    else:
        text = json.dumps(body, sort_keys=True, ensure_ascii=False)
    return f"{method.upper()} {normalize_path(path)} {text}"


def request_body(line: dict[str, Any]) -> Any:
    req = line.get("request") or {}
    if "body" in req:
        return req["body"]
    if "body_text" in req:
        return req["body_text"]
    if "body_base64" in req:
        return req["body_base64"]
    return None


def parse_body(data: bytes) -> Any:
    """A live request's body the way the recorder kept it: parsed JSON, else text, else base64."""
    if not data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii")
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass
class Replay:
    """One recorded response, ready to be played back."""

    status: int
    headers: list[tuple[str, str]]
    events: list[dict[str, Any]] | None
    body: bytes
    e2e_ms: float
    cut: bool = False
    """The upstream broke off this stream: after the recorded events, the connection drops."""
    source: str = ""

    @property
    def streamed(self) -> bool:
        return self.events is not None

    def wait_body(self, t0: float, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] | None = None) -> bytes:
        """A non-streamed answer: wait until t0 + the recorded E2E, then give the body."""
        sleep = sleep or _gevent_sleep()
        wait = t0 + self.e2e_ms / 1000.0 - clock()
        if wait > 0:
            sleep(wait)
        return self.body

    def paced(self, t0: float, clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] | None = None) -> Iterator[bytes]:
        """The recorded events, each at t0 + its recorded t_ms; consecutive events due together go as one write."""
        sleep = sleep or _gevent_sleep()
        pending = b""
        for ev in self.events or ():
            deadline = t0 + float(ev.get("t_ms", 0.0)) / 1000.0
            wait = deadline - clock()
            if wait > 0:
                if pending:
                    yield pending
                    pending = b""
                sleep(wait)
            pending += event_bytes(ev)
        if pending:
            yield pending
        if self.cut:
            raise ConnectionDrop()
        wait = t0 + self.e2e_ms / 1000.0 - clock()
        if wait > 0:
            sleep(wait)


def _gevent_sleep() -> Callable[[float], None]:
    import gevent

    return gevent.sleep


def _replay_of(line: dict[str, Any], where: str) -> Replay:
    resp = line["response"]
    status = resp.get("status")
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise ReplayError(f"{where}: response.status must be an HTTP status, got {status!r}")
    headers = [(k, str(v)) for k, v in (resp.get("headers") or {}).items()
               if k.lower() not in REPLAYED_HEADERS_SKIPPED]
    timing = line.get("timing") or {}
    events = resp.get("events")
    if events is not None:
        if not isinstance(events, list) or not all(isinstance(e, dict) and "t_ms" in e for e in events):
            raise ReplayError(f"{where}: response.events must be a list of events with t_ms")
        last = max((float(e["t_ms"]) for e in events), default=0.0)
        e2e = float(timing.get("e2e_ms") or last)
        return Replay(status, headers, events, b"", max(e2e, last), cut=line.get("end") == "upstream_error",
                      source=where)
    if "body" in resp:
        body = json.dumps(resp["body"], ensure_ascii=False, separators=(",", ":")).encode()
    elif "body_text" in resp:
        body = resp["body_text"].encode()
    elif "body_base64" in resp:
        body = base64.b64decode(resp["body_base64"])
        if resp.get("body_encoding"):
            headers.append(("Content-Encoding", resp["body_encoding"]))
    else:
        body = b""
    return Replay(status, headers, None, body, float(timing.get("e2e_ms") or 0.0), source=where)


@dataclass
class ReplayBook:
    """Recorded exchanges indexed by match key; take() gives the next one for a request, in turn."""

    fields: tuple[str, ...] | None = None
    strict: bool = False
    """No match: a 404 (True), or the simulator's own answer (False)."""
    entries: dict[str, list[Replay]] = field(default_factory=dict)
    cursors: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    """Lines left out: the client hung up before the response ended, or the upstream never answered."""
    files: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, paths: Sequence[str], fields: Sequence[str] | None = None, strict: bool = False) -> ReplayBook:
        book = cls(tuple(fields) if fields else None, strict)
        for path in paths:
            book.add_file(path)
        return book

    def add_file(self, path: str) -> None:
        lines = list(jsonl_lines(path, ReplayError))
        self.files.append(path)
        for where, line in lines:
            if not isinstance(line, dict) or line.get("llmsim") != RECORD_FORMAT:
                raise ReplayError(f"{where}: not an `llmsim record` line (expected \"llmsim\": "
                                  f"\"{RECORD_FORMAT}\")")
            self.add(line, where)

    def add(self, line: dict[str, Any], where: str = "<line>") -> None:
        req = line.get("request")
        if not isinstance(req, dict) or "method" not in req or "path" not in req:
            raise ReplayError(f"{where}: request.method and request.path are required")
        if not line.get("response") or line.get("end") == "client_gone":
            self.skipped += 1
            return
        key = match_key(req["method"], req["path"], request_body(line), self.fields)
        self.entries.setdefault(key, []).append(_replay_of(line, where))

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())

    def take(self, method: str, path: str, body: Any) -> Replay | None:
        """The next recording for this request (in turn, then over again), or None."""
        key = match_key(method, path, body, self.fields)
        options = self.entries.get(key)
        if not options:
            return None
        i = self.cursors.get(key, 0)
        self.cursors[key] = i + 1
        return options[i % len(options)]

    def describe(self) -> str:
        how = "exact body" if not self.fields else "fields " + ",".join(self.fields) + " (and stream)"
        skipped = f"; {self.skipped} left out (no complete response)" if self.skipped else ""
        unmatched = "404" if self.strict else "the generator"
        return (f"{len(self)} recordings under {len(self.entries)} keys, matched on {how}; unmatched: {unmatched}"
                f"{skipped}")
