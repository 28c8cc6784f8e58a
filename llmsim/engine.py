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

import heapq
import itertools
import random
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from operator import attrgetter
from typing import Any

import tiktoken

from .auth import AuthConfig
from .embeddings import MAX_REQUEST_TOKENS, EmbedRequest, EmbedResult, embedding_vector
from .errors import (
    ApiError,
    ConnectionDrop,
    Cut,
    Fault,
    FaultPlan,
    FaultSettings,
    StreamCut,
    model_overloaded,
    parse_fault_header,
    scripted_error,
    server_error,
)
from .generator import (
    DEFAULT_TARGET_TOKENS,
    GenerationRequest,
    Generator,
    LoremGenerator,
    ScriptTurn,
    last_user_text,
    make_generator,
)
from .logprobs import TokenLogprob, token_logprobs
from .precise import hub_timer, precise_waits_on
from .prefix_cache import NO_CACHE, CacheUsage, PrefixCache, Segment, prompt_blocks, segment_prefixes
from .profiles import ModelProfile, ProfileRegistry
from .ratelimit import Charge, RateLimitConfig, RateLimiter
from .scheduler import NullScheduler, QueueFull, Schedulers, Slot
from .stats import ServerStats
from .stream import Block, Pacer, TokenPlan, TokenStreamBuilder
from .tokens import count_prompt_bounded, decode_ids, encode, get_encoding, max_token_bytes, message_text
from .toolcalls import (
    OutputFormat,
    Tool,
    ToolChoice,
    ToolSettings,
    new_call_id,
    structured_json,
    tool_call_blocks,
    tools_prompt_text,
    tools_to_call,
)
from .trace import TraceStore

__all__ = ["Engine", "Generation", "Request", "new_id"]

UNSEEDED = random.Random()
UNSEEDED_CONTENT = random.Random()
"""Unseeded runs share these two RNGs (timing and faults; content): seeding a new one from the OS
costs every request ~10-20 µs."""
EXACT_COUNT_CHARS = 100_000
"""Below this many characters a prompt is always counted exactly (a few ms at most),
so even a refusal names its exact size; above, cheap bounds may refuse it first."""


new_id = new_call_id


@dataclass(slots=True)
class Request:
    """One API-neutral generation request, as every API module parses it.

    Its fields are replaced, never changed in place (a request's messages, tools and
    stop list may be another request's too: see copy)."""

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
    """Request settings the response repeats back (Responses), and legacy Completions' `echo: true`."""
    forced_fault: str | None = None
    """The x-llmsim-fault header: force this fault (`KIND` or `midstream:MODE`) unless config turns it off."""
    prompt_framing: bool = True
    """Count the prompt as chat messages (framing and reply priming); False: its text alone (legacy Completions)."""
    prompt_ids: list[int] | None = None
    """A prompt given as token ids (legacy Completions): counted as its length, decoded with the model's encoding."""
    reasoning: str | None = None
    """None: as the profile reasons; "visible": stream the reasoning (Anthropic `thinking`, a Responses
    summary); "omitted": reason unseen, an empty reasoning block in its place (Anthropic thinking display
    "omitted"); "off": do not reason."""
    reasoning_budget: int | None = None
    """At most this many reasoning tokens (Anthropic `thinking.budget_tokens`)."""
    encrypted_reasoning: bool = False
    """Return the reasoning as an opaque string (Responses `include: ["reasoning.encrypted_content"]`)."""
    ignore_eos: bool = False
    """vLLM: keep generating to the limit (`max_tokens`, else the model's output limit)."""
    min_tokens: int | None = None
    """vLLM: the answer text is at least this long."""
    seed: int | None = None
    """The request's own seed: the same seed and request give the same text (not the same timing)."""
    logprobs: int | None = None
    """Log-probabilities of every text token with this many alternatives each (0-20); None: not asked."""
    n: int = 1
    """Choices to generate: n sequences in the batch, each holding its own slot."""
    cache_segments: list[Segment] | None = None
    """Anthropic prompt caching: the prompt's content blocks in order, its `cache_control` breakpoints
    marked; None when the request sets none."""

    def copy(self) -> Request:
        """A request of its own with the same field values (a body sent again is parsed once: Api.parse_bytes)."""
        return Request(*_REQUEST_FIELDS(self))

    def prompt_text(self) -> str:
        """The last user text: what generators answer to."""
        return last_user_text(self.messages)

    def drop_prompt(self) -> None:
        """Forget the prompt once it is counted and answered, so a response that takes long (a stream)
        does not hold it meanwhile; legacy Completions' `echo` keeps the text it repeats."""
        if not self.echo.get("echo"):
            self.messages = []
        self.prompt_ids = None
        self.cache_segments = None
        self.tools = []


