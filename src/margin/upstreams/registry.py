"""Providers by name: the upstream class that serves a ``provider:`` value and the config
class its models are validated with.

Built-in providers are listed below (imported only when a model uses them, so a gateway
without llama.cpp never imports it). A third party adds one either by calling ``register``
before settings are loaded, or — the way a plug-in package does it — under the entry-point
group ``margin.upstreams``::

    [project.entry-points."margin.upstreams"]
    echo = "margin_echo:EchoUpstream"     # an Upstream subclass with its config_class

Its models are then validated by its own config class (a ``ModelConfig`` subclass), as
strictly as the built-in ones: an unknown field is an error.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points

from margin.errors import ConfigError
from margin.upstreams.base import Upstream
from margin.upstreams.config import (AnthropicModelConfig, AzureModelConfig, BedrockModelConfig,
                                     GeminiModelConfig,
                                     HTTPModelConfig, LlamaCppModelConfig,
                                     LocalEmbeddingsModelConfig, ModelConfig, ResilienceConfig)

ENTRY_POINT_GROUP = "margin.upstreams"


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    config_class: type[ModelConfig]
    upstream: str | type[Upstream]  # the class, or "module:Class" imported on first use

    def upstream_class(self) -> type[Upstream]:
        if isinstance(self.upstream, str):
            module, _, attr = self.upstream.partition(":")
            cls = getattr(importlib.import_module(module), attr)
        else:
            cls = self.upstream
        if not (isinstance(cls, type) and issubclass(cls, Upstream)):
            raise ConfigError(f"provider {self.name!r}: {cls!r} is not a margin Upstream")
        return cls


_BUILTIN: dict[str, Provider] = {p.name: p for p in (
    Provider("openai", HTTPModelConfig, "margin.upstreams.openai_http:OpenAIHTTPUpstream"),
    Provider("anthropic", AnthropicModelConfig, "margin.upstreams.anthropic:AnthropicUpstream"),
    Provider("azure", AzureModelConfig, "margin.upstreams.azure:AzureUpstream"),
    Provider("gemini", GeminiModelConfig, "margin.upstreams.gemini:GeminiUpstream"),
    Provider("bedrock", BedrockModelConfig, "margin.upstreams.bedrock:BedrockUpstream"),
    Provider("llamacpp", LlamaCppModelConfig, "margin.upstreams.llamacpp:LlamaCppUpstream"),
    Provider("sentence-transformers", LocalEmbeddingsModelConfig,
             "margin.upstreams.sentence_transformers:SentenceTransformersUpstream"),
)}
_REGISTERED: dict[str, Provider] = {}


def register(name: str, upstream: type[Upstream],
             config_class: type[ModelConfig] | None = None) -> Provider:
    """Make ``provider: <name>`` available, served by ``upstream`` and validated by
    ``config_class`` (default: the upstream's own ``config_class``)."""
    if name in _BUILTIN:
        raise ConfigError(f"provider {name!r} is built in and cannot be replaced")
    if not (isinstance(upstream, type) and issubclass(upstream, Upstream)):
        raise ConfigError(f"provider {name!r}: {upstream!r} is not a margin Upstream")
    cfg = config_class or upstream.config_class
    if not (isinstance(cfg, type) and issubclass(cfg, ModelConfig)):
        raise ConfigError(f"provider {name!r}: its config class must subclass ModelConfig")
    provider = _REGISTERED[name] = Provider(name, cfg, upstream)
    return provider


def _from_entry_point(name: str) -> Provider | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                loaded = ep.load()
            except Exception as exc:
                raise ConfigError(f"provider {name!r}: cannot load its plug-in {ep.value!r}: "
                                  f"{type(exc).__name__}: {exc}") from None
            return register(name, loaded)
    return None


def provider(name: str) -> Provider:
    """The provider of that name: built in, registered, or found as an entry point."""
    found = _BUILTIN.get(name) or _REGISTERED.get(name) or _from_entry_point(name)
    if found is None:
        known = sorted({*_BUILTIN, *_REGISTERED,
                        *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
        raise ConfigError(f"unknown provider {name!r} (known: {', '.join(known)})")
    return found


def builtin_providers() -> list[Provider]:
    return list(_BUILTIN.values())


def config_class(name: str) -> type[ModelConfig]:
    return provider(name).config_class


def build_upstream(model: ModelConfig, resilience: ResilienceConfig | None = None) -> Upstream:
    upstream = provider(model.provider).upstream_class()(model)
    if resilience is not None:
        upstream.configure(resilience)
    return upstream
