"""Provider error envelopes, and the fault plan that injects them.

Every failure llmsim answers with is an ApiError of a provider-neutral kind;
the API that serves the request renders it in its own envelope, so one
validation or fault path serves OpenAI and Anthropic alike.

The fault plan (config `errors:`) decides once per generation request, from a
seeded per-request RNG, whether the request fails and how; the same arrival
order under the same seed gets the same faults.
"""

from __future__ import annotations

import fnmatch
import json
import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

from .validation import ValidationError, mapping, number

# kind -> (HTTP status, OpenAI error type, Anthropic error type), as documented
# by each provider.
KINDS: dict[str, tuple[int, str, str]] = {
    "invalid_request": (400, "invalid_request_error", "invalid_request_error"),
    "authentication": (401, "invalid_request_error", "authentication_error"),
    "permission": (403, "invalid_request_error", "permission_error"),
    "not_found": (404, "invalid_request_error", "not_found_error"),
    "method_not_allowed": (405, "invalid_request_error", "invalid_request_error"),
    "request_too_large": (413, "invalid_request_error", "request_too_large"),
    "rate_limit": (429, "requests", "rate_limit_error"),
    "server_error": (500, "server_error", "api_error"),
    "unavailable": (503, "server_error", "api_error"),
    "overloaded": (503, "server_error", "overloaded_error"),
    # The batch queue is full (scheduler.QueueFull): OpenAI answers 429 with a
    # server_error body, Anthropic 529 overloaded_error.
    "model_overloaded": (429, "server_error", "overloaded_error"),
}
ANTHROPIC_OVERLOADED_STATUS = 529


@dataclass
class ApiError(Exception):
    """An error answer: kind picks status and type, message names the field at fault."""

    kind: str
    message: str
    param: str | None = None
    code: str | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    openai_type: str | None = None
    anthropic_message: str | None = None  # when Anthropic words the same error differently
    anthropic_headers: dict[str, str] | None = None  # when Anthropic sends other headers (None: the same)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown error kind {self.kind!r}")
        super().__init__(self.message)

    def http_status(self, provider: str) -> int:
        if self.status is not None:
            return self.status
        if provider == "anthropic" and self.kind in ("overloaded", "model_overloaded"):
            return ANTHROPIC_OVERLOADED_STATUS
        return KINDS[self.kind][0]

    def openai_body(self) -> dict:
        """OpenAI's envelope: {"error": {"message", "type", "param", "code"}}."""
        return {"error": {"message": self.message, "type": self.openai_type or KINDS[self.kind][1],
                          "param": self.param, "code": self.code}}

    def anthropic_body(self, request_id: str | None = None) -> dict:
        """Anthropic's envelope: {"type": "error", "error": {"type", "message"}}."""
        body: dict = {"type": "error", "error": {"type": KINDS[self.kind][2],
                                                "message": self.anthropic_message or self.message}}
        if request_id:
            body["request_id"] = request_id
        return body

    def headers_for(self, provider: str) -> dict[str, str]:
        """The response headers this error carries on the given provider's API."""
        if provider == "anthropic" and self.anthropic_headers is not None:
            return self.anthropic_headers
        return self.headers

    def body(self, provider: str, request_id: str | None = None) -> dict:
        return self.anthropic_body(request_id) if provider == "anthropic" else self.openai_body()

    def body_bytes(self, provider: str, request_id: str | None = None) -> bytes:
        return json.dumps(self.body(provider, request_id), separators=(",", ":")).encode()


OPENAI_OVERLOADED_MESSAGE = ("That model is currently overloaded with other requests. You can retry your request, "
                             "or contact us through our help center at help.openai.com if the error persists.")


def model_overloaded(retry_after: str) -> ApiError:
    """The batch queue is full: OpenAI's overloaded 429 (Anthropic: 529 "Overloaded"), with Retry-After."""
    return ApiError("model_overloaded", OPENAI_OVERLOADED_MESSAGE, headers={"Retry-After": retry_after},
                    anthropic_message="Overloaded")


_STATUS_KINDS = {400: "invalid_request", 401: "authentication", 403: "permission", 404: "not_found",
                 405: "method_not_allowed", 413: "request_too_large", 429: "rate_limit", 500: "server_error",
                 503: "unavailable", 529: "overloaded"}


def scripted_error(status: int, message: str) -> ApiError:
    """An error answer with a given status, typed as the provider types that status."""
    kind = _STATUS_KINDS.get(status, "invalid_request" if status < 500 else "server_error")
    return ApiError(kind, message, status=status)


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """The common 400: a request field is missing, mistyped or out of range."""
    return ApiError("invalid_request", message, param=param, code=code)


# --------------------------------------------------------------------------- connection-level failures


