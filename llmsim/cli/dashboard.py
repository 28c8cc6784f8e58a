"""GET /llmsim/: one self-contained page (dashboard.html: inline JS and SVG, no CDN) charting live
req/s, tokens/s, active and queued requests, TTFT and ITL p50/p99 and errors by kind, polling
/llmsim/stats. It writes each latest value into an element with an id (v-rps, v-tps, ...) and each
chart's point count into its SVG's data-points, so a headless browser's DOM shows what it drew."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files


@lru_cache(maxsize=1)
def dashboard_html() -> str:
    return files("llmsim.cli").joinpath("dashboard.html").read_text(encoding="utf-8")
