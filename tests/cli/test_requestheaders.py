"""The fast header reader gives what pywsgi's (http.client and the email parser) gives, for any header block."""

from __future__ import annotations

import http.client
import io
import random

import pytest
from gevent.pywsgi import headers_factory

from llmsim.cli.requestheaders import RequestHeaders, read_headers

NAMES = ("Host", "Content-Type", "content-length", "Authorization", "X-Stainless-Lang", "Connection", "Accept",
         "Transfer-Encoding", "X-Llmsim-Fault", "Expect")

BLOCKS = {
    "sdk": b"Host: b\r\nContent-Type: application/json\r\nContent-Length: 93\r\nAuthorization: Bearer sk-x\r\n"
           b"X-Stainless-Lang: python\r\nAccept: */*\r\n\r\n",
    "duplicates": b"Accept: a\r\naccept: b\r\nACCEPT: c\r\n\r\n",
    "blanks around values": b"Host:   spaced  \r\nAccept:\tx\t\r\nX-Empty:\r\nX-Blank: \r\n\r\n",
    "bare LF lines": b"Host: b\nAccept: x\n\n",
    "folded line": b"X-Long: one\r\n two\r\nHost: b\r\n\r\n",
    "tab-folded line": b"X-Long: one\r\n\ttwo\r\nHost: b\r\n\r\n",
    "no colon": b"Host: b\r\nnot a header\r\nAccept: x\r\n\r\n",
    "space in name": b"Host: b\r\nBad Name: v\r\nAccept: x\r\n\r\n",
    "empty name": b": v\r\nHost: b\r\n\r\n",
    "bare CR in value": b"Host: b\rAccept: x\r\n\r\n",
    "latin-1 bytes": b"Authorization: Bearer \xff\xfekey\r\nHost: b\r\n\r\n",
    "colon in value": b"Host: example.com:8080\r\nX-T: a:b:c\r\n\r\n",
    "unix from": b"From nobody\r\nHost: b\r\n\r\n",
    "end of input": b"Host: b\r\nAccept: x\r\n",
    "nothing": b"\r\n",
    "underscore name": b"X_Under: 1\r\nX-Dash: 2\r\n\r\n",
}


def _both(raw: bytes):
    return read_headers(io.BytesIO(raw)), headers_factory(io.BytesIO(raw))


def _same(ours, theirs) -> None:
    assert ours.status == theirs.status
    assert list(ours.headers) == list(theirs.headers)
    for name in NAMES + ("x-long", "x-empty", "x-blank", "bad name", "x_under", "x-t"):
        assert ours.get(name) == theirs.get(name), name
        assert ours.get(name, "d") == theirs.get(name, "d"), name
        assert ours.get_all(name) == theirs.get_all(name), name
    assert ours.typeheader == theirs.typeheader
    assert ours.getheader("content-length") == theirs.getheader("content-length")


@pytest.mark.parametrize("case", list(BLOCKS))
def test_every_header_block_reads_as_http_client_reads_it(case):
    ours, theirs = _both(BLOCKS[case] + b"BODY")
    _same(ours, theirs)


def test_well_formed_blocks_take_the_fast_path_and_the_rest_do_not():
    assert isinstance(read_headers(io.BytesIO(BLOCKS["sdk"])), RequestHeaders)
    assert isinstance(read_headers(io.BytesIO(BLOCKS["latin-1 bytes"])), RequestHeaders)
    for case in ("folded line", "no colon", "space in name", "bare CR in value", "unix from"):
        assert not isinstance(read_headers(io.BytesIO(BLOCKS[case])), RequestHeaders), case


def test_the_body_after_the_headers_is_left_unread():
    fp = io.BytesIO(BLOCKS["sdk"] + b'{"x": 1}')
    read_headers(fp)
    assert fp.read() == b'{"x": 1}'


def test_deleting_a_header_removes_every_copy_as_the_message_does():
    ours, theirs = _both(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\ncontent-length: 6\r\n\r\n")
    del ours["content-length"]
    del theirs["content-length"]
    _same(ours, theirs)
    assert ours.get("content-length") is None


def test_limits_match_http_client():
    too_many = b"".join(b"X-H%d: %d\r\n" % (i, i) for i in range(101)) + b"\r\n"
    with pytest.raises(http.client.HTTPException, match="got more than 100 headers"):
        read_headers(io.BytesIO(too_many))
    with pytest.raises(http.client.HTTPException, match="got more than 100 headers"):
        headers_factory(io.BytesIO(too_many))
    long_line = b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    ours, theirs = _both(long_line)
    assert ours.status == theirs.status == "Line too long"


def test_random_header_blocks_read_alike():
    rng = random.Random(7)
    alphabet = [b"a", b"B", b"-", b"_", b":", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\xe9", b"x", b"1", b";"]
    for _ in range(3000):
        raw = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) + b"\r\n\r\n"
        try:
            theirs = headers_factory(io.BytesIO(raw))
        except http.client.HTTPException:
            with pytest.raises(http.client.HTTPException):
                read_headers(io.BytesIO(raw))
            continue
        _same(read_headers(io.BytesIO(raw)), theirs)
