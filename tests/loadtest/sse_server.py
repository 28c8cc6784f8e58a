"""A minimal OpenAI-compatible SSE server written for the tests, sharing no code with llmsim.

It proves the toolkit assumes nothing llmsim-specific. Raw gevent sockets,
HTTP/1.1 keep-alive, chunked transfer encoding, tokens paced on absolute
deadlines (t0 + ttft + i * itl). Each token is one of a few words that are one
token in every OpenAI encoding. The request's model picks a behaviour:
  "<anything>"            a well-formed stream
  "mode-no-done"          the stream ends without `data: [DONE]`
  "mode-malformed"        a data line that is not JSON
  "mode-empty"            role chunk, finish chunk, [DONE] and nothing else
  "mode-error-event"      an error object in the stream
  "mode-http-429"         HTTP 429 with an OpenAI error body
  "mode-not-sse"          200 with a plain JSON body (no event stream)
  "mode-chunky"           3 tokens per event, one event every 3 ITLs
  "mode-close"            no chunked encoding: the body ends when the connection closes
  "mode-wordy"            one token per event (as usage counts), but each event's text is a rare word
                          that tiktoken counts as several tokens
  "mode-wordy-no-usage"   the same without a usage chunk
  "mode-strict"           HTTP 400 naming the field when the body has ignore_eos or min_tokens (OpenAI does)
  "mode-reasoning"        HTTP 400 when the body has max_tokens, in the words OpenAI's reasoning models use
  "mode-cache"            a prefix cache: prompt tokens are the words of the messages; a system message seen
                          before is cached (usage prompt_tokens_details.cached_tokens = its words) and the
                          request's TTFT is a quarter of the configured one
Every request is logged in `received` as (wall-clock arrival of its first bytes, parsed body).
With the request header `x-llmsim-trace: 1` it sends, just before `data: [DONE]`, the trace comment an
llmsim server sends (`: llmsim-trace {json}`): its own TTFT from the request's first byte to the first
content event written, each gap between content events as written, and what it planned.
Run as a script (python sse_server.py TTFT_MS ITL_MS) it prints its URL and serves until killed.
"""

from __future__ import annotations

import json
import sys
import time

import gevent
from gevent.server import StreamServer

WORDS = (" the", " of", " and", " to", " in")
RARE_WORDS = (" xylophonist", " Zqvx", " antidisestablishment")
"""Each is 3-4 tokens for tiktoken (o200k_base and cl100k_base); mode-wordy streams them as one token each."""


