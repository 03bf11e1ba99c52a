from __future__ import annotations

import json

import pytest

from margin.config import ModelConfig, PricingConfig, model_config
from margin.metering.pricing import PriceBook


def _m(**kw) -> ModelConfig:
    kw.setdefault("api_base", "http://x/v1")
    return model_config(**kw)


def test_configured_prices_win_over_the_catalogue():
    book = PriceBook([_m(name="gpt-4o", input_cost_per_mtok=1.0, output_cost_per_mtok=3.0)])
    assert book.price("gpt-4o").cost_usd(1000, 500) == pytest.approx(0.001 + 0.0015)


def test_catalogue_prices_with_cached_tokens_and_provider_prefix():
    book = PriceBook([_m(name="small", upstream_model="openai/gpt-4o-mini")])
    p = book.price("small")
    # 1000 prompt tokens of which 400 cached, 100 completion tokens
    expected = 600 * 1.5e-7 + 400 * 7.5e-8 + 100 * 6e-7
    assert p.cost_usd(1000, 100, 400) == pytest.approx(expected)


def test_user_supplied_litellm_file(tmp_path):
    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"my-model": {"input_cost_per_token": 1e-6,
                                          "output_cost_per_token": 4e-6}}))
    book = PriceBook([_m(name="my-model")], PricingConfig(catalogue_path=str(f)))
    assert book.price("my-model").cost_usd(10, 10) == pytest.approx(5e-5)


def test_self_hosted_cost_is_compute_time_at_the_hourly_price():
    book = PriceBook([model_config(name="local", provider="llamacpp", gpu_hour_usd=3.6)])
    # 2 s of compute at 3.6 USD/h = 0.002 USD, whatever the token count
    assert book.price("local").cost_usd(100, 50, compute_s=2.0) == pytest.approx(0.002)


def test_unknown_price_is_zero_not_an_error():
    book = PriceBook([_m(name="mystery-model")])
    assert book.price("mystery-model").known is False
    assert book.price("mystery-model").cost_usd(100, 100) == 0.0
