"""API keys: where each provider's clients send theirs, and the optional allow-list (config `auth:`).

OpenAI clients send `Authorization: Bearer KEY`; Anthropic clients send
`x-api-key: KEY` (an `Authorization: Bearer` token is accepted there too). The
same key names the caller's rate-limit buckets. Keys are compared and used as
bucket names only: they are never logged, counted or echoed whole.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import ApiError
from .ratelimit import mask_key
from .validation import ValidationError, mapping

OPENAI_MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth "
    "(i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the "
    "API from your browser and are prompted for a username. You can obtain an API key from "
    "https://platform.openai.com/account/api-keys.")


class Headers(Protocol):
    """What request_api_key reads: a dict with lower-case names, or a WSGI framework's (case-blind) headers."""

    def get(self, key: str, /) -> str | None: ...


def request_api_key(headers: Headers, provider: str) -> str | None:
    """The key a request carries in its provider's header, or None."""
    if provider == "anthropic":
        key = (headers.get("x-api-key") or "").strip()
        if key:
            return key
    scheme, _, value = (headers.get("authorization") or "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def unauthenticated(api_key: str | None) -> ApiError:
    """The 401 each provider sends for a missing or an unknown key."""
    if not api_key:
        return ApiError("authentication", OPENAI_MISSING_KEY, anthropic_message="x-api-key header is required")
    return ApiError("authentication", f"Incorrect API key provided: {mask_key(api_key)}. You can find your API key "
                                      "at https://platform.openai.com/account/api-keys.",
                    code="invalid_api_key", anthropic_message="invalid x-api-key")


@dataclass(frozen=True)
class AuthConfig:
    """Config `auth:`: when `api_keys` is set, only those keys may call the APIs."""

    api_keys: frozenset[str]
    _digests: tuple[bytes, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_digests", tuple(k.encode() for k in sorted(self.api_keys)))

    @classmethod
    def parse(cls, src: str, raw: Any, key: str = "auth") -> AuthConfig | None:
        if raw is None:
            return None
        raw = mapping(src, key, raw, ("api_keys",), secret_keys=True)
        keys = raw.get("api_keys")
        if keys is None:
            return None
        if isinstance(keys, str):
            keys = [keys]
        if not isinstance(keys, list) or not keys:
            raise ValidationError(src, f"{key}.api_keys", "must be a non-empty list of API keys")
        for i, k in enumerate(keys):
            if not isinstance(k, str) or not k.strip():
                # Named by position: a key's value never appears in a message.
                raise ValidationError(src, f"{key}.api_keys[{i}]", "must be a non-empty string")
        return cls(frozenset(k.strip() for k in keys))

    def check(self, api_key: str | None) -> None:
        """Raise the provider-neutral 401 unless the key is allowed.

        Compared in constant time against every allowed key, like the admin token, so
        response timing tells a caller nothing about how close a guess was.
        """
        given = (api_key or "").encode("utf-8", "surrogateescape")
        allowed = False
        for digest in self._digests:
            allowed |= hmac.compare_digest(given, digest)
        if not api_key or not allowed:
            raise unauthenticated(api_key)
