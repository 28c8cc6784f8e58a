"""OpenAI Responses load test: measures TTFT, ITL, TPOT, E2E and tokens, and scores them against the profile.

    locust -f locustfiles/responses.py --headless -u 20 -r 20 -t 30s   # embedded llmsim, gpt-5 profile
    OPENAI_API_KEY=... locust -f locustfiles/responses.py --host https://api.openai.com --llm-model gpt-4o

TTFT is the first output-text (or reasoning-text) delta; the stream ends at
response.completed, or response.incomplete when max_output_tokens cut it.
Options as for chat.py (see docs/locust.md); --max-tokens is sent as
max_output_tokens (OpenAI's minimum is 16).
"""

from llmsim.loadtest.users import ResponsesUser


class ResponsesApiUser(ResponsesUser):
    """One user = one conversation slot sending requests back to back."""
