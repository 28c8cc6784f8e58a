"""Kernel receive timestamps: an event's time is when it reached the machine, not when the client read it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from time import perf_counter

import pytest

from llmsim.loadtest.adapters import ChatCompletionsAdapter, Prompt
from llmsim.loadtest.client import LlmClient
from llmsim.loadtest.transport import KERNEL_STAMPS_SUPPORTED, HttpConnection

SERVER = Path(__file__).resolve().parent / "sse_server.py"
BLOCK_MS = 50.0


@pytest.fixture(scope="module")
def separate_server():
    """The minimal server in its own process (TTFT 10 ms, ITL 100 ms): it sends while this process is blocked."""
    proc = subprocess.Popen([sys.executable, str(SERVER), "10", "100"], stdout=subprocess.PIPE, text=True)
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def late_client(url: str, kernel_stamps: bool) -> LlmClient:
    """A client whose event loop is busy for BLOCK_MS right after writing each request, without yielding."""
    client = LlmClient(url, ChatCompletionsAdapter(), model="m", count_tokens=len, timeout=10,
                       kernel_stamps=kernel_stamps)
    conn = client.conn
    read_head = conn._read_head

    def busy_then_read_head():
        end = perf_counter() + BLOCK_MS / 1000.0
        while perf_counter() < end:
            pass
        return read_head()

    conn._read_head = busy_then_read_head
    return client


@pytest.mark.skipif(not KERNEL_STAMPS_SUPPORTED, reason="kernel receive timestamps need Linux")
def test_kernel_stamps_see_through_a_busy_client(separate_server):
    prompt = Prompt.of_text("hi", prompt_tokens=1)
    kernel = late_client(separate_server, True).run(prompt, max_tokens=3)
    user = late_client(separate_server, False).run(prompt, max_tokens=3)
    assert kernel.ok and user.ok, (kernel.error_message, user.error_message)
    assert kernel.kernel_stamps and not user.kernel_stamps
    # The first token left the server about 10 ms after the request; the client read it 50 ms after.
    # (Had the second token also arrived before the read, 110 ms after, both would carry its stamp:
    # the kernel merges the segments waiting in a socket and keeps the last one's stamp.)
    assert user.ttft_ms >= BLOCK_MS
    assert kernel.ttft_ms < BLOCK_MS - 15.0, kernel.ttft_ms
    # The later tokens arrive while the client waits for them: the kernel's stamps see the 100 ms gaps,
    # the user-space ones the first gap shortened by the client's lateness.
    assert kernel.itl_ms == pytest.approx([100.0, 100.0], abs=15.0)
    assert user.itl_ms[0] < kernel.itl_ms[0] - 15.0


def test_https_and_opt_out_use_user_space_stamps():
    assert not HttpConnection("https://example.com").kernel_stamps
    assert not HttpConnection("http://example.com", kernel_stamps=False).kernel_stamps
    assert HttpConnection("http://example.com").kernel_stamps == KERNEL_STAMPS_SUPPORTED
