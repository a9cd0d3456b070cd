import math

import pytest

from training.schedule import lr_at


def test_warmup_starts_above_zero_and_reaches_peak():
    assert lr_at(0, 6e-4, 6e-5, 2000, 100_000) == pytest.approx(6e-4 / 2001)
    assert lr_at(1999, 6e-4, 6e-5, 2000, 100_000) == pytest.approx(6e-4 * 2000 / 2001)
    assert lr_at(2000, 6e-4, 6e-5, 2000, 100_000) == pytest.approx(6e-4)


def test_cosine_midpoint_end_and_flat_after():
    mid = 2000 + (100_000 - 2000) // 2
    assert lr_at(mid, 6e-4, 6e-5, 2000, 100_000) == pytest.approx((6e-4 + 6e-5) / 2)
    assert lr_at(100_000, 6e-4, 6e-5, 2000, 100_000) == pytest.approx(6e-5)
    assert lr_at(150_000, 6e-4, 6e-5, 2000, 100_000) == pytest.approx(6e-5)


def test_monotone_decay_after_warmup():
    lrs = [lr_at(s, 3e-4, 3e-5, 11_812, 590_625) for s in range(11_812, 590_626, 5_000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert not any(math.isnan(x) for x in lrs)


def test_without_warmup_the_first_step_runs_at_the_peak_rate():
    assert lr_at(0, 1e-3, 1e-4, 0, 100) == pytest.approx(1e-3)
