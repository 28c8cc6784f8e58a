"""Merging the workers' snapshots (llmsim/cli/workerstats.py): the rules for JSON and Prometheus text, retiring
a dead worker's counters, and how many workers `auto` means."""

import os

import pytest

from llmsim.cli import workerstats as ws
from llmsim.cli.config import ConfigError, resolve_config
from llmsim.cli.workers import _cgroup_quota, available_cores, worker_count


def stats(requests_total, active, tokens, sched_active=0, multiplier=1.0, max_active=0, uptime=10.0):
    return {"uptime_s": uptime, "requests": {"/v1/chat/completions": {"200": requests_total}},
            "requests_total": requests_total, "active_streams": active, "output_tokens_total": tokens,
            "faults_injected": {}, "schedulers": {"gpt-5": {
                "max_concurrent": 64, "queue_limit": 1024, "active": sched_active, "waiting": 0,
                "multiplier": multiplier, "admitted": requests_total, "queue_wait_s_total": 0.25,
                "max_active": max_active}}}


def test_json_totals_add_counters_and_gauges_and_take_the_largest_peaks():
    merged = ws.merge_stats([stats(3, 1, 300, sched_active=1, multiplier=1.1, max_active=4, uptime=5.0),
                             stats(5, 2, 500, sched_active=2, multiplier=1.3, max_active=3, uptime=7.5)])
    assert merged["requests"] == {"/v1/chat/completions": {"200": 8}}
    assert merged["requests_total"] == 8 and merged["output_tokens_total"] == 800
    assert merged["active_streams"] == 3
    s = merged["schedulers"]["gpt-5"]
    assert s["max_concurrent"] == 128 and s["queue_limit"] == 2048  # N replicas hold N x max_concurrent
    assert s["active"] == 3 and s["admitted"] == 8 and s["queue_wait_s_total"] == 0.5
    assert s["multiplier"] == 1.3 and s["max_active"] == 4  # the worst replica
    assert merged["uptime_s"] == 7.5


def test_a_dead_workers_counters_stay_and_its_gauges_go():
    retired = ws.counters_only(stats(4, 2, 400, sched_active=2))
    assert "active_streams" not in retired and "uptime_s" not in retired
    assert "active" not in retired["schedulers"]["gpt-5"] and retired["schedulers"]["gpt-5"]["admitted"] == 4
    merged = ws.merge_stats([stats(1, 1, 100, sched_active=1)], retired)
    assert merged["requests_total"] == 5 and merged["output_tokens_total"] == 500
    assert merged["active_streams"] == 1 and merged["schedulers"]["gpt-5"]["active"] == 1


def snap(index, requests_total, active, tokens, metrics=""):
    return ws.Snapshot(index, 1000 + index, 0.0, 0.0, stats(requests_total, active, tokens), metrics)


def test_cluster_stats_lists_every_worker_and_counts_restarts():
    own, other = snap(1, 2, 0, 200), snap(0, 3, 1, 300)
    doc = ws.cluster_stats(own, [other, snap(1, 99, 9, 999)], {"count": 1, "stats": {"requests_total": 10}})
    assert doc["requests_total"] == 15  # 2 + 3 + 10 retired; the stale file of the answering worker is ignored
    assert [w["worker"] for w in doc["workers"]] == [0, 1]
    assert [w["pid"] for w in doc["workers"]] == [1000, 1001]
    assert sum(w["requests_total"] for w in doc["workers"]) == 5
    assert doc["worker_restarts"] == 1


METRICS = """# HELP llmsim_requests_total Requests answered, by endpoint and status.
# TYPE llmsim_requests_total counter
llmsim_requests_total{endpoint="/v1/chat/completions",status="200"} %d
# HELP llmsim_active_streams Streams being generated now.
# TYPE llmsim_active_streams gauge
llmsim_active_streams %d
# HELP llmsim_batch_active Streams holding a batch slot now.
# TYPE llmsim_batch_active gauge
llmsim_batch_active{profile="gpt-5"} %d
# HELP llmsim_lat_seconds A histogram.
# TYPE llmsim_lat_seconds histogram
llmsim_lat_seconds_bucket{le="0.1"} %d
llmsim_lat_seconds_bucket{le="+Inf"} %d
llmsim_lat_seconds_sum 0.5
llmsim_lat_seconds_count %d
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="gpt-5"} %d
# HELP vllm:generation_tokens Number of generation tokens processed.
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{model_name="gpt-5"} %d
# HELP my_app_things Already aggregated by prometheus_client's multiprocess mode.
# TYPE my_app_things gauge
my_app_things 7
"""


