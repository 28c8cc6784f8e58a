"""`llmsim record`: the HTTP face of the recording proxy (a bare WSGI app on the TCP_NODELAY gevent server).

No Flask here: the proxy forwards any method and path, and a framework
would only stand between the upstream's bytes and the client. The work is in
llmsim/record.py; this module reads the request, answers with the upstream's
status, headers and body pieces as they arrive, or a 502 in the provider's
envelope when the upstream cannot be reached.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import gevent

from ..errors import ApiError
from ..record import Proxy, RecordWriter, Upstream, UpstreamError, request_headers_from_environ, target_from_environ
from .access import provider_for_path
from .server import NoDelayWSGIServer, _QuietHandler, make_listener, server_url

StartResponse = Callable[..., Any]


class _ProxyHandler(_QuietHandler):
    def get_environ(self) -> dict:
        environ = super().get_environ()
        environ["llmsim.target"] = self.path  # the target as sent: PATH_INFO is unquoted
        return environ


class ProxyServer(NoDelayWSGIServer):
    handler_class = _ProxyHandler


def proxy_app(proxy: Proxy) -> Callable[[dict, StartResponse], Iterable[bytes]]:
    """The WSGI app: every method and path goes to the upstream."""

    def app(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        target = target_from_environ(environ)
        body = environ["wsgi.input"].read() if environ.get("CONTENT_LENGTH") or \
            environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked" else b""
        try:
            ex = proxy.forward(environ["REQUEST_METHOD"], target, request_headers_from_environ(environ), body)
        except UpstreamError as e:
            provider = provider_for_path(target.split("?", 1)[0])
            err = ApiError("server_error", f"llmsim record: {e}", status=502)
            start_response("502 Bad Gateway", [("Content-Type", "application/json")])
            return [err.body_bytes(provider)]
        start_response(f"{ex.status} {ex.reason}", ex.response_headers)
        return ex

    return app


@dataclass
class RunningProxy:
    url: str
    proxy: Proxy
    server: ProxyServer

    def stop(self) -> None:
        self.server.stop(timeout=2)
        self.proxy.close()


def start_proxy(upstream: str, out: str | None, *, host: str = "127.0.0.1", port: int = 0,
                timeout: float = 600.0, append: bool = False) -> RunningProxy:
    """Start the recording proxy (greenlets on the current hub: the process must be gevent-patched)."""
    up = Upstream(upstream, timeout=timeout)
    writer = RecordWriter(out, append=append) if out else None
    proxy = Proxy(up, writer)
    server = ProxyServer(make_listener(host, port), proxy_app(proxy), log=None, error_log="default")
    server.start()
    return RunningProxy(server_url(server), proxy, server)


def run(upstream: str, out: str, host: str, port: int, timeout: float, append: bool) -> int:
    """`llmsim record`: serve until SIGINT/SIGTERM."""
    try:
        open(out, "a" if append else "w", encoding="utf-8").close()
    except OSError as e:
        print(f"llmsim record: cannot write {out} ({e.strerror or e})", file=sys.stderr)
        return 2
    try:
        running = start_proxy(upstream, out, host=host, port=port, timeout=timeout, append=append)
    except ValueError as e:
        print(f"llmsim: {e}", file=sys.stderr)
        return 2
    print(f"llmsim recording on {running.url} -> {running.proxy.upstream.display} (to {out})", flush=True)
    stopping = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stopping.set)
    gevent.signal_handler(signal.SIGINT, stopping.set)
    stopping.wait()
    lines = running.proxy.writer.lines if running.proxy.writer else 0
    running.stop()
    print(f"llmsim record stopped: {lines} request{'' if lines == 1 else 's'} recorded in {out}", file=sys.stderr,
          flush=True)
    return 0
