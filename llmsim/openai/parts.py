"""Content parts of OpenAI messages: a known `type`, and the field that type carries, of the right kind.

Chat Completions and Responses name their parts differently (`text` and
`input_text`), so each API passes its own table; the check and its errors,
worded as OpenAI's, are shared. A part the table does not know is refused
with the supported values, as the API does, so that a typo fails here and
not first in production.
"""

from __future__ import annotations

from typing import Any

from ..errors import invalid
from ..fields import missing, wrong_type

__all__ = ["CHAT_PARTS", "RESPONSES_PARTS", "check_parts"]

Part = tuple[str, type] | None
"""The field a part of this type must carry and its JSON kind (dict or str); None: no one required field."""

CHAT_PARTS: dict[str, Part] = {"text": ("text", str), "image_url": ("image_url", dict),
                               "input_audio": ("input_audio", dict), "refusal": ("refusal", str),
                               "audio": ("audio", dict), "file": ("file", dict)}
RESPONSES_PARTS: dict[str, Part] = {"input_text": ("text", str), "output_text": ("text", str),
                                    "summary_text": ("text", str), "reasoning_text": ("text", str),
                                    "refusal": ("refusal", str), "input_image": None, "input_file": None,
                                    "input_audio": ("input_audio", dict)}
_KINDS: dict[type, str] = {str: "a string", dict: "an object"}


def check_parts(parts: list, param: str, table: dict[str, Part]) -> None:
    """Each part of `parts` (at `param`[j]) against the API's table; the API's 400 naming the field otherwise."""
    for j, part in enumerate(parts):
        where = f"{param}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid(f"Invalid '{where}': expected an object with a 'type'.", param=where, code="invalid_type")
        kind = part["type"]
        if kind not in table:
            allowed = ", ".join(f"'{t}'" for t in table)
            raise invalid(f"Invalid value: '{kind}'. Supported values are: {allowed}.", param=f"{where}.type",
                          code="invalid_value")
        need = table[kind]
        if need is None:
            continue
        field, json_kind = need
        value: Any = part.get(field)
        if value is None:
            raise missing(f"{where}.{field}")
        if not isinstance(value, json_kind):
            raise wrong_type(f"{where}.{field}", _KINDS[json_kind], value)
        url: Any = part[field].get("url") if kind == "image_url" else ""
        if not isinstance(url, str):
            if url is None:
                raise missing(f"{where}.image_url.url")
            raise wrong_type(f"{where}.image_url.url", "a string", url)
