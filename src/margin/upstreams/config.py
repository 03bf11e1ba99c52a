"""Settings of the models margin serves (the ``models:`` list) and of how an HTTP model's
deployments are retried and cooled down (the ``resilience:`` section).

Every model has the common part, ``ModelConfig``: its name, provider, prices, tier, batching,
caching and fallbacks. Each provider adds its own fields in a subclass, chosen by the
model's ``provider`` value (``margin.upstreams.registry`` knows which class belongs to which
provider, built-in or third-party)::

    models:
      - name: small
        provider: openai                  # HTTPModelConfig: any OpenAI-compatible API
        api_base: http://127.0.0.1:8001/v1
        api_key_env: UPSTREAM_KEY
      - name: local-chat
        provider: llamacpp                # LlamaCppModelConfig: in-process GGUF
        n_parallel: 4
      - name: embed
        provider: sentence-transformers   # LocalEmbeddingsModelConfig: in-process MiniLM

Imports only pydantic and margin's leaf modules: ``margin.config`` imports this module.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from margin.configbase import Strict as _Strict

ModelKind = Literal["chat", "embeddings"]


class BatchConfig(_Strict):
    """Dynamic batching in front of an upstream that accepts a batch."""

    enabled: bool = True
    """Batch this model's requests (false turns batching off)."""
    max_batch_size: int = Field(32, ge=1, le=4096)
    """Inputs (embeddings) or prompts (completions) in one upstream call, at most."""
    max_batch_tokens: int | None = Field(None, ge=1)
    """Estimated tokens in one upstream call, at most (unset: no token bound)."""
    max_wait_ms: float = Field(5.0, ge=0)
    """How long the first request of a batch waits for others to join it."""
    max_queue: int = Field(1024, ge=1)
    """Requests waiting for a batch, at most; beyond it requests get 503."""
    max_concurrent_batches: int = Field(1, ge=1, le=64)
    """Batches in flight per model at once."""


