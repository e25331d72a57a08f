"""The evaluation protocols, each registered once in `PROTOCOLS` (docs/METHOD.md, "Evaluation"; how to add
one: docs/EXTENDING.md). The command line (`evaluate --protocol`, its options and its output), `Run` (cached
results) and the report find a protocol here.

- `zero`, `drop`: every one of the 2^M - 1 modality combinations, an absent modality's input zeroed and
  encoded, or left out of the encoders and the fusion (`workbench.evaluate.evaluate_combinations`, one pass);
- `rmm`, `nm`: the robustness benchmark's random-missing and noisy-modality protocols
  (`workbench.robustness`), each with its own options (RMM's rates, NM's levels).

A *combinations* protocol is a value of `train.protocol` too (how a student's absent modalities are treated),
and the models implement it (`Segmentor.encode`); a *robustness* protocol is an evaluation function with a
results class (`from_state`, `state`, `format_table`, `save`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from workbench import robustness as R
from workbench.errors import ConfigError

__all__ = ["Option", "EvalProtocol", "PROTOCOLS", "GROUPS", "combination_protocols", "robustness_protocol",
           "expand"]


@dataclass(frozen=True)
class Option:
    """A protocol's own command-line option: `--<flag>` holds a comma-separated list of `kind`."""

    flag: str  # e.g. "rates" (the CLI option --rates; the keyword argument of `evaluate`)
    kind: type
    default: tuple
    help: str


@dataclass(frozen=True)
class EvalProtocol:
    name: str
    kind: Literal["combinations", "robustness"]
    title: str  # one line: what it measures
    source: str
    evaluate: Callable | None = None  # robustness: evaluate(model, loader, seed=, convention=, ..., **options)
    results: type | None = None  # robustness: the results class (`from_state`)
    options: tuple[Option, ...] = ()


PROTOCOLS: dict[str, EvalProtocol] = {p.name: p for p in (
    EvalProtocol("zero", "combinations", "every modality combination, an absent modality's input zeroed and encoded",
                 "DeLiVER robustness benchmark"),
    EvalProtocol("drop", "combinations", "every modality combination, an absent modality left out of the encoders "
                 "and the fusion", "RobustSeg's present-only evaluation"),
    EvalProtocol("rmm", "robustness", "random-missing modality: each element of the normalized input zeroed with "
                 "probability r", "val_mm_RMM.py", R.evaluate_rmm, R.RMMResults,
                 (Option("rates", float, R.RMM_RATES, "RMM: comma-separated zeroing rates"),)),
    EvalProtocol("nm", "robustness", "noisy modality: salt-and-pepper and Gaussian noise on the normalized input",
                 "val_mm_NM.py", R.evaluate_nm, R.NMResults,
                 (Option("levels", str, tuple(R.NM_LEVELS), "NM: comma-separated noise levels"),)),
)}
# names that stand for several protocols on the command line
GROUPS: dict[str, tuple[str, ...]] = {"both": ("zero", "drop"), "all": tuple(PROTOCOLS)}


def expand(name: str) -> tuple[str, ...]:
    """A protocol or group name as the protocols it stands for."""
    if name in GROUPS:
        return GROUPS[name]
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; choose one of {', '.join([*PROTOCOLS, *GROUPS])}")
    return (name,)


def combination_protocols() -> tuple[str, ...]:
    return tuple(n for n, p in PROTOCOLS.items() if p.kind == "combinations")


def robustness_protocol(name: str) -> EvalProtocol:
    """The registered robustness protocol `name`, or a ConfigError listing them."""
    p = PROTOCOLS.get(name)
    if p is None or p.kind != "robustness":
        valid = [n for n, q in PROTOCOLS.items() if q.kind == "robustness"]
        raise ConfigError(f"protocol={name!r} is not a robustness protocol; choose one of {', '.join(valid)}")
    return p
