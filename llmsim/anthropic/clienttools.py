"""Anthropic-defined client tools: bash, the text editor, computer use and memory.

A request declares them by type and name alone (`{"type": "bash_20250124",
"name": "bash"}`), and Claude calls them with ordinary `tool_use` blocks whose
input the client executes, so they are called like custom tools. Their input
follows the documented shape of each tool's simplest command. Server tools
(web search, web fetch, code execution) run on Anthropic's side: they are
accepted and never called.
"""

from __future__ import annotations

import re

__all__ = ["client_tool_schema"]

_VERSIONED = re.compile(r"^(bash|text_editor|computer|memory)_\d{8}$")

_SCHEMAS: dict[str, dict] = {
    "bash": {"type": "object", "required": ["command"], "properties": {
        "command": {"enum": ["ls -la", "git status", "cat README.md", "pwd", "python -m pytest -q"]}}},
    "text_editor": {"type": "object", "required": ["command", "path"], "properties": {
        "command": {"const": "view"}, "path": {"enum": ["/repo/README.md", "/repo/src/main.py", "/repo"]}}},
    "computer": {"type": "object", "required": ["action"], "properties": {"action": {"const": "screenshot"}}},
    "memory": {"type": "object", "required": ["command", "path"], "properties": {
        "command": {"const": "view"}, "path": {"const": "/memories"}}},
}


def client_tool_schema(tool_type: str) -> dict | None:
    """The input schema Claude's calls of an Anthropic-defined client tool follow; None for any other type."""
    match = _VERSIONED.match(tool_type)
    return _SCHEMAS[match.group(1)] if match else None
