"""The run report: one dict with every figure, printed as tables, written as JSON, shown in the web UI."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from .aggregate import INTENDED, METRICS, SUMMARY_PCTS, RunStats, histogram_summary, pct_label
from .histogram import Histogram, SignedHistogram, nearest_rank
from .scoring import Scorecard

LABELS = {"ttft": "TTFT", "itl": "ITL", "tpot": "TPOT", "e2e": "E2E"}
FAILURE_LABELS = {"429": "429", "4xx": "other 4xx", "5xx": "5xx", "timeout": "timeout", "connection": "connection",
                  "midstream_cut": "mid-stream cut", "malformed_stream": "malformed stream"}
UI_TAB_KEY = "llmsim"
TIMESTAMP_TEXT = {
    "kernel": "kernel receive times (SO_TIMESTAMPNS): the load generator's own delays, up to one ITL, are not "
              "in the figures",
    "user-space": "user-space (each read stamped when it returned; kernel receive times need Linux and plain "
                  "http)",
    "mixed": "kernel receive times for {kernel_requests} requests, user-space stamps for {user_space_requests}",
}


def build_report(stats: RunStats, card: Scorecard | None, *, model: str, profile: str | None,
                 profile_source: str | None, host: str | None, stream: bool, max_tokens: int | None,
                 warmup: str = "0", trace: bool = False, trace_limit_ms: float = 1.0,
                 workers: dict[str, dict[str, Any]] | None = None,
                 workload: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every figure of the run, the expected values and the verdicts (the --llm-report JSON).

    With no scorecard (measure only: --llm-score off, or no profile applies) the
    report has the figures, `score: "off"` and `verdict: null`.
    """
    report: dict[str, Any] = {
        "model": model,
        "profile": profile,
        "profile_source": profile_source,
        "score": "on" if card is not None else "off",
        "host": host,
        "stream": stream,
        "max_tokens": max_tokens,
        "window_s": stats.window_s,
        "timestamps": {"source": stats.timestamps, "kernel_requests": stats.kernel_stamped,
                       "user_space_requests": stats.ok - stats.kernel_stamped},
        "warmup": {"setting": warmup, "requests": stats.warmup},
        "requests": {"total": stats.requests, "ok": stats.ok, "failed": stats.failed,
                     "failures": stats.failures_by_class,
                     "errors_by_kind": dict(sorted(stats.errors.items())),
                     "retries_429": stats.retries_429, "retry_wait_s": stats.retry_wait_ms / 1000,
                     "unfinished": stats.unfinished},
        "tokens": {"output": stats.output_tokens, "visible": stats.visible_tokens, "prompt": stats.prompt_tokens},
        "throughput": {"output_tokens_per_s": stats.rate(stats.output_tokens),
                       "visible_tokens_per_s": stats.rate(stats.visible_tokens),
                       "requests_per_s": stats.rate(stats.requests)},
        "metrics": {m: stats.metric_summary(m) for m in METRICS},
        "measurement_error": measurement_error(stats, trace_limit_ms) if trace else None,
        "workload": workload_section(workload, stats) if workload is not None else None,
    }
    if card is not None:
        report.update(card.to_dict())
    else:
        report["verdict"] = None
    if workers is not None:
        report["workers"] = workers
    return report


def _signed_summary(h: SignedHistogram, *, with_abs: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"count": h.count, "mean": h.mean, "p50": h.percentile(50), "p99": h.percentile(99)}
    if with_abs:
        out["abs_p99"] = h.abs_percentile(99)
    return out


def measurement_error(stats: RunStats, limit_ms: float) -> dict[str, Any]:
    """The client's own measurement error, from the server's traces (--llm-trace), and whether it says the
    load generator is the bottleneck.

    TTFT: client minus server TTFT per request (the network's transit time is in it, so its spread,
    p99 - p50, is what is held against the limit). ITL: client minus server per gap between content
    events; its p99 of |error| is held against the limit. `server_pacing` is the server's emitted
    minus planned, for the same requests.
    """
    ttft, itl = stats.error["ttft"], stats.error["itl"]
    out: dict[str, Any] = {
        "traced_requests": stats.traced,
        "mismatched_traces": stats.trace_mismatch,
        "ttft_ms": _signed_summary(ttft),
        "itl_ms": _signed_summary(itl, with_abs=True),
        "server_pacing": {"ttft_ms": _signed_summary(stats.pacing["ttft"]),
                          "itl_ms": _signed_summary(stats.pacing["itl"], with_abs=True)},
        "limit_ms": limit_ms,
    }
    ttft_spread = None
    if ttft.count:
        ttft_spread = (ttft.percentile(99) or 0.0) - (ttft.percentile(50) or 0.0)
    out["ttft_ms"]["spread_p99_p50"] = ttft_spread
    itl_abs = out["itl_ms"]["abs_p99"]
    out["load_generator_bottleneck"] = bool((itl_abs is not None and itl_abs > limit_ms)
                                            or (ttft_spread is not None and ttft_spread > limit_ms))
    return out


