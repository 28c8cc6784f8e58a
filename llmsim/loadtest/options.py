"""The toolkit's command-line options (on Locust's own parser, so locust.conf works) and their resolution.

Option values stay plain strings and numbers: Locust ships the parsed options
to its workers with msgpack. Each value is checked when it is parsed, so a bad
one stops Locust with argparse's one-line error before any process forks;
LoadTestSettings.from_options() turns them into the objects a run uses.
"""

from __future__ import annotations

import argparse
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locust.util.timespan import parse_timespan

from ..profiles import ModelProfile, ProfileError, ProfileRegistry, load_profile_file
from ..tokens import encoding_name_for_model, get_encoding
from .adapters import Prompt
from .scoring import Tolerance, ToleranceError
from .tools import DEFAULT_TOOL_CHOICE, TOOL_CHOICES, ToolsError, load_tools
from .workloads import (
    DEFAULT_BLOCK_TOKENS,
    EXACT_MODES,
    Workload,
    WorkloadError,
    WorkloadSpec,
    load_dataset,
    load_trace,
    parse_seconds_spread,
    parse_tokens_spread,
)

DEFAULT_MODEL = "gpt-5"
DEFAULT_PROMPT_TOKENS = 128
DEFAULT_MAX_TOKENS = 64
DEFAULT_TOLERANCE = str(Tolerance())
DEFAULT_RETRY_429 = 3
DEFAULT_TIMEOUT_S = 600.0
SCORE_MODES = ("auto", "on", "off")
TRACE_MODES = ("auto", "on", "off")
DEFAULT_TRACE_LIMIT_MS = 1.0


class OptionError(ValueError):
    """An option (or a combination) is unusable; str() is one line naming the option."""


def _whole_number(text: str, minimum: int) -> int:
    try:
        v = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {v}")
    return v


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _number(text: str, what: str, parse: Any = float) -> float:
    try:
        return float(parse(text))
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _positive(v: float, text: str) -> float:
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number more than 0, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    return _positive(_number(text, "a number"), text)


def _seconds(text: str) -> float:
    """'30', '2.5', '30s', '1m30s' -> seconds (> 0)."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        v = _number(text, "seconds or a time span like 30s or 2m", parse_timespan)
    return _positive(v, text)


def _tolerance(text: str) -> str:
    try:
        Tolerance.parse(text)
    except ToleranceError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def parse_warmup(text: str) -> tuple[int, float]:
    """--llm-warmup: 'N' requests or 'Ns' seconds -> (requests, seconds); '0' is no warm-up."""
    t = str(text).strip()
    try:
        if t.endswith("s"):
            seconds = float(t[:-1])
            if not (seconds >= 0 and seconds != float("inf")):
                raise ValueError
            return 0, seconds
        n = int(t)
        if n < 0:
            raise ValueError
        return n, 0.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of requests (20) or of seconds (10s), got {text!r}") \
            from None


def _non_negative_ms(text: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {text!r}") from None
    if not (v >= 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number of milliseconds >= 0, got {text!r}")
    return v


def _warmup(text: str) -> str:
    parse_warmup(text)
    return text


def is_profile_file(value: str) -> bool:
    return value.endswith((".yaml", ".yml")) or os.sep in value or os.path.isfile(value)


def _profile(text: str) -> str:
    try:
        if is_profile_file(text):
            load_profile_file(text)
        else:
            registry = ProfileRegistry.load()
            try:
                registry.resolve(text)
            except KeyError:
                raise argparse.ArgumentTypeError(
                    f"no profile named {text!r} (known: {', '.join(registry.names())}; or give a FILE.yaml)") from None
    except ProfileError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _checked(check: Callable[[str], object], *errors: type[Exception]) -> Callable[[str], str]:
    """An argparse type that runs `check` on the value and reports its error as the option's."""
    def parse(text: str) -> str:
        try:
            check(text)
        except errors as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text

    return parse


_dataset_file = _checked(load_dataset, WorkloadError)
_tools_file = _checked(load_tools, ToolsError)
_prompts_file = _checked(lambda text: load_dataset(text, "--prompts"), WorkloadError)
_trace_file = _checked(load_trace, WorkloadError)
_tokens_spread = _checked(parse_tokens_spread, ValueError)
_seconds_spread = _checked(parse_seconds_spread, ValueError)


