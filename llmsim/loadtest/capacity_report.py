"""The capacity test's result: one dict, printed as a table, written as CSV and JSON, drawn as a chart."""

from __future__ import annotations

import csv
import os
from typing import Any

from .chart import write_png, write_svg
from .report import write_json

CSV_COLUMNS = (
    ("step", "step"), ("users", "users"), ("offered_rps", "offered_rps"), ("window_s", "window_s"),
    ("requests", "requests"), ("failed", "failed"), ("error_rate", "error_rate"), ("rps", "rps"),
    ("output_tok_s", "output_tok_s"),
    ("ttft_p50", "ttft_p50_ms"), ("ttft_p99", "ttft_p99_ms"), ("itl_p50", "itl_p50_ms"), ("itl_p99", "itl_p99_ms"),
    ("e2e_p50", "e2e_p50_ms"), ("e2e_p99", "e2e_p99_ms"),
    ("ttft_intended_p50", "ttft_intended_p50_ms"), ("ttft_intended_p99", "ttft_intended_p99_ms"),
    ("e2e_intended_p99", "e2e_intended_p99_ms"), ("send_delay_p99", "send_delay_p99_ms"),
    ("goodput", "goodput"), ("goodput_rps", "goodput_rps"), ("in_flight", "in_flight"),
    ("meets_slo", "meets_slo"), ("broken", "broken"),
)
PREDICTED_COLUMNS = (("ttft_p99", "predicted_ttft_p99_ms"), ("itl_p99", "predicted_itl_p99_ms"),
                     ("meets_slo", "predicted_meets_slo"))
PREDICTED_KEYS = ("rps", "output_tok_s", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99", "ttft_intended_p99",
                  "error_rate", "goodput", "meets_slo", "broken")


def build_result(rows: dict[int, dict[str, Any]], predicted: dict[int, dict[str, Any]], *, settings: Any,
                 profile: Any, model: str, host: str | None, stop_reason: str) -> dict[str, Any]:
    """Every judged step, the capacity (largest step that met the SLO) and what the profile predicts."""
    steps = []
    for index in sorted(rows):
        row = dict(rows[index])
        if index in predicted:
            row["predicted"] = {k: predicted[index].get(k) for k in PREDICTED_KEYS}
        steps.append(row)
    met = [r for r in steps if r["meets_slo"]]
    best = max(met, key=lambda r: r["users"]) if met else None
    capacity = None if best is None else {k: best[k] for k in ("users", "step", "offered_rps", "rps",
                                                                 "output_tok_s", "goodput_rps")}
    pred_met = [r["users"] for r in steps if r.get("predicted", {}).get("meets_slo")]
    plan = settings.plan
    cap_users = capacity["users"] if capacity else 0
    return {
        "model": model,
        "profile": profile.name,
        "profile_source": profile.source,
        "host": host,
        "mode": "open" if settings.open_loop else "closed",
        "arrival_rate_per_user": settings.arrival_rate,
        "max_in_flight": settings.max_in_flight if settings.open_loop else None,
        "plan": {"start_users": plan.start_users, "step_users": plan.step_users, "step_time_s": plan.step_time_s,
                 "max_users": plan.max_users, "stop_after": plan.stop_after},
        "slo": {c.key: c.limit_ms for c in profile.slo},
        "max_error_rate": settings.max_error_rate,
        "steps": steps,
        "capacity": capacity,
        "predicted_capacity": {"users": max(pred_met)} if pred_met else None,
        "stop_reason": stop_reason,
        "min_capacity": settings.min_capacity,
        "min_capacity_met": None if settings.min_capacity is None else cap_users >= settings.min_capacity,
    }


# --------------------------------------------------------------------------- files

def write_outputs(result: dict[str, Any], prefix: str) -> dict[str, str]:
    """PREFIX.csv, PREFIX.json, PREFIX.svg and, when matplotlib is installed, PREFIX.png; returns the paths."""
    if d := os.path.dirname(prefix):
        os.makedirs(d, exist_ok=True)
    files = {"csv": f"{prefix}.csv", "json": f"{prefix}.json", "svg": f"{prefix}.svg"}
    write_csv(result, files["csv"])
    write_svg(result, files["svg"])
    if write_png(result, f"{prefix}.png"):
        files["png"] = f"{prefix}.png"
    result["files"] = files
    write_json(result, files["json"])
    return files


