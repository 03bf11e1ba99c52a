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
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BeforeValidator, Field, SerializeAsAny, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from margin.auth.config import AuthConfig, ConsoleConfig
from margin.cache.config import CacheConfig
from margin.limits.config import LimitsConfig, ModelCapacity
from margin.observe.config import MetricsConfig
from margin.compression.config import CompressionConfig
from margin.quality.config import LlmJudgeConfig, QualityConfig
from margin.experiments.config import ExperimentConfig
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
    """Where every request's row goes: one row per request, hit, miss or error, written off
    the request path in batches by a background thread. While the database is down or
    locked, rows wait in an append-only spool file and are replayed (idempotently, on the
    request id) once it answers; rows the database refuses are set aside in
    ``<spool>.bad``, never dropped. Prompts and answers are stored only with
    ``log_content: true``; otherwise only a hash of the prompt."""

    yaml_example: ClassVar[str] = """
        ledger:
          url: postgresql://margin@db.internal:5432/margin   # or a SQLite file: margin.db
          log_content: false
    """

    url: str = "margin.db"
    """A SQLite file, or ``postgresql://user@host:port/db``."""
    batch_size: int = Field(500, ge=1)
    """Rows per insert."""
    catch_up_batch_size: int = Field(1000, ge=1)
    """Rows per insert at most while more than ``batch_size`` are waiting: each rollup row
    is then updated once for more ledger rows, so a writer that fell behind catches up.
    5,000 doubled the PostgreSQL writer's rows/s but raised the gateway's resident memory
    by 20-30 MB under a sustained backlog (tests/gateway/test_memory.py); 1,000 keeps it
    flat."""
    flush_interval_ms: float = Field(200.0, gt=0)
    """How often the writer sends what is queued."""
    spool_path: str | None = None
    """Where rows wait while the database is down; default ``<url>.spool`` beside a SQLite
    file, else ``./margin-ledger.spool``."""
    replay_interval_s: float = Field(5.0, gt=0)
    """How often the spool is retried while the database is down."""
    log_content: bool = False
    """Store prompts and answers in the ledger (off: only a hash of the prompt)."""
    max_queue_rows: int = Field(50_000, ge=1)
    """Rows waiting in memory for the writer, at most; past it the oldest go straight to
    the spool (a database that is slow to answer costs disk, not memory)."""
    write_timeout_s: float = Field(5.0, gt=0)
    """Longest one database call may take (PostgreSQL ``statement_timeout``, SQLite's busy
    timeout, and a watchdog that breaks a connection whose server stops answering); past
    it the batch goes to the spool at once."""
    connect_timeout_s: float = Field(3.0, gt=0)
    """Longest opening a database connection may take before the writer spools instead."""
    journal: bool = True
    """Append each row to a local journal as the response completes, so rows waiting for
    the next batch survive a kill -9 (replayed at the next start). Off: a killed process
    loses up to one flush interval of rows."""
    journal_path: str | None = None
    """The journal's directory (one segment file per process); default ``<url>.journal``
    beside a SQLite file, else ``./margin-ledger.journal``. Keep it on a local disk that
    outlives the process (a pod's volume, not its tmpfs)."""
    journal_fsync: Literal["never", "always"] = "never"
    """``never``: rows survive the process dying however it dies, and a power loss or
    kernel crash loses what the database has not committed (at most about one flush
    interval); ``always``: an fsync per row on the request path, so rows survive a power
    loss too, at the price of a disk flush per request."""


