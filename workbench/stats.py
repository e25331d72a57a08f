"""Paired-seed statistics for comparing methods (docs/METHOD.md, "Comparing methods").

Two rows trained with the same seed share the teacher, the data order and the Anymodal Dropout draws,
so their per-seed differences d_s = a_s - b_s cancel most of the seed-to-seed noise. Over n seeds:

    mean d,  sd = std(d_s) (n - 1 dof),  95% CI = mean +- t_{0.975, n-1} sd / sqrt(n)
    MDE (the smallest true difference detected with 80% power at the 5% level, two-sided)
        = (t_{0.975, n-1} + t_{0.80, n-1}) sd / sqrt(n)

A directional claim `difference > threshold` is `reproduced` when the whole CI lies above the threshold,
`contradicted` when it lies below, and `inconclusive at this power` otherwise (and always with n < 2).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from workbench.errors import ConfigError

__all__ = ["PairedDiff", "paired", "paired_ci", "t_quantile", "verdict", "VERDICTS", "distinct_seeds"]

VERDICTS = ("reproduced", "contradicted", "inconclusive at this power")


def distinct_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    """`seeds` as a tuple of ints, or a ConfigError when it is empty or repeats a seed: a repeated seed is the
    same run counted twice (two "seeds" with a std of 0 from one run)."""
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ConfigError("no seeds given; give at least one, e.g. seeds=(0, 1, 2)")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"seeds {', '.join(map(str, seeds))} repeat {', '.join(map(str, repeated))}: each seed is "
                          f"one run; give distinct seeds")
    return seeds


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (scipy)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


@dataclass(frozen=True)
class PairedDiff:
    """Mean of paired differences a - b over seeds, with its confidence interval and design power."""

    mean: float
    sd: float
    n: int
    low: float
    high: float
    mde: float  # minimum detectable difference (80% power, 5% two-sided)
    values: tuple[float, ...]


def paired(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedDiff:
    """Paired difference a - b (same seeds, same order) with a t confidence interval."""
    if len(a) != len(b) or not a:
        raise ConfigError(f"paired statistics need equal lengths, one value per seed in the same order (got "
                          f"{len(a)} and {len(b)})")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence={confidence} must be in (0, 1), e.g. 0.95")
    d = [x - y for x, y in zip(a, b)]
    n, mean = len(d), statistics.fmean(d)
    if n < 2:
        return PairedDiff(mean, math.nan, n, -math.inf, math.inf, math.inf, tuple(d))
    sd = statistics.stdev(d)
    se = sd / math.sqrt(n)
    t = t_quantile(0.5 + confidence / 2, n - 1)
    mde = (t + t_quantile(0.8, n - 1)) * se
    return PairedDiff(mean, sd, n, mean - t * se, mean + t * se, mde, tuple(d))


def verdict(diff: PairedDiff, direction: str = ">", threshold: float = 0.0) -> str:
    """`reproduced` / `contradicted` / `inconclusive at this power` for the claim `diff <direction> threshold`."""
    if direction not in (">", "<"):
        raise ConfigError(f"direction={direction!r} must be '>' or '<'")
    low, high = (diff.low, diff.high) if direction == ">" else (-diff.high, -diff.low)
    t = threshold if direction == ">" else -threshold
    if low > t:
        return VERDICTS[0]
    if high < t:
        return VERDICTS[1]
    return VERDICTS[2]


def paired_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """`paired` as a dict {"mean", "low", "high", "n", "sd"}; low, high and sd are nan with one seed."""
    d = paired([float(x) for x in a], [float(x) for x in b], confidence)
    if d.n < 2:
        return {"mean": d.mean, "low": math.nan, "high": math.nan, "n": d.n, "sd": math.nan}
    return {"mean": d.mean, "low": d.low, "high": d.high, "n": d.n, "sd": d.sd}
