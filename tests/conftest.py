"""Test-wide set-up: gevent monkey-patching must precede every other import."""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import tempfile  # noqa: E402

# Keep tiktoken's cache private to the test run, so the offline seeding path is
# exercised on every run rather than hidden by a warm user cache.
os.environ.setdefault("TIKTOKEN_CACHE_DIR", tempfile.mkdtemp(prefix="llmsim-tiktoken-"))


import socket  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def small_send_buffer(monkeypatch):
    """Every connection the test's server accepts gets an 8 KB send buffer: the kernel grows one to
    megabytes, and a small fixed one fills on any machine, so a stream's sends come up short."""
    from llmsim.cli.server import NoDelayWSGIServer

    handle = NoDelayWSGIServer.handle

    def small(self, sock, address):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        return handle(self, sock, address)

    monkeypatch.setattr(NoDelayWSGIServer, "handle", small)
