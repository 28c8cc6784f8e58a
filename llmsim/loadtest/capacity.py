"""The capacity test's Locust wiring: options, per-process state, worker->master merge, verdicts, exit code.

Importing this module (locustfiles/capacity.py does) registers listeners on
locust.events, after the toolkit's own (plugin.py):
- init_command_line_parser: the capacity options;
- init: resolve them (a bad one stops Locust with one line) and mark the
  toolkit's run as not scored, so its whole-run verdict never sets the exit code;
- spawning_complete: open the current step's measurement window;
- report_to_master / worker_report: ship and merge each worker's time slices
  and the start of its oldest request in flight;
- quitting: write the CSV, JSON and chart and set the exit code; quit: print
  the step table (last, after Locust's own tables).
The step schedule itself is shapes.py; per-step figures are steps.py.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import gevent
from locust import events
from locust.runners import STATE_MISSING, WorkerRunner

from .capacity_report import build_result, format_table, step_line, write_outputs
from .openloop import OpenLoopSource
from .options import OptionError, _positive_float, _positive_int, _seconds
from .plugin import EXIT_VERDICT_FAIL, _current_env, _fail, get_run, refresh_loop_clock
from .prediction import TokenShape, predict_step
from .report import output_problem, workload_section
from .shapes import Step, StepPlan, StepSchedule, StepShape
from .steps import SLICE_S, InFlight, SliceBook, StepStats, summarize, window_slices
from .users import LlmUser

log = logging.getLogger("llmsim.loadtest.capacity")

WIRE_KEY = "llmsim_capacity"
DEFAULT_START_USERS = 8
DEFAULT_STEP_USERS = 8
DEFAULT_STEP_TIME = "30s"
DEFAULT_MAX_USERS = 128
DEFAULT_STOP_AFTER = 2
DEFAULT_MAX_ERROR_RATE = 1.0
DEFAULT_MAX_IN_FLIGHT = 100
DRAIN_LIMIT_MIN_S = 30.0
"""A step is judged at the latest max(--step-time, this) after its window ends, finished or not."""
PREDICT_WINDOW_MIN_S = 60.0
"""Simulated window of a predicted step, at least: long enough that whole requests per user do not bias req/s."""


# --------------------------------------------------------------------------- options

def _percent(text: str) -> float:
    try:
        v = float(str(text).rstrip("%"))
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a percentage like 1 or 0.5%, got {text!r}") from None
    if not 0 <= v <= 100:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100, got {text!r}")
    return v


def add_arguments(parser: Any) -> None:
    """Register the capacity options on Locust's parser (so they also work from locust.conf)."""
    g = parser.add_argument_group("llmsim capacity", "Capacity test: step the users up until the SLO breaks")
    g.add_argument("--start-users", type=_positive_int, default=DEFAULT_START_USERS, metavar="N",
                   help=f"users in the first step (default {DEFAULT_START_USERS})")
    g.add_argument("--step-users", type=_positive_int, default=DEFAULT_STEP_USERS, metavar="N",
                   help=f"users added by each step (default {DEFAULT_STEP_USERS})")
    g.add_argument("--step-time", type=_seconds, default=_seconds(DEFAULT_STEP_TIME), metavar="TIME",
                   help=f"measurement window of each step, after its users are all running, e.g. 30s or 2m "
                        f"(default {DEFAULT_STEP_TIME})")
    g.add_argument("--max-users", type=_positive_int, default=DEFAULT_MAX_USERS, metavar="N",
                   help=f"the last step (default {DEFAULT_MAX_USERS})")
    g.add_argument("--stop-after", type=_positive_int, default=DEFAULT_STOP_AFTER, metavar="N",
                   help=f"stop once N consecutive steps broke the SLO (default {DEFAULT_STOP_AFTER})")
    g.add_argument("--min-capacity", type=_positive_int, default=None, metavar="USERS",
                   help="exit non-zero (3) when the capacity is below this many users; otherwise the exit "
                        "code is 0 whatever the SLO did")
    g.add_argument("--max-error-rate", type=_percent, default=DEFAULT_MAX_ERROR_RATE, metavar="PCT",
                   help=f"a step with more failed requests than this share breaks the SLO "
                        f"(default {DEFAULT_MAX_ERROR_RATE:g}%%)")
    g.add_argument("--arrival-rate", type=_positive_float, default=None, metavar="R",
                   help="open loop: each user sends Poisson arrivals at R requests/s without waiting for "
                        "replies (a step of N users offers N*R req/s)")
    g.add_argument("--max-in-flight", type=_positive_int, default=DEFAULT_MAX_IN_FLIGHT, metavar="N",
                   help=f"open loop: requests one user may have outstanding; later arrivals wait and the wait "
                        f"counts in latency from the intended send time (default {DEFAULT_MAX_IN_FLIGHT})")
    g.add_argument("--capacity-report", default=None, metavar="PREFIX",
                   help="write PREFIX.csv, PREFIX.json, PREFIX.svg (and PREFIX.png with matplotlib) "
                        "(default: <--csv prefix>_capacity, else capacity)")