class ConnectionDrop(BaseException):
    """Abandon the connection: no status line (before the response) or no terminator (mid-stream).

    A BaseException so no `except Exception` on the way (Flask's error handlers,
    the generic 500 handler) turns it into a tidy HTTP answer; the WSGI handler
    catches it and closes the socket.
    """


@dataclass(frozen=True)
class Cut:
    """A planned mid-stream failure: stop after `after_pieces` chunks.

    `error` is the in-band error event to send (midstream_mode: error); None
    drops the connection instead (midstream_mode: drop).
    """

    after_pieces: int
    error: ApiError | None = None


class StreamCut(Exception):
    """Raised by the pacer where a planned Cut falls."""

    def __init__(self, cut: Cut) -> None:
        super().__init__(f"stream cut after {cut.after_pieces} chunks")
        self.cut = cut


# --------------------------------------------------------------------------- retry hints and 429 bodies

OPENAI_ORG = "org-llmsim"
OPENAI_LIMITS_URL = "https://platform.openai.com/account/rate-limits"
ANTHROPIC_LIMITS_TAIL = (
    "For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current "
    "usage. Please reduce the prompt length or the maximum tokens requested, or try again later. You may also contact "
    "sales at https://www.anthropic.com/contact-sales to discuss your options for a rate limit increase.")
# scope -> (OpenAI's "on ... per min" phrase, OpenAI error type, Anthropic's unit)
RATE_SCOPES: dict[str, tuple[str, str, str]] = {
    "requests": ("requests per min (RPM)", "requests", "requests"),
    "tokens": ("tokens per min (TPM)", "tokens", "tokens"),
    "input_tokens": ("input tokens per min (ITPM)", "tokens", "input tokens"),
    "output_tokens": ("output tokens per min (OTPM)", "tokens", "output tokens"),
}


def go_duration(seconds: float) -> str:
    """OpenAI's duration format (Go's time.Duration, to the millisecond): 0s, 20ms, 1s, 1.5s, 6m0s, 1h0m0s."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".") + "s"
    if h:
        return f"{h}h{m}m{s}"
    return f"{m}m{s}" if m else s


def retry_after_headers(seconds: float) -> tuple[dict[str, str], dict[str, str]]:
    """(OpenAI's, Anthropic's) retry hint: whole seconds in `retry-after` (rounded up, at least 1),
    and on OpenAI also the exact `retry-after-ms` that its SDK prefers."""
    whole = str(max(1, math.ceil(seconds - 1e-9)))
    return ({"retry-after": whole, "retry-after-ms": str(max(0, math.ceil(seconds * 1000 - 1e-6)))},
            {"retry-after": whole})


def rate_limited(model: str, scope: str, *, limit: int | None = None, used: int | None = None,
                 requested: int | None = None, wait_s: float | None = None,
                 injected_by: str = "llmsim errors.rate_limit") -> ApiError:
    """A 429 worded as each provider words it.

    `limit=None` is an injected fault (no bucket behind it, `injected_by` says what injected it); `wait_s=None` is a
    request larger than the whole limit, which waiting cannot fix, so no retry hint.
    """
    phrase, openai_type, unit = RATE_SCOPES[scope]
    if limit is None:
        detail, anthropic_of = f"injected fault ({injected_by})", f"(injected fault: {injected_by})"
    else:
        detail = f"Limit {limit}, Used {used}, Requested {requested}"
        anthropic_of = f"of {limit:,} {unit} per minute"
    if wait_s is None:
        message = (f"Request too large for {model} in organization {OPENAI_ORG} on {phrase}: Limit {limit}, "
                   f"Requested {requested}. The input or output tokens must be reduced in order to run successfully. "
                   f"Visit {OPENAI_LIMITS_URL} to learn more.")
        openai_headers: dict[str, str] = {}
        anthropic_headers: dict[str, str] = {}
    else:
        message = (f"Rate limit reached for {model} in organization {OPENAI_ORG} on {phrase}: {detail}. "
                   f"Please try again in {go_duration(wait_s)}. Visit {OPENAI_LIMITS_URL} to learn more.")
        openai_headers, anthropic_headers = retry_after_headers(wait_s)
    anthropic_message = f"This request would exceed the rate limit for your organization (llmsim) {anthropic_of}. " \
                        + ANTHROPIC_LIMITS_TAIL
    return ApiError("rate_limit", message, code="rate_limit_exceeded", openai_type=openai_type,
                    headers=openai_headers, anthropic_message=anthropic_message, anthropic_headers=anthropic_headers)


# --------------------------------------------------------------------------- the fault plan

FAULT_KINDS = ("rate_limit", "server_error", "unavailable", "overloaded", "timeout", "midstream")
"""Injectable faults, in the order the decision walks them."""
MIDSTREAM_MODES = ("drop", "error")
FAULT_HEADER = "x-llmsim-fault"
"""The request header that forces one fault for one request (config `errors.header: false` ignores it)."""
FAULT_HEADER_VALUES = (*FAULT_KINDS, *(f"midstream:{m}" for m in MIDSTREAM_MODES))


def parse_fault_header(value: str) -> tuple[str, str | None]:
    """`KIND` or `midstream:MODE` -> (kind, midstream mode or None); a 400 naming the header otherwise."""
    text = value.strip().lower()
    kind, sep, mode = text.partition(":")
    if text in FAULT_HEADER_VALUES:
        return kind, (mode if sep else None)
    allowed = ", ".join(FAULT_HEADER_VALUES)
    raise invalid(f"Invalid value for header '{FAULT_HEADER}': {value!r}. Supported values are: {allowed}.",
                  param=FAULT_HEADER, code="invalid_value")
OPENAI_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"
SHOULD_RETRY = {"x-should-retry": "true"}


def server_error() -> ApiError:
    """OpenAI's 500 server_error; Anthropic's 500 api_error."""
    return ApiError("server_error", OPENAI_SERVER_ERROR, anthropic_message="Internal server error",
                    anthropic_headers=SHOULD_RETRY)


def unavailable() -> ApiError:
    """503 on both: OpenAI's service_unavailable_error, Anthropic's api_error."""
    return ApiError("unavailable", "The service is temporarily unavailable. Please try again later.",
                    openai_type="service_unavailable_error", anthropic_message="Service unavailable",
                    anthropic_headers=SHOULD_RETRY)


def overloaded() -> ApiError:
    """OpenAI's 503 server_is_overloaded; Anthropic's 529 overloaded_error."""
    return ApiError("overloaded", "Our servers are currently overloaded. Please try again later.",
                    code="server_is_overloaded", openai_type="service_unavailable_error",
                    anthropic_message="Overloaded", anthropic_headers=SHOULD_RETRY)


def midstream_error() -> ApiError:
    """What a stream that fails after its 200 carries in-band: OpenAI's server_error chunk,
    Anthropic's `event: error` with overloaded_error (the error each provider streams most)."""
    return ApiError("overloaded", OPENAI_SERVER_ERROR, openai_type="server_error", anthropic_message="Overloaded")


