"""llmsim: an LLM traffic simulator and its Locust toolkit (public API re-exports only)."""

from . import testing
from .generator import (
                        EchoGenerator,
                        FixedGenerator,
                        GenerationRequest,
                        Generator,
                        LoremGenerator,
                        RandomGenerator,
                        SequenceGenerator,
                        make_generator,
)
from .latency import Distribution, LatencyProfile
from .profiles import ModelProfile, ProfileError, ProfileRegistry
from .stream import Pacer, TokenPlan, TokenStreamBuilder
from .tokens import count_tokens, get_encoding

__version__ = "0.1.0"

__all__ = [
    "Distribution",
    "EchoGenerator",
    "FixedGenerator",
    "GenerationRequest",
    "Generator",
    "LatencyProfile",
    "LoremGenerator",
    "ModelProfile",
    "Pacer",
    "ProfileError",
    "ProfileRegistry",
    "RandomGenerator",
    "SequenceGenerator",
    "TokenPlan",
    "TokenStreamBuilder",
    "count_tokens",
    "get_encoding",
    "make_generator",
    "testing",
]