def _window(step: Step) -> tuple[float, float]:
    """A step's measured window (start, end); only asked of a step whose window has begun."""
    if step.window_start is None:
        raise ValueError(f"step {step.index} has no window yet")
    return step.window_start, step.window_start + step.window_s


@dataclass(frozen=True)
class CapacitySettings:
    """The resolved capacity options of a run."""

    plan: StepPlan
    min_capacity: int | None
    max_error_rate: float
    """A fraction (0.01 = 1 %)."""
    arrival_rate: float | None
    max_in_flight: int
    report_prefix: str

    @property
    def open_loop(self) -> bool:
        return self.arrival_rate is not None

    @classmethod
    def from_options(cls, opts: Any) -> CapacitySettings:
        """Resolve parsed options; OptionError (one line) if they do not fit together."""
        def get(name: str, default: Any) -> Any:
            v = getattr(opts, name, None)
            return default if v is None else v

        plan = StepPlan(start_users=get("start_users", DEFAULT_START_USERS),
                        step_users=get("step_users", DEFAULT_STEP_USERS),
                        step_time_s=get("step_time", _seconds(DEFAULT_STEP_TIME)),
                        max_users=get("max_users", DEFAULT_MAX_USERS),
                        stop_after=get("stop_after", DEFAULT_STOP_AFTER))
        if plan.start_users > plan.max_users:
            raise OptionError(f"--start-users {plan.start_users} is more than --max-users {plan.max_users}")
        prefix = getattr(opts, "capacity_report", None)
        if not prefix:
            csv_prefix = getattr(opts, "csv_prefix", None)
            prefix = f"{csv_prefix}_capacity" if csv_prefix else "capacity"
        return cls(plan=plan, min_capacity=getattr(opts, "min_capacity", None),
                   max_error_rate=get("max_error_rate", DEFAULT_MAX_ERROR_RATE) / 100.0,
                   arrival_rate=getattr(opts, "arrival_rate", None),
                   max_in_flight=get("max_in_flight", DEFAULT_MAX_IN_FLIGHT), report_prefix=prefix)


# --------------------------------------------------------------------------- the run

