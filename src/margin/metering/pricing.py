"""What a request cost, in USD.

Prices come from the model's own config (USD per million tokens), else from a pricing
catalogue in LiteLLM's format (USD per token: ``input_cost_per_token``,
``output_cost_per_token``, ``cache_read_input_token_cost``, ``cache_creation_input_token_cost``,
``output_cost_per_reasoning_token``). Every kind of token is billed at its own rate: prompt
tokens read from the provider's cache at the cache-read price, those written to it at the
cache-write price, reasoning tokens (a part of the completion) at the reasoning price where
the catalogue has one, else the output price. A rate the entry lacks falls back to the plain
input or output price, never to zero. Self-hosted models are priced
by the compute time they spent on the request at their hourly price, i.e. by measured
throughput: cost per token = hourly price / 3600 / tokens per second.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import orjson

from margin.config import ModelConfig, PricingConfig
from margin.errors import ConfigError
from margin.types import Usage

log = logging.getLogger("margin.pricing")


@dataclass(frozen=True, slots=True)
class Price:
    input_usd_per_token: float = 0.0
    output_usd_per_token: float = 0.0
    cached_input_usd_per_token: float | None = None
    hour_usd: float | None = None  # self-hosted: price of the machine per hour
    known: bool = True
    cache_write_usd_per_token: float | None = None
    reasoning_usd_per_token: float | None = None

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
                 compute_s: float | None = None, cache_write_tokens: int = 0,
                 reasoning_tokens: int = 0) -> float:
        """Prompt tokens include the cache reads and writes; completion tokens include the
        reasoning tokens (as OpenAI counts them; Anthropic's usage is read into this)."""
        if self.hour_usd is not None:
            return self.hour_usd * (compute_s or 0.0) / 3600.0
        cached = min(cached_tokens, prompt_tokens)
        written = min(cache_write_tokens, prompt_tokens - cached)
        reasoning = min(reasoning_tokens, completion_tokens)
        return ((prompt_tokens - cached - written) * self.input_usd_per_token
                + cached * _or(self.cached_input_usd_per_token, self.input_usd_per_token)
                + written * _or(self.cache_write_usd_per_token, self.input_usd_per_token)
                + (completion_tokens - reasoning) * self.output_usd_per_token
                + reasoning * _or(self.reasoning_usd_per_token, self.output_usd_per_token))

    def cost_of(self, usage: Usage, compute_s: float | None = None) -> float:
        return self.cost_usd(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
                             compute_s, usage.cache_write_tokens, usage.reasoning_tokens)


def _or(rate: float | None, fallback: float) -> float:
    return rate if rate is not None else fallback


def _rate(entry: dict, name: str) -> float | None:
    value = entry.get(name)
    return float(value) if value is not None else None


UNKNOWN = Price(known=False)


def load_catalogue(path: str | Path | None = None) -> dict[str, dict]:
    try:
        if path is None:
            data = resources.files("margin.data").joinpath("model_prices.json").read_bytes()
        else:
            data = Path(path).read_bytes()
        table = orjson.loads(data)
    except FileNotFoundError:
        raise ConfigError(f"pricing catalogue not found: {path}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"pricing catalogue {path}: not valid JSON ({exc})") from None
    if not isinstance(table, dict):
        raise ConfigError(f"pricing catalogue {path}: expected an object of models")
    return {k: v for k, v in table.items() if isinstance(v, dict)}


class PriceBook:
    def __init__(self, models: list[ModelConfig], cfg: PricingConfig | None = None) -> None:
        self.catalogue = load_catalogue(cfg.catalogue_path if cfg else None)
        self._prices = {m.name: self._resolve(m) for m in models}
        self._max_output = {m.name: self._max_output_of(m) for m in models}

    def _lookup(self, name: str) -> dict | None:
        if name in self.catalogue:
            return self.catalogue[name]
        # "openai/gpt-4o" and "gpt-4o" name the same list price.
        short = name.split("/", 1)[1] if "/" in name else None
        if short and short in self.catalogue:
            return self.catalogue[short]
        for key, entry in self.catalogue.items():
            if key.endswith("/" + name):
                return entry
        return None

    def _resolve(self, m: ModelConfig) -> Price:
        hour = m.gpu_hour_usd if m.gpu_hour_usd is not None else m.cpu_hour_usd
        if m.input_cost_per_mtok is not None or m.output_cost_per_mtok is not None:
            def per_token(mtok: float | None) -> float | None:
                return mtok / 1e6 if mtok is not None else None

            return Price((m.input_cost_per_mtok or 0.0) / 1e6,
                         (m.output_cost_per_mtok or 0.0) / 1e6,
                         per_token(m.cached_input_cost_per_mtok),
                         cache_write_usd_per_token=per_token(m.cache_write_input_cost_per_mtok),
                         reasoning_usd_per_token=per_token(m.reasoning_output_cost_per_mtok))
        if hour is not None and not m.hosted:
            return Price(hour_usd=hour)
        for name in m.catalogue_names():
            entry = self._lookup(name)
            if entry:
                return Price(float(entry.get("input_cost_per_token") or 0.0),
                             float(entry.get("output_cost_per_token") or 0.0),
                             _rate(entry, "cache_read_input_token_cost"),
                             cache_write_usd_per_token=_rate(
                                 entry, "cache_creation_input_token_cost"),
                             reasoning_usd_per_token=_rate(
                                 entry, "output_cost_per_reasoning_token"))
        if hour is not None:
            return Price(hour_usd=hour)
        if m.hosted:
            log.warning("no price for model %r: its requests are recorded at 0 USD; set "
                        "input_cost_per_mtok/output_cost_per_mtok", m.name)
            return UNKNOWN
        return Price(hour_usd=0.0)

    def _max_output_of(self, m: ModelConfig) -> int | None:
        for name in m.catalogue_names():
            entry = self._lookup(name)
            v = entry.get("max_output_tokens") if entry else None
            if isinstance(v, (int, float)) and v > 0:
                return int(v)
        return None

    def max_output_tokens(self, model: str) -> int | None:
        """The catalogue's most completion tokens per choice for ``model`` (None: unknown)."""
        return self._max_output.get(model)

    def price(self, model: str) -> Price:
        return self._prices.get(model, UNKNOWN)
