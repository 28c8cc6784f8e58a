"""GET /llmsim/: the self-contained live page, rendered by headless Chromium under a little load.

The page writes its latest values into elements with ids and each chart's point count into its
SVG's data-points; the DOM Chromium dumps shows them. A screenshot is kept as an artifact in
reports/dashboard.png (the directory is git-ignored).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import gevent
import pytest
import requests

from llmsim.testing import run_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPORTS = Path(__file__).resolve().parent.parent / "reports"


def test_dashboard_is_one_self_contained_page():
    with run_server(latency_profile="instant") as url:
        r = requests.get(url + "/llmsim/", timeout=10)
        bare = requests.get(url + "/llmsim", timeout=10, allow_redirects=False)  # the same page, no HTML redirect
        assert bare.status_code == 200 and bare.text == r.text
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<script>" in page and "<svg" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing loaded from elsewhere
    assert 'fetch(STATS_URL' in page


def chromium(args: list[str], tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", f"--user-data-dir={tmp_path / name}", *args],
        capture_output=True, text=True, timeout=120)


def element(dom: str, ident: str) -> str:
    m = re.search(rf'id="{ident}"[^>]*>([^<]*)<', dom)
    assert m, ident
    return m.group(1)


def number(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_dashboard_charts_live_data_in_headless_chromium(tmp_path):
    config = {"errors": {"models": {"gpt-4o-mini": {"server_error": 1.0}}}}
    with run_server(latency_profile="fast", target_tokens=40, config=config) as url:
        stop = gevent.event.Event()

        def load(model: str) -> None:
            while not stop.is_set():
                r = requests.post(url + "/v1/chat/completions", timeout=30, json={
                    "model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
                if r.status_code != 200:
                    gevent.sleep(0.1)  # the failing model: a few errors a second, not a busy loop

        users = [gevent.spawn(load, "gpt-4o") for _ in range(4)] + [gevent.spawn(load, "gpt-4o-mini")]
        try:
            gevent.sleep(1.5)  # a sampler tick or two, so rates exist from the first poll
            page = f"{url}/llmsim/?interval=500"
            dom_run = chromium(["--virtual-time-budget=6000", "--dump-dom", page], tmp_path, "dom")
            REPORTS.mkdir(exist_ok=True)
            shot = REPORTS / "dashboard.png"
            shot_run = chromium(["--window-size=1280,1000", "--virtual-time-budget=6000",
                                 f"--screenshot={shot}", page], tmp_path, "shot")
        finally:
            stop.set()
            gevent.joinall(users, timeout=30)
    dom = dom_run.stdout
    assert 'id="chart-rps"' in dom, dom_run.stderr[-2000:]
    polls = int(re.search(r'<body data-polls="(\d+)"', dom).group(1))
    assert polls >= 2, polls
    assert number(element(dom, "v-rps")) > 0
    assert number(element(dom, "v-tps")) > 0
    assert number(element(dom, "v-requests")) > 0
    for ident in ("v-ttft-p50", "v-ttft-p99", "v-itl-p50", "v-itl-p99"):
        assert number(element(dom, ident)) > 0, ident
    for chart in ("chart-rps", "chart-tps", "chart-load", "chart-ttft", "chart-itl", "chart-errors"):
        m = re.search(rf'<svg id="{chart}"[^>]*data-points="(\d+)"[^>]*data-max="([\d.e+-]+)"', dom)
        assert m, chart
        assert int(m.group(1)) >= 2 and float(m.group(2)) > 0, (chart, m.groups())
    assert "server_error" in re.search(r'id="legend-errors"[^>]*>(.*?)</div>', dom, flags=re.S).group(1)
    assert shot_run.returncode == 0 and shot.exists() and shot.stat().st_size > 10_000, shot_run.stderr[-2000:]
