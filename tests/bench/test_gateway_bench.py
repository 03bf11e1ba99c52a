"""``margin bench gateway --stream --compare-journal`` runs end to end and writes its
section: both gateways side by side, streams that ended, the journal's cost per row."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import IN_CI


def test_stream_bench_with_journal_comparison_writes_its_section(tmp_path):
    if not shutil.which("wrk"):
        if IN_CI:
            pytest.fail("wrk is required in CI (.ci/run installs it)")
        pytest.skip("wrk not installed")
    out = tmp_path / "bench.md"
    r = subprocess.run([sys.executable, "-m", "margin.cli.main", "bench", "gateway", "--stream",
                        "--compare-journal", "--duration-s", "1", "--concurrency", "2",
                        "--out", str(out)], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    assert "<!-- bench:gateway-stream -->" in text
    rows = [line for line in text.splitlines() if line.startswith("| 2 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["gateway", "journal off"]
    for row in rows:
        cells = [c.strip() for c in row.split("|")]
        assert float(cells[4].replace(",", "")) > 0 and cells[-2] == "0"  # rps, no errors
    added = re.search(r"\*\*([\d.]+) µs\*\* added", text)
    assert added and float(added.group(1)) > 0
