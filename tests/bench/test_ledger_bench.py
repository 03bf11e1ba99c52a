"""``margin bench ledger`` end to end on a small ledger: it builds the ledger, times every
page, writes through the real writer, and merges its dialect's block into the section."""

from __future__ import annotations

from click.testing import CliRunner

from margin.bench.ledger import ledger, page_cases


def test_small_ledger_bench_runs_every_page_and_writes_its_section(tmp_path):
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- bench:ledger -->\n## Ledger and console\n\n"
                   "### PostgreSQL: 1 rows over 2 days\nkept\n<!-- /bench:ledger -->\n")
    result = CliRunner().invoke(ledger, ["--rows", "3000", "--days", "10", "--repeat", "3",
                                         "--writer-rows", "600", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    text = out.read_text()
    for label, _, _ in page_cases(None):  # type: ignore[arg-type]
        assert f"| {label} |" in text
    assert "### SQLite: 3,000 rows over 10 days" in text
    assert "### PostgreSQL: 1 rows over 2 days\nkept" in text   # the other block stays
    assert "rows/s" in text and text.count("<!-- bench:ledger -->") == 1
