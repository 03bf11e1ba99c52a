"""Every kind of token at its own rate: cache reads and writes, reasoning, and the fallbacks
when a catalogue entry lacks a rate (never zero)."""

from __future__ import annotations

import json

import pytest

from margin.config import ModelConfig, PricingConfig
from margin.metering.pricing import PriceBook
from margin.types import Usage


def _book(tmp_path, entry: dict, **model) -> PriceBook:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"m": entry}))
    return PriceBook([ModelConfig(name="m", **model)], PricingConfig(catalogue_path=str(path)))


def test_each_kind_at_its_catalogue_rate(tmp_path):
    book = _book(tmp_path, {"input_cost_per_token": 1e-6, "output_cost_per_token": 4e-6,
                            "cache_read_input_token_cost": 1e-7,
                            "cache_creation_input_token_cost": 1.25e-6,
                            "output_cost_per_reasoning_token": 8e-6})
    usage = Usage(prompt_tokens=1000, completion_tokens=300, cached_tokens=600,
                  cache_write_tokens=100, reasoning_tokens=200)
    assert book.price("m").cost_of(usage) == pytest.approx(
        300 * 1e-6 + 600 * 1e-7 + 100 * 1.25e-6 + 100 * 4e-6 + 200 * 8e-6, rel=1e-12)


def test_missing_rates_fall_back_to_plain_prices(tmp_path):
    book = _book(tmp_path, {"input_cost_per_token": 1e-6, "output_cost_per_token": 4e-6})
    usage = Usage(prompt_tokens=1000, completion_tokens=300, cached_tokens=600,
                  cache_write_tokens=100, reasoning_tokens=200)
    assert book.price("m").cost_of(usage) == pytest.approx(1000 * 1e-6 + 300 * 4e-6)


def test_model_prices_override_the_catalogue(tmp_path):
    book = _book(tmp_path, {"input_cost_per_token": 1e-6, "output_cost_per_token": 4e-6},
                 input_cost_per_mtok=2.0, output_cost_per_mtok=10.0,
                 cached_input_cost_per_mtok=0.2, cache_write_input_cost_per_mtok=2.5,
                 reasoning_output_cost_per_mtok=20.0)
    usage = Usage(prompt_tokens=100, completion_tokens=50, cached_tokens=40,
                  cache_write_tokens=10, reasoning_tokens=30)
    assert book.price("m").cost_of(usage) == pytest.approx(
        (50 * 2.0 + 40 * 0.2 + 10 * 2.5 + 20 * 10.0 + 30 * 20.0) / 1e6)


def test_counts_beyond_the_totals_are_clamped(tmp_path):
    book = _book(tmp_path, {"input_cost_per_token": 1e-6, "output_cost_per_token": 4e-6,
                            "cache_read_input_token_cost": 1e-7})
    # a provider that reports more cached tokens than prompt tokens cannot make cost negative
    usage = Usage(prompt_tokens=10, completion_tokens=5, cached_tokens=50,
                  cache_write_tokens=50, reasoning_tokens=99)
    assert book.price("m").cost_of(usage) == pytest.approx(10 * 1e-7 + 5 * 4e-6)
