"""The capacity chart: TTFT p99, ITL p99 and output tokens/s against users, with the SLO and the capacity.

`chart_panels()` decides what is drawn; two renderers draw it. The SVG one
needs nothing beyond the standard library and always runs; the PNG one uses
matplotlib when it is installed (the `chart` extra) and is skipped otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

MEASURED, SERVICE, PREDICTED = "measured", "service", "predicted"
COLORS = {MEASURED: "#1f77b4", SERVICE: "#17becf", PREDICTED: "#7f7f7f"}
MET_COLOR, BROKEN_COLOR, LIMIT_COLOR, CAPACITY_COLOR = "#2ca02c", "#d62728", "#d62728", "#2ca02c"


@dataclass
class Series:
    label: str
    kind: str
    """MEASURED (solid, points coloured by verdict), SERVICE or PREDICTED (dashed)."""
    points: list[tuple[float, float]]
    met: list[bool] = field(default_factory=list)


@dataclass
class Panel:
    title: str
    series: list[Series]
    limit: float | None = None
    """The SLO limit drawn as a horizontal line, when the SLO bounds this very statistic."""


def chart_panels(result: dict[str, Any]) -> tuple[list[Panel], float | None]:
    """The three panels and the capacity (users) to mark."""
    steps = result["steps"]
    open_loop = result["mode"] == "open"

    def series(label: str, kind: str, key: str, source: str | None = None) -> Series:
        pts, met = [], []
        for r in steps:
            row = r if source is None else (r.get(source) or {})
            if row.get(key) is not None:
                pts.append((float(r["users"]), float(row[key])))
                met.append(bool(r["meets_slo"]))
        return Series(label, kind, pts, met)

    ttft_key = "ttft_intended_p99" if open_loop else "ttft_p99"
    ttft = [series("from intended send" if open_loop else "measured", MEASURED, ttft_key)]
    if open_loop:
        ttft.append(series("service time", SERVICE, "ttft_p99"))
    ttft.append(series("profile predicts", PREDICTED, ttft_key, "predicted"))
    panels = [
        Panel("TTFT p99 (ms)", ttft, result["slo"].get("ttft_p99_ms")),
        Panel("ITL p99 (ms)", [series("measured", MEASURED, "itl_p99"),
                               series("profile predicts", PREDICTED, "itl_p99", "predicted")],
              result["slo"].get("itl_p99_ms")),
        Panel("output tokens/s", [series("measured", MEASURED, "output_tok_s"),
                                  series("profile predicts", PREDICTED, "output_tok_s", "predicted")]),
    ]
    cap = result.get("capacity")
    return panels, (float(cap["users"]) if cap else None)


def nice_ticks(lo: float, hi: float, n: int = 5, *, integer: bool = False) -> list[float]:
    """About n round tick values covering [lo, hi] (whole numbers only when `integer`, e.g. users)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, math.ceil(step))
    first = math.floor(lo / step) * step
    ticks: list[float] = []
    t = first
    while not ticks or ticks[-1] < hi - step * 1e-9:  # the last tick is at or above hi
        ticks.append(round(t, 10))
        t += step
    return ticks


def _title(result: dict[str, Any]) -> str:
    mode = "open loop" if result["mode"] == "open" else "closed loop"
    return f"Capacity test: {result['profile']} ({mode})"


# --------------------------------------------------------------------------- SVG

W, PANEL_H, LEFT, RIGHT, TOP, GAP = 760, 190, 70, 170, 56, 50


