"""Training records: a run's `metrics.jsonl` as per-step and per-validation rows, and the series
the notebooks plot from them (smoothed curves, loss terms, how often ASM chose each modality).

`train.py` writes one JSON line per optimizer step (`step`, `epoch`, `lr`, `train/<term>`,
`train/primary/<modality>`, `train/feedback/*`) and one per validation (`val/miou_full`, `val/emm`,
`val/worst`, `val/primary/<modality>`, ...). Pure numpy: no model, no plotting.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.errors import MissingFile

__all__ = ["Records", "read_records", "series", "smooth", "loss_terms", "curves", "curve_rows",
           "primary_frequency", "feedback_share", "Plateau", "plateau", "PLATEAU_FRACTION", "PLATEAU_POINTS"]


@dataclass(frozen=True)
class Records:
    """A run's metrics: `train` (one row per step) and `val` (one row per validation)."""

    train: list[dict]
    val: list[dict]

    @property
    def last_val(self) -> dict:
        return self.val[-1] if self.val else {}


def read_records(run_dir: str | Path) -> Records:
    """A run's `metrics.jsonl` as `Records`."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise MissingFile(f"{path} does not exist; train the run first (workbench.runs.Run.ensure)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return Records(train=[r for r in rows if any(k.startswith("train/") for k in r)],
                   val=[r for r in rows if any(k.startswith("val/") for k in r)])


def series(rows: Sequence[dict], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of `key` over the rows that have it."""
    pts = [(r[x], r[key]) for r in rows if key in r and r[key] is not None]
    if not pts:
        return np.zeros(0), np.zeros(0)
    xs, ys = zip(*pts)
    return np.asarray(xs, float), np.asarray(ys, float)


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over `window` points (shorter at the start), same length as `y`."""
    y = np.asarray(y, float)
    if window <= 1 or y.size == 0:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    n = np.minimum(np.arange(1, y.size + 1), window)
    return (c[1:] - c[np.arange(1, y.size + 1) - n]) / n


def loss_terms(train_rows: Sequence[dict]) -> list[str]:
    """The logged loss terms (train/loss, train/ce, train/kd, ..., train/feedback/*), not the ASM counts."""
    keys: dict[str, None] = {}
    for r in train_rows:
        for k in r:
            if k.startswith("train/") and not k.startswith(("train/primary/", "train/feedback/trained/")):
                keys[k] = None
    return list(keys)


def curves(runs: dict[str, Sequence[dict]], keys: Iterable[str], x: str = "step",
           window: int = 1) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """key -> run -> (x, y smoothed over `window` points), for the runs that logged the key."""
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for key in keys:
        out[key] = {}
        for name, rows in runs.items():
            xs, ys = series(rows, key, x)
            if len(xs):
                out[key][name] = (xs, smooth(ys, window))
    return out


def curve_rows(runs: dict[str, Sequence[dict]], keys: Iterable[str], x: str = "step") -> list[dict]:
    """Long-format rows (run, metric, x, value) for a CSV beside a curve figure."""
    keys = list(keys)
    return [{"run": name, "metric": k, x: r[x], "value": r[k]}
            for name, rows in runs.items() for r in rows for k in keys if k in r and r[k] is not None]


def primary_frequency(records: Records, modalities: Sequence[str] | None = None, window: int = 10) -> dict[str, dict]:
    """How often ASM chose each modality as primary: per step (the fraction of the batch's samples,
    smoothed over `window` steps), per validation interval (val/primary/*) and, with feedback, how often
    it was primary for the batch (val/primary_batch/*: its teacher encoder got no feedback step)."""
    if modalities is None:  # the modalities the run logged
        modalities = list(dict.fromkeys(k.rsplit("/", 1)[-1] for r in records.train[:1] for k in r
                                        if k.startswith("train/primary/")))
    out = {}
    for m in modalities:
        xs, ys = series(records.train, f"train/primary/{m}")
        out[m] = {"step": xs, "per_step": smooth(ys, window), "val": series(records.val, f"val/primary/{m}", "epoch"),
                  "val_batch": series(records.val, f"val/primary_batch/{m}", "epoch")}
    return out


def feedback_share(train_rows: Sequence[dict]) -> dict[str, float]:
    """Per modality, the share of steps in which its teacher encoder took a feedback step (non-primary)."""
    keys = [k for k in (train_rows[0] if train_rows else {}) if k.startswith("train/feedback/trained/")]
    return {k.rsplit("/", 1)[-1]: float(np.mean([r[k] for r in train_rows if k in r])) for k in keys}


# The plateau rule a teacher's training length is chosen by (docs/BENCHMARK.md, "Converged teachers"): over
# the last quarter of its epochs it gains less than half a point of full-modality mIoU on val.
PLATEAU_FRACTION, PLATEAU_POINTS = 0.25, 0.5


@dataclass(frozen=True)
class Plateau:
    """What the plateau rule reads off a run's validation curve."""

    gain: float  # `key` at the last validation minus at the last validation at or before `start_epoch`
    start_epoch: int  # the last validation at or before (1 - fraction) x the run's epochs
    end_epoch: int
    points: float  # the rule's threshold

    @property
    def reached(self) -> bool:
        return self.gain < self.points

    def describe(self) -> str:
        return (f"{self.gain:+.2f} points from epoch {self.start_epoch} to {self.end_epoch} "
                f"({'plateau' if self.reached else 'still rising'}: the rule asks < {self.points:g})")


def plateau(val_rows: Sequence[dict], epochs: int | None = None, key: str = "val/miou_full",
            fraction: float = PLATEAU_FRACTION, points: float = PLATEAU_POINTS) -> Plateau:
    """The plateau rule on a run's validation rows: the gain of `key` over the last `fraction` of its epochs
    (`epochs`: the run's length, default the last validated epoch), measured from the last validation at or
    before the start of that stretch. Needs a validation there (e.g. `train.val_every` <= fraction x epochs)."""
    rows = [r for r in val_rows if key in r]
    if not rows:
        raise MissingFile(f"no validation rows with {key}: train with train.val_every > 0")
    epochs = epochs or rows[-1]["epoch"]
    start = epochs * (1 - fraction)
    before = [r for r in rows if r["epoch"] <= start]
    if not before:
        raise MissingFile(f"no validation at or before epoch {start:g} of {epochs}: validate more often "
                          f"(train.val_every <= {max(1, int(fraction * epochs))})")
    first, last = before[-1], rows[-1]
    return Plateau(float(last[key] - first[key]), int(first["epoch"]), int(last["epoch"]), points)
