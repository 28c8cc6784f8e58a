"""OpenAI Embeddings (`POST /v1/embeddings`): validate a request, build the `list` of `embedding` objects.

Not a token stream: the engine (Engine.embed) checks the model's embedding
profile, waits as long as the profile says while holding a batch slot, and
returns the vectors; this module only reads the body and writes the answer.
"""

from __future__ import annotations

from typing import Any

from ..embeddings import MAX_INPUTS, EmbedRequest, EmbedResult, to_base64
from ..errors import invalid
from ..fields import MISSING, check_enum, get_int, get_str, json_type, missing

PATHS = ("/v1/embeddings", "/openai/v1/embeddings")
ENCODING_FORMATS = ("float", "base64")
INPUT_TYPES = "a string, an array of strings, an array of integers, or an array of arrays of integers"


def parse_embeddings_request(body: dict) -> tuple[EmbedRequest, str]:
    """(the neutral request, encoding_format), validated as OpenAI does; 400 naming the field otherwise."""
    model = get_str(body, "model", required=True, nonempty=True) or ""
    value = body.get("input", MISSING)
    if value is MISSING or value is None:
        raise missing("input")
    single = not isinstance(value, list) or (bool(value) and all(_is_token(v) for v in value))
    inputs: list[str | list[int]]
    if isinstance(value, str):
        inputs = [_text(value, "input")]
    elif not isinstance(value, list):
        raise _wrong("input", value)
    elif not value:
        raise invalid("Invalid 'input': empty array. Expected an array with minimum length 1, but got an empty "
                      "array instead.", param="input", code="empty_array")
    elif single:
        inputs = [list(value)]
    else:
        if len(value) > MAX_INPUTS:
            raise invalid(f"Invalid 'input': array too long. Expected an array with maximum length {MAX_INPUTS}, "
                          f"but got an array with length {len(value)} instead.", param="input",
                          code="array_above_max_length")
        inputs = [_item(v, f"input[{i}]", type(value[0])) for i, v in enumerate(value)]
    fmt = check_enum(get_str(body, "encoding_format", default="float"), ENCODING_FORMATS, "encoding_format")
    dimensions = get_int(body, "dimensions", minimum=1)
    get_str(body, "user")
    return EmbedRequest(model=model, inputs=inputs, dimensions=dimensions, single=single), fmt


def _is_token(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _wrong(param: str, value: Any) -> Exception:
    return invalid(f"Invalid type for '{param}': expected {INPUT_TYPES}, but got {json_type(value)} instead.",
                   param=param, code="invalid_type")


def _text(value: str, param: str) -> str:
    if not value:
        raise invalid(f"Invalid '{param}': empty string. Expected a non-empty string.", param=param,
                      code="empty_string")
    return value


def _item(value: Any, param: str, kind: type) -> str | list[int]:
    """One input of an array: all strings, or all token arrays (one kind throughout)."""
    if isinstance(value, str) and kind is str:
        return _text(value, param)
    if isinstance(value, list) and kind is list:
        if not value:
            raise invalid(f"Invalid '{param}': empty array. Expected an array of token ids with minimum length 1.",
                          param=param, code="empty_array")
        for j, v in enumerate(value):
            if not _is_token(v) or v < 0:
                raise invalid(f"Invalid type for '{param}[{j}]': expected a non-negative integer (a token id), but "
                              f"got {json_type(v) if not _is_token(v) else v} instead.", param=f"{param}[{j}]",
                              code="invalid_type")
        return list(value)
    raise _wrong(param, value)


def embeddings_body(result: EmbedResult, encoding_format: str) -> dict:
    """The `list` object: one `embedding` per input, in order, and the input tokens as usage."""
    pack = to_base64 if encoding_format == "base64" else list
    return {"object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": pack(v)} for i, v in enumerate(result.vectors)],
            "model": result.request.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}}
