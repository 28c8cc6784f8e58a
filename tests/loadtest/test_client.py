"""The measuring client against the minimal (non-llmsim) server: timings, tokens and every failure kind."""

from __future__ import annotations

import socket

import pytest

from llmsim.loadtest.adapters import ChatCompletionsAdapter, Prompt
from llmsim.loadtest.client import LlmClient
from llmsim.loadtest.metrics import itl_samples, tpot_ms

from .locust_helpers import LATE_MS, MEDIAN_ITL_MS

PROMPT = Prompt.of_text("hello", prompt_tokens=5)


def make_client(url: str, model: str, count_tokens) -> LlmClient:
    return LlmClient(url, ChatCompletionsAdapter(), model=model, count_tokens=count_tokens, timeout=10)


def test_stream_timings_and_tokens(mini_server, count_tokens):
    client = make_client(mini_server.url, "any-model", count_tokens)
    rec = client.run(PROMPT, max_tokens=20)
    assert rec.ok, rec.error_message
    assert rec.status == 200
    # Server: TTFT 30 ms, ITL 4 ms, on absolute deadlines.
    assert 29.0 <= rec.ttft_ms < 45.0
    assert len(rec.itl_ms) == 19
    assert sorted(rec.itl_ms)[9] == pytest.approx(4.0, abs=MEDIAN_ITL_MS)
    assert rec.output_tokens == 20 and rec.usage_reported
    assert rec.prompt_tokens == 7  # the server's usage wins over the local count
    assert rec.tpot_ms == pytest.approx((rec.e2e_ms - rec.ttft_ms) / 19)
    assert rec.e2e_ms >= rec.ttft_ms + 18 * 4.0 - 1.0


def test_keep_alive_reuses_one_connection(mini_server, count_tokens):
    before = mini_server.connections
    client = make_client(mini_server.url, "any-model", count_tokens)
    for _ in range(3):
        assert client.run(PROMPT, max_tokens=3).ok
    assert mini_server.connections - before == 1


def test_body_until_close_and_reconnect(mini_server, count_tokens):
    client = make_client(mini_server.url, "mode-close", count_tokens)
    for _ in range(2):  # each response closes the connection; the next request reconnects
        rec = client.run(PROMPT, max_tokens=5)
        assert rec.ok, rec.error_message
        assert rec.output_tokens == 5


def test_multi_token_events_split_the_gap(mini_server, count_tokens):
    rec = make_client(mini_server.url, "mode-chunky", count_tokens).run(PROMPT, max_tokens=9)
    assert rec.ok, rec.error_message
    # 3 events of 3 tokens: 2 gaps of ~12 ms, each recorded 3 times as ~4 ms.
    assert len(rec.itl_ms) == 6
    assert rec.itl_ms[0] == rec.itl_ms[1] == rec.itl_ms[2]
    assert rec.itl_ms[0] == pytest.approx(4.0, abs=LATE_MS / 3)  # one 12 ms gap: its lateness, split in three


def test_non_streaming(mini_server, count_tokens):
    rec = make_client(mini_server.url, "any-model", count_tokens).run(PROMPT, max_tokens=10, stream=False)
    assert rec.ok
    assert rec.ttft_ms is None and rec.itl_ms == [] and rec.tpot_ms is None
    assert rec.output_tokens == 10
    assert rec.e2e_ms >= 30 + 9 * 4 - 1


@pytest.mark.parametrize("model, kind", [
    ("mode-no-done", "no_terminator"),
    ("mode-malformed", "malformed_sse"),
    ("mode-empty", "empty_output"),
    ("mode-error-event", "stream_error"),
    ("mode-http-429", "http_429"),
    ("mode-not-sse", "malformed_sse"),
])
def test_failure_kinds(mini_server, count_tokens, model, kind):
    client = make_client(mini_server.url, model, count_tokens)
    rec = client.run(PROMPT, max_tokens=6)
    assert not rec.ok
    assert rec.error_kind == kind, rec.error_message
    assert rec.error_message
    # The connection is still usable (or re-established) for the next request.
    client.model = "any-model"
    assert client.run(PROMPT, max_tokens=2).ok


