"""Legacy Completions load test: measures TTFT, ITL, TPOT, E2E and tokens, and scores them against the profile.

    locust -f locustfiles/completions.py --headless -u 20 -r 20 -t 30s   # embedded llmsim, gpt-3.5-turbo-instruct
    locust -f locustfiles/completions.py --host http://vllm:8000 --llm-model meta-llama/Llama-3.1-8B-Instruct

`POST /v1/completions` with a plain-text prompt, as `vllm bench serve` sends by
default. TTFT is the first chunk with text; the stream ends at `data: [DONE]`.
Options as for chat.py (see docs/locust.md).
"""

from llmsim.loadtest.plugin import default_model
from llmsim.loadtest.users import CompletionsUser

default_model("gpt-3.5-turbo-instruct")


class TextCompletionUser(CompletionsUser):
    """One user = one prompt slot sending requests back to back."""
