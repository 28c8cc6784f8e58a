"""Locust wiring: options, per-process run state, worker->master merging, the embedded server, the verdict.

Importing this module (users.py does) registers listeners on locust.events:
- init_command_line_parser: the --llm-* options;
- init: resolve options (a bad combination stops Locust with one line), start
  the embedded llmsim server when no --host is given, add the web UI tab;
- test_start: reset the figures (a web UI run may be restarted);
- report_to_master / worker_report: ship and merge the RunStats delta;
- quitting: print the summary and verdicts, write --llm-report, and set the
  exit code to EXIT_VERDICT_FAIL when anything failed.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from typing import Any, NoReturn

from locust import events
from locust.runners import MasterRunner, WorkerRunner

from .aggregate import RunStats
from .metrics import RequestRecord
from .options import LoadTestSettings, OptionError, add_arguments
from .records import RecordsFile, record_line
from .report import build_report, format_summary, format_verdicts, install_web_ui, output_problem, write_json
from .scoring import expected_values, request_meets_slo, score
from .transport import url_problem
from .workloads import TRACE_LEAD_S, TraceReplay, Work, refuses_exact_fields

log = logging.getLogger("llmsim.loadtest")

EXIT_VERDICT_FAIL = 3
"""Process exit code when any verdict or SLO check fails (Locust itself uses 1 for failed requests)."""
WIRE_KEY = "llmsim"
TRACE_DONE_MESSAGE = "llmsim_trace_done"
"""A worker tells the master it has replayed its share of the trace."""


class LoadTestRun:
    """The toolkit's state in one Locust process (environment.llmsim)."""

    def __init__(self, environment: Any, settings: LoadTestSettings) -> None:
        self.environment = environment
        self.settings = settings
        self.stats = RunStats()
        """Local run: everything; master: merged from workers; worker: unused."""
        self.pending = RunStats()
        """Worker: records not yet sent to the master."""
        self.workers: dict[str, dict[str, int]] = {}
        """Master: per-worker totals, to show that the merged counts are their sum."""
        self.server: Any = None
        self.scored = True
        """False when the whole run's verdict must not decide the exit code (capacity.py judges each step)."""
        self._expected_cache: tuple[Any, Any] | None = None
        self._warmup_left = settings.warmup_requests
        self._warmup_until = time.time() + settings.warmup_s
        self.records: RecordsFile | None = None
        """--llm-records: this process's lines, opened on the first request."""
        self.users_started = 0
        """Users started in this process: each gets its own random stream of the workload."""
        self.exact_refused: str | None = None
        """The server refused ignore_eos/min_tokens (this process then stops sending them)."""
        self.replay: TraceReplay | None = None
        self.trace_workers_done: set[str] = set()
        """Master: the workers that have replayed their share of the trace."""

    @property
    def is_worker(self) -> bool:
        return isinstance(self.environment.runner, WorkerRunner)

    @property
    def is_master(self) -> bool:
        return isinstance(self.environment.runner, MasterRunner)

    @property
    def is_scored(self) -> bool:
        """Whether the whole run's verdict is printed and decides the exit code."""
        return self.scored and self.settings.score and self.settings.profile is not None

    def begin_request(self) -> bool:
        """Called as a request starts: whether it is a warm-up request (--llm-warmup), left out of every figure."""
        if self._warmup_left > 0:
            self._warmup_left -= 1
            return True
        return self.settings.warmup_s > 0 and time.time() < self._warmup_until

    def record(self, rec: RequestRecord, work: Work | None = None) -> None:
        """Count one finished request in this process (a warm-up request only as such)."""
        stats = self.pending if self.is_worker else self.stats
        if rec.warmup:
            stats.warmup += 1
            return
        profile = self.settings.profile
        stats.add(rec, profile is not None and request_meets_slo(rec, profile.slo), work)
        if self.settings.records_path:
            self.write_record(rec)

    def write_record(self, rec: RequestRecord) -> None:
        """--llm-records: the request as one JSON line."""
        s = self.settings
        if self.records is None or self.records.path != s.records_path:
            self.records = RecordsFile(s.records_path or "")
        runner = self.environment.runner
        self.records.write(record_line(rec, model=s.model, stream=s.stream,
                                       users=getattr(runner, "user_count", None) if runner is not None else None))


    # ------------------------------------------------------------------ workload

    def user_rng(self) -> random.Random:
        """A random stream for the next user of this process: the seed, the process and the user's number."""
        self.users_started += 1
        worker = getattr(self.environment.runner, "worker_index", 0) if self.is_worker else 0
        return random.Random(f"{self.workload.spec.seed}/{worker}/{self.users_started}")

    @property
    def workload(self) -> Any:
        assert self.settings.workload is not None
        return self.settings.workload

    def exact_fields(self, api: str, work: Work) -> dict[str, Any] | None:
        """ignore_eos/min_tokens for this request, unless the server has refused them in this run."""
        return None if self.exact_refused is not None else self.workload.exact_fields(api, work)

    def exact_refusal(self, rec: RequestRecord) -> bool:
        """Whether this failed answer refuses ignore_eos/min_tokens (--exact-output auto): if so, they are
        not sent again in this run, and the report says why."""
        if self.settings.workload is None or self.workload.spec.exact_output != "auto" or \
                not refuses_exact_fields(rec.status, rec.error_message):
            return False
        if self.exact_refused is None:
            self.exact_refused = (rec.error_message or "")[:200]
            (self.pending if self.is_worker else self.stats).workload.refused(self.exact_refused)
            log.warning("The server refused ignore_eos/min_tokens (%s); sending without them from now on",
                        self.exact_refused)
        return True

    def trace_replay(self) -> TraceReplay:
        """This process's share of the trace (created when its first user starts replaying)."""
        if self.replay is None:
            process, processes = 0, 1
            if self.is_worker:
                index = getattr(self.environment.runner, "worker_index", 0)
                shares = str(getattr(self.environment.parsed_options, "llm_trace_workers", "") or "")
                workers = [int(i) for i in shares.split(",") if i.strip()]
                if workers:  # a worker that joined after the start replays nothing (-1)
                    process, processes = (workers.index(index) if index in workers else -1), len(workers)
            rng = random.Random(f"{self.workload.spec.seed}/trace/{process}")
            self.replay = TraceReplay(self.workload, process, processes, rng, time.time() + TRACE_LEAD_S)
            self.replay.on_finished.append(self._trace_finished)
        return self.replay

    def _trace_finished(self) -> None:
        """This process has sent its share of the trace and every answer is in: end the run (a worker tells
        the master, which ends it once every worker has)."""
        runner = self.environment.runner
        log.info("Trace replay: %d requests sent and answered", self.replay.sent if self.replay else 0)
        if self.is_worker:
            runner.send_message(TRACE_DONE_MESSAGE, {"sent": self.replay.sent if self.replay else 0})
        else:
            end_run(self.environment)

    def record_retry(self, wait_s: float) -> None:
        """Count one retried 429 in this process."""
        (self.pending if self.is_worker else self.stats).add_retry(wait_s)

    def record_unfinished(self) -> None:
        """Count one request that was still waiting for its answer when the run stopped."""
        (self.pending if self.is_worker else self.stats).unfinished += 1

    def reset(self) -> None:
        self.stats = RunStats()
        self.pending = RunStats()
        self.workers = {}
        self._warmup_left = self.settings.warmup_requests
        self._warmup_until = time.time() + self.settings.warmup_s
        self.exact_refused = None
        self.replay = None
        self.trace_workers_done = set()

    # ------------------------------------------------------------------ distributed

    def take_pending(self) -> dict[str, Any]:
        wire, self.pending = self.pending.to_wire(), RunStats()
        return wire

    def merge_worker(self, client_id: str, wire: dict[str, Any]) -> None:
        part = RunStats.from_wire(wire)
        self.stats.merge(part)
        w = self.workers.setdefault(client_id, {"requests": 0, "ok": 0, "output_tokens": 0, "prompt_tokens": 0})
        w["requests"] += part.requests
        w["ok"] += part.ok
        w["output_tokens"] += part.output_tokens
        w["prompt_tokens"] += part.prompt_tokens

    # ------------------------------------------------------------------ report

    def report(self, *, fresh: bool = True) -> dict[str, Any]:
        """The full report of the figures so far. Live (web UI) reports reuse expected values per token shape."""
        s = self.settings
        card = None
        if s.score and s.profile is not None:
            conc = self.stats.concurrency
            shape = (tuple(sorted(self.stats.mix)), None if conc is None else round(conc, 1))
            if fresh or self._expected_cache is None or self._expected_cache[0] != shape:
                self._expected_cache = (shape, expected_values(s.profile, self.stats.mix, concurrency=conc,
                                                                   cached_share=self.stats.cached_share()))
            card = score(self.stats, s.profile, s.tolerance, stream=s.stream, expected=self._expected_cache[1])
        return build_report(self.stats, card, model=s.model,
                            profile=s.profile.name if s.profile is not None else None,
                            profile_source=s.profile.source if s.profile is not None else None,
                            host=self.environment.host, stream=s.stream, max_tokens=s.max_tokens,
                            warmup=s.warmup, trace=s.trace, trace_limit_ms=s.trace_limit_ms,
                            workers=self.workers if self.is_master else None,
                            workload=s.workload.describe() if s.workload is not None else None)

    def finish(self) -> dict[str, Any]:
        """End of run (local or master): print, write JSON, set the exit code."""
        report = self.report()
        print(format_summary(report), flush=True)
        if self.scored:
            print(format_verdicts(report), flush=True)
        if self.settings.report_path:
            write_json(report, self.settings.report_path)
        if self.is_scored and report["verdict"] != "PASS":
            self.environment.process_exit_code = EXIT_VERDICT_FAIL
        return report

    def stop_server(self) -> None:
        if self.records is not None:
            self.records.close()
        if self.server is not None:
            self.server.stop()
            self.server = None


