"""An in-process llmsim server for tests and embedded load tests.

In a gevent-patched process the server runs as greenlets on the current hub.
In an unpatched one (plain pytest, a script) it runs in its own OS thread with
its own hub, so callers using ordinary blocking clients are served too.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .profiles import ProfileRegistry

__all__ = ["RunningServer", "run_server", "start_server"]


def _patched() -> bool:
    from gevent import monkey

    return monkey.is_module_patched("socket")


@dataclass
class RunningServer:
    """A started server: `url` is its base URL (no trailing slash); call stop() when done."""

    url: str
    state: Any
    _stop: Any = field(repr=False)

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    def stop(self) -> None:
        self._stop()


def start_server(*, latency_profile: str | None = None,
                 profile_files: str | os.PathLike | Iterable[str | os.PathLike] = (),
                 profiles_dir: str | None = None, generator: str | None = None, target_tokens: int | None = None,
                 seed: int | None = None, config: dict | str | None = None, host: str | None = None,
                 port: int | None = None, replay: Any = None, **settings: Any) -> RunningServer:
    """Start llmsim on an ephemeral port (by default) and return once it accepts connections.

    `config` is a config-file path or a dict of its settings; the keyword arguments you give override it,
    as flags do, and the ones you leave out leave its values alone. Unless the config sets them, the
    server listens on a free port of 127.0.0.1. `profile_files` are extra profile YAMLs (a list of paths). `replay` is a
    llmsim.replay.ReplayBook: its recordings answer first, as with `llmsim replay`.
    """
    from .cli.config import load_config_file, resolve_config
    from .cli.server import build_server, server_url
    from .cli.state import AppState

    flags: dict[str, Any] = dict(settings)
    for key, value in (("latency_profile", latency_profile), ("target_tokens", target_tokens), ("seed", seed),
                       ("profiles_dir", profiles_dir), ("generator", generator), ("host", host), ("port", port)):
        if value is not None:
            flags[key] = value
    doc = load_config_file(config) if isinstance(config, str) else config
    for key, default in (("host", "127.0.0.1"), ("port", 0)):  # a test's defaults, unless the config says
        if key not in flags and not (isinstance(doc, dict) and key in doc):
            flags[key] = default
    if isinstance(config, str):
        flags["config"] = config
    cfg = resolve_config(flags, env={}, settings=config if isinstance(config, dict) else None)
    registry = ProfileRegistry.load(extra_dirs=[cfg.profiles_dir] if cfg.profiles_dir else [],
                                    extra_files=profile_files)  # one path or several

    if _patched():
        server, state = build_server(cfg, AppState(cfg, registry), replay=replay)
        server.start()
        return RunningServer(server_url(server), state, lambda: server.stop(timeout=1))

    ready = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        import gevent
        import gevent.event

        try:
            server, state = build_server(cfg, AppState(cfg, registry), replay=replay)
            server.start()
        except BaseException as e:  # surfaced to the caller below
            box["error"] = e
            ready.set()
            return
        stopped = gevent.event.Event()
        box.update(server=server, state=state, hub=gevent.get_hub(), stopped=stopped)
        ready.set()
        stopped.wait()  # set once stop() has run to its end (close() alone already ends serve_forever's wait)
        # This thread's hub and its event loop (an epoll and an eventfd) die with the server: a test suite that
        # starts a server per test would otherwise run out of file descriptors.
        gevent.get_hub().destroy(destroy_loop=True)

    thread = threading.Thread(target=run, name="llmsim-server", daemon=True)
    thread.start()
    ready.wait()
    if "error" in box:
        raise box["error"]
    server = box["server"]

    def stop() -> None:
        import gevent

        def stop_then_say() -> None:
            try:
                server.stop(1)
            finally:
                box["stopped"].set()

        # In a greenlet of the server's hub, not in the loop's callback: stop() waits out the streams' grace.
        box["hub"].loop.run_callback_threadsafe(gevent.spawn, stop_then_say)
        thread.join(timeout=5)

    return RunningServer(server_url(server), box["state"], stop)


@contextmanager
def run_server(**kwargs: Any) -> Iterator[str]:
    """Context manager for pytest: yields the base URL of a fresh in-process server."""
    server = start_server(**kwargs)
    try:
        yield server.url
    finally:
        server.stop()
