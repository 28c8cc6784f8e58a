"""Anthropic's Models API: `model` objects and the paginated list, from the profiles.

The IDs listed are the exact names of the Claude profiles written the way
Anthropic writes them (dashes only); dotted spellings are llmsim aliases and
resolve, but are not listed. Display names and dates are derived from the ID,
so profiles/*.yaml stays the only table of model names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import ApiError
from ..fields import MISSING
from ..profiles import ModelProfile, ProfileRegistry
from .messages import bad

LISTED_PROVIDERS = ("anthropic",)
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
UNKNOWN_DATE = "1970-01-01T00:00:00Z"
"""The SDK documents an epoch `created_at` for models whose release date is unknown (undated aliases)."""

_DATED = re.compile(r"^(?P<stem>.+)-(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})$")


def display_name(model_id: str) -> str:
    """'claude-sonnet-4-5-20250929' -> 'Claude Sonnet 4.5'; 'claude-3-5-haiku-latest' -> 'Claude 3.5 Haiku'."""
    m = _DATED.match(model_id)
    stem = m.group("stem") if m else model_id.removesuffix("-latest")
    words: list[str] = []
    for part in stem.split("-"):
        if part.isdigit() and words and re.fullmatch(r"[\d.]+", words[-1]):
            words[-1] += "." + part
        else:
            words.append(part if part.isdigit() else part.capitalize())
    return " ".join(w.removesuffix(".0") for w in words)


def created_at(model_id: str, siblings: Iterable[str] = ()) -> str:
    """RFC 3339 release date: a dated ID's own date; an alias takes its newest dated sibling's, else the epoch."""
    m = _DATED.match(model_id)
    if m:
        return f"{m.group('y')}-{m.group('m')}-{m.group('d')}T00:00:00Z"
    name = display_name(model_id)
    dates = [created_at(s) for s in siblings if _DATED.match(s) and display_name(s) == name]
    return max(dates, default=UNKNOWN_DATE)


def model_info(model_id: str, profile: ModelProfile) -> dict:
    """One `model` object, with the profile's limits."""
    return {"type": "model", "id": model_id, "display_name": display_name(model_id),
            "created_at": created_at(model_id, profile.models), "lifecycle": "active",
            "max_input_tokens": profile.context_window, "max_tokens": profile.max_output_tokens}


def listed_ids(registry: ProfileRegistry) -> list[str]:
    """Anthropic-spelled exact names of the Claude profiles, newest snapshot first (Anthropic's order)."""
    ids = [m for m in registry.model_names()
           if "." not in m and (p := registry.match(m)) is not None and p.provider in LISTED_PROVIDERS]
    return sorted(ids, key=lambda i: (created_at(i, ids), _DATED.match(i) is not None, i), reverse=True)


def retrieve_model(registry: ProfileRegistry, model_id: str) -> dict:
    """GET /v1/models/{id}: any name a Claude (or provider-neutral) profile covers, else not_found_error."""
    profile = registry.match(model_id)
    if profile is None or profile.provider not in LISTED_PROVIDERS + ("any",):
        raise ApiError("not_found", f"model: {model_id}", param="model_id")
    return model_info(model_id, profile)


def _limit(args: dict) -> int:
    raw = args.get("limit", MISSING)
    if raw is MISSING:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except (TypeError, ValueError):
        raise bad("limit", "Input should be a valid integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise bad("limit", f"Input should be between 1 and {MAX_LIMIT}")
    return limit


def list_models(registry: ProfileRegistry, args: dict) -> dict:
    """GET /v1/models: one page, `{"data", "has_more", "first_id", "last_id"}`, cursor by before_id/after_id."""
    ids = listed_ids(registry)
    limit = _limit(args)
    before, after = args.get("before_id"), args.get("after_id")
    if before and after:
        raise bad("before_id", "before_id and after_id cannot both be set")
    start, end = 0, len(ids)
    cursor = before or after
    if cursor:
        if cursor not in ids:
            raise ApiError("not_found", f"model: {cursor}", param="before_id" if before else "after_id")
        pos = ids.index(cursor)
        if after:
            start = pos + 1
        else:
            end = pos
    window = ids[start:end]
    page = window[-limit:] if before else window[:limit]
    has_more = len(window) > len(page)
    data = [model_info(i, registry.match(i)) for i in page]  # type: ignore[arg-type]
    return {"data": data, "has_more": has_more, "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None}

