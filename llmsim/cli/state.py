"""What a running server holds: config, profiles, generator, stats, faults and
quotas, and the shared step every API takes to turn a request into a paced
token plan (rate limits and injected faults are applied there, once, for all APIs)."""

from __future__ import annotations

import itertools
import random
import time
import uuid
from functools import lru_cache
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import gevent
import tiktoken

from ..auth import AuthConfig
from ..errors import ApiError, ConnectionDrop, Cut, FaultPlan, model_overloaded
from ..generator import GenerationRequest, Generator, make_generator
from ..latency import REASONING_EFFORT_FACTORS
from ..profiles import ModelProfile, ProfileError, ProfileRegistry
from ..ratelimit import Charge, RateLimitConfig, RateLimiter
from ..scheduler import NullScheduler, QueueFull, Schedulers, Slot
from ..stats import ServerStats
from ..stream import Pacer, TokenPlan, TokenStreamBuilder
from ..tokens import get_encoding
from .config import ConfigError, ServerConfig


@dataclass
class Generation:
    """One request's simulated answer: the profile, the plan, and the pacer that times it."""

    model: str
    profile: ModelProfile
    plan: TokenPlan
    prompt_tokens: int
    pacer: Pacer
    created: int
    # The request's batch slot (already admitted, maybe still queued);
    # released by wait_all(), or by stream_response() when the stream ends.
    slot: Slot = field(default_factory=lambda: NullScheduler().submit())
    arrival: float | None = None  # monotonic time the request reached generate()
    charge: Charge | None = None  # the rate-limit charge AppState.finish() corrects

    def paced(self) -> Iterator[str]:
        """Chunk texts on their deadlines; a queued request's TTFT runs from its grant."""
        start = self.slot.wait()
        return self.pacer.paced(self.plan, self.arrival if start is None else start)

    def wait_all(self) -> None:
        """Take as long as the stream would, holding the slot as the stream would."""
        with self.slot:
            start = self.slot.wait()
            self.pacer.wait_all(self.plan, self.arrival if start is None else start)


