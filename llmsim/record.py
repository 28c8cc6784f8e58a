"""`llmsim record`: the recording proxy's core, Flask-free (the WSGI glue is llmsim/cli/proxy.py).

A request comes in; `Proxy.forward()` sends it to the upstream over a pooled
keep-alive connection (llmsim/upstream.py: raw gevent sockets, TCP_NODELAY,
ssl for https) and returns an `Exchange`. Iterating the Exchange yields each
socket read of the upstream body the moment it arrives, de-chunked and
otherwise unchanged, so the client sees the upstream's own timing; the same
pieces feed the record: an incremental SSE splitter stamps every event with
its arrival time (the kernel's, on plain TCP), or a buffer keeps a plain body.
When the Exchange closes (end of body, client gone, upstream broken), one JSON
line goes to the record file.

Secrets never reach the file: request headers are kept from an allow-list
(`authorization`, `x-api-key`, cookies and the like are never on it), query
parameters that carry keys are redacted, and every secret value seen in the
request is scrubbed from the serialized line as a last guard.

The record format (one line per request, "llmsim": RECORD_FORMAT) is
documented in docs/record-replay-fit.md; llmsim/replay.py and llmsim/fit.py read it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import IO, Any
from urllib.parse import parse_qsl, quote, urlencode

from .errors import ConnectionDrop
from .loadtest.adapters import ApiAdapter, ChatCompletionsAdapter, MessagesAdapter, ResponsesAdapter, Usage
from .loadtest.sse import MalformedStream, SseEvent
from .upstream import Stale, Upstream, UpstreamConnection, UpstreamError, UpstreamResponse
from .validation import not_utf8

__all__ = ["Exchange", "Proxy", "RecordWriter", "Upstream", "UpstreamError", "api_of", "content_times",
           "RECORD_FORMAT"]

RECORD_FORMAT = "record/1"
"""The value of every line's "llmsim" key: the format and its version."""

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key",
                            "cookie", "set-cookie"})
"""Headers that carry credentials: forwarded to the upstream as they are, never written."""
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "host", "content-length", "expect"})
"""Not forwarded as they are: they describe one connection, not the message (Host and Content-Length are
set again for the upstream connection; the body has already been read, so no 100-continue either)."""
REQUEST_HEADERS_KEPT = frozenset({"content-type", "accept", "anthropic-version", "anthropic-beta", "openai-beta",
                                  "user-agent", "x-llmsim-conversation"})
RESPONSE_HEADERS_KEPT = frozenset({"content-type", "content-encoding", "retry-after", "retry-after-ms",
                                   "x-request-id", "request-id", "openai-processing-ms", "openai-version",
                                   "openai-model", "x-should-retry"})
RESPONSE_HEADER_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
SECRET_QUERY_KEYS = frozenset({"key", "api-key", "api_key", "apikey", "token", "access_token", "sig", "signature"})
REDACTED = "[redacted]"
MAX_RECORDED_BODY = 64 * 1024 * 1024
"""A larger non-streamed body is still forwarded whole; the record keeps its first 64 MiB."""

_ADAPTERS: dict[str, ApiAdapter] = {"chat": ChatCompletionsAdapter(), "responses": ResponsesAdapter(),
                                    "messages": MessagesAdapter()}


def jsonl_lines(path: str, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    """(`file:line`, parsed JSON) of each non-blank line; `error` names the file (and line) at fault."""
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    with fh:
        for n, raw in enumerate(fh, 1):
            where = f"{path}:{n}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{where}: {not_utf8(e, 'column')}") from None
            if not text.strip():
                continue
            try:
                yield where, json.loads(text)
            except ValueError as e:
                raise error(f"{where}: not JSON ({e})") from None


def api_of(path: str) -> str | None:
    """Which generation API a path belongs to ("chat", "responses", "messages"), or None."""
    p = path.split("?", 1)[0].rstrip("/")
    if p.endswith("/chat/completions"):
        return "chat"
    if p.endswith("/responses"):
        return "responses"
    if p.endswith("/messages"):
        return "messages"
    return None