class ServerConfig(_Strict):
    """The HTTP server: where it listens, how large a body it takes, and which environment
    variable holds the master key (set it and every ``/v1/*`` request needs an API key;
    ``/admin/*`` needs the master key itself)."""

    yaml_example: ClassVar[str] = """
        server:
          host: 0.0.0.0
          port: 8000
          max_body_bytes: 8388608
    """

    host: str = "127.0.0.1"
    """Interface to listen on (``0.0.0.0`` for every interface)."""
    port: int = Field(8000, ge=0, le=65535)
    """Port to listen on."""
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Largest request body; larger bodies get 413."""
    master_key_env: str = "MARGIN_MASTER_KEY"
    """The environment variable holding the master key; unset or empty: the gateway is
    open (fine for local use only)."""
    log_level: str = "info"
    """debug, info, warning or error."""
    header_timeout_s: float = Field(10.0, gt=0)
    """Longest a connection may take to send a request's headers (from its first byte,
    or from its last answer); slower ones get 408 and are closed."""
    body_timeout_s: float = Field(60.0, gt=0)
    """Longest a request may take to send its whole body; slower ones get 408."""
    keep_alive_timeout_s: float = Field(5.0, gt=0)
    """An idle keep-alive connection is closed after this long."""
    max_connections: int = Field(4096, ge=1)
    """Open connections in all; one more is answered 503 and closed at once (the open-file
    limit is raised to fit when it can be)."""
    max_connections_per_client: int = Field(256, ge=1)
    """Open connections from one client address; one more is answered 429 and closed."""
    workers: int | Literal["auto"] = 1
    """Processes serving the one port, each with its own event loop; ``auto``: one per
    core this process may use. More than one needs ``redis_url`` (limits, budgets, key
    revocations and the semantic cache must be one across workers)."""
    drain_delay_s: float = Field(5.0, ge=0)
    """After SIGTERM, how long the listener stays open (and serves) while
    ``/healthz/ready`` answers 503, so load balancers take the replica out first."""
    drain_grace_s: float = Field(30.0, ge=0)
    """After the listener closes, how long requests and streams in flight may take to
    finish before they are cancelled. Kubernetes: keep ``terminationGracePeriodSeconds``
    above preStop + ``drain_delay_s`` + ``drain_grace_s``."""
    malloc_arena_max: int = Field(2, ge=0)
    """glibc malloc arenas at most (0: the allocator's default of 8 per core). Each thread
    that allocates may otherwise get its own arena, and memory freed in one is not reused
    by another: resident memory creeps up under load with the Python heap flat."""
    malloc_trim_interval_s: float = Field(60.0, ge=0)
    """How often free heap pages are handed back to the kernel (``malloc_trim``), off the
    event loop; 0: never."""
    ready_requires_redis: bool = True
    """``/healthz/ready`` answers 503 while a configured Redis does not answer a PING
    (off: a replica stays in rotation and each part degrades as it does without Redis)."""


class PricingConfig(_Strict):
    """Prices that a model does not set itself come from the bundled catalogue
    (``margin/data/model_prices.json``, LiteLLM's field names, USD per token), looked up by
    ``upstream_model`` then ``name``, with or without a provider prefix. A model with no
    price is recorded at 0 USD and a warning is logged at start-up."""

    yaml_example: ClassVar[str] = """
        pricing:
          catalogue_path: ./model_prices_and_context_window.json
    """

    catalogue_path: str | None = None
    """LiteLLM's ``model_prices_and_context_window.json`` (or a file of the same shape) to
    use instead of the bundled catalogue."""


class Settings(_Strict):
    models: Annotated[list[SerializeAsAny[ModelConfig]], BeforeValidator(_model_configs)] = \
        Field(default_factory=list)
    """The models clients can ask for. Each entry's ``provider`` picks its settings class:
    the fields common to every model, plus its provider's own (below)."""
    server: ServerConfig = Field(default_factory=ServerConfig)
    """The HTTP server."""
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    """The ledger: one row per request."""
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    """Where prices come from."""
    redis_url: str | None = None
    """Redis shared by every part that can share state across replicas (caches, limits and
    budgets, key revocations), unless a section sets its own; unset: state is per process."""
    cache: CacheConfig = Field(default_factory=CacheConfig)
    """The exact and semantic caches."""
    auth: AuthConfig = Field(default_factory=AuthConfig)
    """API keys (on when a master key is set)."""
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)
    """The browser console at ``/ui``."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    """Rate limits, budgets, alerts and cost anomalies."""
    routes: list[RouteConfig] = Field(default_factory=list)
    """Names clients ask for that pick a model per request."""
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)
    """Retries and cool-downs of HTTP models' deployments."""
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    """Prompt compression for every request (a route may set its own)."""
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    """What ``/metrics`` labels and who may read it."""
    experiments: list[ExperimentConfig] = Field(default_factory=list)
    """A/B experiments: arms assigned by a stable hash of the user or key
    (docs/experiments.md)."""
    capacity: dict[str, ModelCapacity] = Field(default_factory=dict)
    """What each model can take (by model name), for the capacity forecast and its alert:
    ``{small: {replica_rps: 4, replicas: 3}, gpt-4o: {rpm: 10000, tpm: 2000000}}``."""
    quality: QualityConfig = Field(default_factory=QualityConfig)
    """Shadow evaluation: what the savings cost in quality."""

    @model_validator(mode="after")
    def _unique_names(self) -> "Settings":
        seen: set[str] = set()
        for m in self.models:
            if m.name in seen:
                raise ValueError(f"model name {m.name!r} is declared twice")
            seen.add(m.name)
        judge = self.quality.shadow.judge
        if isinstance(judge, LlmJudgeConfig) and judge.model not in seen:
            raise ValueError(f"quality.shadow.judge.model: {judge.model!r} is not a declared "
                             "model")
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise ValueError("an experiment name is declared twice")
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


def yaml_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """The line of ``text`` (a YAML document) where the value at ``loc`` is written — or,
    for a key that is missing, where its parent is."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            found = None
            for key, value in node.value:
                if str(key.value) == str(part):
                    found = (key, value)
                    break
            if found is None:
                return line
            line = found[0].start_mark.line + 1
            node = found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
        else:
            return line
    if node is not None and not isinstance(node, yaml.MappingNode):
        line = node.start_mark.line + 1
    return line


def load_settings(path: str | Path | None = None, *, environ: dict[str, str] | None = None,
                  overrides: dict[str, Any] | None = None) -> Settings:
    """Load settings from a YAML file (optional), the environment and explicit overrides.

    With no file and no models declared, the bundled local models are served. A mistake
    is a ``ConfigError`` that says where: ``margin.yaml:12: limits.budgets.0.usd: …``.
    """
    environ = dict(os.environ if environ is None else environ)
    path = path or environ.get("MARGIN_CONFIG")
    raw: dict[str, Any] = {}
    text = ""
    if path:
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read it: {exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(f"{where}: not valid YAML: {problem}".replace("\n", " ")) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}:1: expected a mapping (section: value) at the top level")
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
        # A misspelt field shows up twice (unknown, and the real one missing): the unknown
        # one is the cause, so it is reported first.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        first = errors[0]
        loc = tuple(first["loc"])
        where = ".".join(str(p) for p in loc)
        line = yaml_line(text, loc) if text else None
        src = f"{path}:{line}: " if line else f"{path}: " if path else ""
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{src}{where}: {first['msg']}{more}") from None


__all__ = ["BatchConfig", "DeploymentConfig", "HTTPModelConfig", "LedgerConfig",
           "LlamaCppModelConfig", "LocalEmbeddingsModelConfig", "ModelConfig", "ModelKind",
           "model_config",
           "PricingConfig", "ServerConfig", "Settings", "load_settings"]