def counts_summary(counts: dict[int, int]) -> dict[str, Any]:
    """count, mean, p50, p90, min and max of whole numbers given as {value: how many}."""
    n = sum(counts.values())
    if not n:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "min": None, "max": None}
    values = sorted(counts.items())

    def pct(p: float) -> int:
        rank, seen = nearest_rank(p, n), 0
        for v, k in values:
            seen += k
            if seen >= rank:
                return v
        return values[-1][0]

    return {"count": n, "mean": sum(v * k for v, k in values) / n, "p50": pct(50), "p90": pct(90),
            "min": values[0][0], "max": values[-1][0]}


def _short(h: Histogram) -> dict[str, Any]:
    s = histogram_summary(h)
    return {k: s[k] for k in ("count", "mean", "p50", "p90", "p99", "max")}


def workload_section(desc: dict[str, Any], stats: RunStats) -> dict[str, Any]:
    """The workload as configured (Workload.describe()) and as realised: the prompt and output lengths of the
    successful requests (the server's usage, else the client's count), exact output lengths, the prefix
    cache, per-turn figures and the lateness of a replayed trace."""
    w = stats.workload
    out = dict(desc)
    out["realised"] = {"requests": stats.ok, "prompt_tokens": counts_summary(w.prompt_lengths),
                       "output_tokens": counts_summary(w.output_lengths)}
    out["exact_output"] = {"mode": desc.get("exact_output"), "requests_with_fields": w.exact_sent,
                           "refused": w.exact_refused, "requests_checked": w.requested,
                           "requests_exact": w.exact}
    out["prefix_cache"] = None if not w.cache_reported else {
        "requests": w.cache_reported, "cached_requests": w.cached_requests,
        "hit_share": w.cached_requests / w.cache_reported,
        "cached_tokens": w.cached_tokens, "prompt_tokens": w.cache_prompt_tokens,
        "token_share": w.cached_tokens / w.cache_prompt_tokens if w.cache_prompt_tokens else None,
        "ttft_cached_ms": _short(w.ttft_cached), "ttft_uncached_ms": _short(w.ttft_uncached)}
    out["per_turn"] = [
        {"turn": k, "requests": t.requests, "ok": t.ok,
         "prompt_tokens_mean": t.prompt_tokens / t.ok if t.ok else None, "ttft_ms": _short(t.ttft)}
        for k, t in sorted(w.turns.items())] or None
    out["replay"] = None if not w.scheduled else {
        "requests": w.scheduled, "lateness_ms": _short(w.lateness),
        "from_intended_ms": {m: _short(w.intended[m]) for m in INTENDED}}
    return out


def output_problem(path: str) -> str | None:
    """Why `path` could not be written when the run ends (None: it can), checked when it starts so that a long
    run's results are not lost to a typo. Missing directories are made then, as write_json makes them."""
    if os.path.isdir(path):
        return "it is a directory"
    probe = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK):
        return f"{probe} is not writable"
    return None


