"""The ``quality:`` section: off by default, judges chosen by kind, an llm judge names a
declared model."""

from __future__ import annotations

import pytest

from margin.config import load_settings
from margin.errors import ConfigError
from margin.quality.config import EmbeddingJudgeConfig, ExactJudgeConfig, LlmJudgeConfig


def _models():
    return [{"name": "small", "provider": "openai", "api_base": "http://127.0.0.1:1/v1"}]


def test_shadow_is_off_by_default_with_the_documented_defaults():
    s = load_settings(environ={}, overrides={"models": _models()})
    shadow = s.quality.shadow
    assert shadow.enabled is False
    assert (shadow.sample_rate, shadow.max_share_of_savings, shadow.daily_cap_usd) == \
        (0.05, 0.2, 10.0)
    assert isinstance(shadow.judge, EmbeddingJudgeConfig) and shadow.judge.threshold == 0.9
    assert shadow.include_exact_cache is False


def test_judge_kind_picks_its_settings(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("models: [{name: small, provider: openai, api_base: 'http://x/v1'}]\n"
                 "quality: {shadow: {enabled: true, judge: {kind: exact}}}\n")
    assert isinstance(load_settings(p, environ={}).quality.shadow.judge, ExactJudgeConfig)
    p.write_text("models: [{name: small, provider: openai, api_base: 'http://x/v1'}]\n"
                 "quality: {shadow: {judge: {kind: llm, model: small}}}\n")
    judge = load_settings(p, environ={}).quality.shadow.judge
    assert isinstance(judge, LlmJudgeConfig) and judge.model == "small"


@pytest.mark.parametrize("text, needle", [
    ("quality: {shadow: {judge: {kind: llm, model: nobody}}}", "not a declared model"),
    ("quality: {shadow: {sample_rate: 1.5}}", "sample_rate"),
    ("quality: {shadow: {judge: {kind: embedding, threshold: 2}}}", "threshold"),
    ("quality: {shadow: {judge: {kind: telepathy}}}", "judge"),
])
def test_bad_quality_settings_are_refused_with_where(tmp_path, text, needle):
    p = tmp_path / "m.yaml"
    p.write_text("models: [{name: small, provider: openai, api_base: 'http://x/v1'}]\n" + text)
    with pytest.raises(ConfigError) as err:
        load_settings(p, environ={})
    assert needle in str(err.value)
