"""Upstreams by provider name. Third parties register more under the entry-point group
``margin.upstreams`` (name → a class taking a ``ModelConfig``)."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable

from margin.config import ModelConfig
from margin.errors import ConfigError
from margin.upstreams.base import Upstream


def _openai(m: ModelConfig) -> Upstream:
    from margin.upstreams.openai_http import OpenAIHTTPUpstream
    return OpenAIHTTPUpstream(m)


def _llamacpp(m: ModelConfig) -> Upstream:
    from margin.upstreams.llamacpp import LlamaCppUpstream
    return LlamaCppUpstream(m)


def _sentence_transformers(m: ModelConfig) -> Upstream:
    from margin.upstreams.sentence_transformers import SentenceTransformersUpstream
    return SentenceTransformersUpstream(m)


BUILTIN: dict[str, Callable[[ModelConfig], Upstream]] = {
    "openai": _openai,
    "llamacpp": _llamacpp,
    "sentence-transformers": _sentence_transformers,
}


def build_upstream(model: ModelConfig) -> Upstream:
    factory = BUILTIN.get(model.provider)
    if factory is None:
        for ep in entry_points(group="margin.upstreams"):
            if ep.name == model.provider:
                factory = ep.load()
                break
    if factory is None:
        raise ConfigError(f"model {model.name!r}: unknown provider {model.provider!r}")
    return factory(model)
