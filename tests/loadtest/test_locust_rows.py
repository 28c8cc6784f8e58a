"""The ITL row is logged into Locust in one batch per request, and ends up as one event per sample would."""

from __future__ import annotations

import random

from locust.env import Environment

from llmsim.loadtest.users import METRIC_ROW_TYPE, log_samples


def _row(env, name):
    e = env.stats.get(name, METRIC_ROW_TYPE)
    return (e.num_requests, e.num_failures, round(e.total_response_time, 9), e.min_response_time,
            e.max_response_time, dict(e.response_times), sum(e.num_reqs_per_sec.values()),
            e.get_response_time_percentile(0.99), e.median_response_time)


def test_batched_itl_row_equals_one_event_per_sample():
    rng = random.Random(7)
    requests = [[rng.lognormvariate(2.5, 0.8) for _ in range(rng.randrange(0, 60))] for _ in range(40)]
    batched, fired = Environment(), Environment()  # each with its own stats, no runner
    for values in requests:
        log_samples(batched, METRIC_ROW_TYPE, "ITL", values)
        for v in values:  # what Locust's runner does for each request event
            fired.stats.log_request(METRIC_ROW_TYPE, "ITL", v, 0)
    assert _row(batched, "ITL") == _row(fired, "ITL")
    t_b, t_f = batched.stats.total, fired.stats.total
    assert (t_b.num_requests, dict(t_b.response_times), t_b.min_response_time, t_b.max_response_time) == \
           (t_f.num_requests, dict(t_f.response_times), t_f.min_response_time, t_f.max_response_time)