def _non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def _speed(text: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number more than 0, got {text!r}")
    return v


def add_arguments(parser: Any) -> None:
    """Register the --llm-* options on Locust's parser (events.init_command_line_parser)."""
    group = parser.add_argument_group("llmsim", "LLM load test: what to send and how to score it")
    group.add_argument("--llm-model", default=DEFAULT_MODEL, metavar="MODEL",
                       help="model name sent in each request; picks the profile to score against "
                            "(default %(default)s)")
    group.add_argument("--llm-profile", type=_profile, default=None, metavar="NAME|FILE.yaml",
                       help="score against this profile (a built-in name or a profile YAML; a YAML is also "
                            "loaded into the embedded server) instead of the model's own")
    group.add_argument("--llm-score", choices=SCORE_MODES, default="auto",
                       help="score the run against the profile (on), or only measure and print the figures, "
                            "exit code 0 whatever they are (off); auto (the default) scores when a profile "
                            "applies: --llm-profile, or a built-in one that covers --llm-model")
    group.add_argument("--llm-warmup", type=_warmup, default="0", metavar="N|Ns",
                       help="leave the first N requests (each Locust process counts its own), or the requests "
                            "that start in the first N seconds, out of every figure of the summary, the report "
                            "and the scores; Locust's own rows still count them (default 0: none)")
    group.add_argument("--llm-trace", choices=TRACE_MODES, default="auto",
                       help="send x-llmsim-trace: 1, so that an llmsim server returns its own timings of each "
                            "request, and report the client's measurement error (client minus server) for TTFT "
                            "and ITL; auto (the default) is on with the embedded server (no --host) when streaming")
    group.add_argument("--llm-trace-limit", type=_non_negative_ms, default=DEFAULT_TRACE_LIMIT_MS, metavar="MS",
                       help=f"with --llm-trace: a measurement error p99 above this says the load generator, not "
                            f"the server, is the bottleneck (default {DEFAULT_TRACE_LIMIT_MS:g})")
    group.add_argument("--llm-api-key", default=None, metavar="KEY",
                       help="API key (default: $OPENAI_API_KEY, or the adapter's own variable)")
    group.add_argument("--prompt-tokens", type=_tokens_spread, default=None, metavar="N|DIST",
                       help=f"synthetic prompts of exactly N tokens in the model's encoding, new text for every "
                            f"request; N may be a distribution: MEAN,STDDEV (normal), lognormal:MEAN,STDDEV or "
                            f"uniform:MIN,MAX (default {DEFAULT_PROMPT_TOKENS})")
    group.add_argument("--prompts", type=_prompts_file, default=None, metavar="FILE.jsonl",
                       help="prompts, one per line: a string, {\"prompt\": ...}, {\"messages\": [...]} or a "
                            "message list (the same as --dataset)")
    group.add_argument("--max-tokens", type=_tokens_spread, default=DEFAULT_MAX_TOKENS, metavar="N|DIST",
                       help=f"max_tokens of each request, or a distribution like --prompt-tokens; given, it is the "
                            f"output length the run asks for (see --exact-output) (default {DEFAULT_MAX_TOKENS})")
    group.add_argument("--no-stream", action="store_true", default=False,
                       help="send non-streaming requests (only E2E and tokens are measured)")
    group.add_argument("--tools", type=_tools_file, default=None, metavar="FILE.json",
                       help="send these tools with every request: a JSON list of tools in OpenAI Chat shape "
                            "({\"type\": \"function\", \"function\": {name, description, parameters}}), "
                            "converted to each API's own shape")
    group.add_argument("--tool-choice", choices=TOOL_CHOICES, default=None,
                       help=f"with --tools: the tool_choice of every request (default {DEFAULT_TOOL_CHOICE}; "
                            "Messages: auto, any, none)")
    group.add_argument("--llm-tolerance", type=_tolerance, default=DEFAULT_TOLERANCE, metavar="REL%,ABSms",
                       help=f"a metric passes when |measured-expected| <= max(ABS, REL x expected) "
                            f"(default {DEFAULT_TOLERANCE})".replace("%", "%%"))  # argparse %-formats help
    group.add_argument("--llm-report", default=None, metavar="FILE",
                       help="write the full report (figures, expected values, verdicts) as JSON")
    group.add_argument("--retry-429", type=_positive_int, nargs="?", const=DEFAULT_RETRY_429, default=0,
                       metavar="N",
                       help=f"retry a request answered 429 up to N times (default {DEFAULT_RETRY_429}), waiting "
                            "what retry-after-ms/retry-after says; every retry is counted in the summary. "
                            "Off by default: nothing is retried")
    group.add_argument("--llm-timeout", type=_seconds, default=DEFAULT_TIMEOUT_S, metavar="S",
                       help=f"give up on a request whose server sends nothing for S seconds: a `timeout` failure "
                            f"(default {DEFAULT_TIMEOUT_S:g}, as the OpenAI SDK's). A request still waiting when the "
                            "run stops is counted as unfinished")
    group.add_argument("--llm-records", default=None, metavar="FILE",
                       help="write one JSON line per request (timings, token counts, status, users) to FILE, "
                            "for `llmsim profile fit`")
    add_workload_arguments(group)


def add_workload_arguments(group: Any) -> None:
    """The workload options (workloads.py), in the same group: every locustfile and the capacity test share them."""
    group.add_argument("--dataset", type=_dataset_file, default=None, metavar="FILE",
                       help="prompts from a local file: JSONL with \"prompt\" or \"messages\" (and an optional "
                            "\"output_tokens\") per line, or ShareGPT conversations (a .json list); each request "
                            "picks an entry at random")
    group.add_argument("--exact-output", choices=EXACT_MODES, default="auto",
                       help="send ignore_eos and min_tokens (Chat and legacy Completions) so that each answer is "
                            "exactly the requested length: on, off, or auto (the default: when the run asks for "
                            "lengths, i.e. --max-tokens, a dataset's or a trace's; a server that refuses them gets "
                            "the request again without, and no more for the run)")
    group.add_argument("--shared-prefix-tokens", type=_non_negative_int, default=0, metavar="N",
                       help="each request starts with a shared system prompt of N tokens (one of --prefix-groups)")
    group.add_argument("--prefix-groups", type=_positive_int, default=1, metavar="G",
                       help="with --shared-prefix-tokens: G different shared system prompts, one picked at random "
                            "per request or session (default 1)")
    group.add_argument("--turns", type=_positive_int, default=1, metavar="N",
                       help="multi-turn sessions of N turns; each turn sends the whole history, the assistant's "
                            "replies as received (a ShareGPT conversation: up to N of its own turns) (default 1)")
    group.add_argument("--think-time", type=_seconds_spread, default=None, metavar="S|DIST",
                       help="with --turns: seconds between a reply and the next turn, or a distribution like "
                            "--prompt-tokens (default 0)")
    group.add_argument("--trace", type=_trace_file, default=None, metavar="FILE.jsonl",
                       help="replay a Mooncake trace (timestamp ms, input_length, output_length, hash_ids) open "
                            "loop at its recorded times; the run ends when the trace has been sent and answered")
    group.add_argument("--trace-speed", type=_speed, default=1.0, metavar="X",
                       help="with --trace: replay X times faster (2 halves every gap) (default 1)")
    group.add_argument("--trace-block-tokens", type=_positive_int, default=DEFAULT_BLOCK_TOKENS, metavar="N",
                       help=f"with --trace: tokens per hash id block (default {DEFAULT_BLOCK_TOKENS}, as in "
                            f"Mooncake's traces)")
    group.add_argument("--workload-seed", type=_non_negative_int, default=None, metavar="N",
                       help="seed of the prompt texts, lengths and picks, for a run that repeats another "
                            "(default: a new one each run, stated in the report)")


@dataclass
class LoadTestSettings:
    """The resolved options of a run, the same in every Locust process."""

    model: str
    profile: ModelProfile | None
    """The profile the run is scored against (and the embedded server serves); None when none applies."""
    profile_file: str | None
    registry: ProfileRegistry
    api_key: str | None
    """--llm-api-key; when None each user falls back to its adapter's variable (OPENAI_API_KEY)."""
    prompts: list[Prompt]
    """A typical prompt of the workload (the warm-up request's); requests take theirs from `workload`."""
    max_tokens: int
    """The mean of --max-tokens (what a request asks for when nothing else says)."""
    stream: bool
    tolerance: Tolerance
    report_path: str | None
    retry_429: int = 0
    """--retry-429: how many times a 429 is retried (0: never)."""
    timeout_s: float = 600.0
    """--llm-timeout: a server silent this long fails the request (kind timeout)."""
    encoding: str = "o200k_base"
    """tiktoken encoding of the model: the profile's, or o200k_base when no profile applies."""
    score: bool = True
    """Whether the run is scored (--llm-score, resolved); False: measure only, exit code 0."""
    warmup: str = "0"
    """--llm-warmup as given, for the report."""
    warmup_requests: int = 0
    warmup_s: float = 0.0
    trace_mode: str = "auto"
    """--llm-trace as given: auto is resolved by the plugin once it knows whether the server is embedded."""
    trace_limit_ms: float = DEFAULT_TRACE_LIMIT_MS
    tools: list[dict[str, Any]] | None = None
    """--tools: tool definitions (OpenAI Chat shape) sent with every request; None: no tools."""
    tool_choice: str = DEFAULT_TOOL_CHOICE
    workload: Workload | None = None
    """What each request sends (workloads.py); set by from_options."""

    @property
    def trace(self) -> bool:
        """Whether requests ask the server for its trace (auto counts as off until resolved)."""
        return self.trace_mode == "on"
    records_path: str | None = None
    """--llm-records: the per-request JSONL file, if any."""

    @classmethod
    def from_options(cls, opts: Any) -> LoadTestSettings:
        """Resolve parsed options; OptionError (one line) if they do not fit together."""
        model = getattr(opts, "llm_model", None) or DEFAULT_MODEL
        profile_arg = getattr(opts, "llm_profile", None)
        score_mode = getattr(opts, "llm_score", None) or "auto"
        profile_file = None
        profile: ModelProfile | None
        try:
            if profile_arg and is_profile_file(profile_arg):
                profile_file = str(Path(profile_arg))
                registry = ProfileRegistry.load(extra_files=[profile_file])
                profile = _pick_from_file(load_profile_file(profile_file), model, profile_file)
            elif profile_arg:
                registry = ProfileRegistry.load()
                try:
                    profile = registry.resolve(profile_arg)
                except KeyError:
                    raise OptionError(f"--llm-profile: no profile named {profile_arg!r} (known: "
                                      f"{', '.join(registry.names())})") from None
            else:
                registry = ProfileRegistry.load()
                try:
                    profile = registry.resolve(model)
                except KeyError:
                    if score_mode == "on":
                        raise OptionError(f"--llm-score on: no profile covers model {model!r}; pass --llm-profile "
                                          "NAME|FILE.yaml to say what to score against") from None
                    profile = None  # measure only
        except ProfileError as e:
            raise OptionError(f"--llm-profile: {e}") from None

        encoding = profile.encoding if profile is not None else encoding_name_for_model(model, registry)
        enc = get_encoding(encoding)
        workload = Workload(workload_spec(opts), enc)
        warmup = str(getattr(opts, "llm_warmup", None) or "0")
        try:
            warmup_requests, warmup_s = parse_warmup(warmup)
        except argparse.ArgumentTypeError as e:
            raise OptionError(f"--llm-warmup: {e}") from None
        try:
            tolerance = Tolerance.parse(getattr(opts, "llm_tolerance", None) or DEFAULT_TOLERANCE)
        except ToleranceError as e:
            raise OptionError(f"--llm-tolerance: {e}") from None
        tools = None
        if getattr(opts, "tools", None):
            try:
                tools = load_tools(opts.tools)
            except ToolsError as e:
                raise OptionError(f"--tools: {e}") from None
        elif getattr(opts, "tool_choice", None):
            raise OptionError("--tool-choice needs --tools (the tools to choose from)")
        if getattr(opts, "llm_trace", None) == "on" and getattr(opts, "no_stream", False):
            raise OptionError("--llm-trace on needs a streamed run: the server's trace comes inside the event stream "
                              "(drop --no-stream, or --llm-trace off)")
        return cls(
            model=model, profile=profile, profile_file=profile_file, registry=registry,
            api_key=getattr(opts, "llm_api_key", None),
            prompts=[workload.sample_prompt()], max_tokens=max(1, round(workload.spec.max_tokens.mean)),
            stream=not getattr(opts, "no_stream", False), tolerance=tolerance,
            report_path=getattr(opts, "llm_report", None),
            retry_429=getattr(opts, "retry_429", None) or 0,
            timeout_s=getattr(opts, "llm_timeout", None) or DEFAULT_TIMEOUT_S,
            encoding=encoding, score=profile is not None and score_mode != "off",
            warmup=warmup, warmup_requests=warmup_requests, warmup_s=warmup_s,
            trace_mode=getattr(opts, "llm_trace", None) or "auto",
            trace_limit_ms=float(getattr(opts, "llm_trace_limit", DEFAULT_TRACE_LIMIT_MS)),
            tools=tools, tool_choice=getattr(opts, "tool_choice", None) or DEFAULT_TOOL_CHOICE,

            records_path=getattr(opts, "llm_records", None),
            workload=workload,
        )


def _pick_from_file(profiles: list[ModelProfile], model: str, path: str) -> ModelProfile:
    """The file's profile that covers the model, else its only profile."""
    if not profiles:
        raise OptionError(f"--llm-profile: {path} holds no profiles")
    covering = ProfileRegistry(profiles).match(model)
    if covering is not None:
        return covering
    if len(profiles) == 1:
        return profiles[0]
    raise OptionError(f"--llm-profile: {path} holds several profiles ({', '.join(p.name for p in profiles)}) "
                      f"and none covers model {model!r}")


def workload_spec(opts: Any) -> WorkloadSpec:
    """The workload options, checked together; OptionError (one line) if they do not fit."""
    def opt(name: str, default: Any = None) -> Any:
        v = getattr(opts, name, None)
        return default if v is None else v

    prompt_tokens, max_tokens = opt("prompt_tokens"), opt("max_tokens", DEFAULT_MAX_TOKENS)
    dataset_path, prompts_path, trace_path = opt("dataset"), opt("prompts"), opt("trace")
    shared, groups, turns = opt("shared_prefix_tokens", 0), opt("prefix_groups", 1), opt("turns", 1)
    think = opt("think_time")
    if dataset_path and prompts_path:
        raise OptionError("--dataset and --prompts exclude each other (--prompts is the same as --dataset)")
    source = "--dataset" if dataset_path else "--prompts" if prompts_path else None
    if source and prompt_tokens:
        raise OptionError(f"--prompt-tokens and {source} exclude each other: the file gives the prompts")
    if trace_path:
        clashes = [name for name, given in (("--dataset", dataset_path), ("--prompts", prompts_path),
                                            ("--prompt-tokens", prompt_tokens),
                                            ("--max-tokens", isinstance(max_tokens, str)),
                                            ("--shared-prefix-tokens", shared), ("--turns", turns > 1)) if given]
        if clashes:
            raise OptionError(f"--trace gives every request's lengths, prefixes and send time; it excludes "
                              f"{', '.join(clashes)}")
    if groups > 1 and not shared:
        raise OptionError("--prefix-groups needs --shared-prefix-tokens N (the length of each group's prefix)")
    if think is not None and turns < 2:
        raise OptionError("--think-time is the wait between the turns of a session: give --turns N (N >= 2)")
    try:
        spec = WorkloadSpec(
            prompt_tokens=parse_tokens_spread(str(prompt_tokens or DEFAULT_PROMPT_TOKENS)),
            max_tokens=parse_tokens_spread(str(max_tokens)),
            max_tokens_given=isinstance(max_tokens, str),
            shared_prefix_tokens=shared, prefix_groups=groups, turns=turns,
            think_time=parse_seconds_spread(str(think or 0)),
            exact_output=opt("exact_output", "auto"),
            seed=opt("workload_seed", random.randrange(2 ** 31)),
            trace_speed=float(opt("trace_speed", 1.0)), block_tokens=opt("trace_block_tokens", DEFAULT_BLOCK_TOKENS))
    except ValueError as e:
        raise OptionError(f"--prompt-tokens/--max-tokens/--think-time: {e}") from None
    try:
        if source:
            spec.dataset, spec.dataset_option = load_dataset(dataset_path or prompts_path, source), source
        if trace_path:
            spec.trace = load_trace(trace_path)
    except WorkloadError as e:
        raise OptionError(f"{source or '--trace'}: {e}") from None
    return spec