def end_run(environment: Any) -> None:
    """End the run from inside it (a replayed trace is done): quit a headless run, stop one in the web UI."""
    import gevent

    runner = environment.runner
    opts = environment.parsed_options
    headless = bool(getattr(opts, "headless", False) or getattr(opts, "autoquit", -1) != -1)
    # Spawned: quitting kills the users' greenlets, possibly the caller's own.
    gevent.spawn(runner.quit if headless else runner.stop)


def default_model(model: str) -> None:
    """Make `model` the --llm-model default of the locustfile that calls this at import.

    An Anthropic locustfile should default to a Claude model; the option and
    everything that resolves it stay shared. (This module's own parser
    listener is registered first, so the option exists when this one runs.)
    """
    @events.init_command_line_parser.add_listener
    def _default_model(parser: Any, **_kw: Any) -> None:
        parser.set_defaults(llm_model=model)


def get_run(environment: Any) -> LoadTestRun:
    """The run state of this environment (set up by the init listener)."""
    run = getattr(environment, "llmsim", None)
    if run is None:
        run = LoadTestRun(environment, LoadTestSettings.from_options(environment.parsed_options))
        environment.llmsim = run
    return run


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"locust: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def start_embedded_server(run: LoadTestRun) -> str:
    """Start llmsim in this process serving the scored profile; returns its URL."""
    from ..testing import start_server

    s = run.settings
    if s.profile is not None:
        run.server = start_server(latency_profile=s.profile.name,
                                  profile_files=[s.profile_file] if s.profile_file else ())
    else:  # measure only: the server answers the unknown model with its default profile
        run.server = start_server(config={"models": {"allow_unknown": True}})
    warm_up(run.server.url, s)
    return run.server.url


