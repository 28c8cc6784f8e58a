"""The Anthropic Messages API: request parsing, message bodies and stream events."""
