"""Fixtures shared by the toolkit's tests: the minimal SSE server and a token counter."""

from __future__ import annotations

import pytest

from llmsim.tokens import get_encoding

from .sse_server import MiniServer


@pytest.fixture(scope="module")
def mini_server():
    srv = MiniServer(ttft_ms=30.0, itl_ms=4.0).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def count_tokens():
    enc = get_encoding("o200k_base")
    return lambda text: len(enc.encode_ordinary(text))
