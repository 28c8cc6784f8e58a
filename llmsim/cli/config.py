"""Server configuration: one option table feeds the flags, LLMSIM_* variables and the YAML file.

Precedence is flag, then environment, then config file, then default; a flag
that is not given leaves the file's value alone. Every bad value stops start-up
with one line naming the source (file, variable or flag), the key and the reason.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import FAULT_KINDS, check_rates_total
from ..validation import ValidationError, kind_of, not_utf8

MAX_TARGET_TOKENS = 10_000_000
"""--target-tokens above this is a typo: no model sends that much (and a request is cut at its model's limit)."""

ConfigError = ValidationError
"""A bad setting; str() is one line: source: key: reason (the same type as a bad profile)."""


def _int(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def conv(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError(f"must be a whole number, got {v!r}")
        try:
            n = int(v)
        except (TypeError, ValueError, OverflowError):  # OverflowError: .inf
            raise ValueError(f"must be a whole number, got {v!r}") from None
        if isinstance(v, float) and v != n:
            raise ValueError(f"must be a whole number, got {v!r}")
        if n < lo or (hi is not None and n > hi):
            raise ValueError(f"must be between {lo} and {hi}, got {n}" if hi is not None
                             else f"must be >= {lo}, got {n}")
        return n
    return conv


def _seconds(v: Any) -> float:
    """A duration in seconds (0 turns the timeout off)."""
    if isinstance(v, bool):
        raise ValueError(f"must be a number of seconds, got {v!r}")
    try:
        n = float(v)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"must be a number of seconds, got {v!r}"[:200]) from None
    if not math.isfinite(n) or n < 0:
        raise ValueError(f"must be a number of seconds >= 0 (0: no timeout), got {v!r}")
    return n


def _float(lo: float) -> Callable[[Any], float]:
    def conv(v: Any) -> float:
        if isinstance(v, bool):
            raise ValueError(f"must be a number, got {v!r}")
        try:
            x = float(v)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"must be a number, got {v!r}"[:200]) from None
        if not x >= lo or x == float("inf"):
            raise ValueError(f"must be a number >= {lo:g}, got {v!r}")
        return x
    return conv


def _workers(v: Any) -> int | str:
    """`auto` (one per available core) or a whole number >= 1."""
    if isinstance(v, str) and v.strip().lower() == "auto":
        return "auto"
    try:
        return _int(1, 1024)(v)
    except ValueError:
        raise ValueError(f"must be auto or a whole number between 1 and 1024, got {v!r}") from None


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"must be a non-empty string, got {v!r}")
    return v


def _secret(v: Any) -> str:
    """_str for a secret: a wrong value is named by its kind only (a token written as a number or a list)."""
    if not isinstance(v, str) or not v.strip():
        shown = "a blank string" if isinstance(v, str) else kind_of(v)
        raise ValueError(f"must be a non-empty string, got {shown} (not shown: it may be a secret)")
    return v


PORT = _int(0, 65535)
"""A TCP port to bind (0: a free one)."""


def positive_seconds(v: Any) -> float:
    """A positive number of seconds (an interval, or a timeout that cannot be off)."""
    try:
        x = _seconds(v)
    except ValueError:
        x = 0.0  # not a number of seconds: the same one line
    if x <= 0:
        raise ValueError(f"must be a number of seconds above 0, got {v!r}")
    return x


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return v.lower() in ("1", "true", "yes", "on")
    raise ValueError(f"must be true or false, got {v!r}")


