"""Capacity test: step the users up until the profile's SLO breaks, and report the largest step that held it.

    locust -f locustfiles/capacity.py --headless                         # embedded llmsim, gpt-5 profile
    locust -f locustfiles/capacity.py --headless --llm-profile my.yaml \\
        --start-users 4 --step-users 4 --step-time 60s --max-users 128 --min-capacity 32
    locust -f locustfiles/capacity.py --headless --arrival-rate 0.5      # open loop: 0.5 req/s per user

Each step's window opens once its users are all running and lasts --step-time;
the step is judged after its requests have drained. The run stops after
--stop-after consecutive broken steps or at --max-users, prints the step table
and writes capacity.csv/.json/.svg/.png (see docs/capacity.md). All of
chat.py's --llm-* options apply. The exit code is 0 unless --min-capacity
was given and not reached (3).
"""

from llmsim.loadtest.capacity import CapacityShape, CapacityUser


class ChatUser(CapacityUser):
    """Chat Completions: one request after another, or Poisson arrivals with --arrival-rate."""


class StepUp(CapacityShape):
    """--start-users, then +--step-users per step, up to --max-users."""
