"""The engine: a parsed, API-neutral request -> a Generation (profile, slot, output blocks, pacer).

Flask-free and usable from Python: every API module parses its own body into
a `Request`, and `Engine.generate()` does the rest once, for all of them:
resolve the profile, check limits (cheap bounds first, exact counts off the
event loop), plan the answer as typed blocks (text, reasoning, tool calls,
structured JSON) on one token timeline, charge rate limits, apply the fault
plan, and take a batch slot. The API turns the Generation's block events
into its own wire format.
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import tiktoken

from .auth import AuthConfig
from .errors import ApiError, ConnectionDrop, Cut, Fault, FaultPlan, FaultSettings, model_overloaded, scripted_error
from .generator import GenerationRequest, Generator, make_generator
from .latency import REASONING_EFFORT_FACTORS
from .profiles import ModelProfile, ProfileRegistry
from .ratelimit import Charge, RateLimitConfig, RateLimiter
from .scheduler import NullScheduler, QueueFull, Schedulers, Slot
from .precise import precise_timer
from .stats import ServerStats
from .stream import Block, Pacer, TokenPlan, TokenStreamBuilder
from .tokens import count_prompt_bounded, get_encoding, max_token_bytes, message_text
from .toolcalls import (OutputFormat, Tool, ToolChoice, ToolSettings, structured_json, tool_call_blocks,
                        tools_prompt_text, tools_to_call)
from .trace import TraceStore

__all__ = ["Engine", "Generation", "Request", "new_id"]

EXACT_COUNT_CHARS = 100_000
"""Below this many characters a prompt is always counted exactly (a few ms at most),
so even a refusal names its exact size; above, cheap bounds may refuse it first."""


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


@dataclass
class Request:
    """One API-neutral generation request, as every API module parses it."""

    model: str
    messages: list[dict]
    """The prompt as chat-shaped messages (system first): what is counted and generated from."""
    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"
    prompt_param: str = "messages"
    stop: list[str] = field(default_factory=list)
    effort: str | None = None
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True
    output_format: OutputFormat | None = None
    answers_tool_result: bool = False
    """The last message is a tool result: the model answers it in text by default."""
    stream: bool = False
    include_usage: bool = False
    """Chat's stream_options.include_usage: a usage chunk before [DONE]."""
    api_key: str | None = None
    arrival: float | None = None
    """Monotonic time the request's first byte arrived (TTFT runs from it); now if None."""
    conversation: str | None = None
    """Key of a scripted conversation (a header), else the first user message keys it."""
    call_id_prefix: str = "call_"
    echo: dict = field(default_factory=dict)
    """Request settings the response repeats back (Responses)."""

    def prompt_text(self) -> str:
        """The last user text: what generators answer to."""
        return GenerationRequest.from_body({"messages": self.messages}).prompt


@dataclass
class Generation:
    """One request's simulated answer: the profile, the planned blocks, and the pacer that times them."""

    request: Request
    profile: ModelProfile
    plan: TokenPlan
    prompt_tokens: int
    pacer: Pacer
    created: int
    slot: Slot = field(default_factory=lambda: NullScheduler().submit())
    arrival: float | None = None
    charge: Charge | None = None
    watch: Any = None
    """A hangup.SocketWatch: queue and TTFT waits end as soon as the client leaves."""
    emitted: list[float] = field(default_factory=list)
    """Monotonic time each content chunk went out: a stream's just after the chunk was handed to
    the socket (api.stream_bytes); a non-streamed answer's when the pacer released it."""
    ended: float | None = None
    """When the response ended: a stream's terminator was written, or the answer was ready."""
    trace_id: str | None = None
    """The request id, when the request asked for a trace (x-llmsim-trace: 1)."""
    trace: dict | None = None
    """The trace record sent with the stream (llmsim/trace.py), once built."""

    @property
    def model(self) -> str:
        return self.request.model

    def _start(self) -> float | None:
        start = self.slot.wait(watch=self.watch)
        return self.arrival if start is None else start

    def paced(self) -> Iterator[tuple[int, str]]:
        """(block index, chunk text) on their deadlines; a queued request's TTFT runs from its grant."""
        plan = self.plan
        owner, pieces = plan.piece_blocks(), plan.pieces
        for i in self.pacer.paced_indices(plan.piece_tokens, plan.reasoning_tokens, self._start()):
            yield owner[i], pieces[i]

    def start_trace(self, request_id: str) -> None:
        """Record this request's planned deadlines beside its emit times (see llmsim/trace.py)."""
        self.trace_id = request_id
        self.pacer.planned = []

    def wait_all(self) -> None:
        """Take as long as the stream would, holding the slot as the stream would."""
        plan, stamps, clock = self.plan, self.emitted, time.monotonic
        with self.slot:
            for _ in self.pacer.paced_indices(plan.piece_tokens, plan.reasoning_tokens, self._start()):
                stamps.append(clock())