def write_json(report: dict[str, Any], path: str) -> None:
    if d := os.path.dirname(path):
        os.makedirs(d, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, default=_json_default)
        f.write("\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, float):  # inf/nan never reach here, but keep json strict
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _ms(v: float | None, width: int = 10) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.2f}"


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def format_summary(report: dict[str, Any]) -> str:
    """Per-metric count, mean and percentiles, throughput and errors by kind."""
    req = report["requests"]
    cols = ["mean"] + [pct_label(p) for p in SUMMARY_PCTS]
    lines = [f"LLM load test: model {report['model']}, {req['total']} requests in {report['window_s']:.1f} s"
             f" ({'streaming' if report['stream'] else 'non-streaming'})",
             f"{'metric':<8}{'count':>9}" + "".join(f"{c:>10}" for c in cols) + "   (ms)"]
    for m in METRICS:
        s = report["metrics"][m]
        lines.append(f"{LABELS[m]:<8}{s['count']:>9}" + "".join(_ms(s[c]) for c in cols))
    tp = report["throughput"]
    tok = report["tokens"]
    visible = "" if tok.get("visible", tok["output"]) == tok["output"] else \
        f"; visible {tok['visible']}, {_rate(tp.get('visible_tokens_per_s'))} tok/s"
    lines.append(f"output tokens: {tok['output']} ({_rate(tp['output_tokens_per_s'])} tok/s{visible})   "
                 f"requests: {req['ok']} ok, {req['failed']} failed ({_rate(tp['requests_per_s'])} req/s)")
    failures = {k: n for k, n in req["failures"].items() if n}
    lines.append("failures: " + (", ".join(f"{FAILURE_LABELS[k]} {n}" for k, n in failures.items())
                                 if failures else "none"))
    errors = req["errors_by_kind"]
    lines.append("errors by kind: " + (", ".join(f"{k}: {n}" for k, n in errors.items()) if errors else "none"))
    if req["retries_429"]:
        lines.append(f"429 retries (--retry-429): {req['retries_429']}, {req['retry_wait_s']:.1f} s waited in all")
    if req.get("unfinished"):
        lines.append(f"unfinished: {req['unfinished']} requests still waited for their answers when the run stopped "
                     "(in no figure; --llm-timeout makes a slow answer a timeout failure)")
    ts = report.get("timestamps") or {}
    if ts.get("source"):
        lines.append("timestamps: " + TIMESTAMP_TEXT[ts["source"]].format(**ts))
    lines += _measurement_error_lines(report.get("measurement_error"))
    lines += workload_lines(report.get("workload"))
    warmup = report.get("warmup") or {}
    if warmup.get("requests"):
        lines.append(f"warm-up (--llm-warmup {warmup['setting']}): {warmup['requests']} requests left out of "
                     "every figure above")
    return "\n".join(lines)