def metrics(n, active):
    return METRICS % (n, active, active, n, n, n, active, 10 * n)


def samples(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_cluster_metrics_sum_counters_label_gauges_and_pass_other_families_through():
    own, other = snap(0, 2, 1, 200), snap(1, 3, 2, 300, metrics(3, 2))
    retired = {"count": 2, "metrics": ws.render(ws.parse_families(metrics(10, 4), keep_gauges=False))}
    text = ws.cluster_metrics(metrics(2, 1), own, [other], retired)
    s = samples(text)
    assert s['llmsim_requests_total{endpoint="/v1/chat/completions",status="200"}'] == 15
    assert s['llmsim_lat_seconds_bucket{le="+Inf"}'] == 15 and s["llmsim_lat_seconds_sum"] == 1.5
    assert s['llmsim_active_streams{worker="0"}'] == 1 and s['llmsim_active_streams{worker="1"}'] == 2
    assert "llmsim_active_streams" not in s  # no unlabelled total beside the per-worker series
    assert s['llmsim_batch_active{profile="gpt-5",worker="1"}'] == 2
    # The vLLM-named families are rendered per worker too: totals and per-worker gauges, as llmsim's own
    assert s['vllm:generation_tokens_total{model_name="gpt-5"}'] == 150
    assert s['vllm:num_requests_running{model_name="gpt-5",worker="0"}'] == 1
    assert s['vllm:num_requests_running{model_name="gpt-5",worker="1"}'] == 2
    assert s["my_app_things"] == 7  # another family passes through, not multiplied by the worker count
    assert s["llmsim_workers"] == 2 and s["llmsim_worker_restarts_total"] == 2
    assert s['llmsim_worker_requests_total{worker="0"}'] == 2 and s['llmsim_worker_requests_total{worker="1"}'] == 3
    assert text.count("# TYPE llmsim_requests_total counter") == 1
    assert text.index("llmsim_requests_total") < text.index("llmsim_active_streams")  # a worker's own order


def test_cluster_metrics_yields_between_its_steps():
    """A worker writes its due streams between the steps of a merged scrape: after each other worker's text
    is parsed and before rendering; the answer is the same with or without the hook."""
    own, others = snap(0, 2, 1, 200), [snap(1, 3, 2, 300, metrics(3, 2)), snap(2, 4, 0, 300, metrics(4, 0))]
    retired = {"count": 0, "metrics": ""}
    calls = []
    text = ws.cluster_metrics(metrics(2, 1), own, others, retired, lambda: calls.append(1))
    assert text == ws.cluster_metrics(metrics(2, 1), own, others, retired)
    assert len(calls) == 1 + len(others) + 1  # this worker's text, each other worker's, the render


def test_parse_and_render_round_trip():
    fams = ws.parse_families(metrics(5, 1))
    assert ws.parse_families(ws.render(fams)).keys() == fams.keys()
    assert samples(ws.render(fams)) == samples(metrics(5, 1))
    assert fams["llmsim_lat_seconds"].type == "histogram" and len(fams["llmsim_lat_seconds"].samples) == 4


def test_retire_folds_a_dead_workers_file_into_retired(tmp_path):
    ws.write_json(ws.snapshot_path(tmp_path, 1), snap(1, 4, 2, 400, metrics(4, 2)).to_dict())
    (tmp_path / ".worker-1.json.999.tmp").write_text("half a file")
    ws.retire(tmp_path, 1)
    ws.write_json(ws.snapshot_path(tmp_path, 1), snap(1, 1, 0, 100, metrics(1, 0)).to_dict())
    ws.retire(tmp_path, 1)
    assert not ws.snapshot_path(tmp_path, 1).exists() and not list(tmp_path.glob(".*.tmp"))
    retired = ws.read_retired(tmp_path)
    assert retired["count"] == 2 and retired["stats"]["requests_total"] == 5
    assert "active_streams" not in retired["stats"]
    s = samples(retired["metrics"])
    assert s['llmsim_requests_total{endpoint="/v1/chat/completions",status="200"}'] == 5
    assert not any(k.startswith("llmsim_active_streams") for k in s)
    assert ws.read_snapshots(tmp_path) == []


def test_cgroup_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_quota(str(tmp_path)) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(str(tmp_path)) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_quota(str(tmp_path)) == 2.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_quota(str(tmp_path)) is None


def test_workers_setting():
    assert resolve_config({}, env={}).workers == 1
    assert resolve_config({"workers": "3"}, env={}).workers == 3
    assert resolve_config({}, env={"LLMSIM_WORKERS": "auto"}).workers == "auto"
    assert worker_count("auto") == available_cores() >= 1
    assert resolve_config({"grace_period": "2.5"}, env={}).grace_period == 2.5
    assert resolve_config({}, env={}).grace_period == 10.0
    with pytest.raises(ConfigError, match="--workers: must be auto or a whole number between 1 and 1024, got '0'"):
        resolve_config({"workers": "0"}, env={})
    with pytest.raises(ConfigError, match="LLMSIM_GRACE_PERIOD: must be a number >= 0, got '-1'"):
        resolve_config({}, env={"LLMSIM_GRACE_PERIOD": "-1"})


def test_pin_to_cpu_goes_round_robin_over_the_allowed_cpus(monkeypatch):
    from llmsim.cli import cpu

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity here")
    calls = []
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: {5, 3, 9})
    monkeypatch.setattr(cpu.os, "sched_setaffinity", lambda pid, cpus: calls.append(cpus))
    assert [cpu.pin_to_cpu(i) for i in range(4)] == [3, 5, 9, 3]
    assert calls == [{3}, {5}, {9}, {3}]


