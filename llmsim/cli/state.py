"""What a running server holds: its config and the engine built from it.

The engine (llmsim/engine.py) does the per-request work for every API; this
module only maps the server's config onto it, and reports a bad setting as
the one-line ConfigError (file, key, reason) that stops start-up.
"""

from __future__ import annotations

from ..engine import Engine, Generation
from ..profiles import ProfileError, ProfileRegistry
from .config import ConfigError, ServerConfig

__all__ = ["AppState", "Generation"]


class AppState(Engine):
    """The engine of one `llmsim serve`, with the config it was built from."""

    def __init__(self, config: ServerConfig, registry: ProfileRegistry | None = None) -> None:
        self.config = config
        registry = registry or ProfileRegistry.load(extra_dirs=[config.profiles_dir] if config.profiles_dir else [])
        try:
            super().__init__(registry, generator=config.generator, target_tokens=config.target_tokens,
                             seed=config.seed, chunk_tokens=config.chunk_tokens,
                             latency_profile=config.latency_profile,
                             allow_unknown_models=config.allow_unknown_models,
                             default_profile=config.default_profile, sections=config.sections,
                             source=config.source)
        except ProfileError as e:
            raise ConfigError(e.source, e.key, e.reason) from None
        except ValueError as e:  # the generator spec
            raise ConfigError(config.source, "generator", str(e)) from None
