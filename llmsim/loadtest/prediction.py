"""What the profile predicts for each step: the same load, run through llmsim's scheduler on a virtual clock.

The capacity test measures a deployment; the profile describes one. Running
every measured step through `llmsim.scheduler` (the server's own load model,
with no real time passing) and judging the result with the same histograms
and the same SLO rule gives the capacity the profile claims. When the two
agree, the profile is right for this deployment; when they differ, the
profile needs tuning (docs/capacity.md).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ..profiles import ModelProfile
from ..scheduler import SimRequest, SimResult, simulate, simulate_closed_loop
from .aggregate import MixKey
from .metrics import RequestRecord, failed_record, http_error_kind, tpot_ms
from .openloop import poisson_arrivals
from .scoring import expected_hidden_reasoning
from .steps import SliceBook, StepStats, window_slices

DRAIN_MIN_S = 10.0
"""Simulated time after a window so that the window's last requests finish."""


@dataclass(frozen=True)
class TokenShape:
    """The tokens of one typical request: what each simulated request sends and generates."""

    prompt_tokens: int
    visible_tokens: int
    """Streamed tokens (answer, tool-call arguments and visible reasoning), each at ITL after the first."""
    reasoning_tokens: int
    """Hidden reasoning tokens, generated before the first visible token (inside TTFT)."""

    @classmethod
    def from_mix(cls, mix: dict[MixKey, int], profile: ModelProfile, *, default_visible: int,
                 default_prompt: int, cached_share: float = 0.0) -> TokenShape:
        """The run's most common request shape (RunStats.mix), or the defaults when nothing succeeded;
        its prompt is what gets prefilled (`cached_share` came from the server's prefix cache)."""
        lat = profile.latency
        if not mix:
            return cls(default_prompt, default_visible, expected_hidden_reasoning(lat, default_visible))
        prompt, visible, _output, reasoning = max(mix.items(), key=lambda kv: kv[1])[0]
        if reasoning < 0:
            reasoning = expected_hidden_reasoning(lat, visible)
        return cls(round(prompt * (1.0 - cached_share)), visible, reasoning)


def record_from_sim(res: SimResult, reasoning_tokens: int, prompt_tokens: int) -> RequestRecord | None:
    """A simulated request as the client would have recorded it; None if it had not finished."""
    if res.rejected:
        return failed_record(start_time=res.arrival_s, t_sent=0.0, t_end=0.0, kind=http_error_kind(429),
                             message="queue full (simulated)", status=429, prompt_tokens_local=prompt_tokens)
    if res.end_s is None or res.e2e_s is None or res.ttft_s is None or not res.token_times:
        return None
    e2e = res.e2e_s * 1000.0
    ttft = res.ttft_s * 1000.0
    output = len(res.token_times) + reasoning_tokens
    return RequestRecord(start_time=res.arrival_s, end_time=res.end_s, e2e_ms=e2e, status=200, ttft_ms=ttft,
                         itl_ms=[g * 1000.0 for g in res.itls_s], tpot_ms=tpot_ms(e2e, ttft, len(res.token_times)),
                         output_tokens=output, prompt_tokens=prompt_tokens,
                         reasoning_tokens=reasoning_tokens or None)


def predict_step(profile: ModelProfile, users: int, window_s: float, shape: TokenShape, *,
                 arrival_rate: float | None = None, stream: bool = True, seed: int = 0) -> StepStats:
    """The figures one step would have on a deployment that is exactly `profile`.

    Closed loop: `users` send back to back from t=0 (simulate_closed_loop).
    Open loop: Poisson arrivals at users × arrival_rate (simulate), sent on
    time. The window is [0, window_s), filed and trimmed to slices exactly as
    a measured window is.
    """
    stats = StepStats()
    horizon = window_s + max(window_s, DRAIN_MIN_S)
    if arrival_rate is None:
        results = simulate_closed_loop(profile, users, horizon, output_tokens=shape.visible_tokens,
                                       prompt_tokens=shape.prompt_tokens, reasoning_tokens=shape.reasoning_tokens,
                                       stream=stream, seed=seed)
    else:
        arrivals = poisson_arrivals(users * arrival_rate, random.Random(seed), 0.0)
        times: list[float] = []
        for t in arrivals:
            if t >= window_s:
                break
            times.append(t)
        results = simulate(profile, [SimRequest(t, shape.visible_tokens, shape.prompt_tokens,
                                                shape.reasoning_tokens, stream) for t in times], seed=seed)
    book = SliceBook()
    for res in results:
        rec = record_from_sim(res, shape.reasoning_tokens, shape.prompt_tokens)
        if rec is not None:
            book.add(rec, profile.slo, None if arrival_rate is None else res.arrival_s)
    window = window_slices(0.0, window_s)
    for key, part in book.pop_past(math.inf):
        if key in window:
            stats.merge(part)
    return stats


