"""``margin bench abuse`` end to end at a tiny size: it starts a gateway and a fake
upstream, runs the three attacks and writes its table."""

from __future__ import annotations

from click.testing import CliRunner

from margin.cli.main import cli


def test_abuse_bench_writes_its_table(tmp_path):
    out = tmp_path / "benchmarks.md"
    result = CliRunner().invoke(cli, ["bench", "abuse", "--requests", "40", "--loris", "4",
                                       "--hold-s", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "<!-- bench:abuse -->" in text and "| scrypt runs |" in text
    assert "| /metrics after 40 requests |" in text
    assert "4 slow-header connections" in text
