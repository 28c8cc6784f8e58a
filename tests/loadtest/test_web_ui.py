"""The "LLM scores" tab in Locust's web UI, in-process with Environment(events=locust.events)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from contextlib import contextmanager

import pytest

import gevent
import locust
from locust.env import Environment

from llmsim.loadtest import plugin  # noqa: F401 - registers the listeners
from llmsim.loadtest.users import ChatCompletionsUser

from .locust_helpers import BUSY_TOLERANCE, PROFILES, within


class _User(ChatCompletionsUser):
    pass


def _options(**kw):
    from locust.argument_parser import parse_options

    # Locust's full parser; the plugin adds the --llm-* options through init_command_line_parser.
    return parse_options([f"--{k.replace('_', '-')}={v}" for k, v in kw.items()])


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


@contextmanager
def running_web_ui(mini_server, monkeypatch):
    """A local Locust runner with its web UI, the toolkit's tab installed; yields (port, runner)."""
    monkeypatch.setattr("sys.argv", ["locust"])  # the web UI re-reads Locust's own arguments from argv
    opts = _options(llm_model="mini-model", llm_profile=str(PROFILES / "mini.yaml"), max_tokens=8,
                    llm_tolerance=BUSY_TOLERANCE[1])
    env = Environment(user_classes=[_User], events=locust.events, host=mini_server.url, parsed_options=opts)
    runner = env.create_local_runner()
    web_ui = env.create_web_ui("127.0.0.1", 0)
    locust.events.init.fire(environment=env, runner=runner, web_ui=web_ui)
    try:
        gevent.sleep(0.2)
        yield web_ui.server.server_port, runner
    finally:
        runner.quit()
        web_ui.stop()
        env.llmsim.stop_server()


@pytest.mark.slow
def test_web_ui_tab_shows_the_verdict_table(mini_server, monkeypatch):
    with running_web_ui(mini_server, monkeypatch) as (port, runner):
        page = _get(f"http://127.0.0.1:{port}/").decode()
        assert "LLM scores" in page  # the tab is declared in the template args
        runner.start(4, spawn_rate=4)
        gevent.sleep(1.5)
        stats = json.loads(_get(f"http://127.0.0.1:{port}/stats/requests"))
        tables = {t["key"]: t["data"] for t in stats["extended_stats"]}
        rows = {r["check"]: r for r in tables["llmsim"]}
        assert rows["TTFT p50"]["verdict"] == "PASS"
        assert within(float(rows["TTFT p50"]["measured"]), 30.0)
        assert rows["RESULT"]["verdict"] == "PASS"
        report = json.loads(_get(f"http://127.0.0.1:{port}/llmsim/report"))
        assert report["profile"] == "lt-mini" and report["requests"]["ok"] > 0
        # Locust's own rows exist next to the toolkit's table.
        names = {s["name"] for s in stats["stats"]}
        assert {"/v1/chat/completions", "TTFT", "ITL"} <= names


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_web_ui_tab_renders_in_headless_chromium(mini_server, monkeypatch, tmp_path):
    with running_web_ui(mini_server, monkeypatch) as (port, runner):
        runner.start(4, spawn_rate=4)
        gevent.sleep(1.5)
        # ?tab=<key> opens the toolkit's tab; the page fetches /stats/requests and renders the table.
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom",
             f"http://127.0.0.1:{port}/?tab=llmsim"],
            capture_output=True, text=True, timeout=90)
    dom = proc.stdout
    assert "LLM scores" in dom, proc.stderr[-2000:]
    # Rows rendered by the browser as table cells from the extended stats (the
    # column titles alone would also be in the page's template args).
    rows = {}
    for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", dom, flags=re.S):
        cells = [re.sub(r"<[^>]+>", "", td) for td in re.findall(r"<td[^>]*>(.*?)</td>", tr, flags=re.S)]
        if cells:
            rows[cells[0]] = cells
    assert {"TTFT p50", "ITL p99", "RESULT"} <= set(rows), list(rows)
    # Rendering, not the verdict, is under test here (Chromium itself loads the CPU).
    assert abs(float(rows["TTFT p50"][1]) - 30.0) < 15
    assert rows["TTFT p50"][-1] in ("PASS", "FAIL") and rows["RESULT"][-1] in ("PASS", "FAIL")
