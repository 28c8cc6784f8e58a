"""Tool definitions sent with every request (--tools FILE.json, --tool-choice).

The file is a JSON list of tools in OpenAI Chat Completions shape:

    [{"type": "function", "function": {"name": "get_weather", "description": "...", "parameters": {...}}}]

Each adapter turns the list into its own API's shape (adapters.py, tool_fields).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

TOOL_CHOICES = ("auto", "required", "none")
DEFAULT_TOOL_CHOICE = "auto"
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
EMPTY_PARAMETERS = {"type": "object", "properties": {}}
"""What a function without `parameters` takes (as the APIs read it)."""


class ToolsError(ValueError):
    """A tools file is unusable; str() is one line naming the file, the tool and the reason."""


def load_tools(path: str | Path) -> list[dict[str, Any]]:
    """The tools of a --tools file, checked: a non-empty JSON list of function tools in Chat shape."""
    where = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ToolsError(f"{where}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:
        raise ToolsError(f"{where}: not JSON ({e})") from None
    if not isinstance(data, list) or not data:
        raise ToolsError(f"{where}: expected a non-empty JSON list of tools "
                         '([{"type": "function", "function": {"name": ..., "parameters": {...}}}])')
    names: set[str] = set()
    for i, tool in enumerate(data):
        at = f"{where}: tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise ToolsError(f'{at}: expected {{"type": "function", "function": {{...}}}}')
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ToolsError(f"{at}.function.name: expected 1 to 64 letters, digits, '_' or '-', got {name!r}")
        if name in names:
            raise ToolsError(f"{at}.function.name: {name!r} is defined twice")
        names.add(name)
        if "description" in fn and not isinstance(fn["description"], str):
            raise ToolsError(f"{at}.function.description: expected a string")
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            raise ToolsError(f"{at}.function.parameters: expected a JSON schema object")
        if "strict" in fn and not isinstance(fn["strict"], bool):
            raise ToolsError(f"{at}.function.strict: expected true or false")
    return data


def functions(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `function` objects of Chat-shaped tools, each with its parameters (an empty object schema if none)."""
    return [{**t["function"], "parameters": t["function"].get("parameters") or EMPTY_PARAMETERS} for t in tools]