def write_csv(result: dict[str, Any], path: str) -> None:
    """One line per judged step; empty cells where a figure does not apply (open-loop columns in a closed loop)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([title for _, title in CSV_COLUMNS] + [title for _, title in PREDICTED_COLUMNS])
        for row in result["steps"]:
            pred = row.get("predicted") or {}
            w.writerow([_cell(row.get(k)) for k, _ in CSV_COLUMNS] + [_cell(pred.get(k)) for k, _ in PREDICTED_COLUMNS])


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.4f}".rstrip("0").rstrip(".") if v == v else ""
    if isinstance(v, list):
        return " ".join(map(str, v))
    return str(v)


# --------------------------------------------------------------------------- console

def _num(v: float | None, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.{digits}f}"


def _share(v: float | None, width: int) -> str:
    return f"{'-':>{width}}" if v is None else f"{v * 100:>{width - 1}.1f}%"


def _verdict(row: dict[str, Any]) -> str:
    text = "ok" if row["meets_slo"] else "BROKEN (" + ", ".join(row["broken"]) + ")"
    return text if row.get("complete", True) else text + " [drain timed out]"


def step_line(row: dict[str, Any]) -> str:
    """One step as a log line, when its verdict is in."""
    return (f"step {row['step']} ({row['users']} users): {row['requests']} requests, "
            f"{_num(row['rps'], 0, 2)} req/s, TTFT p99 {_num(row.get('ttft_intended_p99', row['ttft_p99']), 0)} ms, "
            f"ITL p99 {_num(row['itl_p99'], 0, 2)} ms, SLO {_verdict(row)}")


def format_table(result: dict[str, Any]) -> str:
    """The step table, the capacity, the profile's prediction and why the run stopped."""
    open_loop = result["mode"] == "open"
    plan = result["plan"]
    slo = ", ".join(f"{k} <= {v:g}" for k, v in result["slo"].items())
    mode = (f"open loop, Poisson arrivals at {result['arrival_rate_per_user']:g} req/s per user" if open_loop
            else "closed loop")
    lines = [f"Capacity test: model {result['model']}, profile {result['profile']} ({result['profile_source']}), "
             f"{mode}",
             f"steps: {plan['start_users']} users, +{plan['step_users']} per step up to {plan['max_users']}, "
             f"{plan['step_time_s']:g} s measured per step; SLO: {slo}, errors <= {result['max_error_rate'] * 100:g}%"]
    head = f"{'step':>4} {'users':>6}"
    if open_loop:
        head += f" {'offered':>8}"
    head += f" {'req/s':>8} {'tok/s':>9} {'TTFT p50':>9} {'TTFT p99':>9}"
    if open_loop:
        head += f" {'svc p99':>8}"
    head += f" {'ITL p50':>8} {'ITL p99':>8} {'errors':>7} {'goodput':>8}  SLO"
    lines.append(head + "      (ms; open loop: TTFT from the intended send time)" if open_loop else head + "      (ms)")
    for r in result["steps"]:
        line = f"{r['step']:>4} {r['users']:>6}"
        if open_loop:
            line += f" {_num(r['offered_rps'], 8, 2)}"
        prefix = "ttft_intended" if open_loop else "ttft"
        ttft50, ttft99 = r[f"{prefix}_p50"], r[f"{prefix}_p99"]
        line += f" {_num(r['rps'], 8, 2)} {_num(r['output_tok_s'], 9)} {_num(ttft50, 9)} {_num(ttft99, 9)}"
        if open_loop:
            line += f" {_num(r['ttft_p99'], 8)}"
        line += (f" {_num(r['itl_p50'], 8, 2)} {_num(r['itl_p99'], 8, 2)} {_share(r['error_rate'], 7)}"
                 f" {_share(r['goodput'], 8)}  {_verdict(r)}")
        lines.append(line)
    if not result["steps"]:
        lines.append("(no step was judged)")
    cap = result["capacity"]
    if cap is None:
        lines.append("capacity: none - no step met the SLO")
    else:
        offered = f"{cap['offered_rps']:.2f} req/s offered, " if open_loop else ""
        lines.append(f"capacity: {cap['users']} users (step {cap['step']}: {offered}{cap['rps']:.2f} req/s, "
                     f"{cap['output_tok_s']:.1f} output tok/s) - the largest step that met the SLO")
    pred = result["predicted_capacity"]
    lines.append(f"profile {result['profile']} predicts: "
                 + (f"{pred['users']} users" if pred else "no step within the SLO")
                 + (" (prediction interrupted: only the steps predicted before Ctrl-C)"
                    if result.get("prediction_interrupted") else ""))
    lines.append(f"stopped: {result['stop_reason']}")
    if result["min_capacity"] is not None:
        lines.append(f"--min-capacity {result['min_capacity']}: " + ("met" if result["min_capacity_met"] else
                                                                     "NOT met (exit code 3)"))
    files = result.get("files") or {}
    if files:
        lines.append("written: " + ", ".join(files.values()))
    return "\n".join(lines)