class CapacityRun:
    """The capacity test's state in one Locust process (environment.llmsim_capacity).

    Every process files finished requests in `book` by start slice and tracks
    its requests in flight. A local run or the master places past slices into
    the current step's figures, steps the users (StepSchedule) and judges each
    step; a worker ships its slices with each report.
    """

    def __init__(self, environment: Any, settings: CapacitySettings) -> None:
        self.environment = environment
        self.settings = settings
        self.book = SliceBook()
        self.inflight = InFlight()
        self.stats: dict[int, StepStats] = {}
        self.rows: dict[int, dict[str, Any]] = {}
        self.workers: dict[str, tuple[float, float | None]] = {}
        """Master: per worker, when its last report was taken and the start of its oldest request then in flight."""
        self.schedule = self._new_schedule()
        self.result: dict[str, Any] | None = None
        self.prediction_interrupted = False

    def _new_schedule(self) -> StepSchedule:
        plan = self.settings.plan
        return StepSchedule(plan, judge=self.judge, is_complete=self.is_complete,
                            drain_limit_s=max(plan.step_time_s, DRAIN_LIMIT_MIN_S))

    @property
    def is_worker(self) -> bool:
        return get_run(self.environment).is_worker

    @property
    def is_master(self) -> bool:
        return get_run(self.environment).is_master

    @property
    def profile(self) -> Any:
        return get_run(self.environment).settings.profile

    def reset(self) -> None:
        self.book = SliceBook()
        self.stats, self.rows, self.workers, self.result = {}, {}, {}, None
        self.schedule = self._new_schedule()

    # ------------------------------------------------------------------ every process

    def record(self, rec: Any, intended: float | None = None) -> None:
        """File one finished request under the slice it started in (intended send time in open loop)."""
        self.book.add(rec, self.profile.slo, intended)

    def take_wire(self) -> dict[str, Any]:
        """A worker's report: its slices, and its oldest request in flight, taken at the same moment."""
        return {"slices": self.book.take_wire(), "oldest": self.inflight.oldest(), "at": time.time()}

    # ------------------------------------------------------------------ local run or master

    def merge_worker(self, client_id: str, wire: dict[str, Any]) -> None:
        self.book.merge_wire(wire["slices"])
        self.workers[client_id] = (float(wire["at"]), None if wire["oldest"] is None else float(wire["oldest"]))

    def tick(self) -> tuple[int, float] | None:
        """The shape's tick: place what is known, then let the schedule decide."""
        if self.schedule.stop_reason is not None:
            self.reset()  # the shape runs again (web UI): a fresh series of steps
        now = time.time()
        self.place(now)
        return self.schedule.tick(now)

    def users_running(self, user_count: int) -> None:
        self.schedule.users_running(time.time(), user_count)

    def place(self, now: float) -> None:
        """Move slices that lie in the past into the step whose window holds them; drop the rest (ramps, drains)."""
        for key, part in self.book.pop_past(now):
            step = self._step_of(key)
            if step is not None:
                self.stats.setdefault(step.index, StepStats()).merge(part)

    def _step_of(self, key: int) -> Step | None:
        for step in reversed(self.schedule.steps):
            if step.window_start is not None and key in window_slices(step.window_start,
                                                                      step.window_start + step.window_s):
                return step
        return None

    def is_complete(self, step: Step, now: float) -> bool:
        """Whether every request that started before the step's window ended has been filed here."""
        end = _window(step)[1]
        if not self.is_master:
            oldest = self.inflight.oldest()
            return oldest is None or oldest >= end
        live = [w.id for w in self.environment.runner.clients.all if w.state != STATE_MISSING]
        for worker in live:
            at, oldest = self.workers.get(worker, (-math.inf, None))
            if at < end or (oldest is not None and oldest < end):
                return False
        return bool(live)

    def judge(self, step: Step, complete: bool) -> bool:
        """The step's row and verdict (the schedule calls this once, after the drain)."""
        s = self.settings
        slices = window_slices(*_window(step))
        row = {"step": step.index, "users": step.users,
               "offered_rps": step.users * s.arrival_rate if s.arrival_rate is not None else None,
               **summarize(self.stats.get(step.index, StepStats()), window_s=len(slices) * SLICE_S,
                           slo=self.profile.slo, max_error_rate=s.max_error_rate, open_loop=s.open_loop),
               "complete": complete}
        self.rows[step.index] = row
        log.info("%s", step_line(row))
        return row["meets_slo"]

    def predict(self) -> dict[int, dict[str, Any]]:
        """What the profile predicts for each judged step (prediction.py), judged by the same rule."""
        s, run = self.settings, get_run(self.environment)
        out = {}
        if self.rows:  # a simulation of every token: seconds per step at tens of users, so say what is happening
            log.info("Predicting the %d judged steps from profile %s (a simulation of each; larger steps take "
                     "longer)...", len(self.rows), self.profile.name)
        started = time.monotonic()
        try:
            for index, row in self.rows.items():
                mix = self.stats[index].run.mix if index in self.stats else {}
                shape = TokenShape.from_mix(mix, self.profile, default_visible=run.settings.max_tokens,
                                            default_prompt=run.settings.prompts[0].prompt_tokens or 0,
                                            cached_share=self.stats[index].run.cached_share()
                                            if index in self.stats else 0.0)
                window = max(s.plan.step_time_s, PREDICT_WINDOW_MIN_S)
                stats = predict_step(self.profile, row["users"], window, shape, arrival_rate=s.arrival_rate,
                                     stream=run.settings.stream)
                out[index] = summarize(stats, window_s=window, slo=self.profile.slo,
                                       max_error_rate=s.max_error_rate, open_loop=s.open_loop)
        except KeyboardInterrupt:  # Ctrl-C while predicting: the measured result is written all the same
            self.prediction_interrupted = True
            log.warning("Prediction interrupted (Ctrl-C) after %d of %d steps: the report has the measured "
                        "steps, and predictions only for those", len(out), len(self.rows))
            return out
        if self.rows:
            log.info("Predicted in %.1f s", time.monotonic() - started)
        return out

    def finish(self) -> dict[str, Any]:
        """End of run: the result, the files, and the exit code (0 unless --min-capacity was missed)."""
        if self.result is not None:
            return self.result
        run = get_run(self.environment)
        self.result = build_result(self.rows, self.predict(), settings=self.settings, profile=self.profile,
                                   model=run.settings.model, host=self.environment.host,
                                   stop_reason=self.schedule.stop_reason or "interrupted before the last verdict")
        self.result["prediction_interrupted"] = self.prediction_interrupted
        workload = run.settings.workload
        self.result["workload"] = None if workload is None else \
            workload_section(workload.describe(), run.stats)
        write_outputs(self.result, self.settings.report_prefix)
        passed = self.result["min_capacity_met"] is not False
        self.environment.process_exit_code = 0 if passed else EXIT_VERDICT_FAIL
        return self.result


