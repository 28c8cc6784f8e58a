"""The gevent WSGI server: TCP_NODELAY on every socket, clean shutdown on signals.

pywsgi never sets TCP_NODELAY; without it Nagle plus delayed ACK add ~40 ms to
TTFT on keep-alive connections and merge small ITL gaps (see DESIGN.md).
"""

from __future__ import annotations

import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

import gevent
from gevent.pywsgi import WSGIHandler, WSGIServer

from ..errors import ConnectionDrop
from .config import ServerConfig
from .handlers import create_app
from .state import AppState

if TYPE_CHECKING:  # pragma: no cover
    from ..replay import ReplayBook


class _QuietHandler(WSGIHandler):
    """Client disconnects are normal under load tests: no traceback for them.

    An injected ConnectionDrop closes the socket as is: no 500 before the
    response, no terminating chunk in the middle of one.
    """

    def get_environ(self) -> dict:
        environ = super().get_environ()
        environ["llmsim.socket"] = self.socket  # handlers.SOCKET_KEY: to notice a client that hangs up
        return environ

    def handle_error(self, t: Any, v: Any, tb: Any) -> None:
        if isinstance(t, type) and issubclass(t, ConnectionDrop):
            self.close_connection = True
            return
        super().handle_error(t, v, tb)

    def log_error(self, msg: str, *args: Any) -> None:  # pragma: no cover - pywsgi's error path
        if args and isinstance(args[-1], (BrokenPipeError, ConnectionResetError)):
            return
        super().log_error(msg, *args)


class NoDelayWSGIServer(WSGIServer):
    handler_class = _QuietHandler

    def handle(self, sock: socket.socket, address: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not a TCP socket
            pass
        super().handle(sock, address)


def make_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def build_server(config: ServerConfig, state: AppState | None = None,
                 replay: ReplayBook | None = None) -> tuple[NoDelayWSGIServer, AppState]:
    """A bound (not yet serving) server and its state (`replay`: `llmsim replay`'s recordings)."""
    state = state or AppState(config)
    listener = make_listener(config.host, config.port)
    server = NoDelayWSGIServer(listener, create_app(state, replay), log="default" if config.access_log else None,
                               error_log="default")
    return server, state


def server_url(server: WSGIServer) -> str:
    host, port = server.address[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def describe(state: AppState) -> str:
    profiles = (f"profile {state.forced.name} for every model" if state.forced
                else f"{len(state.registry)} profiles, per model")
    extras = []
    if state.faults.active:
        extras.append("errors " + ", ".join(f"{k}={r:g}" for k, r in state.faults.base.rates.items())
                      if state.faults.base.rates else "errors per model/profile")
    if state.limiter is not None:
        extras.append(f"rate limits (tiers: {', '.join(state.limiter.config.tiers)})")
    if state.auth is not None:
        n = len(state.auth.api_keys)
        extras.append(f"auth ({n} key{'' if n == 1 else 's'})")
    if state.config.admin_token:
        extras.append("/llmsim/config enabled")
    return f"generator {state.config.generator}, {profiles}" + "".join(f"; {e}" for e in extras)


def serve(config: ServerConfig, replay: ReplayBook | None = None) -> int:
    """Run until SIGINT/SIGTERM; returns the process exit code."""
    server, state = build_server(config, replay=replay)
    server.start()
    if replay is not None:
        print(f"llmsim replaying {', '.join(replay.files)}: {replay.describe()}", flush=True)
    print(f"llmsim serving on {server_url(server)} ({describe(state)})", flush=True)
    stopping = gevent.event.Event()

    def _stop(*_: Any) -> None:
        stopping.set()

    gevent.signal_handler(signal.SIGTERM, _stop)
    gevent.signal_handler(signal.SIGINT, _stop)
    stopping.wait()
    server.stop(timeout=2)
    print("llmsim stopped", file=sys.stderr, flush=True)
    return 0