_REQUEST_FIELDS = attrgetter(*(f.name for f in fields(Request)))


@dataclass(slots=True, weakref_slot=True)
class Generation:
    """One request's simulated answer: the profile, the planned blocks, and the pacer that times them.

    With `n` > 1 every choice is a Generation of its own (own plan, pacer and
    batch slot); the first holds them all in `choices`, and its methods
    (`paced_choices`, `wait_all`, `release`) act on all of them.
    """

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
    index: int = 0
    """Which choice this is (0 unless the request asked for n > 1)."""
    choices: list[Generation] = field(default_factory=list)
    """Every choice, this one first, when n > 1 (empty otherwise)."""
    emitted: array[float] = field(default_factory=lambda: array("d"))
    """Monotonic time each content chunk went out: a stream's just after the chunk was handed to
    the socket (api.stream_bytes); a non-streamed answer's when the pacer released it. An array,
    8 bytes a chunk (a list of floats takes 32): a long stream keeps it to its end."""
    ended: float | None = None
    """When the response ended: a stream's terminator was written, or the answer was ready."""
    trace_id: str | None = None
    """The request id, when the request asked for a trace (x-llmsim-trace: 1)."""
    trace: dict | None = None
    """The trace record sent with the stream (llmsim/trace.py), once built."""
    cache: CacheUsage = NO_CACHE
    """What the prompt read from (not prefilled) and wrote to the deployment's prefix cache."""

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def all(self) -> list[Generation]:
        """Every choice of the request (just this one unless n > 1)."""
        return self.choices or [self]

    def _start(self) -> float | None:
        start = self.slot.wait(watch=self.watch)
        return self.arrival if start is None else start

    def paced(self) -> Iterator[tuple[int, str]]:
        """(block index, chunk text) on their deadlines; a queued request's TTFT runs from its grant."""
        indices, owner, pieces = self.timeline()
        for i in indices:
            yield owner[i], pieces[i]

    def timeline(self) -> tuple[Iterator[int], Sequence[int], list[str]]:
        """What paced() yields from, for a caller that looks chunks up itself (a stream: one generator
        fewer on its saved stack): each chunk's index on its deadline, once the batch slot is granted;
        each chunk's block index; the chunk texts."""
        plan = self.plan
        return (self.pacer.paced_indices(plan.piece_tokens, plan.reasoning_tokens, self._start()),
                _owners(plan), plan.pieces)

    def paced_choices(self) -> Iterator[tuple[int, int, int]]:
        """(choice, block index, chunk index) of every choice's chunks, merged in time order.

        Each choice is a sequence of its own (as vLLM runs a request's n
        sequences): paced on its own timeline (its own TTFT and ITL draws) from
        the moment its batch slot is granted, and its slot is freed as soon as
        its last chunk is out, so a choice that had to queue (even behind its
        siblings) starts then.
        """
        if not self.choices:
            owner = _owners(self.plan)
            plan = self.plan
            for i in self.pacer.paced_indices(plan.piece_tokens, plan.reasoning_tokens, self._start()):
                yield 0, owner[i], i
            return
        choices = self.choices
        pacer0 = self.pacer
        clock = pacer0.clock
        owners = [_owners(c.plan) for c in choices]
        schedules: list[Iterator[float] | None] = [None] * len(choices)
        heap: list[tuple[float, int, int]] = []

        def begin(k: int, start: float | None) -> None:
            c = choices[k]
            sched = schedules[k] = c.pacer.deadlines(c.plan.piece_tokens, c.plan.reasoning_tokens,
                                                      clock() if start is None else start)
            first = next(sched, None)
            if first is not None:
                heapq.heappush(heap, (first, k, 0))
            else:
                end(k)

        def end(k: int) -> None:
            cut = choices[k].pacer.cut
            if cut is not None:
                raise StreamCut(cut)
            choices[k].slot.release()

        def granted() -> None:
            for k in [k for k in pending if choices[k].slot.granted]:
                pending.remove(k)
                slot = choices[k].slot
                begin(k, slot.granted_at if slot.queued else self.arrival)

        pending = list(range(1, len(choices)))
        begin(0, self._start())
        granted()
        sleep = pacer0.first_sleep or pacer0.sleep
        while heap or pending:
            if not heap:  # nothing to stream until a queued choice gets its slot
                k = pending.pop(0)
                start = choices[k].slot.wait(watch=self.watch)
                begin(k, self.arrival if start is None else start)
                continue
            deadline, k, i = heapq.heappop(heap)
            wait = deadline - clock()
            if wait > 0:
                sleep(wait)
            sleep = pacer0.sleep
            if pending:
                granted()
                if heap and heap[0][0] < deadline:  # a choice that just started comes first
                    heapq.heappush(heap, (deadline, k, i))
                    continue
            c = choices[k]
            c.pacer.release(i, c.plan.piece_tokens[i])
            yield k, owners[k][i], i
            sched = schedules[k]
            nxt = next(sched, None) if sched is not None else None
            if nxt is not None:
                heapq.heappush(heap, (nxt, k, i + 1))
            else:
                end(k)
                if pending:
                    granted()

    def wait_all(self) -> None:
        """Take as long as the stream would, holding the slots as the stream would."""
        stamps, clock = self.emitted, time.monotonic
        try:
            if not self.choices:
                plan = self.plan
                self.pacer.wait_through(plan.piece_tokens, plan.reasoning_tokens, self._start(), stamps)
                return
            for _ in self.paced_choices():
                stamps.append(clock())
        finally:
            self.release()

    def release(self) -> None:
        """Free every choice's batch slot (idempotent)."""
        for c in self.all:
            c.slot.release()

    def start_trace(self, request_id: str) -> None:
        """Record this request's planned deadlines beside its emit times (see llmsim/trace.py)."""
        self.trace_id = request_id
        self.pacer.planned = []