def get_capacity(environment: Any) -> CapacityRun:
    """The capacity state of this environment (set up by the init listener)."""
    cap = getattr(environment, "llmsim_capacity", None)
    if cap is None:
        cap = CapacityRun(environment, CapacitySettings.from_options(environment.parsed_options))
        environment.llmsim_capacity = cap
    return cap


# --------------------------------------------------------------------------- users and shape

class CapacityUser(LlmUser):
    """A closed-loop user (one request after another), or with --arrival-rate an open-loop Poisson source.

    Every request is tracked in flight from its (intended) start until it has
    been filed by step, so the master knows when a step's figures are complete.
    """

    abstract = True

    def on_start(self) -> None:
        super().on_start()
        self.capacity = get_capacity(self.environment)
        s = self.capacity.settings
        self.source: OpenLoopSource | None = None
        if s.arrival_rate is not None:  # open loop
            self.source = OpenLoopSource(s.arrival_rate, s.max_in_flight, new_client=self.new_client,
                                         send=lambda client, intended: self.send(client=client, intended=intended),
                                         track=self.capacity.inflight.track)

    def on_stop(self) -> None:
        source = getattr(self, "source", None)
        if source is not None:
            source.stop()
        super().on_stop()

    def run_requests(self) -> None:
        """The user's one task (see below): one tracked request, or the open-loop source until stopped."""
        if self.source is not None:
            self.source.run()  # returns only when the user is stopped
            return
        work = self.next_work()
        if work.think_s > 0:  # between the turns of a session: the user is not waiting for a reply
            gevent.sleep(work.think_s)
        with self.capacity.inflight.track(time.time()):
            self.send(work=work)

    def send(self, prompt: Any = None, *, max_tokens: int | None = None, stream: bool | None = None,
             client: Any = None, work: Any = None, intended: float | None = None) -> Any:
        """Send, report to Locust and the toolkit (LlmUser.send), then file the record by step."""
        rec = super().send(prompt, max_tokens=max_tokens, stream=stream, client=client, work=work)
        if not rec.warmup:
            self.capacity.record(rec, intended)
        return rec


# Locust always adds a base class's tasks to a subclass's, so an overriding @task would run
# alongside LlmUser.complete (untracked). Replace the list instead; subclasses inherit this one.
CapacityUser.tasks = [CapacityUser.run_requests]


class CapacityShape(StepShape):
    """Steps the users up: --start-users, +--step-users every step, up to --max-users (shapes.py)."""

    abstract = True


# --------------------------------------------------------------------------- listeners

def is_capacity_test(environment: Any) -> bool:
    """Whether this environment runs capacity users: importing this module must not change other Locust runs."""
    return any(isinstance(u, type) and issubclass(u, CapacityUser) for u in environment.user_classes or ())


