"""One home for validating profiles and config: the error type and the typed readers.

Profiles (profiles/*.yaml), the server config file, its `errors:`, `rate_limits:`
and `auth:` sections, and POST /llmsim/config all validate with these readers, so
every message has the same shape: the file (or other source), the dotted key and
the reason, in one line. Sections that may hold API keys report a stray key by its
position, never by its text, so a secret never reaches a log or a response.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any

__all__ = ["ValidationError", "integer", "kind_of", "mapping", "number", "string"]

_KINDS = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a mapping",
          type(None): "null"}


class ValidationError(ValueError):
    """A bad profile or setting; str() is one line: source: key: reason."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source, self.key, self.reason = source, key, reason
        super().__init__(f"{source}: {key}: {reason}")


def kind_of(value: Any) -> str:
    """What a YAML/JSON value is, in words ("a list", "a mapping"), for messages that must not echo it."""
    return _KINDS.get(type(value), type(value).__name__)


def mapping(src: str, key: str, value: Any, allowed: Iterable[str], *, secret_keys: bool = False) -> dict:
    """`value` as a mapping whose keys are all in `allowed`.

    With `secret_keys` (sections that hold API keys), a stray key is shown only when
    it is a near miss of an allowed name (a typo like `rmp`); anything else is named
    by its position, because a misplaced API key must not be printed back.
    """
    if not isinstance(value, dict):
        raise ValidationError(src, key, f"must be a mapping, got {kind_of(value)}")
    allowed = set(allowed)
    expected = f"expected one of: {', '.join(sorted(allowed))}"
    for i, k in enumerate(value):
        if k in allowed:
            continue
        near = _near_miss(str(k), allowed)
        if near:
            raise ValidationError(src, f"{key}.{k}", f"unknown key (did you mean {near}? {expected})")
        if secret_keys:
            raise ValidationError(src, key, f"unknown key at position {i + 1} (not shown: it may be an API key; "
                                            f"{expected})")
        raise ValidationError(src, f"{key}.{k}", f"unknown key ({expected})")
    return value


def _near_miss(key: str, allowed: set[str]) -> str | None:
    """The allowed name `key` is a typo of, if any (short keys only: an API key is never one)."""
    if len(key) > max(map(len, allowed), default=0) + 2:
        return None
    near = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
    return near[0] if near else None


def not_utf8(e: UnicodeDecodeError, at: str = "offset") -> str:
    """The reason a file that is not UTF-8 is refused, naming the first bad byte and where it is (`at`:
    "offset" from 0 in the file, or "column" from 1 in a line)."""
    where = e.start if at == "offset" else e.start + 1
    return f"not UTF-8 text (byte {e.object[e.start]:#04x} at {at} {where})"


def number_text(value: Any) -> str:
    """A number for a message: an integer too large for a float by its size (it may run to thousands of
    digits), anything else as written."""
    if isinstance(value, int) and not isinstance(value, bool) and finite_float(value) is None:
        return f"an integer of {len(str(abs(value)))} digits"
    return getattr(value, "text", repr(value))


def finite_float(value: Any) -> float | None:
    """`value` as a float when it is a number a float holds (None: not a number, a bool, NaN, an infinity, or an
    integer too large for a float, which math.isfinite and float() would raise on)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def number(src: str, key: str, value: Any, *, minimum: float = 0, integer: bool = False, strict: bool = False,
           secret: bool = False, maximum: float | None = None) -> float:
    """A finite number >= minimum (> minimum when `strict`); whole when `integer` (then returned as an int).

    With `secret`, a value that is not a number is named by its kind only (it may be a misplaced API key).
    """
    if finite_float(value) is None:
        shown = kind_of(value) if secret and not isinstance(value, (int, float)) else number_text(value)
        raise ValidationError(src, key, f"must be a number, got {shown}")
    if integer and value != int(value):
        raise ValidationError(src, key, f"must be a whole number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValidationError(src, key, f"must be {'>' if strict else '>='} {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValidationError(src, key, f"must be at most {maximum:g}, got {value:g}")
    return int(value) if integer else float(value)


def integer(src: str, key: str, value: Any, *, minimum: int = 0, secret: bool = False,
            maximum: int | None = None) -> int:
    """A whole number >= minimum (3.0 counts: YAML and JSON do not always keep the difference)."""
    return int(number(src, key, value, minimum=minimum, integer=True, secret=secret, maximum=maximum))


def string(src: str, key: str, value: Any, what: str = "a non-empty string") -> str:
    """A non-empty string; anything else is named by its kind, not echoed (it may be a list of secrets)."""
    if not isinstance(value, str) or not value:
        raise ValidationError(src, key, f"must be {what}, got {kind_of(value) if value != '' else 'an empty string'}")
    return value
