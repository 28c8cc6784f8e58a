"""Anthropic Messages load test: measures TTFT, ITL, TPOT, E2E and tokens, and scores them against the profile.

    locust -f locustfiles/messages.py --headless -u 20 -r 20 -t 30s    # embedded llmsim, claude-sonnet-4-5
    ANTHROPIC_API_KEY=... locust -f locustfiles/messages.py --host https://api.anthropic.com \\
        --llm-model claude-haiku-4-5

TTFT is the first text (or thinking) delta; the stream ends at message_stop.
Options as for chat.py (see docs/locust.md); the key comes from --llm-api-key
or $ANTHROPIC_API_KEY.
"""

from llmsim.loadtest.plugin import default_model
from llmsim.loadtest.users import MessagesUser

default_model("claude-sonnet-4-5")


class ClaudeUser(MessagesUser):
    """One user = one conversation slot sending requests back to back."""
