"""Chat Completions load test: measures TTFT, ITL, TPOT, E2E and tokens, and scores them against the profile.

    locust -f locustfiles/chat.py --headless -u 20 -r 20 -t 30s            # embedded llmsim, gpt-5 profile
    locust -f locustfiles/chat.py --host https://api.example.com --llm-model my-model --llm-profile my.yaml

Options: --llm-model, --llm-profile, --llm-score, --llm-warmup, --llm-trace, --llm-trace-limit, --llm-api-key,
--prompt-tokens, --prompts, --max-tokens, --no-stream, --tools, --tool-choice, --llm-tolerance, --llm-report,
--retry-429 (see docs/locust.md).
"""

from llmsim.loadtest.users import ChatCompletionsUser


class ChatUser(ChatCompletionsUser):
    """One user = one conversation slot sending requests back to back."""
