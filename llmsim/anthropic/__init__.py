"""The Anthropic Messages API: request parsing and response/event building (no Flask here)."""
