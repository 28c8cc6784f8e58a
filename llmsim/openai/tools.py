"""OpenAI's tool and structured-output fields, shared by Chat Completions and Responses.

The two APIs nest them differently (Chat wraps a function in `function:` and
a schema in `json_schema:`; Responses flattens both), so each passes the
inner object here and gets the engine's neutral Tool, ToolChoice and
OutputFormat, validated the way OpenAI validates them.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import invalid
from ..fields import check_enum, get_bool, get_object, get_str, missing, wrong_type
from ..toolcalls import OutputFormat, Tool, ToolChoice, schema_problem, strict_problem

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
CHOICE_MODES = ("none", "auto", "required")


def parse_function(fn: dict, param: str) -> Tool:
    """A function definition: name, description, parameters (a JSON schema), strict."""
    name = get_str(fn, "name", param=f"{param}.name", required=True)
    assert name is not None
    if not NAME.match(name):
        raise invalid(f"Invalid '{param}.name': string does not match pattern. Expected a string that matches the "
                      f"pattern '^[a-zA-Z0-9_-]+$' of at most 64 characters.", param=f"{param}.name",
                      code="invalid_value")
    description = get_str(fn, "description", param=f"{param}.description") or ""
    strict = get_bool(fn, "strict", param=f"{param}.strict")
    parameters = get_object(fn, "parameters", param=f"{param}.parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    problem = schema_problem(parameters) or (strict_problem(parameters) if strict else None)
    if problem:
        raise invalid(f"Invalid schema for function '{name}': {problem}", param=f"{param}.parameters",
                      code="invalid_function_parameters")
    return Tool(name, parameters, description, strict)


def parse_tool_choice(value: Any, tools: list[Tool], param: str = "tool_choice") -> ToolChoice:
    """none | auto | required | a named function (Chat nests the name in `function:`, Responses does not)."""
    if value is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(value, str):
        check_enum(value, CHOICE_MODES, param)
        mode = value
        name = None
    elif isinstance(value, dict):
        kind = value.get("type")
        if kind != "function":
            raise invalid(f"Invalid value for '{param}.type': {kind!r}. Supported values are: 'function'.",
                          param=f"{param}.type", code="invalid_value")
        nested = value.get("function")
        inner: dict = nested if isinstance(nested, dict) else value
        where = f"{param}.function.name" if inner is not value else f"{param}.name"
        name = inner.get("name")
        if not isinstance(name, str) or not name:
            raise missing(where)
        mode = "tool"
    else:
        raise wrong_type(param, "a string or an object", value)
    if mode != "none" and not tools:
        raise invalid(f"Invalid value for '{param}': '{param}' is only allowed when 'tools' are specified.",
                      param=param, code="invalid_value")
    if mode == "tool" and all(t.name != name for t in tools):
        raise invalid(f"Invalid value for '{param}': no function named '{name}' was specified in the 'tools' "
                      "parameter.", param=param, code="invalid_value")
    return ToolChoice(mode, name)


def parse_json_schema_format(spec: dict, param: str) -> OutputFormat:
    """A json_schema format's inner object: name, schema, strict (and description)."""
    name = get_str(spec, "name", param=f"{param}.name", required=True)
    assert name is not None
    if not NAME.match(name):
        raise invalid(f"Invalid '{param}.name': string does not match pattern. Expected a string that matches the "
                      "pattern '^[a-zA-Z0-9_-]+$'.", param=f"{param}.name", code="invalid_value")
    schema = get_object(spec, "schema", param=f"{param}.schema")
    if schema is None:
        schema = {"type": "object"}
    strict = get_bool(spec, "strict", param=f"{param}.strict")
    problem = schema_problem(schema) or (strict_problem(schema) if strict else None)
    if problem:
        raise invalid(f"Invalid schema for response_format '{name}': {problem}", param=f"{param}.schema",
                      code="invalid_json_schema")
    return OutputFormat("json_schema", schema, name, strict)