@dataclass(frozen=True)
class FaultSettings:
    """The rates and knobs that apply to one request (global, or merged with a model/profile override)."""

    rates: dict[str, float] = field(default_factory=dict)  # kind -> probability; missing kinds are 0
    timeout_after_ms: float = 30_000.0
    midstream_mode: str = "drop"
    retry_after_ms: float = 1_000.0

    @property
    def total(self) -> float:
        return sum(self.rates.values())

    def to_dict(self) -> dict:
        return {**{k: self.rates.get(k, 0.0) for k in FAULT_KINDS}, "timeout_after_ms": self.timeout_after_ms,
                "midstream_mode": self.midstream_mode, "retry_after_ms": self.retry_after_ms}


@dataclass(frozen=True)
class Fault:
    """One request's injected failure."""

    kind: str
    settings: FaultSettings
    position: float  # in [0, 1): where a mid-stream cut falls
    forced: bool = False
    """Asked for by the request's x-llmsim-fault header rather than drawn from the plan."""

    def error(self, model: str) -> ApiError:
        """The error answer for the status-code kinds (rate_limit, server_error, unavailable, overloaded)."""
        if self.kind == "rate_limit":
            return rate_limited(model, "requests", wait_s=self.settings.retry_after_ms / 1000,
                                injected_by=f"{FAULT_HEADER} header" if self.forced else "llmsim errors.rate_limit")
        return {"server_error": server_error, "unavailable": unavailable, "overloaded": overloaded}[self.kind]()

    def cut(self, pieces: int) -> Cut:
        """Where a stream of `pieces` chunks breaks: after 1..pieces of them (so at least one token
        arrives when there is one, and at worst only the terminator is missing)."""
        after = 1 + int(self.position * pieces) if pieces else 0
        return Cut(min(after, pieces), midstream_error() if self.settings.midstream_mode == "error" else None)


def decide(settings: FaultSettings, rng: random.Random) -> Fault | None:
    """The per-request decision: one uniform draw against the cumulative rates, so each kind
    happens with exactly its rate. Always draws twice, so later requests' draws do not
    depend on this one's outcome."""
    u, position = rng.random(), rng.random()
    acc = 0.0
    for kind in FAULT_KINDS:
        acc += settings.rates.get(kind, 0.0)
        if u < acc:
            return Fault(kind, settings, position)
    return None


_SETTING_KEYS = (*FAULT_KINDS, "timeout_after_ms", "midstream_mode", "retry_after_ms")