def test_http_error_message_carries_the_body(mini_server, count_tokens):
    rec = make_client(mini_server.url, "mode-http-429", count_tokens).run(PROMPT, max_tokens=2)
    assert rec.status == 429
    assert "Rate limit reached" in rec.error_message


def test_connection_refused(count_tokens):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    rec = make_client(f"http://127.0.0.1:{port}", "m", count_tokens).run(PROMPT, max_tokens=2)
    assert rec.error_kind == "connection"
    assert rec.prompt_tokens == 5


def test_read_timeout(count_tokens):
    from gevent.server import StreamServer

    def silent(sock, _addr):
        sock.recv(65536)
        import gevent

        gevent.sleep(2)

    srv = StreamServer(("127.0.0.1", 0), silent)
    srv.start()
    try:
        client = LlmClient(f"http://127.0.0.1:{srv.server_port}", ChatCompletionsAdapter(), model="m",
                           count_tokens=count_tokens, timeout=0.2)
        rec = client.run(PROMPT, max_tokens=2)
        assert rec.error_kind == "timeout"
    finally:
        srv.stop(timeout=0.1)


def test_itl_and_tpot_definitions():
    # Events at 0, 10 ms (1 token), 40 ms (3 tokens): gaps 10 and 30 -> [10, 10, 10, 10].
    assert itl_samples([0.0, 0.010, 0.040], [1, 1, 3]) == pytest.approx([10.0, 10.0, 10.0, 10.0])
    assert itl_samples([0.0], [5]) == []
    assert tpot_ms(100.0, 20.0, 5) == pytest.approx(20.0)
    assert tpot_ms(100.0, 20.0, 1) is None
    assert tpot_ms(100.0, None, 5) is None


def test_itl_split_follows_the_servers_token_count(mini_server, count_tokens):
    """A foreign server streams one token per event whose text tiktoken counts as 3-4 tokens: one sample per gap."""
    rec = make_client(mini_server.url, "mode-wordy", count_tokens).run(PROMPT, max_tokens=12)
    assert rec.ok, rec.error_message
    assert rec.output_tokens == 12 and rec.usage_reported
    assert len(rec.itl_ms) == 11  # 12 events, 11 gaps: the samples add up to the server's count
    assert sorted(rec.itl_ms)[5] == pytest.approx(4.0, abs=1.0)  # not biased low by a split
    # With no count from the server, tiktoken on each event's text is all there is.
    rec = make_client(mini_server.url, "mode-wordy-no-usage", count_tokens).run(PROMPT, max_tokens=12)
    assert rec.ok, rec.error_message
    assert not rec.usage_reported
    assert len(rec.itl_ms) > 11


def test_split_tokens_rule():
    from llmsim.loadtest.metrics import split_tokens

    count = len  # one "token" per character, for the arithmetic
    assert split_tokens(["aaa", "b", "cc"], None, count) == [3, 1, 2]  # no usage: the tokenizer
    assert split_tokens(["aaa", "b", "cc"], 3, count) == [1, 1, 1]  # events == tokens: one each
    assert split_tokens(["aaa", "b", "cc"], 2, count) == [1, 1, 1]  # never less than one per gap
    assert split_tokens(["aaa", "b", "cc"], 12, count) == [6, 2, 4]  # in proportion
    assert sum(split_tokens(["aaaaaaaa", "b", "c", "d"], 5, count)) == 5  # min-1 bumps are paid back
    assert split_tokens(["aaaaaaaa", "b", "c", "d"], 5, count) == [2, 1, 1, 1]
    assert sum(split_tokens(["aa", "bbb", "c"], 7, count)) == 7


