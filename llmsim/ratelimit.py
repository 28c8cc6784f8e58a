"""Per-key RPM/TPM token buckets and the rate-limit headers every response carries.

Each API key gets its own buckets, sized by its tier (config `rate_limits:`).
A bucket holds up to its per-minute limit and refills continuously at
limit/60 per second, as both providers describe their limits. A request takes
one from `requests` and, as OpenAI estimates it, prompt tokens + max_tokens
from `tokens`; when the response ends the token charge is corrected to what
was really generated. The clock is injectable, so tests count down and reset
buckets exactly without sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .errors import go_duration, rate_limited
from .validation import ValidationError, integer, kind_of, mapping

# bucket -> the tier field that sizes it; checked in this order
MAX_LIMIT = 10**12
"""A per-minute limit above this is a typo (and would fill every answer's rate-limit headers with digits)."""
BUCKETS: dict[str, str] = {"requests": "rpm", "tokens": "tpm", "input_tokens": "itpm", "output_tokens": "otpm"}
LIMIT_KEYS = tuple(BUCKETS.values())
DEFAULT_TIER = "default"
_PRUNE_AT = 10_000  # keys held before full (idle) buckets are forgotten


@dataclass(frozen=True)
class Tier:
    """Per-minute limits for every key of a tier; None means not limited."""

    name: str
    rpm: int | None = None
    tpm: int | None = None
    itpm: int | None = None  # input tokens (Anthropic's ITPM)
    otpm: int | None = None  # output tokens (Anthropic's OTPM)

    def limit(self, bucket: str) -> int | None:
        return getattr(self, BUCKETS[bucket])

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in LIMIT_KEYS if getattr(self, k) is not None}


def _parse_tier(src: str, key: str, name: str, raw: Any) -> Tier:
    raw = mapping(src, key, raw, LIMIT_KEYS, secret_keys=True)
    limits = {k: integer(src, f"{key}.{k}", v, minimum=1, secret=True, maximum=MAX_LIMIT) for k, v in raw.items()}
    if not limits:
        raise ValidationError(src, key, f"give at least one of {', '.join(LIMIT_KEYS)}")
    return Tier(name, **limits)


def _tier_name(src: str, key: str, value: Any, tiers: dict[str, Tier]) -> str:
    """A reference to a defined tier. The value is never echoed: in a misplaced entry it may be an API key."""
    known = f"known: {', '.join(sorted(tiers)) or 'none'}"
    if not isinstance(value, str):
        raise ValidationError(src, key, f"must be the name of a tier (a string), got {kind_of(value)} ({known})")
    if value not in tiers:
        raise ValidationError(src, key, f"names no defined tier ({known})")
    return value


def mask_key(api_key: str) -> str:
    """A key as OpenAI prints it back: a short head, stars, the last four characters
    (all stars for a key under 16 characters, where that would show half of it)."""
    if len(api_key) < 16:
        return "*" * len(api_key)
    return api_key[:3] + "*" * (len(api_key) - 7) + api_key[-4:]