@dataclass(frozen=True)
class Option:
    key: str
    convert: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str | None = None

    @property
    def env(self) -> str:
        return "LLMSIM_" + self.key.upper()

    @property
    def cli(self) -> str:
        return "--" + self.key.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("host", _str, "127.0.0.1", "address to bind"),
    Option("port", PORT, 8080, "port to bind; 0 picks a free one", "PORT"),
    Option("latency_profile", _str, None, "force this profile for every model (default: each model's own)", "NAME"),
    Option("generator", _str, "lorem", "response text: lorem, echo, fixed:TEXT, random, sequence, script:FILE",
           "SPEC"),
    Option("target_tokens", _int(1, MAX_TARGET_TOKENS), None,
           "reply length in tokens for every model (default: the profile's output_tokens, else 100)", "N"),
    Option("seed", _int(0), None, "seed for latencies and text: same seed and requests, same run", "N"),
    Option("profiles_dir", _str, None, "directory of extra or overriding profile YAMLs", "DIR"),
    Option("chunk_tokens", _int(1), None, "tokens per streamed chunk for every profile (default: profile's, 1)",
           "K"),
    Option("max_body_bytes", _int(1), 32 * 1024 * 1024, "largest accepted request body (413 beyond)", "BYTES"),
    Option("header_timeout", _seconds, 30.0, "seconds a connection has to send its request line and headers "
           "(0: no limit)", "SECONDS"),
    Option("idle_timeout", _seconds, 60.0, "seconds a keep-alive connection may wait for its next request "
           "(0: no limit)", "SECONDS"),
    Option("access_log", _bool, False, "log one line per request"),
    Option("admin_token", _secret, None, "enable POST /llmsim/config (runtime control), guarded by this bearer token",
           "TOKEN"),
    Option("workers", _workers, 1, "server processes sharing the port, each one replica with its own batch slots "
                                   "and queue; auto = one per available core (see docs/scaling.md)", "N"),
    Option("pin_workers", _bool, False, "with --workers: pin worker i to the i-th CPU this process may use (Linux), "
                                        "so two replicas never wait on one core while another idles"),
    Option("realtime", _bool, False, "run the server's processes under the real-time round-robin CPU policy "
                                     "(SCHED_RR 1, Linux; needs ulimit -r >= 1 or CAP_SYS_NICE), so no ordinary task "
                                     "on the machine holds a stream's chunks back for a scheduler tick"),
    Option("grace_period", _float(0), 10.0, "with --workers: seconds SIGTERM/SIGINT lets open streams finish before "
                                            "the workers exit", "S"),
    Option("stats_interval", positive_seconds, None,
           "print a one-line status (req/s, tokens/s, active, queued, TTFT and ITL p50/p99, errors) every S seconds",
           "S"),
)
OPTION_BY_KEY = {o.key: o for o in OPTIONS}
SECTION_KEYS = ("models", "errors", "rate_limits", "auth", "tools")
"""Nested config sections, validated by the modules that own them."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    latency_profile: str | None = None
    generator: str = "lorem"
    target_tokens: int | None = None
    seed: int | None = None
    profiles_dir: str | None = None
    chunk_tokens: int | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    header_timeout: float = 30.0
    idle_timeout: float = 60.0
    access_log: bool = False
    admin_token: str | None = None
    workers: int | str = 1
    pin_workers: bool = False
    realtime: bool = False
    grace_period: float = 10.0
    stats_interval: float | None = None
    allow_unknown_models: bool = False
    default_profile: str = "gpt-4o"
    sections: dict[str, Any] = field(default_factory=dict)
    source: str = "<defaults>"


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """The serve flags, all defaulting to 'not given' so lower layers show through."""
    parser.add_argument("--config", metavar="FILE.yaml", default=argparse.SUPPRESS,
                        help="YAML config file (env LLMSIM_CONFIG)")
    for o in OPTIONS:
        if o.convert is _bool:  # a switch: given, it is on
            parser.add_argument(o.cli, dest=o.key, action="store_true", default=argparse.SUPPRESS,
                                help=f"{o.help} (env {o.env})")
            continue
        parser.add_argument(o.cli, dest=o.key, metavar=o.metavar, default=argparse.SUPPRESS,
                            help=f"{o.help} (env {o.env})")
    parser.add_argument("--error-rate", dest="error_rate", action="append", metavar="KIND=RATE",
                        default=argparse.SUPPRESS,
                        help=f"inject a fault into this share of requests; repeatable; kinds: {', '.join(FAULT_KINDS)} "
                             "(env LLMSIM_ERROR_RATE, comma-separated; overrides the config file's errors: rates)")


def _error_rates(specs: list[str], source: str, key: str) -> dict[str, float]:
    """`KIND=RATE` shortcuts for the global `errors:` rates."""
    rates: dict[str, float] = {}
    for spec in specs:
        kind, sep, value = spec.partition("=")
        kind = kind.strip()
        if not sep or kind not in FAULT_KINDS:
            raise ConfigError(source, key, f"expected KIND=RATE with KIND one of {', '.join(FAULT_KINDS)}, "
                                           f"got {spec!r}")
        try:
            rate = float(value)
        except ValueError:
            raise ConfigError(source, key, f"{kind}: rate must be a number between 0 and 1, got {value!r}") from None
        if not 0 <= rate <= 1:
            raise ConfigError(source, key, f"{kind}: rate must be between 0 and 1, got {value!r}")
        rates[kind] = rate
    return rates


def load_config_file(path: str) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(path, "file", f"cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, "file", not_utf8(e)) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(path, f"line {mark.line + 1}" if mark else "yaml",
                          f"invalid YAML ({getattr(e, 'problem', None) or e})") from None
    return {} if doc is None else doc


def _check_keys(path: str, doc: Any) -> None:
    if not isinstance(doc, dict):
        raise ConfigError(path, "(top level)", "must be a mapping of settings")
    for key in doc:
        if key not in OPTION_BY_KEY and key not in SECTION_KEYS:
            known = ", ".join(sorted([*OPTION_BY_KEY, *SECTION_KEYS]))
            raise ConfigError(path, str(key), f"unknown setting (known: {known})")


def _apply(cfg: ServerConfig, key: str, value: Any, source: str, key_name: str) -> None:
    try:
        setattr(cfg, key, OPTION_BY_KEY[key].convert(value))
    except ValueError as e:
        raise ConfigError(source, key_name, str(e)) from None


def resolve_config(flags: dict[str, Any] | None = None, env: Mapping[str, str] | None = None,
                   settings: dict[str, Any] | None = None) -> ServerConfig:
    """Merge defaults < config file (or a `settings` dict) < environment < flags into a ServerConfig.

    `env` stands in for os.environ (tests and embedders pass their own).
    """
    flags = dict(flags or {})
    environ: Mapping[str, str] = os.environ if env is None else env
    cfg = ServerConfig()
    path = flags.pop("config", None) or environ.get("LLMSIM_CONFIG")
    doc = load_config_file(path) if path else settings
    if doc is not None:
        path = path or "<settings>"
        _check_keys(path, doc)
        cfg.source = path
        for key, value in doc.items():
            if key in OPTION_BY_KEY:
                _apply(cfg, key, value, path, key)
            else:
                cfg.sections[key] = value
        models = cfg.sections.get("models")
        if models is not None:
            if not isinstance(models, dict):
                raise ConfigError(path, "models", "must be a mapping like {allow_unknown: true}")
            for k, v in models.items():
                if k == "allow_unknown":
                    try:
                        cfg.allow_unknown_models = _bool(v)
                    except ValueError as e:
                        raise ConfigError(path, "models.allow_unknown", str(e)) from None
                elif k == "default_profile":
                    if not isinstance(v, str) or not v:
                        raise ConfigError(path, "models.default_profile", "must be a profile name")
                    cfg.default_profile = v
                else:
                    raise ConfigError(path, f"models.{k}", "unknown setting (known: allow_unknown, default_profile)")
    for o in OPTIONS:
        if o.env in environ and environ[o.env] != "":
            _apply(cfg, o.key, environ[o.env], o.env, o.env)
    for key, value in flags.items():
        if key in OPTION_BY_KEY:
            _apply(cfg, key, value, "command line", OPTION_BY_KEY[key].cli)
    shortcuts: dict[str, float] = {}
    given = ("", "")  # the source and key of the last shortcut: a total over 1 is reported there
    if environ.get("LLMSIM_ERROR_RATE"):
        shortcuts.update(_error_rates(environ["LLMSIM_ERROR_RATE"].split(","), "LLMSIM_ERROR_RATE",
                                      "LLMSIM_ERROR_RATE"))
        given = ("LLMSIM_ERROR_RATE", "LLMSIM_ERROR_RATE")
    if flags.get("error_rate"):
        shortcuts.update(_error_rates(flags["error_rate"], "command line", "--error-rate"))
        given = ("command line", "--error-rate")
    if shortcuts:
        errors = cfg.sections.get("errors")
        if errors is None or isinstance(errors, dict):  # anything else is reported when the section is read
            merged = {**(errors or {}), **shortcuts}
            _check_total(merged, *given, errors is not None and cfg.source)
            cfg.sections["errors"] = merged
    return cfg


def _check_total(errors: dict, source: str, key: str, file: str | bool) -> None:
    """The rates the shortcuts leave, checked at the flag or variable that set them (not at the file or the
    defaults, where the errors section is read later)."""
    rates = {k: v for k, v in errors.items() if k in FAULT_KINDS and isinstance(v, (int, float))
             and not isinstance(v, bool) and v > 0}
    check_rates_total(source, key, rates, f", with {file}'s errors section" if file else "")
