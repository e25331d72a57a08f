"""`workbench.stats` against hand-computed paired statistics, and the claim verdicts."""

import math

import pytest

from workbench.stats import paired, verdict


def test_paired_difference_hand_computed():
    a, b = [3.0, 5.0, 4.0, 6.0], [1.0, 2.0, 2.0, 3.0]  # d = 2, 3, 2, 3: mean 2.5, sd sqrt(1/3)
    d = paired(a, b)
    sd = math.sqrt(1 / 3)
    t = 3.182446305284263  # t_{0.975, 3}
    assert d.mean == pytest.approx(2.5) and d.sd == pytest.approx(sd) and d.n == 4
    assert d.low == pytest.approx(2.5 - t * sd / 2) and d.high == pytest.approx(2.5 + t * sd / 2)
    assert d.mde == pytest.approx((t + 0.9784723123633045) * sd / 2)  # t_{0.80, 3} = 0.978
    assert verdict(d) == "reproduced" and verdict(d, "<") == "contradicted"
    assert verdict(d, ">", 3.5) == "contradicted" and verdict(d, ">", 2.5) == "inconclusive at this power"


def test_one_seed_is_inconclusive_and_mismatched_rows_are_an_error():
    d = paired([1.0], [0.0])
    assert d.mean == 1.0 and math.isinf(d.mde) and verdict(d) == "inconclusive at this power"
    with pytest.raises(ValueError, match="one value per seed"):
        paired([1.0, 2.0], [1.0])