def render_svg(result: dict[str, Any]) -> str:
    """The chart as a standalone SVG document."""
    panels, capacity = chart_panels(result)
    xs = [p[0] for panel in panels for s in panel.series for p in s.points] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    xticks = nice_ticks(x0, x1, integer=True)
    x0, x1 = min(x0, xticks[0]), max(x1, xticks[-1])
    height = TOP + len(panels) * (PANEL_H + GAP) + 10
    plot_w = W - LEFT - RIGHT
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" '
           f'viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{height}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{escape(_title(result))}</text>']

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    for i, panel in enumerate(panels):
        top = TOP + i * (PANEL_H + GAP)
        ys = [p[1] for s in panel.series for p in s.points] + ([panel.limit] if panel.limit else [])
        yticks = nice_ticks(0.0, max(ys or [1.0]) * 1.05)
        y1 = yticks[-1]

        def sy(y: float, top: float = top, y1: float = y1) -> float:
            return top + PANEL_H - y / y1 * PANEL_H

        out.append(f'<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#999"/>')
        out.append(f'<text x="{LEFT}" y="{top - 8}" font-size="13">{escape(panel.title)}</text>')
        for t in yticks:
            out.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>')
            out.append(f'<text x="{LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
        for t in xticks:
            out.append(f'<text x="{sx(t):.1f}" y="{top + PANEL_H + 15}" text-anchor="middle">{t:g}</text>')
        legend, drawn = [], []
        if panel.limit is not None:
            out.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{sy(panel.limit):.1f}" y2="{sy(panel.limit):.1f}" '
                       f'stroke="{LIMIT_COLOR}" stroke-dasharray="6 4"/>')
            legend.append((f"SLO {panel.limit:g}", LIMIT_COLOR, "6 4"))
        if capacity is not None:
            out.append(f'<line x1="{sx(capacity):.1f}" x2="{sx(capacity):.1f}" y1="{top}" y2="{top + PANEL_H}" '
                       f'stroke="{CAPACITY_COLOR}" stroke-dasharray="2 3"/>')
            legend.append((f"capacity {capacity:g}", CAPACITY_COLOR, "2 3"))
        for s in panel.series:
            if not s.points:
                continue
            dash = "" if s.kind == MEASURED else ' stroke-dasharray="5 3"'
            pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
            out.append(f'<polyline points="{pts}" fill="none" stroke="{COLORS[s.kind]}" stroke-width="2"{dash}/>')
            if s.kind == MEASURED:
                for (x, y), ok in zip(s.points, s.met, strict=True):
                    out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" '
                               f'fill="{MET_COLOR if ok else BROKEN_COLOR}"/>')
            drawn.append((s.label, COLORS[s.kind], "5 3" if dash else ""))
        for j, (label, color, dasharray) in enumerate(drawn + legend):
            ly = top + 14 + j * 18
            lx = LEFT + plot_w + 12
            da = f' stroke-dasharray="{dasharray}"' if dasharray else ""
            out.append(f'<line x1="{lx}" x2="{lx + 22}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" '
                       f'stroke-width="2"{da}/>')
            out.append(f'<text x="{lx + 28}" y="{ly}">{escape(label)}</text>')
    out.append(f'<text x="{LEFT + plot_w / 2}" y="{height - 4}" text-anchor="middle">users</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_svg(result: dict[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_svg(result))


# --------------------------------------------------------------------------- PNG

def write_png(result: dict[str, Any], path: str) -> bool:
    """Draw the chart with matplotlib; False (nothing written) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    panels, capacity = chart_panels(result)
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), sharex=True)
    for ax, panel in zip(axes, panels, strict=True):
        for s in panel.series:
            if not s.points:
                continue
            xs, ys = zip(*s.points, strict=True)
            style = "-" if s.kind == MEASURED else "--"
            ax.plot(xs, ys, style, color=COLORS[s.kind], label=s.label, linewidth=2, zorder=2)
            if s.kind == MEASURED:
                ax.scatter(xs, ys, c=[MET_COLOR if ok else BROKEN_COLOR for ok in s.met], zorder=3, s=28)
        if panel.limit is not None:
            ax.axhline(panel.limit, color=LIMIT_COLOR, linestyle="--", linewidth=1, label=f"SLO {panel.limit:g}")
        if capacity is not None:
            ax.axvline(capacity, color=CAPACITY_COLOR, linestyle=":", linewidth=1.5, label=f"capacity {capacity:g}")
        ax.set_title(panel.title, loc="left", fontsize=11)
        ax.set_ylim(bottom=0)
        ax.grid(True, color="#eee")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    axes[-1].set_xlabel("users")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(_title(result))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