class Engine:
    """Profiles, generator, load model, faults and quotas of one simulated deployment set."""

    def __init__(self, registry: ProfileRegistry | None = None, *, generator: str | Generator = "lorem",
                 target_tokens: int | None = None, seed: int | None = None, chunk_tokens: int | None = None,
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
        self.generator = generator if isinstance(generator, Generator) else make_generator(
            generator, target_tokens or DEFAULT_TARGET_TOKENS)
        self.fixed_length = target_tokens is not None or isinstance(generator, Generator)
        """--target-tokens (or a Generator object) was given: it sets the length, not the profiles'
        `output_tokens` distributions."""
        self.stats = ServerStats()
        self.precise_waits = precise_waits_on()  # read once: every request asks
        self.traces = TraceStore()
        self.schedulers = Schedulers()  # one load model per profile deployment
        self._counter = itertools.count()
        self._fault_counter = itertools.count()
        self._content_counter = itertools.count()
        self._forced_cache: dict[int, tuple[ModelProfile, ModelProfile]] = {}
        # Load every encoding the profiles use now: a first request must not pay
        # ~0.3 s of BPE loading inside its TTFT.
        for name in sorted({p.encoding for p in self.registry}):
            max_token_bytes(get_encoding(name))
            self.generator.prepare(name)  # and the generator's tables: ~15 ms once, not in a ramp's middle
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

    def generating_profile(self, model: str) -> ModelProfile:
        """resolve_profile for a request that generates (or counts what it would send): 400 for an embedding
        model, which does not generate."""
        profile = self.resolve_profile(model)
        if profile.embedding is not None:
            raise ApiError("invalid_request", f"The model `{model}` is an embedding model: it does not generate "
                           "text. Send it to POST /v1/embeddings.", param="model", code="model_not_supported")
        return profile

    def resolve_profile(self, model: str) -> ModelProfile:
        """The profile a request's model runs with, or 404 model_not_found."""
        own = self.registry.match(model)
        if own is not None and own.embedding is not None:
            return own  # --latency-profile times generation; an embedding model keeps its own profile
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
        # Keyed by identity (the entry keeps `own` alive, so its id is not reused): hashing a profile
        # hashes every field of it, on every request.
        hit = self._forced_cache.get(id(own))
        if hit is not None and hit[0] is own:
            return hit[1]
        f = self.forced
        assert f is not None
        forced = replace(own, name=f.name, latency=f.latency, capacity=f.capacity, slo=f.slo,
                         chunk_tokens=f.chunk_tokens, cache=f.cache)
        if len(self._forced_cache) < 1024:
            self._forced_cache[id(own)] = (own, forced)
        return forced

    def fault_rng(self) -> random.Random:
        """Per-request RNG of the fault plan, its own sequence so faults repeat by arrival order
        under a seed whatever the latency or text settings."""
        n = next(self._fault_counter)
        return random.Random(f"{self.seed}:faults:{n}") if self.seed is not None else UNSEEDED

    def request_rng(self) -> random.Random:
        """Per-request RNG: seeded runs repeat by arrival order, whatever the interleaving."""
        n = next(self._counter)
        return random.Random(f"{self.seed}:{n}") if self.seed is not None else UNSEEDED

    def content_rng(self, req: Request) -> random.Random:
        """Per-request RNG of what the model says beyond its text (answer length, logprob values):
        from the request's own seed when it gives one, else by arrival order under the server's
        seed; its own sequence, so asking for logprobs never changes a seeded run's timing."""
        n = next(self._content_counter)
        if req.seed is not None:
            return random.Random(f"request:{req.seed}:{req.model}:{req.prompt_text()}")
        return random.Random(f"{self.seed}:content:{n}") if self.seed is not None else UNSEEDED_CONTENT

    def count_prompt(self, req: Request, profile: ModelProfile, enc: tiktoken.Encoding, *,
                     check: bool = True) -> int:
        """Prompt tokens (messages plus tool definitions), refusing an oversized prompt early.

        A prompt whose bytes alone prove it too long (every token is at most
        `max_token_bytes` bytes) is refused before any tokenising; otherwise
        long texts are counted in gevent's threadpool, in slices, stopping as
        soon as the count passes the context window.
        """
        tools_text = tools_prompt_text(req.tools)
        framing = req.prompt_framing
        room = profile.context_window - (req.max_tokens or 0)
        if req.prompt_ids is not None:
            if check and len(req.prompt_ids) > room:
                raise self._too_long(req, profile, len(req.prompt_ids), at_least=False)
            return len(req.prompt_ids)
        if not check:
            return count_prompt_bounded(req.messages, enc, extra_text=tools_text, framing=framing)[0]
        chars = sum(_text_chars(m) for m in req.messages) + len(tools_text)
        # A token spans at most max_token_bytes bytes, so at most that many characters.
        floor = chars // max_token_bytes(enc)
        if chars > EXACT_COUNT_CHARS and floor > room:
            raise self._too_long(req, profile, floor, at_least=True)
        tokens, exact = count_prompt_bounded(req.messages, enc, limit=room, extra_text=tools_text, framing=framing)
        if tokens > room:
            raise self._too_long(req, profile, tokens, at_least=not exact)
        return tokens

    def count_prompt_blocks(self, req: Request, profile: ModelProfile, enc: tiktoken.Encoding,
                            block_tokens: int) -> tuple[int, list[int]]:
        """count_prompt on a deployment with a block prefix cache: the same count and checks, and the
        prompt's block hashes, from one encoding of the prompt (its token ids are needed anyway)."""
        tools_text = tools_prompt_text(req.tools)
        room = profile.context_window - (req.max_tokens or 0)
        if req.prompt_ids is not None:
            if len(req.prompt_ids) > room:
                raise self._too_long(req, profile, len(req.prompt_ids), at_least=False)
        else:
            chars = sum(_text_chars(m) for m in req.messages) + len(tools_text)
            floor = chars // max_token_bytes(enc)
            if chars > EXACT_COUNT_CHARS and floor > room:
                raise self._too_long(req, profile, floor, at_least=True)
        tokens, hashes = prompt_blocks(req.messages, enc, block_tokens, extra_text=tools_text,
                                       framing=req.prompt_framing, ids=req.prompt_ids)
        if tokens > room:
            raise self._too_long(req, profile, tokens, at_least=False)
        return tokens, hashes

    def _cache_lookup(self, req: Request, profile: ModelProfile, enc: tiktoken.Encoding
                      ) -> tuple[int, Callable[[], CacheUsage] | None]:
        """(prompt tokens, how the request uses its deployment's prefix cache once admitted, if at all).

        Key material (token ids, hashes) is computed now, off the event loop for a big prompt;
        the lookup itself runs later, on the loop, only for a request that gets its batch slot.
        """
        cache: PrefixCache | None = self.schedulers.cache(profile)
        if cache is None:
            return self.count_prompt(req, profile, enc), None
        if cache.rule != "anthropic":
            tokens, hashes = self.count_prompt_blocks(req, profile, enc, cache.block_tokens)
            return tokens, lambda: cache.use_blocks(hashes, tokens)
        tokens = self.count_prompt(req, profile, enc)
        segments = req.cache_segments
        if not segments:  # Anthropic caches only what a cache_control breakpoint marks
            return tokens, None
        prefixes, ends = segment_prefixes(segments, enc)
        return tokens, lambda: cache.use_breakpoints(prefixes, ends, segments, tokens)

    @staticmethod
    def _too_long(req: Request, profile: ModelProfile, prompt_tokens: int, *, at_least: bool) -> ApiError:
        asked = req.max_tokens or 0
        many = f"at least {prompt_tokens}" if at_least else str(prompt_tokens)
        where = "prompt" if req.prompt_param == "prompt" else "messages"
        return ApiError("invalid_request", f"This model's maximum context length is {profile.context_window} "
                        f"tokens. However, you requested {'at least ' if at_least else ''}{prompt_tokens + asked} "
                        f"tokens ({many} in the {where}, {asked} in the completion). Please reduce the "
                        f"length of the {where} or completion.", param=req.prompt_param,
                        code="context_length_exceeded",
                        anthropic_message=f"input length and `max_tokens` exceed context limit: {many} + "
                                          f"{asked} > {profile.context_window}, decrease input length or "
                                          "`max_tokens` and try again")

    def generate(self, req: Request, *, watch: Any = None) -> Generation:
        """Validate limits, plan the answer's blocks and their tokens; shared by every API.

        Then the caller's rate limits are charged (429 when exhausted) and the fault
        plan is consulted: a status-code fault raises its ApiError, a timeout holds
        the request and drops the connection, a mid-stream fault plans a Cut. A fault
        the request forces (the x-llmsim-fault header) replaces the plan's draw.
        """
        arrival = req.arrival if req.arrival is not None else time.monotonic()
        forced = self.header_fault(req.forced_fault)
        profile = self.generating_profile(req.model)
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
        if req.prompt_ids is not None:
            req.messages = [{"role": "user", "content": self.decode_prompt(req.prompt_ids, enc, req.prompt_param)}]
        prompt_tokens, use_cache = self._cache_lookup(req, profile, enc)
        rng = self.request_rng()
        plans, scripted = self.plan(req, profile, enc, rng, prompt_tokens=prompt_tokens)
        plan = plans[0]
        charge = None
        if self.limiter is not None:  # charged as OpenAI estimates: prompt + max_tokens (per choice)
            try:
                charge = self.limiter.admit(req.api_key, req.model, prompt_tokens,
                                            max_tokens * len(plans) if max_tokens is not None
                                            else sum(p.completion_tokens for p in plans))
            except ApiError:
                self.stats.record_rate_limited()
                raise
        slots: list[Slot] = []
        try:
            # Faults before the batch slot: a request that fails up front never holds one.
            if forced is not None:
                fault: Fault | None = self.faults.forced(*forced, req.model, profile.name, fault_rng)
            else:
                fault = scripted or self.faults.decide(req.model, profile.name, fault_rng)
            cut = self._carry_out(fault, req.model, plan) if fault is not None else None
            for _ in plans:  # every choice is a sequence of its own in the batch
                slots.append(self.admit(profile))
        except BaseException:  # failed before generating: only the prompt stays charged
            for slot in slots:
                slot.release()
            if self.limiter is not None:
                self.limiter.settle(charge, 0)
            raise
        cache = NO_CACHE
        if use_cache is not None:  # admitted: the prompt meets the cache (a refused one never does)
            cache = use_cache()
            self.stats.record_prefix_cache(req.model, prompt_tokens, cache.read)
        created = int(time.time())
        gens = []
        for k, (p, slot) in enumerate(zip(plans, slots, strict=True)):
            # Each further choice draws its own timing, from its own RNG: choice 0 keeps the request's.
            prng = rng if k == 0 else random.Random(rng.getrandbits(64))
            # Prefill counts only what the cache did not hold.
            pacer = Pacer(profile.latency, prng, prompt_tokens=prompt_tokens - cache.read, slot=slot,
                          cut=cut if k == 0 else None,
                          first_sleep=watch.sleep if watch is not None and k == 0 else None,
                          precise=hub_timer() if self.precise_waits else None)
            if watch is not None and not req.stream:
                pacer.sleep = watch.sleep  # nothing is written until the end: watch every wait
            gens.append(Generation(request=req, profile=profile, plan=p, prompt_tokens=prompt_tokens, pacer=pacer,
                                   created=created, slot=slot, arrival=arrival, charge=charge, watch=watch, index=k,
                                   cache=cache))
        if len(gens) > 1:
            gens[0].choices = gens
        self.stats.generation_started(gens[0])
        return gens[0]

    def header_fault(self, value: str | None) -> tuple[str, str | None] | None:
        """(kind, midstream mode) a request's x-llmsim-fault header forces; None when absent or
        switched off (`errors.header: false`); a 400 naming the header when it names no fault."""
        if value is None or not self.faults.header:
            return None
        return parse_fault_header(value)

    @staticmethod
    def decode_prompt(ids: list[int], enc: tiktoken.Encoding, param: str) -> str:
        """A token-id prompt's text, or a 400 naming the first id the model's encoding lacks."""
        try:
            return decode_ids(ids, enc)
        except ValueError as e:
            raise ApiError("invalid_request", f"Invalid token in '{param}': {e.args[0]} is no token id of this "
                           f"model's encoding ({enc.name}, ids 0 to {enc.n_vocab - 1}).", param=param,
                           code="invalid_value") from None

    def embed(self, req: EmbedRequest, *, watch: Any = None) -> EmbedResult:
        """Vectors for every input, after as long as the embedding profile says (base + per token).

        Validated against the model's embedding profile (dimensions, tokens per
        input and per request), charged to the caller's rate limits (input tokens),
        subject to a fault the request forces (the x-llmsim-fault header; the
        fault plan's random draws are for generation requests only), and holding a
        batch slot of the profile's deployment while it waits.
        """
        arrival = req.arrival if req.arrival is not None else time.monotonic()
        forced = self.header_fault(req.forced_fault)
        profile = self.resolve_profile(req.model)
        spec = profile.embedding
        if spec is None:
            raise ApiError("invalid_request", f"The model `{req.model}` does not support embeddings (its profile "
                           f"{profile.name} has no `embedding:` section).", param="model", code="model_not_supported")
        dims = req.dimensions
        if dims is not None and not spec.dimensions_param:
            raise ApiError("invalid_request", f"This model does not support specifying dimensions: `{req.model}` "
                           f"always returns {spec.dimensions}.", param="dimensions", code="invalid_value")
        if dims is not None and dims > spec.dimensions:
            raise ApiError("invalid_request", f"Invalid 'dimensions': {dims}. `{req.model}` returns at most "
                           f"{spec.dimensions} dimensions.", param="dimensions", code="integer_above_max_value")
        enc = get_encoding(profile.encoding)
        token_ids: list[list[int]] = []
        total = 0
        for i, item in enumerate(req.inputs):
            param = req.input_param if req.single else f"{req.input_param}[{i}]"
            if isinstance(item, str):
                if len(item) > EXACT_COUNT_CHARS and len(item) // max_token_bytes(enc) > spec.max_input_tokens:
                    raise _input_too_long(spec.max_input_tokens, len(item) // max_token_bytes(enc), param, True)
                ids = encode(item, enc)
            else:
                self.decode_prompt(item, enc, param)  # every id must be one of the encoding's
                ids = item
            if len(ids) > spec.max_input_tokens:
                raise _input_too_long(spec.max_input_tokens, len(ids), param, False)
            total += len(ids)
            token_ids.append(ids)
        if total > MAX_REQUEST_TOKENS:
            raise ApiError("invalid_request", f"Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per "
                           "request", param=req.input_param, code="max_tokens_per_request")
        charge = self.limiter.admit(req.api_key, req.model, total, 0) if self.limiter is not None else None
        try:
            if forced is not None:
                # Its own RNG: an embeddings request must not shift the generation requests' fault sequence.
                fault = self.faults.forced(*forced, req.model, profile.name, random.Random(0))
                if fault.kind == "midstream":  # no stream to cut: fails as a non-streaming request would
                    self.stats.record_fault(fault.kind)
                    if fault.settings.midstream_mode == "drop":
                        raise ConnectionDrop()
                    raise server_error()
                self._carry_out(fault, req.model, TokenPlan())
            slot = self.admit(profile)
        except BaseException:
            if self.limiter is not None:
                self.limiter.settle(charge, 0)
            raise
        try:
            with slot:
                granted = slot.wait(watch=watch)
                start = arrival if granted is None else granted
                vectors = []
                for n, ids in enumerate(token_ids, 1):
                    vectors.append(embedding_vector(req.model, ids, spec.dimensions, dims))
                    if n % 32 == 0:
                        _gevent_sleep(0)  # a large batch: let the streams on this loop run
                deadline = start + spec.latency_ms(total) * slot.multiplier() / 1000.0
                wait = deadline - time.monotonic()
                if wait > 0:
                    (watch.sleep if watch is not None else _gevent_sleep)(wait)
        finally:
            if self.limiter is not None:
                self.limiter.settle(charge, 0)
        self.stats.record_tokens(total, 0)
        return EmbedResult(req, vectors, total)

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
        """A response ended: count its tokens (every choice's) and latencies, correct the rate-limit
        charge to them, and keep its trace if it asked for one.

        A stream cut short (client gone, injected cut) counts what it delivered.
        """
        if gen.ended is None:
            gen.ended = time.monotonic()
        tokens = 0
        for c in gen.all:
            if completed:
                tokens += c.plan.completion_tokens
            else:
                sent = c.pacer.sent_tokens
                tokens += sent + c.plan.reasoning_tokens if sent else 0
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

    def plan(self, req: Request, profile: ModelProfile, enc: tiktoken.Encoding, rng: random.Random, *,
             prompt_tokens: int = 0) -> tuple[list[TokenPlan], Fault | None]:
        """Every choice's answer as blocks, tokenised and cut to the limits, and a scripted turn's fault if any.

        The text is the request's own seed's when it gives one (else the server's):
        same seed, same request, same text. A scripted turn is taken once per request.
        """
        seed = req.seed if req.seed is not None else self.seed
        gen_req = GenerationRequest(prompt=req.prompt_text(), model=req.model, seed=seed,
                                    encoding=profile.encoding, conversation=req.conversation or _first_user(req))
        turn = self.generator.turn(gen_req)
        fault = None
        if turn is not None and turn.status is not None:
            raise scripted_error(turn.status, turn.message or "")
        if turn is not None and turn.fault is not None:
            # A scripted fault still answers (a mid-stream cut needs tokens): with lorem, since asking
            # the script's generator for text would move its cursor again.
            fault = Fault(turn.fault, FaultSettings(midstream_mode="error"), 0.5)
            turn = ScriptTurn(text=LoremGenerator(DEFAULT_TARGET_TOKENS).generate(gen_req))
        content = self.content_rng(req)
        plans = [self._plan_choice(req, profile, enc, rng, content, replace(gen_req, choice=k) if k else gen_req,
                                   turn, prompt_tokens) for k in range(max(1, req.n))]
        return plans, fault

    def _plan_choice(self, req: Request, profile: ModelProfile, enc: tiktoken.Encoding, rng: random.Random,
                     content: random.Random, gen_req: GenerationRequest, turn: ScriptTurn | None,
                     prompt_tokens: int) -> TokenPlan:
        """One choice: its answer blocks, the reasoning before them (hidden or a block), cut to the limits."""
        if turn is not None:
            blocks = [Block("text", turn.text)] if turn.text else []
            for name, arguments, call_id in turn.tool_calls:
                blocks.append(Block("tool_call", arguments, call_id=call_id or new_id(req.call_id_prefix),
                                    name=name))
            blocks = blocks or [Block("text", "")]
            natural = None
        else:
            blocks, natural = self._answer_blocks(req, profile, gen_req, rng, content, prompt_tokens)
        limit = req.max_tokens
        if limit is None:  # the model stops at its own output limit ("length"), as a real one does
            limit = self._model_limit(profile, prompt_tokens)
        builder = TokenStreamBuilder(enc, profile.chunk_tokens)
        keep_ids = req.logprobs is not None
        plan = builder.build_blocks(blocks, limit, req.stop)
        latency = profile.latency
        mode = req.reasoning
        ratio = 0.0 if mode == "off" else latency.reasoning_ratio(req.effort, requested=mode in ("visible", "omitted"))
        # A model that does not reason has no reasoning to show, whatever the request asks (its options have
        # no effect there: docs/apis/openai-responses.md).
        visible = (mode == "visible" and latency.reasoning) or (
            mode is None and latency.reasoning_visible and ratio > 0)
        budget = req.reasoning_budget
        # The model reasons as much as its answer calls for (not as much as ignore_eos stretches it).
        reasoning = round(ratio * (plan.output_tokens if natural is None else natural)) if ratio else 0
        if budget is not None:
            reasoning = min(reasoning, budget)
        if visible:
            # Streamed reasoning comes first at its own length; the answer gets what the limit leaves.
            if limit is not None:
                reasoning = min(reasoning, limit)
            thought = Block("reasoning", self.generator.reasoning(gen_req, reasoning))
            plan = builder.build_blocks([thought, *blocks], limit, req.stop, keep_ids=keep_ids)
        else:
            answer_limit, shared = limit, False
            if limit is not None and reasoning and reasoning + plan.output_tokens > limit:
                # Hidden reasoning and answer tokens share the budget, as on the real APIs:
                # keep their ratio (ignore_eos: the answer fills what reasoning leaves), and the
                # answer ends with "length".
                answer_limit = max(1, limit - reasoning if req.ignore_eos else int(limit / (1 + ratio)))
                if budget is not None and limit - answer_limit > budget:
                    answer_limit = limit - budget
                shared = True
            if mode == "omitted":  # the reasoning's place: an empty block, its tokens spent before it ends
                plan = builder.build_blocks([Block("reasoning", ""), *blocks], answer_limit, req.stop,
                                            keep_ids=keep_ids)
            elif shared or keep_ids:
                plan = builder.build_blocks(blocks, answer_limit, req.stop, keep_ids=keep_ids)
            if shared:
                assert limit is not None
                reasoning = min(limit - plan.output_tokens, reasoning)
                plan.finish_reason = "length"
            plan.reasoning_tokens = reasoning
        if keep_ids:
            lp_rng = gen_req.rng("logprobs") if gen_req.seed is not None else content
            plan.logprobs = self._logprobs(plan, enc, req.logprobs or 0, lp_rng)
            if req.echo.get("echo") and req.messages:  # the repeated prompt is scored too, as the API does
                plan.prompt_logprobs = token_logprobs(enc, encode(req.messages[0]["content"], enc),
                                                      req.logprobs or 0, lp_rng)
        counts = plan.piece_tokens  # a byte a chunk while the answer lasts, not a list's eight
        try:
            plan.piece_tokens = array("B", bytes(counts))  # bytes() checks every count is below 256, in C
        except ValueError:
            plan.piece_tokens = array("I", counts)
        return plan

    @staticmethod
    def _model_limit(profile: ModelProfile, prompt_tokens: int) -> int:
        """How far a request without a limit may generate: the model's output limit, within the context."""
        return max(1, min(profile.max_output_tokens, profile.context_window - prompt_tokens))

    def _answer_length(self, req: Request, profile: ModelProfile, content: random.Random,
                       prompt_tokens: int) -> tuple[int | None, int | None]:
        """(exact token count, target) of the answer text; both None: the generator's own length.

        ignore_eos: exactly one past the limit (the limit then cuts it, "length", as
        vLLM's does). Else a profile's `output_tokens` draw is the reply's target,
        unless --target-tokens was given.
        """
        if req.ignore_eos:
            limit = req.max_tokens if req.max_tokens is not None else self._model_limit(profile, prompt_tokens)
            return limit + 1, None
        if profile.output_tokens is not None and not self.fixed_length:
            return None, profile.output_tokens.sample(content)
        own = getattr(self.generator, "target_tokens", None)
        model_limit = self._model_limit(profile, prompt_tokens)
        if isinstance(own, int) and own > model_limit + 1:
            # A --target-tokens past what the model may send is cut at its limit anyway ("length"): made only
            # that far (the same for every request to this model, so a max_tokens cut stays a prefix of it).
            return None, model_limit + 1
        return None, None

    def _answer_blocks(self, req: Request, profile: ModelProfile, gen_req: GenerationRequest, rng: random.Random,
                       content: random.Random, prompt_tokens: int) -> tuple[list[Block], int | None]:
        """The answer's blocks, and (with ignore_eos) how long the answer would have been on its own."""
        probability = profile.tool_call_probability
        if probability is None:
            probability = self.tools.call_probability
        calls = tools_to_call(req.tools, req.tool_choice, answers_tool_result=req.answers_tool_result,
                              parallel=req.parallel_tool_calls, probability=probability,
                              max_parallel=self.tools.max_parallel_calls, rng=content if req.seed is not None else rng)
        limit = self._model_limit(profile, prompt_tokens)  # what could be sent: a longer value is cut
        if req.max_tokens is not None:
            limit = min(limit, req.max_tokens)
        if calls:
            return tool_call_blocks(calls, _content_rng(gen_req, rng), req.call_id_prefix, limit), None
        if req.output_format is not None:
            return [Block("text", structured_json(req.output_format, _content_rng(gen_req, rng), limit))], None
        enc = get_encoding(profile.encoding)
        tokens, target = self._answer_length(req, profile, content, prompt_tokens)
        natural = None
        if req.ignore_eos:  # how long the answer would have been: what the reasoning is sized on
            _, own = self._answer_length(replace(req, ignore_eos=False), profile, content, prompt_tokens)
            natural = len(encode(self.generator.generate(gen_req, target=own), enc))
        text = self.generator.generate(gen_req, tokens=tokens, target=target)
        if tokens is None and req.min_tokens and len(encode(text, enc)) < req.min_tokens:
            text = self.generator.generate(gen_req, tokens=req.min_tokens)
        return [Block("text", text)], natural

    @staticmethod
    def _logprobs(plan: TokenPlan, enc: tiktoken.Encoding, top: int,
                  rng: random.Random) -> list[list[TokenLogprob]]:
        """Each chunk's tokens with their log-probabilities (text chunks only; others get [])."""
        ids = plan.piece_ids or []
        owner = plan.piece_blocks()
        blocks = plan.blocks
        out: list[list[TokenLogprob]] = []
        for i, chunk in enumerate(ids):
            kind = blocks[owner[i]].kind if blocks else "text"
            out.append(token_logprobs(enc, chunk, top, rng) if kind == "text" else [])
        return out


def _input_too_long(limit: int, tokens: int, param: str, at_least: bool) -> ApiError:
    many = f"at least {tokens}" if at_least else str(tokens)
    return ApiError("invalid_request", f"This model's maximum context length is {limit} tokens, however you "
                    f"requested {many} tokens ({many} in your prompt; 0 for the completion). Please reduce your "
                    "prompt; or completion length.", param=param, code="context_length_exceeded")


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


def _owners(plan: TokenPlan) -> Sequence[int]:
    """plan.piece_blocks() in a byte a chunk, not a list's eight: a stream keeps it for as long as it lasts."""
    if len(plan.blocks) < 2:
        return bytes(len(plan.pieces))  # every chunk is block 0's
    return bytes(plan.piece_blocks()) if len(plan.blocks) <= 256 else plan.piece_blocks()


def _gevent_sleep(seconds: float) -> None:
    import gevent

    gevent.sleep(seconds)

