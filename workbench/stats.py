"""Paired statistics over seeds: the mean difference of two methods trained with the same seeds, with a
t confidence interval.

Two methods evaluated at seeds s_1..s_n give values a_i and b_i; the seed is the pairing (the same
data order and initialization draws), so the differences d_i = a_i - b_i are the sample. With mean
d̄, sample standard deviation s_d (n - 1 in the denominator) and the Student t quantile t_{n-1},
the interval is d̄ ± t_{n-1}(1 - (1 - confidence) / 2) s_d / sqrt(n). With one seed there is no
interval: low, high and sd are nan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.stats import t as student_t

from workbench.errors import ConfigError

__all__ = ["paired_ci", "t_quantile"]


def t_quantile(confidence: float, dof: int) -> float:
    """The two-sided Student t quantile: P(|T| <= q) = confidence for T with `dof` degrees of freedom."""
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence={confidence} must be in (0, 1), e.g. 0.95")
    if dof < 1:
        raise ValueError(f"a t quantile needs at least 1 degree of freedom, got {dof}")
    return float(student_t.ppf(1 - (1 - confidence) / 2, dof))


def paired_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean of the paired differences a_i - b_i with its t confidence interval.

    Returns {"mean", "low", "high", "n", "sd"}: sd is the sample standard deviation of the differences;
    low/high (and sd) are nan when n = 1."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths (one per seed), got {len(a)} and {len(b)}")
    if not a:
        raise ValueError("paired_ci needs at least one pair")
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    if n == 1:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": 1, "sd": math.nan}
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "sd": sd}