def adapter_for(api: str | None) -> ApiAdapter | None:
    return _ADAPTERS.get(api or "")


def redact_target(target: str) -> str:
    """The request target with key-bearing query parameters replaced by [redacted]."""
    path, sep, query = target.partition("?")
    if not sep:
        return path
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(k.lower() in SECRET_QUERY_KEYS for k, _ in pairs):
        return target
    return path + "?" + urlencode([(k, REDACTED if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs])


def secrets_of(headers: Iterable[tuple[str, str]], target: str) -> list[str]:
    """Every credential value in a request: header values (and a bearer token alone), key-bearing query values."""
    out: list[str] = []
    for name, value in headers:
        if name.lower() in SECRET_HEADERS and value:
            out.append(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in ("bearer", "basic", "token"):
                out.append(token.strip())
            if name.lower() == "cookie":
                out += [c.partition("=")[2].strip() for c in value.split(";") if "=" in c]
    _, _, query = target.partition("?")
    out += [v for k, v in parse_qsl(query, keep_blank_values=True) if k.lower() in SECRET_QUERY_KEYS]
    out += [u for u in map(_as_utf8, out) if u is not None]
    # Longest first, so a bearer token is not left half-replaced inside its header value.
    return sorted({s for s in out if len(s) >= 4}, key=len, reverse=True)


def _as_utf8(value: str) -> str | None:
    """A header value as its UTF-8 text, where it differs: WSGI hands headers over as Latin-1, so a
    non-ASCII key arrives as mojibake ("cafÃ©") while the same key in a JSON body reads "café"."""
    try:
        text = value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return None
    return text if text != value else None


def kept_headers(headers: Iterable[tuple[str, str]], names: frozenset[str],
                 prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        low = name.lower()
        if low in SECRET_HEADERS:
            continue
        if low in names or low.startswith(prefixes):
            out[low] = value if low not in out else out[low] + ", " + value
    return out


def body_fields(data: bytes) -> dict[str, Any]:
    """A body for the record: {"body": parsed JSON} when it parses, else {"body_text"} or {"body_base64"}."""
    if not data:
        return {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(data).decode("ascii")}
    try:
        return {"body": json.loads(text)}
    except ValueError:
        return {"body_text": text}


class SseSplitter:
    """Incremental SSE framing for the record: bytes in, events (with the time they completed) out.

    An event is stamped when its blank line arrives, that is when all of it
    had reached the proxy; a block with only comments is kept as {"comment"}.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._fields: dict[str, Any] = {}
        self._data: list[str] = []
        self.events: list[dict[str, Any]] = []

    def feed(self, chunk: bytes, t_ms: float) -> None:
        buf = self._buf + chunk
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            if line.endswith(b"\r"):
                line = line[:-1]
            start = nl + 1
            self._line(line.decode("utf-8", "replace"), t_ms)
        self._buf = buf[start:]

    def _line(self, line: str, t_ms: float) -> None:
        if not line:
            if self._data or self._fields:
                ev: dict[str, Any] = {"t_ms": round(t_ms, 3)}
                if "event" in self._fields:
                    ev["event"] = self._fields["event"]
                if self._data:
                    ev["data"] = "\n".join(self._data)
                for k in ("id", "retry"):
                    if k in self._fields:
                        ev[k] = self._fields[k]
                if not self._data and "comment" in self._fields and len(self._fields) == 1:
                    ev["comment"] = self._fields["comment"]
                self.events.append(ev)
            self._fields, self._data = {}, []
            return
        name, sep, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "":
            self._fields.setdefault("comment", value)
        elif name == "data":
            self._data.append(value)
        elif name in ("event", "id", "retry"):
            self._fields[name] = value

    def finish(self, t_ms: float) -> None:
        """End of stream: a last event without its blank line still counts (as clients treat it)."""
        if self._buf:
            self._line(self._buf.decode("utf-8", "replace").rstrip("\r"), t_ms)
            self._buf = b""
        self._line("", t_ms)


def event_bytes(ev: dict[str, Any]) -> bytes:
    """One recorded event back on the wire (the replay side)."""
    if "comment" in ev:
        return f":{ev['comment'] and ' ' + ev['comment']}\n\n".encode()
    out = ""
    if "event" in ev:
        out += f"event: {ev['event']}\n"
    if "id" in ev:
        out += f"id: {ev['id']}\n"
    if "retry" in ev:
        out += f"retry: {ev['retry']}\n"
    if "data" in ev:
        out += "".join(f"data: {line}\n" for line in ev["data"].split("\n"))
    return (out + "\n").encode()


def content_times(api: str | None, events: list[dict[str, Any]]) -> tuple[list[tuple[float, str]], Usage, bool]:
    """The content-carrying events of a recorded stream as (t_ms, text), its usage, and whether reasoning streamed.

    What counts as content is the Locust toolkit's own definition (its API
    adapters): a non-empty text or reasoning delta.
    """
    adapter = adapter_for(api)
    usage = Usage()
    out: list[tuple[float, str]] = []
    reasoning = False
    if adapter is None:
        return out, usage, reasoning
    for ev in events:
        if "data" not in ev:
            continue
        try:
            delta = adapter.read_event(SseEvent(ev.get("event"), ev["data"], ev["t_ms"]))
        except (MalformedStream, AttributeError, TypeError):
            continue
        usage.update(delta.usage)
        if delta.text or delta.reasoning:
            out.append((ev["t_ms"], delta.text + delta.reasoning))
            reasoning = reasoning or bool(delta.reasoning)
    return out, usage, reasoning


def usage_dict(usage: Usage) -> dict[str, int | None]:
    return {"prompt_tokens": usage.prompt_tokens, "output_tokens": usage.output_tokens,
            "reasoning_tokens": usage.reasoning_tokens}


class RecordWriter:
    """Appends one JSON line per exchange; every secret of the exchange is scrubbed from the line."""

    def __init__(self, path: str, *, append: bool = False) -> None:
        self.path = path
        self._fh: IO[str] | None = open(path, "a" if append else "w", encoding="utf-8")
        self.lines = 0

    def write(self, line: dict[str, Any], secrets: Iterable[str] = ()) -> None:
        text = json.dumps(line, ensure_ascii=False, separators=(",", ":"))
        for s in secrets:
            text = text.replace(s, REDACTED)
            escaped = json.dumps(s, ensure_ascii=False)[1:-1]
            if escaped != s:
                text = text.replace(escaped, REDACTED)
        if self._fh is None:
            return
        self._fh.write(text + "\n")
        self._fh.flush()
        self.lines += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Proxy:
    """Forwards requests to one upstream and records each exchange."""

    def __init__(self, upstream: Upstream, writer: RecordWriter | None) -> None:
        self.upstream = upstream
        self.writer = writer
        self.in_flight = 0
        self.seq = 0

    def forward(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> Exchange:
        """Send the request upstream and wait for the response head; UpstreamError when that fails
        (after recording the failed exchange)."""
        self.seq += 1
        self.in_flight += 1
        ex = Exchange(self, self.seq, method, target, headers, body)
        try:
            ex.send()
        except UpstreamError:
            ex.close()
            raise
        return ex

    def close(self) -> None:
        self.upstream.close()
        if self.writer is not None:
            self.writer.close()


class Exchange:
    """One request through the proxy: iterate it for the response body pieces; close() records it."""

    def __init__(self, proxy: Proxy, seq: int, method: str, target: str, headers: list[tuple[str, str]],
                 body: bytes) -> None:
        self.proxy = proxy
        self.seq = seq
        self.method = method.upper()
        self.target = target if target.startswith("/") else "/" + target
        self.request_headers = headers
        self.body = body
        self.in_flight = proxy.in_flight
        self.api = api_of(self.target)
        self.start_unix = time.time()
        self.started = _now_iso()
        self.t0 = 0.0
        """time.time() just before the request went upstream: every t_ms counts from it."""
        self.status: int | None = None
        self.reason = ""
        self.response_headers: list[tuple[str, str]] = []
        self.headers_ms: float | None = None
        self.end_ms: float | None = None
        self.error: str | None = None
        self.end = "complete"
        self._conn: UpstreamConnection | None = None
        self._resp: UpstreamResponse | None = None
        self._sse: SseSplitter | None = None
        self._body = bytearray()
        self._truncated = False
        self._decoder: Any = None
        self._raw_encoding: str | None = None
        self._finished = False
        self._closed = False

    # ------------------------------------------------------------------ upstream

    def _upstream_headers(self) -> list[tuple[str, str]]:
        out = [(name, value) for name, value in self.request_headers if name.lower() not in HOP_BY_HOP]
        out.append(("Host", self.proxy.upstream.host_header))
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            out.append(("Content-Length", str(len(self.body))))
        return out

    def send(self) -> None:
        up = self.proxy.upstream
        path = up.base_path + self.target
        headers = self._upstream_headers()
        while True:
            try:
                conn = up.connection()
                self.t0 = time.time()
                resp = conn.request(self.method, path, headers, self.body)
            except Stale:
                continue  # a kept-alive connection the upstream had closed: again, on the next or a new one
            except UpstreamError as e:
                self.error = str(e) if str(e).startswith("upstream") else f"upstream {up.display}: {e}"
                raise UpstreamError(self.error) from None
            break
        self.headers_ms = (resp.head_time - self.t0) * 1000.0
        self._conn, self._resp = conn, resp
        self.status, self.reason = resp.status, resp.reason
        self.response_headers = [(k, v) for k, v in resp.headers if k.lower() not in HOP_BY_HOP
                                 or k.lower() == "content-length"]
        ctype = (resp.header("content-type") or "").lower()
        encoding = (resp.header("content-encoding") or "identity").lower().strip()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(47)  # gzip or zlib header, auto-detected
        elif encoding != "identity":
            self._raw_encoding = encoding
        if ctype.startswith("text/event-stream") and self._raw_encoding is None:
            self._sse = SseSplitter()

    # ------------------------------------------------------------------ body

    def __iter__(self) -> Iterator[bytes]:
        resp = self._resp
        if resp is None:
            return
        try:
            while True:
                try:
                    chunk, t = resp.read()
                except (OSError, UpstreamError) as e:
                    # Cut the client's response short too (no terminating chunk), as the upstream did.
                    self.end = "upstream_error"
                    self.error = f"upstream broke off the response: {getattr(e, 'strerror', None) or e}"
                    self._finish()
                    raise ConnectionDrop() from None
                if not chunk:
                    self.end_ms = (t - self.t0) * 1000.0  # when the body's last bytes arrived
                    break
                self._take(chunk, (t - self.t0) * 1000.0)
                yield chunk
        except GeneratorExit:
            if not self._finished:
                self.end = "client_gone"
            raise
        self._finish()

    def _take(self, chunk: bytes, t_ms: float) -> None:
        if self._decoder is not None:
            try:
                chunk = self._decoder.decompress(chunk)
            except zlib.error:
                self._decoder, self._raw_encoding = None, "undecodable"
        if self._sse is not None:
            self._sse.feed(chunk, t_ms)
        elif len(self._body) < MAX_RECORDED_BODY:
            self._body += chunk[:MAX_RECORDED_BODY - len(self._body)]
            self._truncated = self._truncated or len(self._body) >= MAX_RECORDED_BODY
        self.end_ms = t_ms

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.end_ms is None:
            self.end_ms = (time.time() - self.t0) * 1000.0
        if self._sse is not None:
            self._sse.finish(self.end_ms)

    def close(self) -> None:
        """Record the exchange (once) and settle the upstream connection."""
        if self._closed:
            return
        self._closed = True
        self.proxy.in_flight -= 1
        if self.status is not None and not self._finished and self.end == "complete":
            self.end = "client_gone"
        conn, resp = self._conn, self._resp
        if conn is not None:
            if self.end == "complete" and resp is not None and resp.reusable:
                self.proxy.upstream.release(conn)
            else:
                conn.close()
        if self.end_ms is None:
            self.end_ms = (time.time() - self.t0) * 1000.0 if self.t0 else None
        writer = self.proxy.writer
        if writer is not None:
            writer.write(self.line(), secrets_of(self.request_headers, self.target))

    # ------------------------------------------------------------------ the record

    def line(self) -> dict[str, Any]:
        request: dict[str, Any] = {"method": self.method, "path": redact_target(self.target),
                                   "headers": kept_headers(self.request_headers, REQUEST_HEADERS_KEPT),
                                   **body_fields(self.body)}
        out: dict[str, Any] = {"llmsim": RECORD_FORMAT, "seq": self.seq, "time": self.started,
                               "start_unix": round(self.start_unix, 6), "upstream": self.proxy.upstream.display,
                               "api": self.api, "in_flight": self.in_flight, "request": request}
        usage = Usage()
        timing: dict[str, float | None] = {"headers_ms": _r(self.headers_ms), "ttft_ms": None,
                                           "e2e_ms": _r(self.end_ms)}
        if self.status is None:
            out["response"] = None
        else:
            response: dict[str, Any] = {"status": self.status,
                                        "headers": kept_headers(self.response_headers, RESPONSE_HEADERS_KEPT,
                                                                RESPONSE_HEADER_PREFIXES)}
            if self._sse is not None:
                events = self._sse.events
                response["events"] = events
                content, usage, reasoning = content_times(self.api, events)
                if content:
                    timing["ttft_ms"] = content[0][0]
                if reasoning:
                    response["reasoning_streamed"] = True
            else:
                data = bytes(self._body)
                if self._raw_encoding is not None:
                    response["body_base64"] = base64.b64encode(data).decode("ascii")
                    response["body_encoding"] = self._raw_encoding
                else:
                    response.update(body_fields(data))
                    if "content-encoding" in response["headers"]:
                        response["body_decoded_from"] = response["headers"]["content-encoding"]
                if self._truncated:
                    response["body_truncated"] = True
                adapter = adapter_for(self.api)
                if adapter is not None and self.status < 400 and "body" in response:
                    try:
                        usage = adapter.read_body(response["body"])[2] or Usage()
                    except (MalformedStream, AttributeError, TypeError):
                        pass
            out["response"] = response
        out["timing"] = timing
        out["usage"] = usage_dict(usage)
        out["end"] = self.end if self.status is not None else "upstream_error"
        out["error"] = self.error
        return out


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def request_headers_from_environ(environ: dict[str, Any]) -> list[tuple[str, str]]:
    """The client's headers from a WSGI environ (names lower-cased; HTTP header names are case-insensitive)."""
    out = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            out.append((key[5:].replace("_", "-").lower(), value))
    if environ.get("CONTENT_TYPE"):
        out.append(("content-type", environ["CONTENT_TYPE"]))
    return out


def target_from_environ(environ: dict[str, Any]) -> str:
    """The request target as the client sent it (path and query)."""
    raw = environ.get("llmsim.target")
    if raw:
        return raw
    path = quote(environ.get("PATH_INFO", "/"), safe="/:@!$&'()*+,;=-._~%")
    qs = environ.get("QUERY_STRING")
    return path + ("?" + qs if qs else "")
