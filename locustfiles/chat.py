"""Chat Completions load test: measures TTFT, ITL, TPOT, E2E and tokens, and scores them against the profile.

    locust -f locustfiles/chat.py --headless -u 20 -r 20 -t 30s            # embedded llmsim, gpt-5 profile
    locust -f locustfiles/chat.py --host https://api.example.com --llm-model my-model --llm-profile my.yaml

Every option (--llm-model, --llm-profile, --llm-score, --max-tokens, ...) is in docs/locust.md.
"""

from llmsim.loadtest.users import ChatCompletionsUser


class ChatUser(ChatCompletionsUser):
    """One user = one conversation slot sending requests back to back."""
