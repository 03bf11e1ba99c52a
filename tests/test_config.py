from __future__ import annotations

import pytest

from margin.config import load_settings
from margin.errors import ConfigError


def test_no_file_serves_the_bundled_local_models():
    s = load_settings(None, environ={})
    assert [(m.name, m.provider, m.kind) for m in s.models] == [
        ("smollm2", "llamacpp", "chat"),
        ("all-minilm-l6-v2", "sentence-transformers", "embeddings")]
    assert s.ledger.url == "margin.db" and s.ledger.log_content is False


def test_yaml_then_env_then_overrides(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("""
models:
  - name: small
    api_base: http://127.0.0.1:9/v1
    api_key_env: UPSTREAM_KEY
    input_cost_per_mtok: 0.15
ledger: {url: a.db}
server: {port: 9000}
""")
    s = load_settings(p, environ={"MARGIN_LEDGER__URL": "b.db", "MARGIN_PORT": "9100",
                                  "MARGIN_LEDGER__LOG_CONTENT": "true"},
                      overrides={"server.host": "0.0.0.0"})
    assert s.ledger.url == "b.db" and s.server.port == 9100 and s.server.host == "0.0.0.0"
    assert s.ledger.log_content is True
    (m,) = s.models
    assert m.deployments[0].api_base == "http://127.0.0.1:9/v1"
    assert m.deployments[0].api_key_env == "UPSTREAM_KEY"


@pytest.mark.parametrize("text, words", [
    ("models: [{name: x, provider: openai}]", "api_base"),
    ("models: [{name: x, api_base: 'http://a'}, {name: x, api_base: 'http://b'}]", "twice"),
    ("ledger: {batch_size: 0}", "ledger.batch_size"),
    ("surprise: 1", "surprise"),
    ("- a list", "mapping"),
    ("a: [unclosed", "not valid YAML"),
])
def test_bad_config_is_one_clear_line(tmp_path, text, words):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_settings(p, environ={})
    assert words in e.value.message and "\n" not in e.value.message


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_settings("/nonexistent/margin.yaml", environ={})