class MiniServer:
    def __init__(self, ttft_ms: float = 50.0, itl_ms: float = 5.0, port: int = 0) -> None:
        self.ttft_ms = ttft_ms
        self.itl_ms = itl_ms
        self.connections = 0
        self.requests = 0
        self.received: list[tuple[float, dict]] = []
        self.cached_prefixes: set[str] = set()
        self._server = StreamServer(("127.0.0.1", port), self._handle)

    def start(self) -> "MiniServer":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(timeout=1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    # ------------------------------------------------------------------ HTTP

    def _handle(self, sock, _addr) -> None:
        import socket as _s

        sock.setsockopt(_s.IPPROTO_TCP, _s.TCP_NODELAY, 1)
        self.connections += 1
        buf = b""
        try:
            while True:
                arrival = time.monotonic() if buf else None
                wall = time.time()
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if arrival is None:
                        arrival, wall = time.monotonic(), time.time()
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                while len(buf) < length:
                    buf += sock.recv(65536)
                body, buf = buf[:length], buf[length:]
                self.requests += 1
                req = json.loads(body or b"{}")
                self.received.append((wall, req))
                if not self._respond(sock, req, headers, arrival):
                    return
        except OSError:  # the client went away (Locust stops users mid-stream)
            return
        finally:
            sock.close()

    def _respond(self, sock, req: dict, headers: dict | None = None, arrival: float | None = None) -> bool:
        t0 = time.monotonic()
        trace = (headers or {}).get("x-llmsim-trace") == "1"
        arrival = t0 if arrival is None else arrival
        written: list[float] = []  # when each content event was written
        planned: list[float] = []  # when it was due
        model = req.get("model", "")
        n = int(req.get("max_tokens") or 16)
        refused = [f for f in ("ignore_eos", "min_tokens") if f in req]
        if model == "mode-strict" and refused:
            body = json.dumps({"error": {"message": f"Unrecognized request argument supplied: {refused[0]}",
                                         "type": "invalid_request_error", "param": None, "code": None}}).encode()
            sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            return True
        if model == "mode-reasoning":
            if "max_tokens" in req:
                body = json.dumps({"error": {
                    "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                               "Use 'max_completion_tokens' instead.",
                    "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}}).encode()
                sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
                return True
            n = int(req.get("max_completion_tokens") or 16)
        usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": n + 7}
        ttft_ms = self.ttft_ms
        if model == "mode-cache":
            msgs = req.get("messages") or []
            words = [len(str(m.get("content", "")).split()) for m in msgs]
            cached = 0
            if msgs and msgs[0].get("role") == "system":
                key = str(msgs[0].get("content"))
                if key in self.cached_prefixes:
                    cached = words[0]
                self.cached_prefixes.add(key)
            usage = {"prompt_tokens": sum(words), "completion_tokens": n, "total_tokens": sum(words) + n,
                     "prompt_tokens_details": {"cached_tokens": cached}}
            if cached:
                ttft_ms = self.ttft_ms / 4
        if model == "mode-http-429":
            body = json.dumps({"error": {"message": "Rate limit reached", "type": "requests",
                                         "code": "rate_limit_exceeded"}}).encode()
            sock.sendall(b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            return True
        if not req.get("stream"):
            self._sleep_until(t0 + (ttft_ms + (n - 1) * self.itl_ms) / 1000.0)
            text = "".join(WORDS[i % len(WORDS)] for i in range(n))
            body = json.dumps({"id": "x", "object": "chat.completion", "model": model, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
                "usage": usage}).encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                         % len(body) + body)
            return True
        if model == "mode-not-sse":
            body = b'{"choices": []}\n'
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + self._chunk(body) + b"0\r\n\r\n")
            return True
        close = model == "mode-close"
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                     + (b"Connection: close\r\n\r\n" if close else b"Transfer-Encoding: chunked\r\n\r\n"))
        send = (lambda b: sock.sendall(b)) if close else (lambda b: sock.sendall(self._chunk(b)))

        def event(obj) -> bytes:
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        def chunk(delta, finish=None):
            return event({"id": "x", "object": "chat.completion.chunk", "model": model,
                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        send(b": keep-alive\n\n" + chunk({"role": "assistant", "content": ""}))
        per_event = 3 if model == "mode-chunky" else 1
        if model != "mode-empty":
            i = 0
            while i < n:
                k = min(per_event, n - i)
                due = t0 + (ttft_ms + (i + k - 1) * self.itl_ms) / 1000.0
                self._sleep_until(due)
                words = RARE_WORDS if model.startswith("mode-wordy") else WORDS
                text = "".join(words[(i + j) % len(words)] for j in range(k))
                if model == "mode-malformed" and i == 2:
                    send(b"data: {not json\n\n")
                    break
                if model == "mode-error-event" and i == 2:
                    send(event({"error": {"message": "overloaded", "type": "server_error"}}))
                    break
                send(chunk({"content": text}))
                written.append(time.monotonic())
                planned.append(due)
                i += k
        send(chunk({}, "length"))
        if (req.get("stream_options") or {}).get("include_usage") and model != "mode-wordy-no-usage":
            send(event({"id": "x", "object": "chat.completion.chunk", "choices": [], "usage": usage}))
        if trace and written:
            ms = lambda a, b: round((a - b) * 1000.0, 4)  # noqa: E731
            send(b": llmsim-trace " + json.dumps({
                "id": "x", "queue_ms": 0.0, "ttft_ms": ms(written[0], arrival),
                "gaps_ms": [ms(b, a) for a, b in zip(written, written[1:])],
                "planned_ttft_ms": ms(planned[0], t0),
                "planned_gaps_ms": [ms(b, a) for a, b in zip(planned, planned[1:])]}).encode() + b"\n\n")
        if model != "mode-no-done":
            send(b"data: [DONE]\n\n")
        if close:
            return False
        sock.sendall(b"0\r\n\r\n")
        return True

    @staticmethod
    def _chunk(b: bytes) -> bytes:
        return b"%x\r\n" % len(b) + b + b"\r\n"

    @staticmethod
    def _sleep_until(deadline: float) -> None:
        wait = deadline - time.monotonic()
        if wait > 0:
            gevent.sleep(wait)


if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()
    srv = MiniServer(float(sys.argv[1]), float(sys.argv[2])).start()
    print(srv.url, flush=True)
    gevent.wait()
