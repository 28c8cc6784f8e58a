"""`llmsim profile fit`: known profiles in, the same numbers out (simulated, and round trip through `llmsim record`)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import gevent
import pytest
import yaml
from gevent.pool import Pool

from llmsim.fit import FitError, fit, fit_distribution, fit_prefill, format_report, load_observations
from llmsim.latency import Distribution, LatencyProfile
from llmsim.profiles import Capacity, ProfileRegistry
from llmsim.scheduler import SimRequest, simulate, simulate_closed_loop
from llmsim.testing import start_server

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def within(measured: float, expected: float, rel: float) -> bool:
    return abs(measured - expected) <= rel * expected


def requests_lines(results, *, users=None, prompt_tokens=0, output_tokens=None, reasoning=None, t_off=0.0,
                   model="m") -> list[dict]:
    """Simulated requests as the Locust toolkit's --llm-records lines."""
    out = []
    for r in results:
        if r.end_s is None:
            continue
        out.append({"llmsim": "requests/1", "start_time": t_off + r.arrival_s, "end_time": t_off + r.end_s,
                    "model": model, "stream": True, "status": 429 if r.rejected else 200, "ok": not r.rejected,
                    "ttft_ms": None if r.rejected else r.ttft_s * 1000, "itl_ms": [x * 1000 for x in r.itls_s],
                    "e2e_ms": r.e2e_s * 1000, "prompt_tokens": prompt_tokens,
                    "output_tokens": output_tokens if output_tokens is not None else len(r.token_times),
                    "reasoning_tokens": reasoning, "users": users})
    return out


def write_jsonl(path: Path, lines: list[dict]) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


# --------------------------------------------------------------------------- the parts

def test_distribution_choice_and_parameters():
    rng = random.Random(1)
    normal = [rng.gauss(25, 5) for _ in range(5000)]
    fitted = fit_distribution(normal)
    assert fitted.kind == "normal" and within(fitted.mean, 25, 0.02) and within(fitted.sd, 5, 0.05)
    lognormal = [Distribution("lognormal", 300, 90).sample(rng) for _ in range(5000)]
    fitted = fit_distribution(lognormal)
    assert fitted.kind == "lognormal" and within(fitted.mean, 300, 0.03) and within(fitted.sd, 90, 0.06)
    assert fitted.ks["lognormal"] < fitted.ks["normal"]
    # Two events that arrived in one read give a zero gap: a few of those do not rule lognormal out.
    assert fit_distribution(lognormal[:4990] + [0.0] * 10).kind == "lognormal"
    assert fit_distribution([7.0] * 10).kind == "constant"


def test_prefill_regression_and_when_it_is_not_fitted():
    rng = random.Random(2)
    prompts = [rng.randint(100, 4000) for _ in range(400)]
    ttfts = [rng.gauss(300, 60) + p / 5000 * 1000 for p in prompts]
    pf, why = fit_prefill(prompts, ttfts)
    assert pf is not None and within(pf.tokens_per_s, 5000, 0.05) and pf.r2 > 0.5 and not why
    pf, why = fit_prefill([1000] * 100, ttfts[:100])
    assert pf is None and "vary too little" in why
    pf, why = fit_prefill(prompts, [rng.gauss(300, 60) for _ in prompts])
    assert pf is None and "does not grow clearly" in why


def test_capacity_run_fits_the_load_model():
    """Closed-loop steps on the scheduler's virtual clock (the real Scheduler and Pacer): the knee and slowdown."""
    lat = LatencyProfile(ttft=Distribution("lognormal", 300, 60), itl=Distribution("normal", 25, 5))
    cap = Capacity(max_concurrent=12, queue_limit=1000, slowdown_at_full=1.6)
    lines, t_off = [], 0.0
    for users in (1, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 32):
        lines += requests_lines(simulate_closed_loop(lat, users, 15.0, output_tokens=40, capacity=cap, seed=users),
                                users=users, prompt_tokens=200, t_off=t_off)
        t_off += 100.0
    result = fit([o for o in _observations(lines)])
    load = result.load
    assert load is not None, result.load_note
    assert abs(load.max_concurrent - 12) <= 2, format_report(result)  # one step of the tested levels
    assert within(load.slowdown_at_full, 1.6, 0.15), format_report(result)
    assert within(result.itl.mean, 25, 0.10) and within(result.itl.sd, 5, 0.10)
    assert within(result.ttft.mean, 300, 0.10) and within(result.ttft.sd, 60, 0.15)
    text = format_report(result)
    assert "capacity.max_concurrent" in text and "Per concurrency level" in text


def test_refusals_give_the_queue_limit():
    lat = LatencyProfile(ttft=Distribution("constant", 100), itl=Distribution("constant", 10))
    cap = Capacity(max_concurrent=4, queue_limit=4, slowdown_at_full=1.5)
    lines, t_off = [], 0.0
    for users in (1, 2, 3, 4, 6, 8, 10, 12):
        lines += requests_lines(simulate_closed_loop(lat, users, 10.0, output_tokens=20, capacity=cap, seed=users,
                                                     retry_backoff_s=0.2), users=users, t_off=t_off)
        t_off += 100.0
    load = fit(_observations(lines)).load
    assert load is not None and load.max_concurrent == 4 and within(load.slowdown_at_full, 1.5, 0.15)
    assert load.queue_limit is not None and 2 <= load.queue_limit <= 6