class ModelConfig(_Strict):
    """What every model has, whatever its provider: its name, prices, tier, batching,
    caching and fallbacks. A provider's own fields follow in its section."""

    # The provider this class configures; subclasses set it (None: any provider).
    provider_name: ClassVar[str | None] = None
    # The kind of model when the config does not say (None: serves chat and embeddings).
    default_kind: ClassVar[ModelKind | None] = None
    # A hosted API bills tokens; a model run in-process costs its compute time instead.
    hosted: ClassVar[bool] = True

    name: str
    """The name clients ask for (``"model": "small"``)."""
    provider: str = "openai"
    """Which upstream serves it: openai, llamacpp, sentence-transformers, or a provider
    registered by a plug-in."""
    kind: ModelKind | None = None
    """chat or embeddings; unset: whatever the provider's models serve."""
    input_cost_per_mtok: float | None = Field(None, ge=0)
    """USD per million prompt tokens; unset: from the pricing catalogue."""
    output_cost_per_mtok: float | None = Field(None, ge=0)
    """USD per million completion tokens; unset: from the pricing catalogue."""
    cached_input_cost_per_mtok: float | None = Field(None, ge=0)
    """USD per million prompt tokens read from the provider's prompt cache."""
    cache_write_input_cost_per_mtok: float | None = Field(None, ge=0)
    """USD per million prompt tokens written to the provider's prompt cache (Anthropic,
    Bedrock); unset: the catalogue's, else the input price."""
    reasoning_output_cost_per_mtok: float | None = Field(None, ge=0)
    """USD per million reasoning (thinking) tokens; unset: the catalogue's, else the output
    price."""
    gpu_hour_usd: float | None = Field(None, ge=0)
    """Self-hosted: cost = busy time x this hourly price."""
    cpu_hour_usd: float | None = Field(None, ge=0)
    """Self-hosted on CPUs: cost = busy time x this hourly price."""
    tier: str | None = None
    """A label for reports and routes (small, large …)."""
    batch: BatchConfig | None = None
    """Dynamic batching of requests to this model (for upstreams that take a batch)."""
    cache: bool = True
    """Whether the exact and semantic caches may answer for this model."""
    fallbacks: list[str] = Field(default_factory=list)
    """Models to try, in order, when this one fails with a retryable error."""

    @model_validator(mode="before")
    @classmethod
    def _own_provider(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.provider_name and "provider" not in data:
            data = {**data, "provider": cls.provider_name}
        return data

    @model_validator(mode="after")
    def _default_kind(self) -> "ModelConfig":
        if self.provider_name is not None and self.provider != self.provider_name:
            raise ValueError(f"model {self.name!r}: {type(self).__name__} configures provider "
                             f"{self.provider_name!r}, not {self.provider!r}")
        if self.kind is None and self.default_kind is not None:
            self.kind = self.default_kind
        return self

    def effective_batch(self) -> BatchConfig | None:
        """The batching this model gets (None: requests go one by one)."""
        return self.batch if self.batch is not None and self.batch.enabled else None

    def catalogue_names(self) -> list[str]:
        """Names to look this model's price up by in the pricing catalogue, best first."""
        return [self.name]


class DeploymentConfig(_Strict):
    """One place a model is served from (an API key, a vLLM server …)."""

    api_base: str
    """The API's base URL, up to and including ``/v1``."""
    api_key_env: str | None = None
    """The environment variable that holds this deployment's key."""
    upstream_model: str | None = None
    """The model name this deployment knows (default: the model's)."""
    weight: float = 1.0
    """Share of traffic relative to the other deployments (by outstanding requests)."""


class HTTPModelConfig(ModelConfig):
    """A model behind any OpenAI-compatible HTTP API: OpenAI, vLLM, Ollama, llama.cpp
    server, TGI. One deployment (``api_base``) or several (``deployments``): each request
    goes to the one with the fewest outstanding requests per unit of ``weight``; a failing
    one is retried elsewhere and cools down (see ``resilience``). Prices not set here come
    from the catalogue, looked up by ``upstream_model`` then ``name``."""

    provider_name: ClassVar[str | None] = "openai"
    yaml_example: ClassVar[str] = """
        models:
          - name: small
            provider: openai
            api_base: https://api.openai.com/v1
            api_key_env: OPENAI_API_KEY
            upstream_model: gpt-4o-mini
            fallbacks: [local-small]
          - name: local-small
            provider: openai                 # a vLLM server on two machines
            deployments:
              - {api_base: "http://10.0.0.5:8000/v1", upstream_model: Qwen2.5-7B-Instruct}
              - {api_base: "http://10.0.0.6:8000/v1", upstream_model: Qwen2.5-7B-Instruct}
            gpu_hour_usd: 1.20
    """

    api_base: str | None = None
    """The API's base URL, up to and including ``/v1``."""
    api_key_env: str | None = None
    """The environment variable that holds the key (never the key itself)."""
    upstream_model: str | None = None
    """The name the upstream knows; it also picks the catalogue price."""
    deployments: list[DeploymentConfig] = Field(default_factory=list)
    """Several places serving the same model; traffic goes to the least busy."""
    timeout_s: float = Field(120.0, gt=0)
    """Longest wait for the next bytes of an answer."""
    connect_timeout_s: float = Field(5.0, gt=0)
    """Longest wait to open a connection."""
    max_connections: int = Field(256, ge=1)
    """Pooled connections per deployment."""
    supports_stream_usage: bool = True
    """Ask for usage on streams (``stream_options.include_usage``)."""
    http_client: Literal["margin", "aiohttp"] = "margin"
    """``margin``: the gateway's lean HTTP/1.1 client (less CPU and time to first byte on
    every call: docs/benchmarks.md); ``aiohttp``: aiohttp's client, the one margin used
    before, kept for an upstream that needs what the lean one does not do (HTTP proxies,
    HTTP/1.0-only servers that need ``Connection: keep-alive`` spelled out)."""

    def catalogue_names(self) -> list[str]:
        names = [self.upstream_model, self.name, *(d.upstream_model for d in self.deployments)]
        return [n for n in names if n]

    @model_validator(mode="after")
    def _deployments(self) -> "HTTPModelConfig":
        if not (self.api_base or self.deployments):
            raise ValueError(f"model {self.name!r}: provider {self.provider} needs api_base or "
                             "deployments")
        if self.api_base and not self.deployments:
            self.deployments = [DeploymentConfig(api_base=self.api_base,
                                                 api_key_env=self.api_key_env,
                                                 upstream_model=self.upstream_model)]
        return self


class AnthropicModelConfig(HTTPModelConfig):
    """A model behind Anthropic's Messages API (or anything speaking it). Deployments,
    retries and cool-down work as for ``openai`` models; prices not set here come from the
    catalogue by ``upstream_model`` (``cache_read_input_token_cost`` and
    ``cache_creation_input_token_cost`` price the prompt cache)."""

    provider_name: ClassVar[str | None] = "anthropic"
    yaml_example: ClassVar[str] = """
        models:
          - name: claude
            provider: anthropic
            api_key_env: ANTHROPIC_API_KEY
            upstream_model: claude-sonnet-4-5
    """

    provider: str = "anthropic"
    """Which upstream serves it: anthropic."""
    api_base: str | None = "https://api.anthropic.com"
    """The API's base URL (without ``/v1``)."""
    api_key_env: str | None = "ANTHROPIC_API_KEY"
    """The environment variable that holds the key, sent as ``x-api-key``."""
    anthropic_version: str = "2023-06-01"
    """The ``anthropic-version`` header."""
    default_max_tokens: int = Field(4096, ge=1)
    """``max_tokens`` for chat requests that set none (Anthropic requires one)."""


class AzureModelConfig(HTTPModelConfig):
    """A deployment on Azure OpenAI. ``route: deployments`` calls
    ``{api_base}/openai/deployments/{deployment}/chat/completions?api-version=…``;
    ``route: v1`` calls the v1 API, ``{api_base}/openai/v1/chat/completions``, with the model
    in the body. The key goes in the ``api-key`` header, or a Microsoft Entra token from
    ``azure_ad_token_env`` as a bearer token. Prices come from the catalogue by
    ``upstream_model`` (the OpenAI model the deployment runs)."""

    provider_name: ClassVar[str | None] = "azure"
    yaml_example: ClassVar[str] = """
        models:
          - name: gpt4o
            provider: azure
            api_base: https://my-resource.openai.azure.com
            deployment: gpt-4o-prod
            api_key_env: AZURE_OPENAI_API_KEY
            upstream_model: gpt-4o
    """

    provider: str = "azure"
    """Which upstream serves it: azure."""
    api_base: str | None = None
    """The resource's endpoint, ``https://<resource>.openai.azure.com``."""
    api_key_env: str | None = "AZURE_OPENAI_API_KEY"
    """The environment variable holding the key, sent as ``api-key``."""
    azure_ad_token_env: str | None = None
    """The environment variable holding an Entra ID token, sent as a bearer token instead."""
    deployment: str | None = None
    """The deployment name (default: ``upstream_model``, else ``name``)."""
    api_version: str = "2024-10-21"
    """The ``api-version`` query parameter of the deployments route."""
    route: Literal["deployments", "v1"] = "deployments"
    """deployments: the classic per-deployment URLs; v1: the v1 API (model in the body)."""


class GeminiModelConfig(HTTPModelConfig):
    """A model behind Google's Gemini API (``generateContent`` /
    ``streamGenerateContent``), with an API key. Usage comes from ``usageMetadata``: cached
    prompt tokens are priced at ``cache_read_input_token_cost``, thinking tokens as output
    (``output_cost_per_reasoning_token`` where the catalogue has one)."""

    provider_name: ClassVar[str | None] = "gemini"
    yaml_example: ClassVar[str] = """
        models:
          - name: flash
            provider: gemini
            api_key_env: GEMINI_API_KEY
            upstream_model: gemini-2.5-flash
    """

    provider: str = "gemini"
    """Which upstream serves it: gemini."""
    api_base: str | None = "https://generativelanguage.googleapis.com"
    """The API's base URL (without the version)."""
    api_key_env: str | None = "GEMINI_API_KEY"
    """The environment variable holding the API key, sent as ``x-goog-api-key``."""
    api_version: str = "v1beta"
    """The API version in the path."""


class BedrockModelConfig(HTTPModelConfig):
    """A model on Amazon Bedrock, through the Converse / ConverseStream API. Requests are
    SigV4-signed by botocore with the standard AWS credentials (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, profiles, roles); needs the ``aws``
    extra (botocore). ``upstream_model`` is the model id or inference profile; prompt-cache
    reads and writes are priced at the catalogue's cache rates."""

    provider_name: ClassVar[str | None] = "bedrock"
    yaml_example: ClassVar[str] = """
        models:
          - name: sonnet
            provider: bedrock
            region: us-east-1
            upstream_model: anthropic.claude-3-5-sonnet-20241022-v2:0
    """

    provider: str = "bedrock"
    """Which upstream serves it: bedrock."""
    region: str = "us-east-1"
    """The AWS region; the endpoint is ``https://bedrock-runtime.<region>.amazonaws.com``
    unless ``api_base`` says otherwise."""

    @model_validator(mode="before")
    @classmethod
    def _regional_endpoint(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("api_base") and not data.get("deployments"):
            region = data.get("region") or "us-east-1"
            data = {**data, "api_base": f"https://bedrock-runtime.{region}.amazonaws.com"}
        return data


class LlamaCppModelConfig(ModelConfig):
    """A GGUF model run in-process by llama.cpp (the bundled SmolLM2 unless ``path``). One
    worker thread owns the model, so requests are served one at a time, a stream holding it
    until its last token; with ``n_parallel`` above 1, plain requests (no stream, tools,
    JSON mode or logprobs) that arrive while it is busy are decoded together, up to that
    many sequences per decode, in a second context of ``n_parallel`` × ``n_ctx`` cells
    (1.2–1.3× the tokens/s at 8 on 2 CPU cores; greedy answers can differ slightly from
    one-at-a-time ones). The cost of a request is its compute time at ``cpu_hour_usd`` or
    ``gpu_hour_usd``."""

    yaml_example: ClassVar[str] = """
        models:
          - name: local-chat
            provider: llamacpp
            n_parallel: 4
            cpu_hour_usd: 0.10
    """

    provider_name: ClassVar[str | None] = "llamacpp"
    default_kind: ClassVar[ModelKind | None] = "chat"
    hosted: ClassVar[bool] = False

    path: str | None = None
    """The GGUF file; unset: the bundled SmolLM2-135M-Instruct."""
    n_ctx: int = Field(2048, ge=128)
    """Context length in tokens."""
    n_threads: int | None = None
    """CPU threads (default: every core)."""
    n_parallel: int = Field(1, ge=1, le=64)
    """Sequences decoded together (> 1 batches concurrent plain requests)."""

    def effective_batch(self) -> BatchConfig | None:
        if self.n_parallel <= 1:
            return super().effective_batch()
        # The decoder holds n_parallel sequences: no batch may be larger.
        cfg = self.batch or BatchConfig(max_batch_size=self.n_parallel)
        cfg = cfg.model_copy(update={"max_batch_size": min(cfg.max_batch_size,
                                                           self.n_parallel)})
        return cfg if cfg.enabled else None


class LocalEmbeddingsModelConfig(ModelConfig):
    """Sentence embeddings computed in-process (the bundled all-MiniLM-L6-v2 unless
    ``path``), batched by default: concurrent requests share one forward pass. ``runtime:
    auto`` runs ONNX Runtime when it is installed (the ``local`` extra has it; exported once
    from the bundled weights into ``$MARGIN_CACHE_DIR`` or ``~/.cache/margin``, about 6 s),
    else torch: the same vectors (mean cosine 1.0000) about twice as fast in less than half
    the memory; ``quantize: int8`` is faster again at mean cosine 0.994."""

    yaml_example: ClassVar[str] = """
        models:
          - name: embed
            provider: sentence-transformers
            batch: {max_batch_size: 64, max_wait_ms: 5}
    """

    provider_name: ClassVar[str | None] = "sentence-transformers"
    default_kind: ClassVar[ModelKind | None] = "embeddings"
    hosted: ClassVar[bool] = False

    path: str | None = None
    """A sentence-transformers model directory; unset: the bundled all-MiniLM-L6-v2."""
    n_threads: int | None = None
    """CPU threads (default: every core)."""
    runtime: Literal["auto", "torch", "onnx"] = "auto"
    """auto: ONNX Runtime when installed (same vectors, about 2x faster than torch)."""
    quantize: Literal["int8"] | None = None
    """int8: dynamically quantized weights (faster, vectors differ slightly)."""
    compile: bool = False
    """torch.compile the model (torch runtime only)."""

    def effective_batch(self) -> BatchConfig | None:
        # On by default: concurrent requests then share one forward pass.
        cfg = self.batch if self.batch is not None else BatchConfig()
        return cfg if cfg.enabled else None


class RetryConfig(_Strict):
    """How hard one model is tried before its request falls back to another model."""

    max_attempts: int = Field(3, ge=1, le=10)
    """Calls to one model per request, over its deployments (a new deployment each time while
    untried ones remain)."""
    retry_same_deployment_last: bool = False
    """The last model in a fallback chain may also retry a deployment it already tried (off:
    clients' SDKs retry too, and retries multiply)."""
    backoff_base_ms: float = Field(20.0, ge=0)
    """Wait before the first retry; doubled each retry."""
    backoff_max_ms: float = Field(1000.0, ge=0)
    """Longest wait between retries."""
    jitter: Literal["full", "equal", "none"] = "full"
    """"full": uniform in [0, delay] (AWS's full jitter); "equal": delay/2 + uniform(delay/2)."""


class HealthConfig(_Strict):
    """When a deployment is taken out of rotation and how it comes back."""

    failures_to_cool: int = Field(1, ge=1)
    """Consecutive failures that start a cool-down."""
    cooldown_s: float = Field(2.0, gt=0)
    """First cool-down."""
    cooldown_max_s: float = Field(60.0, gt=0)
    """Cap after repeated failed probes."""
    honour_retry_after: bool = True
    """A 429's Retry-After sets the cool-down."""
    retry_after_max_s: float = Field(300.0, gt=0)
    """Longest cool-down a 429's Retry-After may ask for."""


class ResilienceConfig(_Strict):
    yaml_example: ClassVar[str] = """
        resilience:
          retry: {max_attempts: 3, backoff_base_ms: 20, jitter: full}
          health: {cooldown_s: 2, cooldown_max_s: 60}
    """

    """``resilience:`` in margin.yaml: how every HTTP model's deployments are retried and
    cooled down (``margin.upstreams.resilience``)."""

    retry: RetryConfig = Field(default_factory=RetryConfig)
    """How one model's request is retried over its deployments."""
    health: HealthConfig = Field(default_factory=HealthConfig)
    """When a deployment leaves and rejoins the rotation."""
