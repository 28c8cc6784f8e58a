"""Statistics across `--workers`: one snapshot file per worker in a shared directory, merged on demand.

Each worker process rewrites `worker-<index>.json` in the directory named by
LLMSIM_WORKER_DIR about every half second and once more when it exits. The
file holds what that worker's own `GET /llmsim/stats` and `GET /metrics`
render. Whichever worker answers one of those paths merges its fresh view
with the other workers' files, so any worker (and so any scrape through a
load balancer) reports the totals plus a per-worker breakdown.

When a worker dies, the supervisor folds its last snapshot into
`retired.json`: its counters stay in the totals (a restart never makes a
total go down, so Prometheus' rate() sees no reset), its gauges go away.

Merge rules, for both forms:
- counters (JSON numbers; Prometheus counters, histograms, summaries) add up;
- gauges add up in JSON (`active_streams`, a scheduler's `active`, `waiting`,
  `max_concurrent`, `queue_limit`: the fleet's totals), and in Prometheus
  text each live worker keeps its own series with a `worker` label
  (prometheus_client's multiprocess "all" mode), so `sum()` gives the total;
- `uptime_s`, `multiplier`, `block_tokens` and the `max_*` peaks are the largest over workers;
- a `hit_rate` is worked out again from the summed `hits_total` / `queries_total` beside it
  (every worker keeps its own prefix cache: the fleet's rate is over all their lookups).

Metric families whose names start with one of PROCESS_LOCAL_PREFIXES (llmsim's
own and the vLLM-named ones, all rendered by each process from its own
statistics) are merged here. Any other family passes through as the answering
worker rendered it: a metric kept with prometheus_client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, which the supervisor points at the `prometheus/`
folder of the same directory) already covers every worker.

Nothing here imports Flask or gevent: the supervisor uses it too.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKER_DIR_ENV = "LLMSIM_WORKER_DIR"
WORKER_INDEX_ENV = "LLMSIM_WORKER_INDEX"
PROMETHEUS_DIR = "prometheus"
RETIRED = "retired.json"
SNAPSHOT_PERIOD_S = 0.5
PROCESS_LOCAL_PREFIXES = ("llmsim_", "vllm:")
"""Metric families each worker renders for itself alone; merged across workers (see the module doc)."""

LIVE_ONLY = frozenset({"active_streams", "active", "waiting", "max_concurrent", "queue_limit", "multiplier",
                       "uptime_s", "cached_tokens", "entries", "capacity_tokens"})
"""JSON keys that describe a worker now: a dead worker's value is dropped from the totals."""
LARGEST = frozenset({"uptime_s", "multiplier", "max_waiting", "max_active", "block_tokens"})
"""JSON keys whose total is the largest value over the workers, not the sum."""


def snapshot_path(directory: str | os.PathLike, index: int) -> Path:
    return Path(directory) / f"worker-{index}.json"


