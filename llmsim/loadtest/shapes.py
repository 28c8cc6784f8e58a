"""The stepped load of a capacity test: ramp, measure, drain, judge; then the next step or stop.

Each step goes through four phases:

1. ramp: the shape asks Locust for the step's user count; the new users start
   within about a second (RAMP_S);
2. window: it opens when Locust reports every user of the step running
   (spawning_complete) and lasts exactly --step-time. Only requests that start
   inside it count for the step;
3. drain: the users keep going, at the same count, until every request that
   started inside the window has finished and reached the master (or for at
   most `drain_limit_s`). Their last tokens therefore see the step's own load,
   not the next step's;
4. verdict: the step meets the SLO or breaks it. The run stops once the SLO
   has been broken for --stop-after consecutive steps, or after the step at
   --max-users; otherwise the next step begins.

`StepSchedule` is the pure state machine (time is passed in, the verdict and
the completeness test are callbacks), so it is tested without Locust.
`StepShape` is the Locust LoadTestShape that drives it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from locust import LoadTestShape

RAMP_S = 1.0
"""A step's new users are started over about this long."""
MAX_SPAWN_RATE = 100.0
"""Locust warns above this spawn rate; larger steps ramp for longer."""


@dataclass(frozen=True)
class StepPlan:
    """The options that shape the steps."""

    start_users: int
    step_users: int
    step_time_s: float
    max_users: int
    stop_after: int

    def ladder(self) -> list[int]:
        """User counts of every step the run may reach: start, start+step, ..., max (the last may be partial)."""
        out = [min(self.start_users, self.max_users)]
        while out[-1] < self.max_users:
            out.append(min(out[-1] + self.step_users, self.max_users))
        return out


@dataclass
class Step:
    """One step of a run and what became of it."""

    index: int
    """1-based."""
    users: int
    begun: float
    """When the shape asked for this step's users (wall-clock s)."""
    window_start: float | None = None
    """When all its users were running; None while ramping."""
    window_s: float = 0.0
    met: bool | None = None
    """The verdict; None until judged."""
    complete: bool = True
    """False when the drain timed out with requests of the window still running."""

    @property
    def window_end(self) -> float | None:
        return None if self.window_start is None else self.window_start + self.window_s


def spawn_rate(added: int) -> float:
    """Users per second that start `added` new users in about RAMP_S."""
    return min(max(added, 1) / RAMP_S, MAX_SPAWN_RATE)


def capacity_step(steps: list[Step]) -> Step | None:
    """The largest judged step that met the SLO (the capacity), or None."""
    met = [s for s in steps if s.met]
    return max(met, key=lambda s: s.users) if met else None


class StepSchedule:
    """Which user count to run now, step by step; None once the run should stop.

    `judge(step, complete)` returns whether the step met the SLO; it is called
    once per step, after its drain. `is_complete(step, now)` says whether every
    request that started inside the step's window has been filed.
    """

    def __init__(self, plan: StepPlan, *, judge: Callable[[Step, bool], bool],
                 is_complete: Callable[[Step, float], bool], drain_limit_s: float) -> None:
        self.plan = plan
        self.judge = judge
        self.is_complete = is_complete
        self.drain_limit_s = drain_limit_s
        self.steps: list[Step] = []
        self.stop_reason: str | None = None
        self._target: tuple[int, float] | None = None

    @property
    def current(self) -> Step | None:
        return self.steps[-1] if self.steps else None

    def tick(self, now: float) -> tuple[int, float] | None:
        if self.stop_reason is not None:
            return None
        cur = self.current
        if cur is None:
            return self._begin(self.plan.ladder()[0], now)
        end = cur.window_end
        if end is None or now < end:
            return self._target  # ramping, or measuring
        complete = self.is_complete(cur, now)
        if not complete and now < end + self.drain_limit_s:
            return self._target  # draining
        cur.complete = complete
        cur.met = bool(self.judge(cur, complete))
        broken = self.broken_streak()
        if broken >= self.plan.stop_after:
            self.stop_reason = f"the SLO was broken for {broken} consecutive step{'s' if broken > 1 else ''}"
            return None
        if cur.users >= self.plan.max_users:
            self.stop_reason = f"reached --max-users {self.plan.max_users}"
            return None
        return self._begin(min(cur.users + self.plan.step_users, self.plan.max_users), now)

    def users_running(self, now: float, user_count: int) -> None:
        """Locust reports `user_count` users running: the current step's window opens if they are all there."""
        cur = self.current
        if cur is not None and cur.window_start is None and user_count >= cur.users:
            cur.window_start = now

    def broken_streak(self) -> int:
        """Judged steps at the end of the run that broke the SLO, in a row."""
        n = 0
        for s in reversed(self.steps):
            if s.met is None:
                continue
            if s.met:
                break
            n += 1
        return n

    def _begin(self, users: int, now: float) -> tuple[int, float]:
        prev = self.current.users if self.current else 0
        self.steps.append(Step(index=len(self.steps) + 1, users=users, begun=now, window_s=self.plan.step_time_s))
        self._target = (users, spawn_rate(users - prev))
        return self._target


class StepShape(LoadTestShape):
    """Locust's hook: asks the capacity run (llmsim.loadtest.capacity) which user count to run now.

    A shape owns the run's end, so Locust ignores -t/--run-time for it unless the shape reads it: this one
    does, and ends the run then (the steps judged so far are reported, "interrupted before the last verdict").
    """

    abstract = True
    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        environment: Any = self.runner.environment if self.runner else None
        run: Any = getattr(environment, "llmsim_capacity", None)
        if run is None:  # capacity.py's init listener did not run: nothing to step
            return None
        limit = getattr(environment.parsed_options, "run_time", None)
        if limit and self.get_run_time() >= limit:
            return None
        return run.tick()
