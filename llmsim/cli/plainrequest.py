"""A plain request whose line and headers arrived whole, parsed in one pass over the read buffer.

pywsgi reads a request line by line (a readline per header, each through
its buffered reader), checks it, then copies what it parsed into the WSGI
environ: about 30 µs of Python a request, on the path of every non-streamed
answer and every stream's set-up. Nearly every request a client sends is
plain: HTTP/1.1 or 1.0, well-formed header lines each sent once, a body by
Content-Length, and all of it in the first read. `parse_plain_head` takes
those from the bytes already buffered; anything else (an incomplete head,
chunked bodies, Expect, an upgrade, a repeated header, anything pywsgi would
refuse or join) gives None, and pywsgi's reader parses it as before, with
its checks and its error answers. The environ is the one pywsgi would build:
tests/cli/test_plainrequest.py compares the two on the same bytes.
"""

from __future__ import annotations

import re
from functools import partial
from urllib.parse import unquote

__all__ = ["PlainHead", "parse_plain_head"]

MAX_HEAD = 8191  # pywsgi's MAX_REQUEST_LINE - 1: no line in a shorter head can be over its limits
MAX_HEADERS = 100  # http.client's limit; a longer block goes to pywsgi, which refuses it
_NAME = re.compile(r"[!-9;-~]+")  # a header name the email parser takes (see requestheaders.py)
_VERSIONS = frozenset({"HTTP/1.1", "HTTP/1.0"})
_UNUSUAL = frozenset({"transfer-encoding", "expect", "upgrade"})
"""Headers that change how the body is read or the connection used: pywsgi's path handles them."""
_unquote_latin1 = partial(unquote, encoding="latin-1")  # as pywsgi decodes PATH_INFO


class PlainHead:
    """A parsed request head: what the handler keeps of it, and the environ items it gives."""

    __slots__ = ("requestline", "method", "target", "version", "size", "content_length", "close", "items")

    def __init__(self, requestline: str, method: str, target: str, version: str, size: int,
                 content_length: int | None, close: bool, items: list[tuple[str, str]]) -> None:
        self.requestline, self.method, self.target, self.version = requestline, method, target, version
        self.size = size  # bytes of the head, with its blank line
        self.content_length = content_length
        self.close = close  # the connection closes after the answer
        self.items = items  # environ items from the headers (CONTENT_TYPE, CONTENT_LENGTH, HTTP_*)

    def environ(self, base: dict) -> dict:
        """`base` (the server's environ, copied) with this request's items, as pywsgi's get_environ adds them."""
        path, _, query = self.target.partition("?")
        base["REQUEST_METHOD"] = self.method
        base["SCRIPT_NAME"] = ""
        base["PATH_INFO"] = _unquote_latin1(path)
        base["QUERY_STRING"] = query
        base["SERVER_PROTOCOL"] = self.version
        base.update(self.items)
        return base


def parse_plain_head(buf: bytes) -> PlainHead | None:
    """The head at the start of `buf` if it is complete and plain, else None (pywsgi parses it)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0 or end >= MAX_HEAD:
        return None
    raw = buf[:end]
    crlf = raw.count(b"\r\n")
    if raw.count(b"\r") != crlf or raw.count(b"\n") != crlf or crlf >= MAX_HEADERS:
        return None  # bare CR or LF line ends, or too many lines to be sure of pywsgi's answer
    lines = raw.decode("latin-1").split("\r\n")
    requestline = lines[0]
    words = requestline.split()
    if len(words) != 3 or requestline != " ".join(words) or words[2] not in _VERSIONS:
        return None
    method, target, version = words
    items: list[tuple[str, str]] = []
    seen: set[str] = set()
    content_length: int | None = None
    connection = ""
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        lower = name.lower()
        if not colon or lower in seen or lower in _UNUSUAL or _NAME.fullmatch(name) is None:
            return None
        seen.add(lower)
        value = value.lstrip(" \t")
        if lower == "content-length":
            if not (value.isascii() and value.isdigit()):
                return None
            content_length = int(value)
            items.append(("CONTENT_LENGTH", value))
        elif lower == "content-type":
            items.append(("CONTENT_TYPE", value))
        elif "_" not in name:  # pywsgi drops names with underscores (they would alias dashes)
            if lower == "connection":
                connection = value.lower()  # as pywsgi reads it: leading blanks gone, trailing ones kept
            items.append(("HTTP_" + name.replace("-", "_").upper(), value.strip()))
    if connection == "upgrade" or (content_length and method == "HEAD"):
        return None
    close = connection == "close" if version == "HTTP/1.1" else connection != "keep-alive"
    return PlainHead(requestline, method, target, version, end + 4, content_length, close, items)


_STREAM_OFF = re.compile(rb'"stream"\s*:\s*false\b')


def answered_at_once(head: PlainHead, buffered: bytes) -> bool:
    """Whether the request cannot be asking for a stream: it has no body, or its whole body is buffered
    and names "stream" only as `"stream": false`. It decides where the application call runs (see
    cli/stacks.py), never what it answers: a guess either way costs at most a page of memory."""
    n = head.content_length or 0
    if not n:
        return True
    body = buffered[head.size:head.size + n]
    if len(body) < n:
        return False
    found = body.count(b'"stream"')
    return found == 0 or (found == 1 and _STREAM_OFF.search(body) is not None)
