import math

import pytest

from training.schedule import lr_at, wsd_decay_start


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


def test_wsd_warms_up_holds_the_peak_then_decays_linearly_over_the_last_fraction():
    at = [lr_at(s, 1e-3, 1e-4, 10, 100, "wsd", 0.2) for s in range(101)]
    assert at[:10] == [pytest.approx(1e-3 * (s + 1) / 11) for s in range(10)]
    assert set(at[10:80]) == {1e-3}  # the constant stage: steps 10..79
    assert at[90] == pytest.approx((1e-3 + 1e-4) / 2)  # halfway through the decay
    assert at[100] == pytest.approx(1e-4) and lr_at(500, 1e-3, 1e-4, 10, 100, "wsd") == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(at[80:], at[81:]))


def test_wsd_before_its_decay_does_not_depend_on_the_planned_length():
    """What lets a finished plan be extended: a longer plan has the same rates up to the
    shorter one's decay start (cosine does not: its rates depend on the length everywhere)."""
    short, long_ = ([lr_at(s, 1e-3, 1e-4, 10, n, "wsd", 0.2) for s in range(80)] for n in (100, 1000))
    assert short == long_
    assert lr_at(50, 1e-3, 1e-4, 10, 100) != lr_at(50, 1e-3, 1e-4, 10, 1000)
    assert wsd_decay_start(10, 100, 0.2) == 80 and wsd_decay_start(10, 20, 0.9) == 10  # never in warmup
