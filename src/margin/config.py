"""Typed settings: one YAML file (``margin.yaml``) plus ``MARGIN_*`` environment variables.

Precedence, lowest first: defaults, the YAML file, environment variables, CLI flags.
Environment variables address any field as ``MARGIN_<SECTION>__<FIELD>`` (``MARGIN_LEDGER__URL``)
and a few common ones have short names (``MARGIN_DATABASE_URL``, ``MARGIN_REDIS_URL``,
``MARGIN_MASTER_KEY``, ``MARGIN_HOST``, ``MARGIN_PORT``). Secrets are never written inline:
a model names the environment variable that holds its key (``api_key_env``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BeforeValidator, Field, SerializeAsAny, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from margin.auth.config import AuthConfig
from margin.cache.config import CacheConfig
from margin.limits.config import LimitsConfig
from margin.compression.config import CompressionConfig
from margin.routing.config import RouteConfig
from margin.configbase import Strict as _Strict
from margin.upstreams.config import (BatchConfig, DeploymentConfig, HTTPModelConfig,
                                     LlamaCppModelConfig, LocalEmbeddingsModelConfig, ModelConfig,
                                     ModelKind, ResilienceConfig)
from margin.upstreams.registry import config_class
from margin.errors import ConfigError



def model_config(**fields: Any) -> ModelConfig:
    """One model's settings, validated by its provider's own config class."""
    return config_class(fields.get("provider", "openai")).model_validate(fields)


def _model_configs(raw: Any) -> Any:
    """Each entry of ``models:`` validated by its provider's own config class."""
    if not isinstance(raw, list):
        return raw
    out: list[Any] = []
    errors: list[Any] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            out.append(item)  # a ModelConfig already, or an error for the list's own check
            continue
        name = item.get("provider", "openai")
        try:
            cls = config_class(name) if isinstance(name, str) else ModelConfig
            out.append(cls.model_validate(item))
        except ConfigError as exc:
            errors.append(InitErrorDetails(type=PydanticCustomError("provider", exc.message),
                                           loc=(i, "provider"), input=name))
        except ValidationError as exc:
            for e in exc.errors():
                ctx = e.get("ctx") or {}
                errors.append(InitErrorDetails(
                    type=PydanticCustomError(e["type"], e["msg"].replace("{", "(").replace(
                        "}", ")")), loc=(i, *e["loc"]), input=e.get("input"), ctx=ctx))
    if errors:
        raise ValidationError.from_exception_data("models", errors)
    return out


class LedgerConfig(_Strict):
    url: str = "margin.db"  # a SQLite path, or postgresql://…
    batch_size: int = Field(500, ge=1)
    flush_interval_ms: float = Field(200.0, gt=0)
    spool_path: str | None = None  # default: <ledger>.spool beside the SQLite file, or ./margin-ledger.spool
    replay_interval_s: float = Field(5.0, gt=0)
    log_content: bool = False
    max_queue_rows: int = Field(1_000_000, ge=1)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    master_key_env: str = "MARGIN_MASTER_KEY"
    log_level: str = "info"


class PricingConfig(_Strict):
    catalogue_path: str | None = None  # a LiteLLM model_prices_and_context_window.json


class Settings(_Strict):
    models: Annotated[list[SerializeAsAny[ModelConfig]], BeforeValidator(_model_configs)] = \
        Field(default_factory=list)
    server: ServerConfig = Field(default_factory=ServerConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    redis_url: str | None = None
    cache: CacheConfig = Field(default_factory=CacheConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    routes: list[RouteConfig] = Field(default_factory=list)
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)
    compression: CompressionConfig = Field(default_factory=CompressionConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> "Settings":
        seen: set[str] = set()
        for m in self.models:
            if m.name in seen:
                raise ValueError(f"model name {m.name!r} is declared twice")
            seen.add(m.name)
        return self

    def model(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name:
                return m
        return None


DEFAULT_LOCAL_MODELS: list[dict[str, Any]] = [
    {"name": "smollm2", "provider": "llamacpp", "tier": "small", "cpu_hour_usd": 0.0},
    {"name": "all-minilm-l6-v2", "provider": "sentence-transformers", "cpu_hour_usd": 0.0,
     "batch": {"max_batch_size": 32, "max_wait_ms": 5}},
]

_SHORT_ENV = {
    "MARGIN_DATABASE_URL": ("ledger", "url"),
    "MARGIN_DB": ("ledger", "url"),
    "MARGIN_HOST": ("server", "host"),
    "MARGIN_PORT": ("server", "port"),
    "MARGIN_REDIS_URL": ("redis_url",),
    "MARGIN_LOG_CONTENT": ("ledger", "log_content"),
}


def _set_path(raw: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {part} is not a section")
    node[path[-1]] = value


def _env_overrides(raw: dict[str, Any], environ: dict[str, str]) -> None:
    for name, path in _SHORT_ENV.items():
        if environ.get(name):
            _set_path(raw, path, environ[name])
    for name, value in environ.items():
        if name.startswith("MARGIN_") and "__" in name:
            parts = tuple(p.lower() for p in name[len("MARGIN_"):].split("__"))
            _set_path(raw, parts, yaml.safe_load(value) if value else value)


def load_settings(path: str | Path | None = None, *, environ: dict[str, str] | None = None,
                  overrides: dict[str, Any] | None = None) -> Settings:
    """Load settings from a YAML file (optional), the environment and explicit overrides.

    With no file and no models declared, the bundled local models are served.
    """
    environ = dict(os.environ if environ is None else environ)
    path = path or environ.get("MARGIN_CONFIG")
    raw: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}".replace("\n", " ")) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        raw = loaded or {}
    _env_overrides(raw, environ)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(raw, tuple(dotted.split(".")), value)
    if not raw.get("models"):
        raw["models"] = [dict(m) for m in DEFAULT_LOCAL_MODELS]
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        src = f"{path}: " if path else ""
        raise ConfigError(f"{src}{where}: {first['msg']}") from None


__all__ = ["BatchConfig", "DeploymentConfig", "HTTPModelConfig", "LedgerConfig",
           "LlamaCppModelConfig", "LocalEmbeddingsModelConfig", "ModelConfig", "ModelKind",
           "model_config",
           "PricingConfig", "ServerConfig", "Settings", "load_settings"]
