"""The OpenAI HTTP APIs: request parsing and response/chunk building (no Flask here)."""
