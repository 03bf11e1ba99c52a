"""``margin bench soak`` end to end at a tiny size: a gateway with keys, limits, budgets,
the exact cache and the ledger, unique requests in chunks, RSS and cache sizes written."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from margin.bench.soak import Reading, growth_pct, warm_up_end
from margin.cli.main import cli


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed")
def test_soak_bench_writes_its_table(tmp_path):
    out = tmp_path / "benchmarks.md"
    result = CliRunner().invoke(cli, ["bench", "soak", "--requests", "3000", "--every", "1000",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "<!-- bench:soak -->" in text
    # One row per chunk after the start; wrk may overshoot a chunk by a few requests.
    rows = [line for line in text.splitlines() if line.startswith("| ")
            and line.split("|")[1].strip().replace(",", "").isdigit()
            and line.split("|")[1].strip() != "0"]
    assert len(rows) == 3, text
    counts = [int(r.split("|")[1].strip().replace(",", "")) for r in rows]
    assert [round(c, -3) for c in counts] == [1000, 2000, 3000] and counts[-1] >= 3000, text
    # Every request was answered, and the cache filled with the unique prompts it saw.
    assert "errors (non-2xx or socket): 0" in text
    entries = [float(r.split("|")[5].replace(",", "")) for r in rows]
    peaks = [float(r.split("|")[3]) for r in rows]
    ends = [float(r.split("|")[2]) for r in rows]
    assert all(p >= e for p, e in zip(peaks, ends)), text
    assert entries == sorted(entries) and entries[-1] >= 2_900


def test_soak_refuses_fewer_requests_than_a_chunk():
    result = CliRunner().invoke(cli, ["bench", "soak", "--requests", "10", "--every", "100"])
    assert result.exit_code == 2
    assert "--requests must be at least --every" in result.output


def _reading(sent: int, peak_mb: float, elapsed_s: float) -> Reading:
    return Reading(sent, int(peak_mb * 2**20), int(peak_mb * 2**20), {}, elapsed_s)


def test_warm_up_ends_after_a_minute_and_a_fifth_of_the_run():
    readings = [_reading(0, 80, 0)] + [_reading(i * 50_000, 100 + i, i * 30.0)
                                       for i in range(1, 11)]
    # 60 s is reached at the 2nd chunk, a fifth of 500 k requests at the 2nd as well
    assert warm_up_end(readings, 500_000) == 2
    # a longer run: a fifth is 200 k requests, the 4th chunk
    assert warm_up_end(readings, 1_000_000) == 4
    assert growth_pct(readings, 2) == pytest.approx((110 / 102 - 1) * 100)
    assert growth_pct(readings, len(readings) - 1) != growth_pct(readings, len(readings) - 1)