@dataclass(frozen=True)
class RateLimitConfig:
    """Config `rate_limits:`: named tiers, keys assigned to tiers, and the tier every other key gets."""

    tiers: dict[str, Tier] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # api key -> tier name
    default_tier: str | None = None

    @classmethod
    def parse(cls, src: str, raw: Any, key: str = "rate_limits") -> RateLimitConfig | None:
        """Validate a config section (None: no limits); ValidationError names the source, key and reason.

        Shorthand: rpm/tpm/itpm/otpm at the top level define the tier named "default".
        """
        if raw is None:
            return None
        raw = mapping(src, key, raw, (*LIMIT_KEYS, "tiers", "keys", "default_tier"), secret_keys=True)
        tiers_raw = raw.get("tiers") or {}
        if not isinstance(tiers_raw, dict):
            raise ValidationError(src, f"{key}.tiers", "must be a mapping of tier names to limits like {rpm: 60}")
        tiers: dict[str, Tier] = {}
        for i, (n, v) in enumerate(tiers_raw.items()):
            # A tier whose limits are not a mapping may be a misplaced API key: named by position.
            where = f"{key}.tiers.{n}" if isinstance(v, dict) else f"{key}.tiers[{i}]"
            tiers[str(n)] = _parse_tier(src, where, str(n), v)
        shorthand = {k: raw[k] for k in LIMIT_KEYS if k in raw}
        if shorthand:
            if DEFAULT_TIER in tiers:
                raise ValidationError(src, key, f"top-level limits define the tier {DEFAULT_TIER!r}, which "
                                                f"{key}.tiers also defines; keep one")
            tiers[DEFAULT_TIER] = _parse_tier(src, key, DEFAULT_TIER, shorthand)
        keys_raw = raw.get("keys") or {}
        if not isinstance(keys_raw, dict):
            raise ValidationError(src, f"{key}.keys", "must be a mapping of API keys to tier names")
        keys: dict[str, str] = {}
        for i, (api_key, tier) in enumerate(keys_raw.items()):
            # Keys never appear in messages: the entry is named by position.
            if not isinstance(api_key, str) or not api_key:
                raise ValidationError(src, f"{key}.keys[{i}]", "API keys must be non-empty strings")
            keys[api_key] = _tier_name(src, f"{key}.keys[{i}]", tier, tiers)
        default = raw.get("default_tier", DEFAULT_TIER if DEFAULT_TIER in tiers else None)
        if default is not None:
            default = _tier_name(src, f"{key}.default_tier", default, tiers)
        if not tiers:
            raise ValidationError(src, key, "define limits: {rpm: N, tpm: N} or tiers: {NAME: {rpm: N, tpm: N}}")
        return cls(tiers, keys, default)

    def tier_for(self, api_key: str | None) -> Tier | None:
        """The key's tier; unknown and missing keys get the default tier (None: not limited)."""
        name = self.keys.get(api_key or "", self.default_tier)
        return self.tiers.get(name) if name is not None else None

    def to_dict(self) -> dict:
        """The section as config, keys masked."""
        out: dict[str, Any] = {"tiers": {n: t.to_dict() for n, t in self.tiers.items()},
                               "default_tier": self.default_tier}
        if self.keys:
            out["keys"] = {mask_key(k): t for k, t in self.keys.items()}
        return out


class Bucket:
    """A token bucket of `limit` per minute, refilled continuously."""

    __slots__ = ("limit", "rate", "level", "updated")

    def __init__(self, limit: int, now: float) -> None:
        self.limit = limit
        self.rate = limit / 60.0
        self.level = float(limit)
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.limit, self.level + (now - self.updated) * self.rate)
            self.updated = now

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.level + 1e-9))

    def seconds_until(self, amount: float) -> float:
        return max(0.0, (amount - self.level) / self.rate)

    @property
    def reset_s(self) -> float:
        """Seconds until the bucket is full again (both providers' "reset")."""
        return self.seconds_until(self.limit)

    def adjust(self, delta: float) -> None:
        """Give back (or take more), never above the limit; may go below zero as debt."""
        self.level = min(self.limit, self.level + delta)


@dataclass
class Charge:
    """What one admitted request took, so the end of the response can correct it."""

    api_key: str
    estimated_completion: int
    buckets: dict[str, Bucket]
    settled: bool = False


