"""Tools and structured outputs: when the simulated model calls a tool, and what it answers in JSON.

Provider-neutral: each API parses its own tool and format fields into `Tool`,
`ToolChoice` and `OutputFormat`, and the engine asks `plan_answer()` for the
blocks of the answer. The decision follows the providers' documented rules:
`required`/`any`/a named tool always call, `none` never does, `auto` calls
with the configured probability, and a turn that answers a tool result
replies in text, so agent loops end.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from .schema_values import small_object, value_for_schema
from .stream import Block
from .validation import ValidationError as ProfileError
from .validation import mapping, number

TOOL_CHOICE_MODES = ("auto", "none", "required", "tool")
DEFAULT_CALL_PROBABILITY = 0.5
DEFAULT_MAX_PARALLEL_CALLS = 1
EMPTY_PARAMETERS: dict = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name and the JSON schema of its arguments."""

    name: str
    parameters: dict
    description: str = ""
    strict: bool = False


@dataclass(frozen=True)
class ToolChoice:
    """auto | none | required (Anthropic `any`) | tool (one named tool, always)."""

    mode: str = "auto"
    name: str | None = None


@dataclass(frozen=True)
class OutputFormat:
    """A structured-output request: any JSON object, or JSON valid against `schema`."""

    type: str = "json_object"  # "json_object" | "json_schema"
    schema: dict | None = None
    name: str | None = None
    strict: bool = False


@dataclass(frozen=True)
class ToolSettings:
    """Config `tools:`: how often `auto` calls a tool, and how many calls one turn may make."""

    call_probability: float = DEFAULT_CALL_PROBABILITY
    max_parallel_calls: int = DEFAULT_MAX_PARALLEL_CALLS

    @classmethod
    def parse(cls, src: str, raw: Any, key: str = "tools") -> ToolSettings:
        if raw is None:
            return cls()
        raw = mapping(src, key, raw, ("call_probability", "max_parallel_calls"))
        p = number(src, f"{key}.call_probability", raw.get("call_probability", DEFAULT_CALL_PROBABILITY))
        if p > 1:
            raise ProfileError(src, f"{key}.call_probability", f"must be <= 1, got {p!r}")
        n = number(src, f"{key}.max_parallel_calls", raw.get("max_parallel_calls", DEFAULT_MAX_PARALLEL_CALLS),
                    minimum=1, integer=True)
        return cls(p, int(n))

    def to_dict(self) -> dict:
        return {"call_probability": self.call_probability, "max_parallel_calls": self.max_parallel_calls}


def schema_problem(schema: Any) -> str | None:
    """Why `schema` is not a usable JSON schema for arguments or output, or None.

    Agents send the same tools with every request: verdicts are remembered by
    the schema's JSON text, so only a new schema pays for the meta-schema check.
    """
    if not isinstance(schema, dict):
        return "must be a JSON schema object"
    key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    if key in _SCHEMA_VERDICTS:
        return _SCHEMA_VERDICTS[key]
    try:
        Draft202012Validator.check_schema(schema)
        problem = None
    except SchemaError as e:
        where = "/".join(str(p) for p in e.path)
        problem = f"is not a valid JSON schema: {e.message}" + (f" (at {where})" if where else "")
    if len(_SCHEMA_VERDICTS) >= 4096:
        _SCHEMA_VERDICTS.pop(next(iter(_SCHEMA_VERDICTS)))
    _SCHEMA_VERDICTS[key] = problem
    return problem


_SCHEMA_VERDICTS: dict[str, str | None] = {}


_IDS = random.Random()
os.register_at_fork(after_in_child=_IDS.seed)  # a forked process must not repeat its parent's ids


def new_call_id(prefix: str) -> str:
    """A fresh id (96 random bits, as 24 hex digits, like the providers' ids): unique, not secret, and cheap,
    since every request takes a few (uuid4 reads the kernel's random pool each time)."""
    return prefix + _IDS.randbytes(12).hex()


MAX_CHARS_PER_TOKEN = 16
"""More than any token of a generated value holds (its words, digits and punctuation): a value past
max_tokens x this many characters is cut by max_tokens anyway, and is generated only that far."""