class Engine:
    """Profiles, generator, load model, faults and quotas of one simulated deployment set."""

    def __init__(self, registry: ProfileRegistry | None = None, *, generator: str | Generator = "lorem",
                 target_tokens: int = 100, seed: int | None = None, chunk_tokens: int | None = None,
                 latency_profile: str | None = None, allow_unknown_models: bool = False,
                 default_profile: str = "gpt-4o", sections: dict | None = None, source: str = "<settings>") -> None:
        self.registry = registry or ProfileRegistry.load()
        self.seed = seed
        self.chunk_tokens = chunk_tokens
        self.allow_unknown_models = allow_unknown_models
        self.default_profile = default_profile
        self.source = source
        self.forced: ModelProfile | None = None
        if latency_profile:
            self.forced = self.named_profile(latency_profile, "latency_profile")
        if allow_unknown_models:
            self.named_profile(default_profile, "models.default_profile")
        self.generator = generator if isinstance(generator, Generator) else make_generator(generator, target_tokens)
        self.stats = ServerStats()
        self.traces = TraceStore()
        self.schedulers = Schedulers()  # one load model per profile deployment
        self._counter = itertools.count()
        self._fault_counter = itertools.count()
        self._forced_cache: dict[ModelProfile, ModelProfile] = {}
        # Load every encoding the profiles use now: a first request must not pay
        # ~0.3 s of BPE loading inside its TTFT.
        for name in sorted({p.encoding for p in self.registry}):
            max_token_bytes(get_encoding(name))
        self.sleep: Callable[[float], None] = _gevent_sleep  # how a timeout fault holds the request
        sections = sections or {}
        self.auth: AuthConfig | None = AuthConfig.parse(source, sections.get("auth"))
        self.faults = FaultPlan()
        self.limiter: RateLimiter | None = None
        self.tools = ToolSettings()
        self.apply(sections, source)

    def named_profile(self, name: str, key: str) -> ModelProfile:
        from .profiles import ProfileError

        try:
            return self.registry.get(name)
        except KeyError:
            raise ProfileError(self.source, key,
                               f"no profile named {name!r} (known: {', '.join(self.registry.names())})") from None

    # ------------------------------------------------------------------ runtime control

    def apply(self, changes: dict, source: str) -> None:
        """Set `errors`, `rate_limits`, `tools` and `latency_profile` from config-shaped values, all or nothing.

        Each key present replaces that setting (null clears it); absent keys stay.
        Everything is validated before anything changes, so a bad change leaves the
        running config untouched (ProfileError names the key and the reason).
        """
        from .profiles import ProfileError

        faults, limiter, forced, tools = self.faults, self.limiter, self.forced, self.tools
        if "errors" in changes:
            faults = FaultPlan.parse(source, changes["errors"])
        if "rate_limits" in changes:
            limits = RateLimitConfig.parse(source, changes["rate_limits"])
            limiter = None if limits is None else RateLimiter(
                limits, **({"clock": self.limiter.clock, "wall": self.limiter.wall} if self.limiter else {}))
        if "tools" in changes:
            tools = ToolSettings.parse(source, changes["tools"])
        if "latency_profile" in changes:
            name = changes["latency_profile"]
            if name is None:
                forced = None
            elif not isinstance(name, str) or name not in self.registry.names():
                raise ProfileError(source, "latency_profile", f"no profile named {name!r} "
                                                              f"(known: {', '.join(self.registry.names())})")
            else:
                forced = self.registry.get(name)
        if forced is not self.forced:
            self._forced_cache.clear()  # it derives from self.forced
        self.faults, self.limiter, self.forced, self.tools = faults, limiter, forced, tools

    def runtime_config(self) -> dict:
        """What apply() can change, as it is now (API keys masked)."""
        return {"errors": self.faults.to_dict(),
                "rate_limits": self.limiter.config.to_dict() if self.limiter else None,
                "tools": self.tools.to_dict(),
                "latency_profile": self.forced.name if self.forced else None}

    # ------------------------------------------------------------------ per request

    def resolve_profile(self, model: str) -> ModelProfile:
        """The profile a request's model runs with, or 404 model_not_found."""
        own = self.registry.match(model)
        if self.forced is not None:
            return self.forced if own is None else self._forced_over(own)
        if own is not None:
            return own
        if self.allow_unknown_models:
            return self.registry.get(self.default_profile)
        raise ApiError("not_found", f"The model `{model}` does not exist or you do not have access to it.",
                       param="model", code="model_not_found")

    def _forced_over(self, own: ModelProfile) -> ModelProfile:
        # --latency-profile sets timing, load model and SLO; the model keeps its
        # own encoding and limits, as a real deployment of it would.
        hit = self._forced_cache.get(own)
        if hit is None:
            f = self.forced
            assert f is not None
            hit = replace(own, name=f.name, latency=f.latency, capacity=f.capacity, slo=f.slo,
                          chunk_tokens=f.chunk_tokens)
            if len(self._forced_cache) < 1024:
                self._forced_cache[own] = hit
        return hit

    def fault_rng(self) -> random.Random:
        """Per-request RNG of the fault plan, its own sequence so faults repeat by arrival order
        under a seed whatever the latency or text settings."""
        n = next(self._fault_counter)
        return random.Random(f"{self.seed}:faults:{n}") if self.seed is not None else random.Random()

    def request_rng(self) -> random.Random:
        """Per-request RNG: seeded runs repeat by arrival order, whatever the interleaving."""
        n = next(self._counter)
        return random.Random(f"{self.seed}:{n}") if self.seed is not None else random.Random()

    def count_prompt(self, req: Request, profile: ModelProfile, enc: tiktoken.Encoding, *,
                     check: bool = True) -> int:
        """Prompt tokens (messages plus tool definitions), refusing an oversized prompt early.

        A prompt whose bytes alone prove it too long (every token is at most
        `max_token_bytes` bytes) is refused before any tokenising; otherwise
        long texts are counted in gevent's threadpool, in slices, stopping as
        soon as the count passes the context window.
        """
        tools_text = tools_prompt_text(req.tools)
        if not check:
            return count_prompt_bounded(req.messages, enc, extra_text=tools_text)[0]
        room = profile.context_window - (req.max_tokens or 0)
        chars = sum(_text_chars(m) for m in req.messages) + len(tools_text)
        # A token spans at most max_token_bytes bytes, so at most that many characters.
        floor = chars // max_token_bytes(enc)
        if chars > EXACT_COUNT_CHARS and floor > room:
            raise self._too_long(req, profile, floor, at_least=True)
        tokens, exact = count_prompt_bounded(req.messages, enc, limit=room, extra_text=tools_text)
        if tokens > room:
            raise self._too_long(req, profile, tokens, at_least=not exact)
        return tokens

    @staticmethod
    def _too_long(req: Request, profile: ModelProfile, prompt_tokens: int, *, at_least: bool) -> ApiError:
        asked = req.max_tokens or 0
        many = f"at least {prompt_tokens}" if at_least else str(prompt_tokens)
        return ApiError("invalid_request", f"This model's maximum context length is {profile.context_window} "
                        f"tokens. However, you requested {'at least ' if at_least else ''}{prompt_tokens + asked} "
                        f"tokens ({many} in the messages, {asked} in the completion). Please reduce the "
                        "length of the messages or completion.", param=req.prompt_param,
                        code="context_length_exceeded",
                        anthropic_message=f"input length and `max_tokens` exceed context limit: {many} + "
                                          f"{asked} > {profile.context_window}, decrease input length or "
                                          "`max_tokens` and try again")

    def generate(self, req: Request, *, watch: Any = None) -> Generation:
        """Validate limits, plan the answer's blocks and their tokens; shared by every API.

        Then the caller's rate limits are charged (429 when exhausted) and the fault
        plan is consulted: a status-code fault raises its ApiError, a timeout holds
        the request and drops the connection, a mid-stream fault plans a Cut.
        """
        arrival = req.arrival if req.arrival is not None else time.monotonic()
        profile = self.resolve_profile(req.model)
        fault_rng = self.fault_rng()  # drawn for every generation request, so the sequence is the arrival order
        if self.chunk_tokens:
            profile = replace(profile, chunk_tokens=self.chunk_tokens)
        max_tokens = req.max_tokens
        if max_tokens is not None and max_tokens > profile.max_output_tokens:
            raise ApiError("invalid_request", f"{req.max_tokens_param} is too large: {max_tokens}. This model "
                           f"supports at most {profile.max_output_tokens} completion tokens, whereas you provided "
                           f"{max_tokens}.", param=req.max_tokens_param, code="invalid_value",
                           anthropic_message=f"{req.max_tokens_param}: {max_tokens} > {profile.max_output_tokens}, "
                                             f"which is the maximum allowed number of output tokens for {req.model}")
        enc = get_encoding(profile.encoding)
        prompt_tokens = self.count_prompt(req, profile, enc)
        rng = self.request_rng()
        plan, scripted = self.plan(req, profile, enc, rng)
        charge = None
        if self.limiter is not None:  # charged as OpenAI estimates: prompt + max_tokens
            try:
                charge = self.limiter.admit(req.api_key, req.model, prompt_tokens,
                                            max_tokens if max_tokens is not None else plan.completion_tokens)
            except ApiError:
                self.stats.record_rate_limited()
                raise
        try:
            # Faults before the batch slot: a request that fails up front never holds one.
            fault = scripted or self.faults.decide(req.model, profile.name, fault_rng)
            cut = self._carry_out(fault, req.model, plan) if fault is not None else None
            slot = self.admit(profile)
        except BaseException:  # failed before generating: only the prompt stays charged
            if self.limiter is not None:
                self.limiter.settle(charge, 0)
            raise
        pacer = Pacer(profile.latency, rng, prompt_tokens=prompt_tokens, slot=slot, cut=cut,
                      first_sleep=watch.sleep if watch is not None else None, precise=precise_timer())
        if watch is not None and not req.stream:
            pacer.sleep = watch.sleep  # nothing is written until the end: watch every wait
        gen = Generation(request=req, profile=profile, plan=plan, prompt_tokens=prompt_tokens, pacer=pacer,
                         created=int(time.time()), slot=slot, arrival=arrival, charge=charge, watch=watch)
        self.stats.generation_started(gen)
        return gen

    def admit(self, profile: ModelProfile) -> Slot:
        """A batch slot on the profile's deployment (granted or queued), or the overloaded error."""
        try:
            return self.schedulers.get(profile).submit()
        except QueueFull as e:
            raise model_overloaded(e.retry_after_header) from None

    def _carry_out(self, fault: Fault, model: str, plan: TokenPlan) -> Cut | None:
        """An injected fault: raise its error, hold and drop the connection, or plan a mid-stream cut."""
        self.stats.record_fault(fault.kind)
        if fault.kind == "midstream":
            return fault.cut(len(plan.pieces))
        if fault.kind == "timeout":
            self.sleep(fault.settings.timeout_after_ms / 1000.0)
            self.stats.record_error("timeout")
            raise ConnectionDrop()
        raise fault.error(model)

    def finish(self, gen: Generation, completed: bool) -> None:
        """A response ended: count its tokens and latencies, correct the rate-limit charge to them,
        and keep its trace if it asked for one.

        A stream cut short (client gone, injected cut) counts what it delivered.
        """
        if gen.ended is None:
            gen.ended = time.monotonic()
        if completed:
            tokens = gen.plan.completion_tokens
        else:
            sent = gen.pacer.sent_tokens
            tokens = sent + gen.plan.reasoning_tokens if sent else 0
        self.stats.record_tokens(gen.prompt_tokens, tokens)
        self.stats.record_generation(gen, completed, tokens)
        pacer = gen.pacer
        if gen.request.stream and gen.emitted and pacer.first_precise is not None and pacer.precise is not None:
            pacer.precise.observe(gen.emitted[0] - pacer.first_precise)  # how late the write came
        if completed and gen.trace is not None:
            self.traces.add(gen.trace)
        if self.limiter is not None:
            self.limiter.settle(gen.charge, tokens)

    # ------------------------------------------------------------------ what the model says

    def plan(self, req: Request, profile: ModelProfile, enc: tiktoken.Encoding,
             rng: random.Random) -> tuple[TokenPlan, Fault | None]:
        """The answer's blocks, tokenised and cut to the limits, and a scripted turn's fault if any."""
        gen_req = GenerationRequest(prompt=req.prompt_text(), model=req.model, seed=self.seed,
                                    encoding=profile.encoding, conversation=req.conversation or _first_user(req))
        turn = self.generator.turn(gen_req)
        fault = None
        if turn is not None and turn.status is not None:
            raise scripted_error(turn.status, turn.message or "")
        if turn is not None and turn.fault is None:
            blocks = [Block("text", turn.text)] if turn.text else []
            for name, arguments, call_id in turn.tool_calls:
                blocks.append(Block("tool_call", arguments, call_id=call_id or new_id(req.call_id_prefix),
                                    name=name))
            blocks = blocks or [Block("text", "")]
        else:  # the engine decides; a scripted fault still answers (a mid-stream cut needs tokens)
            if turn is not None and turn.fault is not None:
                fault = Fault(turn.fault, FaultSettings(midstream_mode="error"), 0.5)
            blocks = self._answer_blocks(req, profile, gen_req, rng)
        builder = TokenStreamBuilder(enc, profile.chunk_tokens)
        plan = builder.build_blocks(blocks, req.max_tokens, req.stop)
        latency = profile.latency
        reasoning = latency.reasoning_tokens(plan.output_tokens, req.effort)
        if req.max_tokens is not None and reasoning and reasoning + plan.output_tokens > req.max_tokens:
            # Reasoning and visible tokens share the budget, as on the real APIs:
            # keep their ratio, and the visible part ends with "length".
            ratio = latency.reasoning_tokens_per_output_token * REASONING_EFFORT_FACTORS.get(req.effort or "medium",
                                                                                             1.0)
            visible = max(1, int(req.max_tokens / (1 + ratio)))
            plan = builder.build_blocks(blocks, visible, req.stop)
            plan.finish_reason = "length"
            reasoning = req.max_tokens - plan.output_tokens
        plan.reasoning_tokens = reasoning
        return plan, fault

    def _answer_blocks(self, req: Request, profile: ModelProfile, gen_req: GenerationRequest,
                       rng: random.Random) -> list[Block]:
        probability = profile.tool_call_probability
        if probability is None:
            probability = self.tools.call_probability
        calls = tools_to_call(req.tools, req.tool_choice, answers_tool_result=req.answers_tool_result,
                              parallel=req.parallel_tool_calls, probability=probability,
                              max_parallel=self.tools.max_parallel_calls, rng=rng)
        if calls:
            return tool_call_blocks(calls, _content_rng(gen_req, rng), req.call_id_prefix)
        if req.output_format is not None:
            return [Block("text", structured_json(req.output_format, _content_rng(gen_req, rng)))]
        return [Block("text", self.generator.generate(gen_req))]


def _content_rng(gen_req: GenerationRequest, rng: random.Random) -> random.Random:
    """Seeded content depends on (seed, model, prompt) like generated text; otherwise the request's RNG."""
    return gen_req.rng() if gen_req.seed is not None else rng


def _first_user(req: Request) -> str | None:
    for m in req.messages:
        if m.get("role") == "user":
            return message_text(m.get("content"))
    return None


def _text_chars(msg: dict) -> int:
    n = 0
    for key, value in msg.items():
        if key == "content":
            n += len(message_text(value))
        elif isinstance(value, str):
            n += len(value)
    return n


def _gevent_sleep(seconds: float) -> None:
    import gevent

    gevent.sleep(seconds)