def warm_up(url: str, settings: LoadTestSettings) -> None:
    """One small request, so the server's one-time costs (loading the BPE ranks) stay out of the figures."""
    from ..tokens import get_encoding
    from .adapters import ChatCompletionsAdapter
    from .client import LlmClient

    enc = get_encoding(settings.encoding)
    client = LlmClient(url, ChatCompletionsAdapter(), model=settings.model, count_tokens=lambda t: len(enc.encode(t)))
    try:
        client.run(settings.prompts[0], max_tokens=1)
    finally:
        client.close()


# --------------------------------------------------------------------------- listeners

@events.init_command_line_parser.add_listener
def _on_parser(parser: Any, **_kw: Any) -> None:
    add_arguments(parser)


def refresh_loop_clock() -> None:
    """Bring gevent's cached loop time up to date after start-up work that did not yield.

    Locust arms the -t timer right after the init event, with gevent.spawn_later,
    which counts from the loop's cached "now". Resolving options, loading profiles
    and encodings and building prompts take a second or more without a loop
    iteration, so without this the run ended that much early (-t 15s ran 12.9 s).
    """
    import gevent

    gevent.get_hub().loop.update_now()


def freeze_startup_objects() -> None:
    """Move everything start-up made (Locust, Flask, profiles, encodings, the embedded server) out of the
    garbage collector's view.

    A full collection walks every tracked object: with them in view it stops the
    event loop for tens of milliseconds, and every stream whose next event arrives
    meanwhile gets it merged with the one after (DESIGN.md: a kernel receive time
    is the last merged segment's). Frozen, a full collection takes microseconds.
    """
    import gc

    gc.collect()
    gc.freeze()


@events.init.add_listener
def _on_init(environment: Any, **_kw: Any) -> None:
    try:
        _init(environment)
    finally:
        freeze_startup_objects()
        refresh_loop_clock()


