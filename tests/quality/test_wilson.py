"""The Wilson interval against values computed by hand (and statsmodels' published ones)."""

from __future__ import annotations

import pytest

from margin.quality.wilson import wilson_interval


@pytest.mark.parametrize("k, n, low, high", [
    (70, 100, 0.6042, 0.7810),   # z = 1.96
    (10, 10, 0.7225, 1.0),
    (0, 10, 0.0, 0.2775),
    (1, 2, 0.0945, 0.9055),
])
def test_known_intervals(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=5e-4) and hi == pytest.approx(high, abs=5e-4)


def test_no_samples_no_interval_and_bad_counts_refused():
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_the_interval_narrows_with_samples_and_holds_the_rate():
    widths = []
    for n in (10, 100, 1000):
        lo, hi = wilson_interval(int(0.9 * n), n)
        assert lo < 0.9 < hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