def arguments_json(tool: Tool, rng: random.Random, max_tokens: int | None = None) -> str:
    """Arguments a model would send: valid against the tool's schema, as compact-ish JSON text (as far as
    `max_tokens` could send: see value_for_schema)."""
    value = value_for_schema(tool.parameters or EMPTY_PARAMETERS, rng,
                             optional_probability=1.0 if tool.strict else 0.6, max_chars=_chars(max_tokens))
    return json.dumps(value, ensure_ascii=False)


def _chars(max_tokens: int | None) -> int | None:
    return None if max_tokens is None else max_tokens * MAX_CHARS_PER_TOKEN


def structured_json(fmt: OutputFormat, rng: random.Random, max_tokens: int | None = None) -> str:
    """The text of a structured answer: JSON valid against the schema (or a small object), as far as
    `max_tokens` could send."""
    value = value_for_schema(fmt.schema, rng, optional_probability=1.0 if fmt.strict else 0.7,
                             max_chars=_chars(max_tokens)) \
        if fmt.type == "json_schema" and fmt.schema is not None else small_object(rng)
    return json.dumps(value, ensure_ascii=False, indent=None)


def tool_turn_mismatch(calls: Sequence[Any], results: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """One turn of a tool loop (the calls one message makes, the results the next messages give): the call
    ids no result answers, in order, and the positions of the results that answer no call. Every API refuses
    either: a client's loop that loses or invents a result fails against llmsim, not first in production."""
    asked, answered = set(calls), set(results)
    return [c for c in calls if c not in answered], [j for j, r in enumerate(results) if r not in asked]


def tools_to_call(tools: list[Tool], choice: ToolChoice, *, answers_tool_result: bool, parallel: bool,
                  probability: float, max_parallel: int, rng: random.Random) -> list[Tool]:
    """Which tools this turn calls (empty: answer in text)."""
    if not tools or choice.mode == "none":
        return []
    if choice.mode == "tool":
        named = next((t for t in tools if t.name == choice.name), None)
        return [named] if named else []
    if choice.mode == "auto" and (answers_tool_result or rng.random() >= probability):
        return []
    n = rng.randint(1, max_parallel) if parallel and max_parallel > 1 else 1
    return [rng.choice(tools) for _ in range(n)]


def tool_call_blocks(calls: list[Tool], rng: random.Random, id_prefix: str,
                     max_tokens: int | None = None) -> list[Block]:
    return [Block("tool_call", arguments_json(t, rng, max_tokens), call_id=new_call_id(id_prefix), name=t.name)
            for t in calls]


def tools_prompt_text(tools: list[Tool]) -> str:
    """What tool definitions add to the prompt (counted as prompt tokens, as the providers do)."""
    if not tools:
        return ""
    return json.dumps([{"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools],
                      separators=(",", ":"), ensure_ascii=False)


def strict_problem(schema: dict, path: str = "") -> str | None:
    """What strict mode refuses in a schema (OpenAI's rules): every object closes its
    properties (additionalProperties: false) and requires all of them."""
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in schema
    where = path or "(root)"
    if is_object:
        if schema.get("additionalProperties") is not False:
            return f"In context={where}, 'additionalProperties' is required to be supplied and to be false."
        props = schema.get("properties") or {}
        missing = [k for k in props if k not in (schema.get("required") or [])]
        if missing:
            return (f"In context={where}, 'required' is required to be supplied and to be an array including every "
                    f"key in properties. Missing '{missing[0]}'.")
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items() if isinstance(schema.get(key), dict) else ():
            problem = strict_problem(sub, f"{path}/{key}/{name}" if path else f"{key}/{name}")
            if problem:
                return problem
    for key in ("items",):
        if isinstance(schema.get(key), dict):
            problem = strict_problem(schema[key], f"{path}/{key}")
            if problem:
                return problem
    for key in ("anyOf", "allOf", "oneOf"):
        for i, sub in enumerate(schema.get(key) or []) if isinstance(schema.get(key), list) else ():
            problem = strict_problem(sub, f"{path}/{key}/{i}")
            if problem:
                return problem
    return None