@events.init_command_line_parser.add_listener
def _on_parser(parser: Any, **_kw: Any) -> None:
    add_arguments(parser)


@events.init.add_listener
def _on_init(environment: Any, **_kw: Any) -> None:
    try:
        _init(environment)
    finally:
        refresh_loop_clock()  # see plugin.refresh_loop_clock: Locust arms its timers next


def _init(environment: Any) -> None:
    toolkit = getattr(environment, "llmsim", None)
    if toolkit is None or not is_capacity_test(environment):
        return  # the toolkit rejected its own options (worker: they arrive later), or another locustfile
    toolkit.scored = False
    if isinstance(environment.runner, WorkerRunner):
        return
    try:
        get_capacity(environment)
    except OptionError as e:
        _fail(str(e))
    prefix = get_capacity(environment).settings.report_prefix
    if problem := output_problem(f"{prefix}.json"):
        _fail(f"--capacity-report: cannot write {prefix}.json ({problem})")
    opts = environment.parsed_options
    ignored = [flag for flag, dest in (("-u/--users", "num_users"), ("-r/--spawn-rate", "spawn_rate"))
               if getattr(opts, dest, None) is not None]
    if ignored:  # the shape reads --run-time, so Locust no longer says these are ignored
        log.warning(f"{' and '.join(ignored)} do not shape the capacity test's steps: use --start-users, "
                    "--step-users and --max-users")
    workload = toolkit.settings.workload
    if workload is not None and workload.trace is not None:
        _fail("--trace replays the trace's own arrival times; the capacity test steps the users up instead "
              "(run the trace with chat.py or another locustfile)")
    if workload is not None and workload.multi_turn and get_capacity(environment).settings.open_loop:
        _fail("--turns needs each reply before the next turn; the open loop (--arrival-rate) does not wait "
              "for replies")
    p = toolkit.settings.profile
    if p is None:
        _fail(f"--llm-profile: no profile covers model {toolkit.settings.model!r}; the capacity test judges each "
              "step against a profile's slo: section, so give one with --llm-profile NAME|FILE.yaml")
    if not p.slo:
        _fail(f"--llm-profile: profile {p.name!r} ({p.source}) has no slo: section; the capacity test judges "
              f"each step against it")


@events.test_start.add_listener
def _on_test_start(environment: Any, **_kw: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) and is_capacity_test(environment):
        # The master's options have just arrived: the users read them from here.
        environment.llmsim_capacity = CapacityRun(environment,
                                                  CapacitySettings.from_options(environment.parsed_options))
        get_run(environment).scored = False
    # A local run or the master starts afresh in its first tick (CapacityRun.tick), not here:
    # test_start fires only once the shape has already asked for its first step.


@events.test_stop.add_listener
def _on_test_stop(environment: Any, **_kw: Any) -> None:
    cap = getattr(environment, "llmsim_capacity", None)
    if cap is not None and not cap.is_worker and cap.schedule.stop_reason is not None:
        cap.finish()  # the shape has finished; in the web UI the process lives on


def _current_capacity() -> CapacityRun | None:
    """These events carry no environment: the capacity state of the one init saw."""
    return getattr(_current_env(), "llmsim_capacity", None)


@events.spawning_complete.add_listener
def _on_spawning_complete(user_count: int, **_kw: Any) -> None:
    cap = _current_capacity()
    if cap is not None and not cap.is_worker:
        cap.users_running(user_count)


@events.report_to_master.add_listener
def _on_report_to_master(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
    if (cap := _current_capacity()) is not None:
        data[WIRE_KEY] = cap.take_wire()


@events.worker_report.add_listener
def _on_worker_report(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
    if (cap := _current_capacity()) is not None and WIRE_KEY in data:
        cap.merge_worker(client_id, data[WIRE_KEY])


@events.quitting.add_listener
def _on_quitting(environment: Any, **_kw: Any) -> None:
    cap = getattr(environment, "llmsim_capacity", None)
    if cap is not None and not cap.is_worker:
        cap.finish()


@events.quit.add_listener
def _on_quit(**_kw: Any) -> None:
    cap = _current_capacity()
    if cap is not None and cap.result is not None:
        print(format_table(cap.result), flush=True)

