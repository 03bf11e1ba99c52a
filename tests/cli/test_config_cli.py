"""``margin config check``: a broken file says file:line and exits 2; a good one prints the
settings in force with its secrets masked."""

from __future__ import annotations

import subprocess
import sys


def margin(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "margin.cli.main", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_a_misspelt_field_names_its_file_and_line(tmp_path):
    cfg = tmp_path / "margin.yaml"
    cfg.write_text("server:\n  port: 8000\nmodels:\n  - name: local\n    provider: llamacpp\n"
                   "    n_paralel: 4\n")
    r = margin("config", "check", str(cfg))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"margin: error: {cfg}:6: models.0.n_paralel: Extra inputs are not permitted"]


def test_a_bad_value_deep_in_a_section_and_broken_yaml(tmp_path):
    cfg = tmp_path / "margin.yaml"
    cfg.write_text("limits:\n  budgets:\n    - scope: team\n      usd: -1\n")
    r = margin("config", "check", str(cfg))
    assert r.returncode == 2 and f"{cfg}:4: limits.budgets.0.usd:" in r.stderr
    cfg.write_text("models: [1\n")
    r = margin("config", "check", str(cfg))
    assert r.returncode == 2 and f"{cfg}:2: not valid YAML" in r.stderr
    r = margin("config", "check", str(tmp_path / "nowhere.yaml"))
    assert r.returncode == 2 and "config file not found" in r.stderr


def test_a_good_file_prints_the_settings_with_secrets_masked(tmp_path):
    cfg = tmp_path / "margin.yaml"
    cfg.write_text("redis_url: redis://:hunter2@127.0.0.1:6379/0\n"
                   "ledger: {url: 'postgresql://margin:s3cret@db:5432/margin'}\n"
                   "limits: {alerts: {webhook_url: 'https://hooks.example/T0/B0/XYZ'}}\n"
                   "models: [{name: small, provider: openai, api_base: 'http://x/v1'}]\n")
    r = margin("config", "check", str(cfg))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "hunter2" not in out and "s3cret" not in out and "XYZ" not in out
    assert "redis://:***@127.0.0.1:6379/0" in out
    assert "postgresql://margin:***@db:5432/margin" in out
    assert "webhook_url: '***'" in out
    assert "timeout_s: 120.0" in out  # defaults filled in
