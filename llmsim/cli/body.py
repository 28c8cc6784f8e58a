"""Request and response bodies: the size limit on the way in, strict JSON on the way out.

A chunked request carries no Content-Length, so the limit cannot be checked up
front: the body is read up to one byte past the limit, and a body that goes past
it is a 413, never silently cut short (a cut-off body would then fail as invalid
JSON). The server (see server.py) closes such a connection after the answer,
reading at most a bounded amount of what the client still sends.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import ClientDisconnected
from werkzeug.wsgi import get_content_length, get_input_stream

from ..errors import ApiError, invalid
from ..fields import parse_json_object

BODY_REFUSED = "llmsim.body_refused"
"""WSGI environ key set when a body was refused unread: the server closes that connection after the answer."""

_READ = 256 * 1024


def read_json_body(environ: dict, limit: int | None) -> dict:
    """The request body as a JSON object; 413 past `limit` bytes, with or without Content-Length."""
    return parse_json_object(read_body_bytes(environ, limit))


BODY_KEY = "llmsim.body"
"""Where a body already read (by `llmsim replay`'s matcher) waits for the route."""


def read_body_bytes(environ: dict, limit: int | None) -> bytes:
    """The raw request body (of a WSGI environ); 413 past `limit` bytes, with or without Content-Length."""
    done = environ.get(BODY_KEY)
    if isinstance(done, bytes):
        return done
    given = environ.get("CONTENT_LENGTH")
    if given is not None and given.isascii() and given.isdigit() and "HTTP_TRANSFER_ENCODING" not in environ:
        length: int | None = int(given)  # the usual request: what werkzeug's parse gives, without its steps
    else:
        length = get_content_length(environ)
    if limit is not None and length is not None and length > limit:
        environ[BODY_REFUSED] = True
        raise too_large(limit, length)
    # By Content-Length, or to the end of a chunked body the server de-chunks and terminates
    # (a server that terminates the input says so, and its stream is read as it is).
    stream = environ["wsgi.input"] if "wsgi.input_terminated" in environ else \
        get_input_stream(environ, max_content_length=None)
    want = length if length is not None else (limit + 1 if limit is not None else None)
    parts: list[bytes] = []
    got = 0
    try:
        while want is None or got < want:
            part = stream.read(_READ if want is None else min(_READ, want - got))
            if not part:
                break
            parts.append(part)
            got += len(part)
    except (ClientDisconnected, OSError, ValueError):
        # A malformed chunk, or a client that went away mid-body.
        environ[BODY_REFUSED] = True
        raise invalid("We could not read the body of your request: it ended early or its chunked encoding is "
                      "malformed.", code="invalid_body") from None
    if limit is not None and got > limit:
        environ[BODY_REFUSED] = True
        raise too_large(limit)
    return b"".join(parts)


def too_large(limit: int, length: int | None = None) -> ApiError:
    """The 413 for a body over the limit (its size when Content-Length said it)."""
    size = f"the body is {length} bytes" if length is not None else "the body is over the limit"
    return ApiError("request_too_large", f"Request too large: {size}, the limit is {limit} bytes.")


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON, but NaN and Infinity are an error rather than invalid JSON on the wire.

    Requests with non-finite numbers are refused at parsing; this makes sure no
    other path can emit one either.
    """

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)

    @classmethod
    def install(cls, app: Flask) -> None:
        """Swap the app's provider for a strict one, keeping its settings (key order, compactness)."""
        old = app.json
        new = cls(app)
        for attr in ("sort_keys", "compact", "ensure_ascii", "mimetype"):
            setattr(new, attr, getattr(old, attr))
        app.json = new