def _num(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _spec(d: Any) -> str:
    return d["spec"] if isinstance(d, dict) else str(d)


def workload_lines(w: dict[str, Any] | None) -> list[str]:
    """The workload in the console summary: what it was, what it realised, cache, turns, replay lateness."""
    if not w:
        return []
    src = w["source"]
    if src == "trace":
        t = w["trace"]
        head = f"workload: trace {w['file']} ({w['entries']} requests, Mooncake format, blocks of " \
               f"{t['block_tokens']} tokens, replayed at {t['speed']:g}x over {t['duration_s']:.1f} s)"
    else:
        if src == "dataset":
            skipped = f", {w['skipped']} skipped" if w.get("skipped") else ""
            head = f"workload: dataset {w['file']} ({w['format']}, {w['entries']} entries{skipped}); " \
                   f"max tokens {_spec(w['max_tokens'])} where an entry gives none"
        else:
            head = f"workload: synthetic, prompt tokens {_spec(w['prompt_tokens'])}, max tokens " \
                   f"{_spec(w['max_tokens'])}"
        if w.get("shared_prefix"):
            sp = w["shared_prefix"]
            head += f"; shared prefix {sp['tokens']} tokens x {sp['groups']} group{'s' if sp['groups'] > 1 else ''}"
        if w.get("turns", 1) > 1:
            head += f"; {w['turns']} turns, think time {_spec(w['think_time_s'])} s"
    lines = [head + f"; seed {w['seed']}"]
    r = w["realised"]
    p, o = r["prompt_tokens"], r["output_tokens"]
    if r["requests"]:
        lines.append(f"  realised over {r['requests']} requests: prompt tokens mean {_num(p['mean'], 1)} p50 "
                     f"{p['p50']} p90 {p['p90']} max {p['max']}; output tokens mean {_num(o['mean'], 1)} p50 "
                     f"{o['p50']} p90 {o['p90']} max {o['max']}")
    e = w["exact_output"]
    if e["refused"]:
        lines.append(f"  exact output: the server refused ignore_eos/min_tokens ({e['refused'][:120]}); the "
                     "refused request went out again without them, and no later request of the run sent them")
    elif e["requests_with_fields"]:
        lines.append(f"  exact output: ignore_eos and min_tokens sent with {e['requests_with_fields']} requests")
    if e["requests_checked"] and (e["requests_with_fields"] or e["refused"]):
        lines.append(f"  output lengths: {e['requests_exact']} of {e['requests_checked']} requests got exactly "
                     "the length they asked for")
    c = w.get("prefix_cache")
    if c and not c["cached_requests"]:
        lines.append(f"prefix cache: usage reported no cached prompt tokens ({c['requests']} requests)")
    elif c:
        tc, tu = c["ttft_cached_ms"], c["ttft_uncached_ms"]
        share = "-" if c["token_share"] is None else f"{c['token_share'] * 100:.1f}%"
        lines.append(f"prefix cache: {c['cached_requests']} of {c['requests']} requests "
                     f"({c['hit_share'] * 100:.1f}%) had cached prompt tokens, {share} of their prompt tokens; "
                     f"TTFT cached p50 {_ms(tc['p50'], 0)} p99 {_ms(tc['p99'], 0)} ms ({tc['count']}), "
                     f"uncached p50 {_ms(tu['p50'], 0)} p99 {_ms(tu['p99'], 0)} ms ({tu['count']})")
    if w.get("per_turn"):
        lines.append(f"{'turn':<6}{'requests':>9}{'ok':>7}{'prompt tok':>12}{'TTFT mean':>11}{'p50':>10}"
                     f"{'p90':>10}{'p99':>10}   (ms)")
        for t in w["per_turn"]:
            f = t["ttft_ms"]
            lines.append(f"{t['turn']:<6}{t['requests']:>9}{t['ok']:>7}{_num(t['prompt_tokens_mean'], 1):>12}"
                         f"{_ms(f['mean'], 11)}{_ms(f['p50'])}{_ms(f['p90'])}{_ms(f['p99'])}")
    rp = w.get("replay")
    if rp:
        late, fi = rp["lateness_ms"], rp["from_intended_ms"]
        lines.append(f"trace replay: {rp['requests']} requests sent late by p50 {_ms(late['p50'], 0)} p99 "
                     f"{_ms(late['p99'], 0)} max {_ms(late['max'], 0)} ms; from the intended send time "
                     f"(coordinated omission corrected): TTFT p50 {_ms(fi['ttft']['p50'], 0)} p99 "
                     f"{_ms(fi['ttft']['p99'], 0)} ms, E2E p50 {_ms(fi['e2e']['p50'], 0)} p99 "
                     f"{_ms(fi['e2e']['p99'], 0)} ms")
    return lines


def _measurement_error_lines(err: dict[str, Any] | None) -> list[str]:
    if err is None:
        return []
    if not err["traced_requests"]:
        return ["measurement error: no server trace came back (--llm-trace needs an llmsim server that answers "
                "x-llmsim-trace)"]
    t, i = err["ttft_ms"], err["itl_ms"]
    lines = [f"measurement error (client - server, {err['traced_requests']} traced requests): "
             f"TTFT p50 {_ms(t['p50'], 0)} p99 {_ms(t['p99'], 0)} ms, "
             f"ITL per gap p50 {_ms(i['p50'], 0)} p99 {_ms(i['p99'], 0)} ms (|error| p99 {_ms(i['abs_p99'], 0)} ms)"]
    if err["mismatched_traces"]:
        lines.append(f"  {err['mismatched_traces']} traces counted other content events than the client "
                     "(their TTFT is compared, not their gaps)")
    if err["load_generator_bottleneck"]:
        worst = max(i["abs_p99"] or 0.0, t.get("spread_p99_p50") or 0.0)
        lines.append(f"The load generator, not the server, is the bottleneck: its own measurement error "
                     f"({worst:.2f} ms at p99) is above --llm-trace-limit {err['limit_ms']:g} ms, so spread the "
                     "users over more Locust processes (--processes N) or machines.")
    return lines


def not_scored_reason(report: dict[str, Any]) -> str:
    if report["profile"] is None:
        return f"no profile covers model {report['model']} (give --llm-profile to score)"
    return "--llm-score off"


def verdict_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """The verdict table as rows of strings: the console and the web UI tab show the same rows."""
    if report.get("score") == "off":
        return [{"check": "RESULT", "measured": "", "expected": "", "allowed": "",
                 "verdict": f"not scored: {not_scored_reason(report)}"}]
    rows = []
    for v in report["verdicts"]:
        rows.append({
            "check": f"{LABELS[v['metric']]} {v['stat']}",
            "measured": _ms(v["measured"], 0),
            "expected": _ms(v["expected"], 0),
            "allowed": "-" if v["allowed"] is None else f"±{v['allowed']:.2f}",
            "verdict": v["verdict"] + (f" ({v['note']})" if v["note"] else ""),
        })
    for s in report["slo"]:
        rows.append({
            "check": f"SLO {s['key']}",
            "measured": _ms(s["measured"], 0),
            "expected": f"<= {s['limit_ms']:g}",
            "allowed": "",
            "verdict": s["verdict"],
        })
    g = report["goodput"]
    share = "-" if g["share"] is None else f"{g['share'] * 100:.1f}%"
    rows.append({"check": "goodput", "measured": f"{g['good_requests']}/{g['requests']} ({share})",
                 "expected": "", "allowed": "", "verdict": f"{_rate(g['rate_per_s'])} good req/s"})
    load = report.get("load") or {}
    if load.get("itl_multiplier", 1.0) != 1.0:
        rows.append({"check": "load model", "measured": f"{load['concurrency']:.1f} in flight", "expected": "",
                     "allowed": "", "verdict": f"expected ITL x{load['itl_multiplier']:.3f}"})
    for warning in report.get("warnings", []):
        rows.append({"check": "warning", "measured": "", "expected": "", "allowed": "", "verdict": warning})
    for note in report["notes"]:
        rows.append({"check": "run", "measured": "", "expected": "", "allowed": "", "verdict": f"FAIL ({note})"})
    rows.append({"check": "RESULT", "measured": "", "expected": "", "allowed": "", "verdict": report["verdict"]})
    return rows


VERDICT_COLUMNS = (("check", "check"), ("measured", "measured ms"), ("expected", "expected ms"),
                   ("allowed", "allowed ms"), ("verdict", "verdict"))


def format_verdicts(report: dict[str, Any]) -> str:
    if report.get("score") == "off":
        return (f"Not scored: {not_scored_reason(report)}. Measure only: the figures above are the result, "
                "and the exit code does not depend on them.")
    rows = verdict_rows(report)
    widths = {k: max(len(title), *(len(r[k]) for r in rows)) for k, title in VERDICT_COLUMNS}
    head = f"Scored against profile {report['profile']} ({report['profile_source']}), tolerance " \
           f"{report['tolerance']['rel'] * 100:g}%,{report['tolerance']['abs_ms']:g}ms"
    lines = [head, "  ".join(f"{title:<{widths[k]}}" for k, title in VERDICT_COLUMNS)]
    for r in rows:
        lines.append("  ".join(f"{r[k]:<{widths[k]}}" for k, _ in VERDICT_COLUMNS).rstrip())
    return "\n".join(lines)


def install_web_ui(web_ui: Any, current_report: Callable[[], dict[str, Any] | None]) -> None:
    """Add an "LLM scores" tab to Locust's web UI with the verdict table, refreshed with the stats."""
    from flask import request  # Locust's web UI is Flask; imported here so scoring stays Flask-free

    web_ui.template_args["extendedTabs"] = [
        *web_ui.template_args.get("extendedTabs", []), {"title": "LLM scores", "key": UI_TAB_KEY}]
    web_ui.template_args["extendedTables"] = [
        *web_ui.template_args.get("extendedTables", []),
        {"key": UI_TAB_KEY, "structure": [{"key": k, "title": t} for k, t in VERDICT_COLUMNS]}]

    @web_ui.app.after_request
    def _add_scores(response):  # noqa: ANN001 - a Flask response
        if request.path != "/stats/requests" or response.status_code != 200:
            return response
        report = current_report()
        data = response.get_json(silent=True)
        if data is None:
            return response
        rows = verdict_rows(report) if report else []
        data["extended_stats"] = [*data.get("extended_stats", []), {"key": UI_TAB_KEY, "data": rows}]
        response.set_data(json.dumps(data))
        return response

    @web_ui.app.route("/llmsim/report")
    def _llm_report():  # the same report as JSON, for scripts polling a running test
        from flask import jsonify

        return jsonify(current_report() or {})