MAX_FAULT_MS = 86_400_000
"""A day: a longer timeout or retry hint is a typo (and retry-after headers would carry its digits)."""


def _parse_settings(src: str, key: str, raw: Any, base: FaultSettings) -> FaultSettings:
    """A mapping of rates and knobs layered over `base` (so an override names only what changes)."""
    rates = dict(base.rates)
    changes: dict[str, Any] = {}
    for k, v in raw.items():
        where = f"{key}.{k}" if key else k
        if k in FAULT_KINDS:
            rate = number(src, where, v)
            if rate > 1:
                raise ValidationError(src, where, f"must be a probability between 0 and 1, got {v!r}")
            rates[k] = rate
        elif k == "midstream_mode":
            if v not in MIDSTREAM_MODES:
                raise ValidationError(src, where, f"must be one of {', '.join(MIDSTREAM_MODES)}, got {v!r}")
            changes[k] = v
        elif k in ("timeout_after_ms", "retry_after_ms"):
            changes[k] = number(src, where, v, maximum=MAX_FAULT_MS)
    settings = replace(base, rates={k: r for k, r in rates.items() if r > 0}, **changes)
    check_rates_total(src, key or "errors", settings.rates)
    return settings


def check_rates_total(src: str, key: str, rates: dict[str, float], note: str = "") -> None:
    """A request fails at most one way: its fault rates must add up to at most 1 (`note`: where else they
    came from, for the message)."""
    total = sum(rates.values())
    if total > 1 + 1e-9:
        listed = ", ".join(f"{k}={r:g}" for k, r in rates.items())
        raise ValidationError(src, key, f"the rates add up to {total:g} ({listed}{note}); a request fails at most "
                                        "one way, so they must add up to at most 1")


@dataclass(frozen=True)
class FaultPlan:
    """Config `errors:`: global settings, overridden per model name/glob or per profile name."""

    base: FaultSettings = field(default_factory=FaultSettings)
    models: tuple[tuple[str, FaultSettings], ...] = ()
    profiles: tuple[tuple[str, FaultSettings], ...] = ()
    header: bool = True
    """Honour the x-llmsim-fault request header (config `errors.header`)."""

    @property
    def active(self) -> bool:
        return bool(self.base.rates) or any(s.rates for _, s in self.models + self.profiles)

    @classmethod
    def parse(cls, src: str, raw: Any, key: str = "errors") -> FaultPlan:
        """Validate a config section; ValidationError names the source, the dotted key and the reason."""
        if raw is None:
            return cls()
        raw = mapping(src, key, raw, (*_SETTING_KEYS, "models", "profiles", "header"))
        header = raw.get("header", True)
        if not isinstance(header, bool):
            raise ValidationError(src, f"{key}.header", f"must be true or false, got {header!r}")
        base = _parse_settings(src, key, {k: v for k, v in raw.items() if k in _SETTING_KEYS}, FaultSettings())
        overrides: dict[str, tuple[tuple[str, FaultSettings], ...]] = {}
        for group in ("models", "profiles"):
            entries = raw.get(group) or {}
            if not isinstance(entries, dict):
                raise ValidationError(src, f"{key}.{group}", f"must be a mapping of names to settings, got "
                                                          f"{type(entries).__name__}")
            parsed = []
            for name, sub in entries.items():
                where = f"{key}.{group}.{name}"
                parsed.append((str(name), _parse_settings(src, where, mapping(src, where, sub, _SETTING_KEYS), base)))
            overrides[group] = tuple(parsed)
        return cls(base, overrides["models"], overrides["profiles"], header)

    def settings_for(self, model: str, profile: str | None = None) -> FaultSettings:
        """The most specific settings: exact model name, then the first matching model glob, then the profile."""
        for name, settings in self.models:
            if name == model:
                return settings
        for name, settings in self.models:
            if fnmatch.fnmatchcase(model, name):
                return settings
        for name, settings in self.profiles:
            if name == profile:
                return settings
        return self.base

    def decide(self, model: str, profile: str | None, rng: random.Random) -> Fault | None:
        return decide(self.settings_for(model, profile), rng)

    def forced(self, kind: str, mode: str | None, model: str, profile: str | None,
               rng: random.Random) -> Fault:
        """The fault a request's x-llmsim-fault header asks for, with its scope's knobs
        (timeout_after_ms, retry_after_ms, midstream_mode unless the header names one)."""
        settings = self.settings_for(model, profile)
        if mode is not None:
            settings = replace(settings, midstream_mode=mode)
        return Fault(kind, settings, rng.random(), forced=True)

    def to_dict(self) -> dict:
        out: dict[str, Any] = self.base.to_dict()
        out["header"] = self.header
        for group, entries in (("models", self.models), ("profiles", self.profiles)):
            if entries:
                out[group] = {name: s.to_dict() for name, s in entries}
        return out