class AppState:
    def __init__(self, config: ServerConfig, registry: ProfileRegistry | None = None) -> None:
        self.config = config
        self.registry = registry or ProfileRegistry.load(
            extra_dirs=[config.profiles_dir] if config.profiles_dir else [])
        self.forced: ModelProfile | None = None
        if config.latency_profile:
            self.forced = self._named_profile(config.latency_profile, "latency_profile")
        if config.allow_unknown_models:
            self._named_profile(config.default_profile, "models.default_profile")
        try:
            self.generator: Generator = make_generator(config.generator, config.target_tokens)
        except ValueError as e:
            raise ConfigError(config.source, "generator", str(e)) from None
        self.stats = ServerStats()
        self.schedulers = Schedulers()  # one load model per profile deployment
        self._counter = itertools.count()
        # Load every encoding the profiles use now: a first request must not pay
        # ~0.3 s of BPE loading inside its TTFT.
        for name in sorted({p.encoding for p in self.registry}):
            get_encoding(name)
        self._fault_counter = itertools.count()
        self.sleep: Callable[[float], None] = gevent.sleep  # how a timeout fault holds the request
        # Who is calling: set by the HTTP layer to read the current request's API key.
        self.request_key: Callable[[], str | None] = lambda: None
        self.auth: AuthConfig | None = None
        self.faults = FaultPlan()
        self.limiter: RateLimiter | None = None
        try:
            self.auth = AuthConfig.parse(config.source, config.sections.get("auth"))
            self.apply(config.sections, config.source)
        except ProfileError as e:
            raise ConfigError(e.source, e.key, e.reason) from None

    def _named_profile(self, name: str, key: str) -> ModelProfile:
        try:
            return self.registry.get(name)
        except KeyError:
            raise ConfigError(self.config.source, key,
                              f"no profile named {name!r} (known: {', '.join(self.registry.names())})") from None

    # ------------------------------------------------------------------ runtime control

    def apply(self, changes: dict, source: str) -> None:
        """Set `errors`, `rate_limits` and `latency_profile` from config-shaped values, all or nothing.

        Each key present replaces that setting (null clears it); absent keys stay.
        Everything is validated before anything changes, so a bad change leaves the
        running config untouched (ProfileError names the key and the reason).
        """
        faults, limiter, forced = self.faults, self.limiter, self.forced
        if "errors" in changes:
            faults = FaultPlan.parse(source, changes["errors"])
        if "rate_limits" in changes:
            limits = RateLimitConfig.parse(source, changes["rate_limits"])
            limiter = None if limits is None else RateLimiter(
                limits, **({"clock": self.limiter.clock, "wall": self.limiter.wall} if self.limiter else {}))
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
            AppState._forced_over.cache_clear()  # it derives from self.forced
        self.faults, self.limiter, self.forced = faults, limiter, forced

    def runtime_config(self) -> dict:
        """What apply() can change, as it is now (API keys masked)."""
        return {"errors": self.faults.to_dict(),
                "rate_limits": self.limiter.config.to_dict() if self.limiter else None,
                "latency_profile": self.forced.name if self.forced else None}

    # ------------------------------------------------------------------ per request

    def resolve_profile(self, model: str) -> ModelProfile:
        """The profile a request's model runs with, or 404 model_not_found."""
        own = self.registry.match(model)
        if self.forced is not None:
            return self.forced if own is None else self._forced_over(own)
        if own is not None:
            return own
        if self.config.allow_unknown_models:
            return self.registry.get(self.config.default_profile)
        raise ApiError("not_found", f"The model `{model}` does not exist or you do not have access to it.",
                       param="model", code="model_not_found")

    @lru_cache(maxsize=1024)
    def _forced_over(self, own: ModelProfile) -> ModelProfile:
        # --latency-profile sets timing, load model and SLO; the model keeps its
        # own encoding and limits, as a real deployment of it would.
        f = self.forced
        return replace(own, name=f.name, latency=f.latency, capacity=f.capacity, slo=f.slo,
                       chunk_tokens=f.chunk_tokens)

    def fault_rng(self) -> random.Random:
        """Per-request RNG of the fault plan, its own sequence so faults repeat by arrival order
        under a seed whatever the latency or text settings."""
        n = next(self._fault_counter)
        return random.Random(f"{self.config.seed}:faults:{n}") if self.config.seed is not None else random.Random()

    def request_rng(self) -> random.Random:
        """Per-request RNG: seeded runs repeat by arrival order, whatever the interleaving."""
        n = next(self._counter)
        return random.Random(f"{self.config.seed}:{n}") if self.config.seed is not None else random.Random()

    @staticmethod
    def new_id(prefix: str) -> str:
        return prefix + uuid.uuid4().hex[:24]

    def generate(self, model: str, body: dict, *, count_prompt: Callable[[tiktoken.Encoding], int],
                 max_tokens: int | None, max_tokens_param: str = "max_tokens", stop: list[str] | None = None,
                 effort: str | None = None, profile: ModelProfile | None = None,
                 prompt_param: str = "messages") -> Generation:
        """Validate limits, generate the text and plan its tokens; shared by every API.

        Then the caller's rate limits are charged (429 when exhausted) and the fault
        plan is consulted: a status-code fault raises its ApiError, a timeout holds
        the request and drops the connection, a mid-stream fault plans a Cut.
        """
        arrival = time.monotonic()  # TTFT includes our own work (counting, planning), as a real server's does
        profile = profile or self.resolve_profile(model)
        fault_rng = self.fault_rng()  # drawn for every generation request, so the sequence is the arrival order
        if self.config.chunk_tokens:
            profile = replace(profile, chunk_tokens=self.config.chunk_tokens)
        if max_tokens is not None and max_tokens > profile.max_output_tokens:
            raise ApiError("invalid_request", f"{max_tokens_param} is too large: {max_tokens}. This model supports "
                           f"at most {profile.max_output_tokens} completion tokens, whereas you provided {max_tokens}.",
                           param=max_tokens_param, code="invalid_value",
                           anthropic_message=f"{max_tokens_param}: {max_tokens} > {profile.max_output_tokens}, "
                                             f"which is the maximum allowed number of output tokens for {model}")
        enc = get_encoding(profile.encoding)
        prompt_tokens = count_prompt(enc)
        if prompt_tokens + (max_tokens or 0) > profile.context_window:
            raise ApiError("invalid_request", f"This model's maximum context length is {profile.context_window} "
                           f"tokens. However, you requested {prompt_tokens + (max_tokens or 0)} tokens "
                           f"({prompt_tokens} in the messages, {max_tokens or 0} in the completion). Please reduce the "
                           "length of the messages or completion.", param=prompt_param, code="context_length_exceeded",
                           anthropic_message=f"input length and `max_tokens` exceed context limit: {prompt_tokens} + "
                                             f"{max_tokens or 0} > {profile.context_window}, decrease input length or "
                                             "`max_tokens` and try again")
        text = self.generator.generate(
            GenerationRequest.from_body(body, seed=self.config.seed, encoding=profile.encoding))
        plan = self._plan(profile, enc, text, max_tokens, stop, effort)
        charge = None
        if self.limiter is not None:  # charged as OpenAI estimates: prompt + max_tokens
            charge = self.limiter.admit(self.request_key(), model, prompt_tokens,
                                        max_tokens if max_tokens is not None else plan.completion_tokens)
        rng = self.request_rng()
        try:
            # Faults before the batch slot: a request that fails up front never holds one.
            cut = self._inject_fault(model, profile, plan, fault_rng)
            slot = self.admit(profile)
        except BaseException:  # failed before generating: only the prompt stays charged
            if self.limiter is not None:
                self.limiter.settle(charge, 0)
            raise
        pacer = Pacer(profile.latency, rng, prompt_tokens=prompt_tokens, slot=slot, cut=cut)
        return Generation(model=model, profile=profile, plan=plan, prompt_tokens=prompt_tokens, pacer=pacer,
                          created=int(time.time()), slot=slot, arrival=arrival, charge=charge)

    def admit(self, profile: ModelProfile) -> Slot:
        """A batch slot on the profile's deployment (granted or queued), or the overloaded error."""
        try:
            return self.schedulers.get(profile).submit()
        except QueueFull as e:
            raise model_overloaded(e.retry_after_header) from None

    def _inject_fault(self, model: str, profile: ModelProfile, plan: TokenPlan, rng: random.Random) -> Cut | None:
        """The fault plan's decision for this request: raise its error, hold and drop, or plan a cut."""
        fault = self.faults.decide(model, profile.name, rng)
        if fault is None:
            return None
        self.stats.record_fault(fault.kind)
        if fault.kind == "midstream":
            return fault.cut(len(plan.pieces))
        if fault.kind == "timeout":
            self.sleep(fault.settings.timeout_after_ms / 1000.0)
            raise ConnectionDrop()
        raise fault.error(model)

    def finish(self, gen: Generation, completed: bool) -> None:
        """A response ended: count its tokens and correct the rate-limit charge to them.

        A stream cut short (client gone, injected cut) counts what it delivered.
        """
        if completed:
            tokens = gen.plan.completion_tokens
        else:
            sent = gen.pacer.sent_tokens
            tokens = sent + gen.plan.reasoning_tokens if sent else 0
        self.stats.record_tokens(gen.prompt_tokens, tokens)
        if self.limiter is not None:
            self.limiter.settle(gen.charge, tokens)

    @staticmethod
    def _plan(profile: ModelProfile, enc: tiktoken.Encoding, text: str, max_tokens: int | None,
              stop: list[str] | None, effort: str | None) -> TokenPlan:
        builder = TokenStreamBuilder(enc, profile.chunk_tokens)
        plan = builder.build(text, max_tokens, stop)
        latency = profile.latency
        reasoning = latency.reasoning_tokens(plan.output_tokens, effort)
        if max_tokens is not None and reasoning and reasoning + plan.output_tokens > max_tokens:
            # Reasoning and visible tokens share the budget, as on the real APIs:
            # keep their ratio, and the visible part ends with "length".
            ratio = latency.reasoning_tokens_per_output_token * REASONING_EFFORT_FACTORS.get(effort or "medium", 1.0)
            visible = max(1, int(max_tokens / (1 + ratio)))
            plan = builder.build(text, visible, stop)
            plan.finish_reason = "length"
            reasoning = max_tokens - plan.output_tokens
        plan.reasoning_tokens = reasoning
        return plan