def json_bytes(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def replace_file(path: Path, data: bytes) -> None:
    """Replace `path` atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, doc: dict) -> None:
    replace_file(path, json_bytes(doc))


def read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


@dataclass
class Snapshot:
    """What one worker last published."""

    index: int
    pid: int
    started: float
    written: float
    stats: dict = field(default_factory=dict)
    metrics: str = ""

    def to_dict(self) -> dict:
        return {"index": self.index, "pid": self.pid, "started": self.started, "written": self.written,
                "stats": self.stats, "metrics": self.metrics}

    @classmethod
    def from_dict(cls, doc: dict) -> Snapshot | None:
        try:
            return cls(int(doc["index"]), int(doc["pid"]), float(doc["started"]), float(doc["written"]),
                       doc.get("stats") or {}, doc.get("metrics") or "")
        except (KeyError, TypeError, ValueError):
            return None


def read_snapshots(directory: str | os.PathLike) -> list[Snapshot]:
    """Every live worker's last snapshot, by index."""
    out = []
    for path in sorted(Path(directory).glob("worker-*.json")):
        doc = read_json(path)
        snap = Snapshot.from_dict(doc) if doc else None
        if snap is not None:
            out.append(snap)
    return sorted(out, key=lambda s: s.index)


def read_retired(directory: str | os.PathLike) -> dict:
    """Counters of the workers that died: {"count", "stats", "metrics"}."""
    return read_json(Path(directory) / RETIRED) or {"count": 0, "stats": {}, "metrics": ""}


def retire(directory: str | os.PathLike, index: int) -> None:
    """Fold a dead worker's last snapshot into retired.json (counters only) and remove its file.

    Only the supervisor calls this, after the worker has exited and before its
    replacement starts, so nobody else writes either file meanwhile.
    """
    path = snapshot_path(directory, index)
    doc = read_json(path)
    snap = Snapshot.from_dict(doc) if doc else None
    retired = read_retired(directory)
    retired["count"] = int(retired.get("count", 0)) + 1
    if snap is not None:
        retired["stats"] = merge_stats([counters_only(snap.stats)], retired.get("stats") or {})
        retired["metrics"] = render(merge_families([parse_families(snap.metrics, keep_gauges=False),
                                                    parse_families(retired.get("metrics") or "")]))
    write_json(Path(directory) / RETIRED, retired)
    for leftover in Path(directory).glob(f".{path.name}.*.tmp"):
        leftover.unlink(missing_ok=True)
    path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- JSON (/llmsim/stats)

def counters_only(doc: dict) -> dict:
    """A stats document without the keys that describe a worker now (LIVE_ONLY)."""
    out: dict[str, Any] = {}
    for k, v in doc.items():
        if k in LIVE_ONLY:
            continue
        out[k] = counters_only(v) if isinstance(v, dict) else v
    return out


def _add(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict):
            sub = dst.get(k)
            if not isinstance(sub, dict):
                sub = dst[k] = {}
            _add(sub, v)
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            dst.setdefault(k, v)
        elif k in LARGEST:
            old = dst.get(k)
            dst[k] = v if not isinstance(old, (int, float)) else max(old, v)
        else:
            old = dst.get(k)
            total = v + (old if isinstance(old, (int, float)) and not isinstance(old, bool) else 0)
            dst[k] = round(total, 6) if isinstance(total, float) else total


def merge_stats(docs: Iterable[dict], retired: dict | None = None) -> dict:
    """Totals over stats documents (see the module doc for the rules); `retired` holds counters only."""
    out: dict[str, Any] = {}
    for doc in docs:
        _add(out, doc)
    if retired:
        _add(out, retired)
    _rates(out)
    return out


def _rates(doc: dict) -> None:
    """Work `hit_rate` out again from the summed hits and queries beside it (a sum of rates means nothing)."""
    if "hit_rate" in doc and isinstance(doc.get("queries_total"), (int, float)):
        queries, hits = doc["queries_total"], doc.get("hits_total") or 0
        doc["hit_rate"] = round(hits / queries, 6) if queries else 0.0
    for v in doc.values():
        if isinstance(v, dict):
            _rates(v)


def cluster_stats(own: Snapshot, others: list[Snapshot], retired: dict) -> dict:
    """The `/llmsim/stats` answer of a worker: the totals, then `workers` (one entry per live worker)."""
    snaps = sorted([own, *[s for s in others if s.index != own.index]], key=lambda s: s.index)
    totals = merge_stats([s.stats for s in snaps], retired.get("stats") or {})
    now = time.time()
    totals["workers"] = [{"worker": s.index, "pid": s.pid, "snapshot_age_s": round(max(0.0, now - s.written), 3),
                          **s.stats} for s in snaps]
    totals["worker_restarts"] = int(retired.get("count", 0))
    return totals


# --------------------------------------------------------------------------- Prometheus text (/metrics)

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(?:\s+\S+)?$")


@dataclass
class Family:
    name: str
    type: str = "untyped"
    help: str | None = None
    samples: dict[tuple[str, str], float] = field(default_factory=dict)  # (sample name, "{labels}") -> value


def _family_of(sample: str, current: Family | None) -> str | None:
    if current is None:
        return None
    if sample == current.name:
        return current.name
    if current.type in ("histogram", "summary", "counter") and sample.startswith(current.name + "_"):
        return current.name
    return None


def parse_families(text: str, keep_gauges: bool = True) -> dict[str, Family]:
    """Prometheus text exposition -> families in order of appearance."""
    fams: dict[str, Family] = {}
    current: Family | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                current = fams.setdefault(parts[2], Family(parts[2]))
                if parts[1] == "HELP":
                    current.help = parts[3] if len(parts) > 3 else ""
                else:
                    current.type = parts[3].strip() if len(parts) > 3 else "untyped"
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        try:
            number = float(value)
        except ValueError:
            continue
        fam_name = _family_of(name, current)
        if fam_name is None:
            current = fams.setdefault(name, Family(name))
            fam_name = name
        fam = fams[fam_name]
        key = (name, labels)
        fam.samples[key] = fam.samples.get(key, 0.0) + number
    if not keep_gauges:
        fams = {n: f for n, f in fams.items() if f.type != "gauge"}
    return fams


def merge_families(parts: Iterable[dict[str, Family]]) -> dict[str, Family]:
    """Add samples with the same name and labels; families keep their first HELP and TYPE."""
    out: dict[str, Family] = {}
    for fams in parts:
        for name, fam in fams.items():
            dst = out.get(name)
            if dst is None:
                dst = out[name] = Family(name, fam.type, fam.help)
            for key, v in fam.samples.items():
                dst.samples[key] = dst.samples.get(key, 0.0) + v
    return out


def with_label(labels: str, name: str, value: str) -> str:
    pair = f'{name}="{value}"'
    if not labels or labels == "{}":
        return "{" + pair + "}"
    return labels[:-1] + "," + pair + "}"


def _number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 2 ** 53:
        return str(int(v))
    return repr(v)


def render(fams: dict[str, Family]) -> str:
    lines: list[str] = []
    for fam in fams.values():
        if fam.help is not None:
            lines.append(f"# HELP {fam.name} {fam.help}")
        if fam.type != "untyped" or fam.help is not None:
            lines.append(f"# TYPE {fam.name} {fam.type}")
        lines += [f"{name}{labels} {_number(v)}" for (name, labels), v in fam.samples.items()]
    return "\n".join(lines) + ("\n" if lines else "")


def _process_local(name: str) -> bool:
    return name.startswith(PROCESS_LOCAL_PREFIXES)


def cluster_metrics(own_text: str, own: Snapshot, others: list[Snapshot], retired: dict,
                    between: Callable[[], object] | None = None) -> str:
    """The `/metrics` answer of a worker: process-local families merged over the workers (gauges per
    worker, with a `worker` label), every other family as this worker rendered it, then per-worker
    figures (`llmsim_workers`, `llmsim_worker_restarts_total`, `llmsim_worker_*_total{worker}`).

    `between()` is called after each worker's text is parsed and before the answer is rendered (each
    step is a fraction of a millisecond; a worker passes precise.run_due to write its streams then)."""
    def step() -> None:
        if between is not None:
            between()

    snaps = sorted([own, *[s for s in others if s.index != own.index]], key=lambda s: s.index)
    own_fams = parse_families(own_text)
    step()
    passthrough = {n: f for n, f in own_fams.items() if not _process_local(n)}
    summed: list[dict[str, Family]] = [parse_families(retired.get("metrics") or "", keep_gauges=False)]
    gauges: dict[str, Family] = {}
    for s in snaps:
        if s.index == own.index:
            parsed = own_fams
        else:
            parsed = parse_families(s.metrics)
            step()
        fams = {n: f for n, f in parsed.items() if _process_local(n)}
        summed.append({n: f for n, f in fams.items() if f.type != "gauge"})
        for n, f in fams.items():
            if f.type == "gauge":
                dst = gauges.setdefault(n, Family(n, f.type, f.help))
                for (sample, labels), v in f.samples.items():
                    dst.samples[(sample, with_label(labels, "worker", str(s.index)))] = v
    merged = merge_families(summed)
    for n, f in gauges.items():
        merged.setdefault(n, Family(n, f.type, f.help)).samples.update(f.samples)
    # Keep the order a single worker renders its families in.
    order = list(own_fams)
    ordered = {n: merged[n] for n in order if n in merged}
    ordered.update({n: f for n, f in merged.items() if n not in ordered})
    ordered.update(passthrough)
    extra = [Family("llmsim_workers", "gauge", "Worker processes serving now (llmsim serve --workers).",
                    {("llmsim_workers", ""): float(len(snaps))}),
             Family("llmsim_worker_restarts_total", "counter", "Workers that died and were restarted.",
                    {("llmsim_worker_restarts_total", ""): float(retired.get("count", 0))})]
    keys = sorted({k for s in snaps for k, v in s.stats.items() if k.endswith("_total")
                   and isinstance(v, (int, float)) and not isinstance(v, bool)})
    for k in keys:
        name = f"llmsim_worker_{k}"
        fam = Family(name, "counter", f"This worker's {k} (see /llmsim/stats).")
        for s in snaps:
            value = s.stats.get(k)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                fam.samples[(name, f'{{worker="{s.index}"}}')] = float(value)
        extra.append(fam)
    for fam in extra:
        ordered.setdefault(fam.name, fam)
    step()
    return render(ordered)