def _init(environment: Any) -> None:
    try:
        run = get_run(environment)
    except OptionError as e:
        if isinstance(environment.runner, WorkerRunner):
            log.debug("options are resolved again when the master's arrive: %s", e)
            return
        _fail(str(e))
        return
    if run.is_worker:
        return
    if run.settings.tools:
        for u in environment.user_classes:
            adapter = getattr(u, "adapter", None)
            if adapter is not None and not adapter.supports_tools:
                _fail(f"--tools: {u.__name__} sends the {adapter.name} API, which has no tools")
    if run.settings.records_path:
        try:
            RecordsFile.start(run.settings.records_path)
        except OSError as e:
            _fail(f"--llm-records: cannot write {run.settings.records_path} ({e.strerror or e})")
    if run.settings.report_path and (problem := output_problem(run.settings.report_path)):
        _fail(f"--llm-report: cannot write {run.settings.report_path} ({problem})")
    if environment.parsed_options is not None and run.settings.workload is not None:
        # The workers build their prompts from the same seed (the shared prefixes and trace blocks must match).
        environment.parsed_options.workload_seed = run.settings.workload.spec.seed
    if run.is_master and TRACE_DONE_MESSAGE not in environment.runner.custom_messages:
        environment.runner.register_message(TRACE_DONE_MESSAGE, _on_trace_done)
    user_hosts = {getattr(u, "host", None) for u in environment.user_classes}
    embedded = not environment.host and not any(user_hosts)
    for host in sorted({environment.host, *user_hosts} - {None, ""}):
        if problem := url_problem(host):
            _fail(f"--host: {problem}")
    if run.settings.trace_mode == "auto":
        # Resolved here, in the options too: workers take their settings from the master's options.
        # The trace comes inside the event stream: a --no-stream run has nowhere to carry it.
        run.settings.trace_mode = "on" if embedded and run.settings.stream else "off"
        if environment.parsed_options is not None:
            environment.parsed_options.llm_trace = run.settings.trace_mode
    if embedded:
        environment.host = start_embedded_server(run)
        p = run.settings.profile
        log.info("No --host: started the embedded llmsim server at %s (profile %s)", environment.host,
                 p.name if p is not None else "the server's default")
    if environment.web_ui is not None:
        install_web_ui(environment.web_ui, lambda: run.report(fresh=False) if run.stats else None)


def _on_trace_done(environment: Any, msg: Any, **_kw: Any) -> None:
    env = environment
    run = getattr(env, "llmsim", None)
    if run is None:
        return
    run.trace_workers_done.add(msg.node_id)
    live = {w.id for w in env.runner.clients.all if w.state != "missing"}
    if live <= run.trace_workers_done:
        log.info("Trace replay: every worker has sent its share")
        end_run(env)


@events.test_start.add_listener
def _on_test_start(environment: Any, **_kw: Any) -> None:
    run = getattr(environment, "llmsim", None)
    if run is not None and isinstance(environment.runner, WorkerRunner):
        # A worker's options may have just arrived from the master.
        run.settings = LoadTestSettings.from_options(environment.parsed_options)
    elif run is None:
        run = get_run(environment)
    run.reset()
    if run.is_master and environment.parsed_options is not None:
        # The workers a trace replay is split over: their Locust indexes, sent with the spawn messages.
        runner = environment.runner
        active = runner.clients.ready + runner.clients.running + runner.clients.spawning
        environment.parsed_options.llm_trace_workers = ",".join(
            str(i) for i in sorted(runner.get_worker_index(w.id) for w in active))


@events.report_to_master.add_listener
def _on_report_to_master(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
    env = _current_env()
    run = getattr(env, "llmsim", None) if env is not None else None
    if run is not None and run.pending:
        data[WIRE_KEY] = run.take_pending()


@events.worker_report.add_listener
def _on_worker_report(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
    env = _current_env()
    run = getattr(env, "llmsim", None) if env is not None else None
    if run is not None and WIRE_KEY in data:
        run.merge_worker(client_id, data[WIRE_KEY])


@events.quitting.add_listener
def _on_quitting(environment: Any, **_kw: Any) -> None:
    run = getattr(environment, "llmsim", None)
    if run is None:
        return
    try:
        if not run.is_worker:
            run.finish()
    finally:
        run.stop_server()


# report_to_master/worker_report carry no environment; remember the one init saw.
_ENV: list[Any] = []


@events.init.add_listener
def _remember_env(environment: Any, **_kw: Any) -> None:
    _ENV[:] = [environment]


def _current_env() -> Any:
    return _ENV[0] if _ENV else None
