"""Typed readers for request fields, shared by every API.

Each reader returns the value or raises a 400 ApiError whose message and
`param` name the field at fault, in the wording OpenAI uses, so the APIs
validate the same way and only differ in which fields they ask for.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import ApiError, invalid
from .validation import finite_float, number_text

_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number", list: "array", dict: "object",
               type(None): "null"}
MISSING = object()


def json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


MAX_JSON_DEPTH = 128
"""Deepest nesting a request body may have. Far beyond any real request (tool schemas
included), and far below the interpreter's recursion limit, so nothing that later
walks or echoes the body (token counting, JSON encoding) can overflow it."""

INVALID_JSON = ("We could not parse the JSON body of your request. The API expects a JSON object in the request "
                "body.")


class NonFinite(float):
    """What the JSON parser makes of NaN, Infinity, -Infinity and overflowing numbers
    (1e999): a placeholder that keeps the spelling, so the field can be named."""

    text: str

    def __new__(cls, text: str) -> NonFinite:
        self = super().__new__(cls, "nan")
        self.text = text
        return self


def parse_json_object(raw: bytes) -> dict:
    """The request body as a JSON object, or a 400 saying what is wrong with it.

    Bodies nested deeper than MAX_JSON_DEPTH are refused as invalid JSON (never a
    RecursionError), and non-finite numbers, which are not JSON and which strict
    parsers cannot read back, are refused with a 400 naming the field.
    """
    try:
        body = _FINITE.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except (_NonFiniteSeen, RecursionError, ValueError, UnicodeDecodeError):
        return _parse_slowly(raw)  # says what is wrong, or finds the non-finite number's field
    return _an_object(body, raw)


def _an_object(body: Any, raw: bytes) -> dict:
    """A parsed body, if it is an object nested no deeper than MAX_JSON_DEPTH; else the 400."""
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _deeper_than(body, MAX_JSON_DEPTH):
        raise _too_deep()
    if not isinstance(body, dict):
        raise invalid(f"Invalid type for the request body: expected an object, but got {json_type(body)} "
                      "instead.", code="invalid_type")
    return body


class _NonFiniteSeen(Exception):
    """A NaN, an Infinity or an overflowing number: the body is parsed again, slowly, to name its field."""


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isfinite(value):
        return value
    raise _NonFiniteSeen


def _no_constant(text: str) -> float:
    raise _NonFiniteSeen


_FINITE = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)
"""One decoder for every body (json.loads with hooks builds a decoder per call)."""


def _parse_slowly(raw: bytes) -> dict:
    """parse_json_object for a body the fast decoder refused: the 400 that says why."""
    seen: list[NonFinite] = []

    def non_finite(text: str) -> float:
        value = float(text)
        if math.isfinite(value):
            return value
        seen.append(NonFinite(text))
        return seen[-1]

    try:
        body = json.loads(raw, parse_constant=non_finite, parse_float=non_finite)
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError):
        raise invalid(INVALID_JSON, code="invalid_json") from None
    body = _an_object(body, raw)
    if seen:
        raise _first_non_finite(body)
    return body


def _too_deep() -> ApiError:
    return invalid(f"{INVALID_JSON} The body is nested more than {MAX_JSON_DEPTH} levels deep.",
                   code="invalid_json")


def _deeper_than(body: Any, limit: int) -> bool:
    """Whether containers nest more than `limit` levels, level by level without recursion (~0.3 us a container)."""
    level = [body]
    depth = 1
    while level:
        if depth > limit:
            return True
        below = []
        for value in level:
            for child in value.values() if type(value) is dict else value if type(value) is list else ():
                if type(child) is dict or type(child) is list:
                    below.append(child)
        level = below
        depth += 1
    return False


def _first_non_finite(body: dict) -> ApiError:
    """The 400 naming the first non-finite number in document order (the body is known to hold one)."""
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, NonFinite):
            return non_finite_number(path, value.text)
        if isinstance(value, dict):
            children = [(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()]
        elif isinstance(value, list):
            children = [(v, f"{path}[{i}]") for i, v in enumerate(value)]
        else:
            continue
        stack.extend(reversed(children))
    return invalid(INVALID_JSON, code="invalid_json")  # pragma: no cover - unreachable


def non_finite_number(param: str, text: str) -> ApiError:
    """The 400 for NaN, Infinity or an out-of-range number in a field (worded per provider)."""
    return ApiError("invalid_request", f"Invalid value for '{param}': {text} is not a valid number. Expected a "
                    "finite number.", param=param, code="invalid_value",
                    anthropic_message=f"{param}: Input should be a finite number")


def wrong_type(param: str, expected: str, value: Any) -> ApiError:
    return invalid(f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead.",
                   param=param, code="invalid_type")


def missing(param: str) -> ApiError:
    return invalid(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def get_str(body: dict, key: str, *, required: bool = False, default: str | None = None,
            param: str | None = None, nonempty: bool = False) -> str | None:
    param = param or key
    value = body.get(key, MISSING)
    if value is MISSING or value is None:
        if required:
            raise missing(param)
        return default
    if not isinstance(value, str):
        raise wrong_type(param, "a string", value)
    if nonempty and not value:
        raise invalid(f"Invalid '{param}': empty string. Expected a non-empty string.", param=param,
                      code="empty_string")
    return value


def get_bool(body: dict, key: str, default: bool = False, param: str | None = None) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise wrong_type(param or key, "a boolean", value)
    return value


def get_int(body: dict, key: str, *, minimum: int | None = None, maximum: int | None = None,
            required: bool = False, param: str | None = None) -> int | None:
    param = param or key
    value = body.get(key)
    if value is None:
        if required:
            raise missing(param)
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise wrong_type(param, "an integer", value)
    _check_range(param, value, minimum, maximum, "integer", "integer")
    return value


def _check_range(param: str, value: float, minimum: float | None, maximum: float | None, noun: str,
                 code_prefix: str) -> None:
    if minimum is not None and value < minimum:
        raise invalid(f"Invalid '{param}': {noun} below minimum value. Expected a value >= {minimum}, but got "
                      f"{value} instead.", param=param, code=f"{code_prefix}_below_min_value")
    if maximum is not None and value > maximum:
        raise invalid(f"Invalid '{param}': {noun} above maximum value. Expected a value <= {maximum}, but got "
                      f"{value} instead.", param=param, code=f"{code_prefix}_above_max_value")


def get_number(body: dict, key: str, *, minimum: float | None = None, maximum: float | None = None,
               param: str | None = None) -> float | None:
    param = param or key
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise wrong_type(param, "a number", value)
    number = finite_float(value)
    if number is None:
        raise non_finite_number(param, number_text(value))
    _check_range(param, number, minimum, maximum, "number", "decimal")
    return number


def get_object(body: dict, key: str, param: str | None = None) -> dict | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise wrong_type(param or key, "an object", value)
    return value


def get_list(body: dict, key: str, *, required: bool = False, nonempty: bool = False,
             param: str | None = None) -> list | None:
    param = param or key
    value = body.get(key)
    if value is None:
        if required:
            raise missing(param)
        return None
    if not isinstance(value, list):
        raise wrong_type(param, "an array", value)
    if nonempty and not value:
        raise invalid(f"Invalid '{param}': empty array. Expected an array with minimum length 1, but got an "
                      "empty array instead.", param=param, code="empty_array")
    return value


def get_stop(body: dict, key: str, max_items: int) -> list[str]:
    """A stop parameter: a string or a list of up to max_items strings."""
    value = body.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise wrong_type(key, "a string or an array of strings", value)
    if len(value) > max_items:
        raise invalid(f"Invalid '{key}': array too long. Expected an array with maximum length {max_items}, but "
                      f"got an array with length {len(value)} instead.", param=key, code="array_above_max_length")
    return value


def check_enum(value: Any, allowed: tuple[str, ...], param: str) -> str:
    if value not in allowed:
        quoted = ", ".join(f"'{a}'" for a in allowed)
        raise invalid(f"Invalid value for '{param}': {json.dumps(value)}. Supported values are: {quoted}.",
                      param=param, code="invalid_value")
    return value