def rfc3339(epoch_s: float) -> str:
    """Anthropic's reset format, to the second (rounded up): 2025-01-15T14:24:00Z."""
    return datetime.fromtimestamp(math.ceil(epoch_s - 1e-6), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RateLimiter:
    """The running buckets of every key seen, under one config."""

    def __init__(self, config: RateLimitConfig, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.wall = wall
        self._keys: dict[str, dict[str, Bucket]] = {}
        self._lock = threading.Lock()

    def _buckets(self, api_key: str, now: float) -> dict[str, Bucket]:
        buckets = self._keys.get(api_key)
        if buckets is None:
            tier = self.config.tier_for(api_key)
            buckets = {} if tier is None else {
                b: Bucket(limit, now) for b in BUCKETS if (limit := tier.limit(b)) is not None}
            if len(self._keys) >= _PRUNE_AT:
                self._prune(now)
            self._keys[api_key] = buckets
        for b in buckets.values():
            b.refill(now)
        return buckets

    def _prune(self, now: float) -> None:
        """Forget keys whose buckets are all full again: a fresh bucket is the same thing."""
        idle = []
        for k, buckets in self._keys.items():
            for b in buckets.values():
                b.refill(now)
            if all(b.level >= b.limit for b in buckets.values()):
                idle.append(k)
        for k in idle:
            del self._keys[k]

    def admit(self, api_key: str | None, model: str, prompt_tokens: int, completion_tokens: int) -> Charge | None:
        """Take this request's charge, or raise the 429 of the first bucket that cannot cover it.

        `completion_tokens` is the estimate: the request's max_tokens (or what it will
        generate when it sets none). A rejected request takes nothing.
        """
        api_key = api_key or ""
        need = {"requests": 1, "tokens": prompt_tokens + completion_tokens, "input_tokens": prompt_tokens,
                "output_tokens": completion_tokens}
        with self._lock:
            buckets = self._buckets(api_key, self.clock())
            if not buckets:
                return None
            for name, b in buckets.items():
                if need[name] > b.limit:
                    raise rate_limited(model, name, limit=b.limit, requested=need[name])
                if need[name] > b.level + 1e-9:
                    raise rate_limited(model, name, limit=b.limit, used=b.limit - b.remaining,
                                       requested=need[name], wait_s=b.seconds_until(need[name]))
            for name, b in buckets.items():
                b.adjust(-need[name])
            return Charge(api_key, completion_tokens, buckets)

    def settle(self, charge: Charge | None, completion_tokens: int) -> None:
        """Correct the estimate to the tokens really generated (once; later calls do nothing)."""
        if charge is None or charge.settled:
            return
        charge.settled = True
        delta = charge.estimated_completion - completion_tokens
        with self._lock:
            for name in ("tokens", "output_tokens"):
                b = charge.buckets.get(name)
                if b is not None:
                    b.refill(self.clock())
                    b.adjust(delta)

    def headers(self, api_key: str | None, provider: str) -> dict[str, str]:
        """The key's current limits in the provider's headers (empty when the key is not limited)."""
        with self._lock:
            buckets = self._buckets(api_key or "", self.clock())
            if not buckets:
                return {}
            if provider == "anthropic":
                return self._anthropic(buckets)
            return self._openai(buckets)

    @staticmethod
    def _openai(buckets: dict[str, Bucket]) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, suffix in (("requests", "requests"), ("tokens", "tokens")):
            b = buckets.get(name)
            if b is not None:
                out[f"x-ratelimit-limit-{suffix}"] = str(b.limit)
                out[f"x-ratelimit-remaining-{suffix}"] = str(b.remaining)
                out[f"x-ratelimit-reset-{suffix}"] = go_duration(b.reset_s)
        return out

    def _anthropic(self, buckets: dict[str, Bucket]) -> dict[str, str]:
        now = self.wall()
        out: dict[str, str] = {}

        def put(prefix: str, b: Bucket) -> None:
            out[f"anthropic-ratelimit-{prefix}-limit"] = str(b.limit)
            out[f"anthropic-ratelimit-{prefix}-remaining"] = str(b.remaining)
            out[f"anthropic-ratelimit-{prefix}-reset"] = rfc3339(now + b.reset_s)

        if "requests" in buckets:
            put("requests", buckets["requests"])
        token_buckets = [buckets[n] for n in ("tokens", "input_tokens", "output_tokens") if n in buckets]
        if token_buckets:  # "tokens": the most restrictive token limit in effect
            put("tokens", min(token_buckets, key=lambda b: (b.remaining, -b.reset_s)))
        for name, prefix in (("input_tokens", "input-tokens"), ("output_tokens", "output-tokens")):
            if name in buckets:
                put(prefix, buckets[name])
        return out