def test_pin_to_cpu_says_none_where_affinity_cannot_be_set(monkeypatch):
    from llmsim.cli import cpu

    def refuse(pid, cpus):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(cpu.os, "sched_setaffinity", refuse, raising=False)
    assert cpu.pin_to_cpu(0) is None


def test_run_realtime_says_why_it_could_not(monkeypatch):
    """--realtime never stops the server: refused, it says why in words a user can act on."""
    from llmsim.cli import cpu

    calls = []

    def refuse(pid, policy, param):
        calls.append((pid, policy, param.sched_priority))
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(cpu.os, "SCHED_RR", 2, raising=False)
    monkeypatch.setattr(cpu.os, "sched_setscheduler", refuse, raising=False)
    why = cpu.run_realtime()
    assert calls == [(0, 2, 1)]
    assert why is not None and "CAP_SYS_NICE" in why and "--ulimit rtprio=1" in why and "ulimit -r" in why

    def invalid(pid, policy, param):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(cpu.os, "sched_setscheduler", invalid)
    assert cpu.run_realtime() == "the system refused it (Invalid argument)"
    monkeypatch.delattr(cpu.os, "SCHED_RR")
    assert cpu.run_realtime() == "this system has no real-time scheduling policy (Linux has)"
    monkeypatch.setattr(cpu.os, "SCHED_RR", 2, raising=False)
    monkeypatch.setattr(cpu.os, "sched_setscheduler", lambda pid, policy, param: calls.append(policy))
    assert cpu.run_realtime() is None and calls[-1] == 2


@pytest.mark.parametrize(("key", "on", "bad"), [("pin_workers", "on", "sometimes"), ("realtime", "1", "max")])
def test_cpu_placement_settings_read_as_switches(key, on, bad):
    env = f"LLMSIM_{key.upper()}"
    assert getattr(resolve_config({}, env={}), key) is False
    assert getattr(resolve_config({key: True}, env={}), key) is True
    assert getattr(resolve_config({}, env={env: on}), key) is True
    with pytest.raises(ConfigError, match=f"{env}: must be true or false, got '{bad}'"):
        resolve_config({}, env={env: bad})
