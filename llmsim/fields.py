"""Typed readers for request fields, shared by every API.

Each reader returns the value or raises a 400 ApiError whose message and
`param` name the field at fault, in the wording OpenAI uses, so the APIs
validate the same way and only differ in which fields they ask for.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import ApiError, invalid

_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number", list: "array", dict: "object",
               type(None): "null"}
MISSING = object()


def json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def parse_json_object(raw: bytes) -> dict:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise invalid("We could not parse the JSON body of your request. The API expects a JSON object "
                      "in the request body.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid(f"Invalid type for the request body: expected an object, but got {json_type(body)} "
                      "instead.", code="invalid_type")
    return body


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
    _check_range(param, value, minimum, maximum, "number", "decimal")
    return float(value)


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
