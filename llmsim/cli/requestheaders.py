"""A request's headers, read without the email package when they are well-formed.

pywsgi reads headers with `http.client.parse_headers`, which hands them to
the email package's parser: about 25 µs for six headers, and the official
SDKs send a dozen. Well-formed header lines (a token, a colon, a value) are
split here in a few microseconds instead; anything else (folded lines, a
bare CR, a line with no colon or a name the email parser would not take) is
parsed by http.client as before, so both give the same headers, the same
431 for too many headers and the same 431 for a line too long.
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from typing import Any

from gevent.pywsgi import headers_factory

__all__ = ["RequestHeaders", "read_headers"]

MAX_LINE = 65536  # http.client's _MAXLINE: a longer header line is refused
MAX_HEADERS = 100  # http.client's _MAXHEADERS
_NAME = re.compile(r"[!-9;-~]+")  # what the email parser takes as a header's name (no colon, no space)
_END = (b"\r\n", b"\n", b"")


class RequestHeaders:
    """The part of http.client.HTTPMessage that pywsgi and the server use: first match wins, names
    case-insensitive, values as the email parser gives them (leading blanks and the line end removed)."""

    __slots__ = ("items", "status")

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items = items
        self.status = ""  # pywsgi's "Line too long" marker; never set here (see read_headers)

    def get(self, name: str, default: Any = None) -> Any:
        name = name.lower()
        for key, value in self.items:
            if key.lower() == name:
                return value
        return default

    getheader = get

    def get_all(self, name: str, default: Any = None) -> Any:
        name = name.lower()
        found = [value for key, value in self.items if key.lower() == name]
        return found or default

    def __delitem__(self, name: str) -> None:
        name = name.lower()
        self.items = [(key, value) for key, value in self.items if key.lower() != name]

    @property
    def headers(self) -> Iterator[str]:
        for key, value in self.items:
            yield f"{key}: {value}\r\n"

    @property
    def typeheader(self) -> str | None:
        return self.get("content-type")


def read_headers(fp: Any) -> Any:
    """The header block that follows a request line, as pywsgi's headers_factory would give it."""
    lines: list[bytes] = []
    readline = fp.readline
    while True:
        line = readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            message = headers_factory(_Lines([]))  # what pywsgi answers for http.client's LineTooLong
            message.status = "Line too long"
            return message
        lines.append(line)
        if len(lines) > MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
        if line in _END:
            break
    items = []
    for line in lines[:-1]:  # the last is the blank line (or the end of the input)
        name, colon, value = line.decode("iso-8859-1").partition(":")
        value = value.lstrip(" \t").rstrip("\r\n")
        if not colon or "\r" in value or "\n" in value or _NAME.fullmatch(name) is None:
            return headers_factory(_Lines(lines))
        items.append((name, value))
    return RequestHeaders(items)


class _Lines:
    """Lines read already, read again by http.client (the slow path for unusual headers)."""

    __slots__ = ("lines",)

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines[::-1]

    def readline(self, size: int = -1) -> bytes:
        return self.lines.pop() if self.lines else b""