def test_reasoning_ratio_and_hidden_reasoning_time():
    lat = LatencyProfile(ttft=Distribution("normal", 200, 30), itl=Distribution("normal", 20, 4))
    rng = random.Random(3)
    reqs = [SimRequest(i * 0.05, output_tokens=n, reasoning_tokens=2 * n)
            for i, n in enumerate(rng.randint(10, 40) for _ in range(300))]
    results = simulate(lat, reqs, seed=3)
    lines = []
    for req, line in zip(reqs, requests_lines(results)):
        line["output_tokens"] = req.output_tokens + req.reasoning_tokens  # usage counts hidden reasoning as output
        line["reasoning_tokens"] = req.reasoning_tokens
        lines.append(line)
    result = fit(_observations(lines))
    assert result.reasoning_ratio is not None and within(result.reasoning_ratio, 2.0, 0.01)
    assert within(result.ttft.mean, 200, 0.10) and within(result.ttft.sd, 30, 0.20)  # reasoning time removed
    assert result.output is not None and within(result.output.mean, 25, 0.15)


def test_no_load_model_without_levels_and_clear_errors(tmp_path):
    lat = LatencyProfile(ttft=Distribution("normal", 100, 10), itl=Distribution("normal", 10, 2))
    lines = requests_lines(simulate(lat, [SimRequest(i * 1.0, 10) for i in range(50)]))
    result = fit(_observations(lines))
    assert result.load is None and "no load model" in result.load_note
    flat, t_off = [], 0.0  # several levels, but no capacity limit: nothing changes with concurrency
    for users in (1, 2, 4, 8, 16):
        flat += requests_lines(simulate_closed_loop(lat, users, 5.0, output_tokens=20, seed=users), users=users,
                               t_off=t_off)
        t_off += 100.0
    result = fit(_observations(flat))
    assert result.load is None and "neither ITL nor TTFT changes" in result.load_note, result.load_note
    with pytest.raises(FitError, match="no successful streamed request"):
        fit(_observations([{**line, "ok": False} for line in lines]))
    with pytest.raises(FitError, match=r"--models other: no records of these models \(the records hold: m\)"):
        fit(_observations(lines), models=["other"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"hello": 1}\n')
    with pytest.raises(FitError, match=r"bad.jsonl:1: neither an `llmsim record` line nor a --llm-records line"):
        load_observations([str(bad)])


def _observations(lines: list[dict]) -> list:
    import tempfile

    fd, path = tempfile.mkstemp(suffix=".jsonl")
    os.close(fd)
    try:
        write_jsonl(Path(path), lines)
        return load_observations([path])[0]
    finally:
        os.unlink(path)


# --------------------------------------------------------------------------- the profile YAML and the command

def test_fitted_yaml_loads_in_serve_as_is(tmp_path):
    lat = LatencyProfile(ttft=Distribution("lognormal", 300, 60), itl=Distribution("normal", 25, 5))
    cap = Capacity(max_concurrent=8, queue_limit=1000, slowdown_at_full=1.5)
    lines, t_off = [], 0.0
    for users in (1, 2, 4, 6, 8, 10, 12, 16):
        lines += requests_lines(simulate_closed_loop(lat, users, 10.0, output_tokens=30, capacity=cap, seed=users),
                                users=users, t_off=t_off, model="gpt-4o")
        t_off += 100.0
    records = write_jsonl(tmp_path / "locust.jsonl", lines)
    out_dir = tmp_path / "profiles"
    out_dir.mkdir()
    out = out_dir / "fitted.yaml"
    r = subprocess.run([sys.executable, "-m", "llmsim", "profile", "fit", records, "--out", str(out),
                        "--name", "my-gpt-4o"], capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^ttft\s+lognormal", r.stdout, re.M) and "capacity.slowdown_at_full" in r.stdout
    assert f"Wrote profile 'my-gpt-4o' to {out}" in r.stdout
    text = out.read_text()
    assert text.startswith("# Fitted by `llmsim profile fit` on ") and f"# from: {records} (" in text
    doc = yaml.safe_load(text)["profiles"][0]
    assert doc["name"] == "my-gpt-4o" and doc["models"] == ["gpt-4o"] and doc["encoding"] == "o200k_base"
    assert doc["capacity"]["max_concurrent"] == 8
    registry = ProfileRegistry.load(extra_dirs=[str(out_dir)])
    assert registry.resolve("gpt-4o").name == "my-gpt-4o"  # the fitted profile now answers for the model
    srv = start_server(profiles_dir=str(out_dir))
    try:
        assert srv.state.registry.resolve("gpt-4o").capacity.max_concurrent == 8
    finally:
        srv.stop()
    # Without --out: the YAML on stdout, the report on stderr.
    r = subprocess.run([sys.executable, "-m", "llmsim", "profile", "fit", records], capture_output=True, text=True,
                       timeout=120, env=ENV)
    assert r.returncode == 0 and yaml.safe_load(r.stdout)["profiles"][0]["name"] == "gpt-4o-fitted"
    assert "PARAMETER" in r.stderr
    r = subprocess.run([sys.executable, "-m", "llmsim", "profile", "fit", str(tmp_path / "nope.jsonl")],
                       capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 2 and "nope.jsonl: cannot read" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- round trip through `llmsim record`

SCALE = 1.0
"""The known profile (TTFT lognormal 300±60 ms, ITL normal 25±5 ms, prefill 5000 tokens/s), times multiplied by
SCALE. Not scaled down: on a shared, busy machine delivery jitter is a few ms whatever the timings, so smaller
timings only make the same jitter weigh more."""
TRUTH = {"ttft_mean": 300 * SCALE, "ttft_sd": 60 * SCALE, "itl_mean": 25 * SCALE, "itl_sd": 5 * SCALE,
         "prefill": 5000 / SCALE}


def _start(args: list[str], pattern: str) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-m", "llmsim", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=ENV)
    line = p.stdout.readline()
    m = re.search(pattern, line)
    if not m:
        p.kill()
        raise AssertionError(line + p.stderr.read())
    return p, m.group(1)


def _stop(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=15)


@pytest.mark.slow
def test_round_trip_serve_record_fit(tmp_path):
    (tmp_path / "truth").mkdir()
    (tmp_path / "truth" / "truth.yaml").write_text(yaml.safe_dump({"profiles": [{
        "name": "truth", "models": ["truth-model"], "encoding": "o200k_base",
        "ttft": {"distribution": "lognormal", "mean_ms": TRUTH["ttft_mean"], "stddev_ms": TRUTH["ttft_sd"]},
        "itl": {"distribution": "normal", "mean_ms": TRUTH["itl_mean"], "stddev_ms": TRUTH["itl_sd"]},
        "prefill": {"tokens_per_s": TRUTH["prefill"]}}]}))
    server, upstream = _start(["serve", "--port", "0", "--profiles-dir", str(tmp_path / "truth"), "--seed", "7"],
                              r"serving on (http://\S+)")
    records = tmp_path / "rec.jsonl"
    proxy = None
    try:
        proxy, url = _start(["record", "--upstream", upstream, "--out", str(records), "--port", "0"],
                            r"recording on (http://\S+)")
        _drive(url, n=360, concurrency=24, seed=11)
    finally:
        if proxy is not None:
            _stop(proxy)
        _stop(server)
    r = subprocess.run([sys.executable, "-m", "llmsim", "profile", "fit", str(records), "--out",
                        str(tmp_path / "fitted.yaml")], capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0, r.stderr
    doc = yaml.safe_load((tmp_path / "fitted.yaml").read_text())["profiles"][0]
    report = r.stdout
    fitted = {"ttft_mean": doc["ttft"]["mean_ms"], "ttft_sd": doc["ttft"]["stddev_ms"],
              "itl_mean": doc["itl"]["mean_ms"], "itl_sd": doc["itl"]["stddev_ms"],
              "prefill": doc["prefill"]["tokens_per_s"]}
    errors = {k: (fitted[k] - TRUTH[k]) / TRUTH[k] for k in TRUTH}
    print(report, {k: f"{100 * v:+.1f}%" for k, v in errors.items()})
    # 8000+ gaps tell a normal ITL from a lognormal one; 360 TTFTs with a CV of 0.2 hardly do (KS picks either).
    assert doc["itl"]["distribution"] == "normal", report
    assert all(abs(e) <= 0.10 for e in errors.values()), (errors, report)
    assert doc["models"] == ["truth-model"] and "capacity" not in doc


def _drive(url: str, *, n: int, concurrency: int, seed: int) -> None:
    """n streamed chat requests of 24 tokens with prompts of 20..2600 tokens, `concurrency` at a time.

    Kept moderate: every arriving prompt costs the server about 1 ms of tokenising on its event loop, and
    at 40 streams with 3000-token prompts that alone doubles the ITL spread llmsim delivers."""
    import http.client
    from urllib.parse import urlsplit

    from llmsim.loadtest.prompts import synthetic_prompt
    from llmsim.tokens import get_encoding

    enc = get_encoding("o200k_base")
    rng = random.Random(seed)
    sizes = [rng.randint(20, 2600) for _ in range(n)]
    texts = {s: synthetic_prompt(s, enc, seed=s) for s in set(sizes)}
    host = urlsplit(url)

    def one(size: int) -> None:
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
        body = json.dumps({"model": "truth-model", "messages": [{"role": "user", "content": texts[size]}],
                           "max_tokens": 24, "stream": True, "stream_options": {"include_usage": True}})
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json",
                                                            "Authorization": "Bearer sk-round-trip-secret"})
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
        conn.close()

    pool = Pool(concurrency)
    for s in sizes:
        pool.spawn(one, s)
    pool.join(raise_error=True)
    gevent.sleep(0.2)