def test_split_counts_only_streamed_tokens():
    """Hidden reasoning (usage reports it, no event carries it) is not streamed: it does not split the gaps."""
    from llmsim.loadtest.adapters import Usage
    from llmsim.loadtest.metrics import build_stream_record

    times = [0.1 + 0.01 * i for i in range(6)]
    common = dict(start_time=0.0, t_sent=0.0, t_end=0.2, status=200, event_times=times,
                  event_texts=[" xylophonist"] * 6, prompt_tokens_local=0, count=lambda t: 4)
    rec = build_stream_record(usage=Usage(5, 10, 4), **common)
    assert len(rec.itl_ms) == 5 and rec.visible_tokens == 6
    assert rec.tpot_ms == pytest.approx((rec.e2e_ms - rec.ttft_ms) / 5)  # TPOT: visible tokens only
    # Streamed reasoning is part of what the events carry: 10 tokens over 6 events.
    rec = build_stream_record(usage=Usage(5, 10, 4), reasoning_texts=[" xylophonist"], **common)
    assert len(rec.itl_ms) == 10 - 2  # split [2, 2, 2, 2, 1, 1]: the first event's tokens have no gap


def test_server_trace_gives_the_clients_own_error(mini_server, count_tokens):
    """With x-llmsim-trace the server reports its own timings; the record holds client minus server."""
    client = LlmClient(mini_server.url, ChatCompletionsAdapter(), model="any-model", count_tokens=count_tokens,
                       timeout=10, trace=True)
    rec = client.run(PROMPT, max_tokens=12)
    assert rec.ok, rec.error_message
    assert rec.traced and not rec.trace_mismatch
    # The server's TTFT ends when it wrote the first content event; the client's when it arrived: the
    # difference is the transit both ways (same machine) plus the client's own delay.
    assert -1.0 < rec.ttft_error_ms < 5.0
    assert len(rec.gap_errors_ms) == 11
    assert all(abs(e) < 5.0 for e in rec.gap_errors_ms)
    assert rec.server_ttft_vs_plan_ms is not None and len(rec.server_gaps_vs_plan_ms) == 11
    # Without the header, no trace: a server that is not asked sends nothing.
    rec = make_client(mini_server.url, "any-model", count_tokens).run(PROMPT, max_tokens=3)
    assert rec.ok and not rec.traced and rec.ttft_error_ms is None


def test_chunky_trace_counts_events_not_tokens(mini_server, count_tokens):
    client = LlmClient(mini_server.url, ChatCompletionsAdapter(), model="mode-chunky", count_tokens=count_tokens,
                       timeout=10, trace=True)
    rec = client.run(PROMPT, max_tokens=9)
    assert rec.traced and len(rec.gap_errors_ms) == 2 and len(rec.itl_ms) == 6


def test_read_timeout_is_idle_time_not_request_time(count_tokens):
    """A stream that keeps sending is never cut, however long it takes; silence of `timeout` is."""
    import time as _time

    from gevent.server import StreamServer

    def trickle(sock, _addr):
        import gevent

        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(6):  # 0.6 s in all, a byte of news every 0.1 s
            gevent.sleep(0.1)
            ev = b'data: {"choices":[{"delta":{"content":" the"}}]}\n\n'
            sock.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
        ev = b"data: [DONE]\n\n"
        sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(ev), ev))
        sock.recv(65536)

    srv = StreamServer(("127.0.0.1", 0), trickle)
    srv.start()
    try:
        client = LlmClient(f"http://127.0.0.1:{srv.server_port}", ChatCompletionsAdapter(), model="m",
                           count_tokens=count_tokens, timeout=0.3)
        t0 = _time.monotonic()
        rec = client.run(PROMPT, max_tokens=6)
        assert rec.ok, rec.error_message
        assert _time.monotonic() - t0 >= 0.55 and len(rec.itl_ms) == 5
    finally:
        srv.stop(timeout=0.1)
