"""llmsim: an LLM traffic simulator and its Locust toolkit (public API re-exports only)."""

from .latency import Distribution, LatencyProfile
from .profiles import ModelProfile, ProfileError, ProfileRegistry
from .tokens import count_tokens, get_encoding

__version__ = "0.1.0"

__all__ = [
    "Distribution",
    "LatencyProfile",
    "ModelProfile",
    "ProfileError",
    "ProfileRegistry",
    "count_tokens",
    "get_encoding",
]
