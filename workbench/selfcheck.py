"""Does a fresh suite run reproduce the committed figures? (`make suite` ends with this check.)

Before the notebooks run, `snapshot` keeps the text of every CSV the suite is about to rewrite
(`figures/<profile>/<notebook>/*.csv`, as committed). Afterwards `compare` reads each one again and sorts
every number in it, cell by cell:

- `identical`: the same text (the same bits, to the CSV's rounding);
- `within seed spread`: an mIoU-like number (a score in percent: full, EMM, a combination, a mean, ...) that
  moved by at most two seed standard deviations of that score, the standard deviation pooled over the rows
  trained on several seeds (`seed_spread`: the suite's own multi-seed tables, and the claim tables beside it);
- `outside`: any other change (an mIoU-like number beyond the spread, or a number whose seed spread is not
  known, such as a loss value or a count).

A table of those counts per file, and the numbers outside, is printed and goes into the report. Numbers that
are `identical` everywhere mean the run reproduced the project's bit for bit (`make suite REPRO=1` on an
x86-64 machine, docs/RELIABILITY.md); `within seed spread` means another machine's rounding moved results by
less than another seed would.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["snapshot", "seed_spread", "compare", "Check", "format_check", "check_markdown"]

# column names of mIoU-like scores (percent); a column named like this is compared against the seed spread
SCORE_WORDS = ("miou", "full", "emm", "worst", "expected", "no_rgb", "p0.1", "macc", "mf1", "mean", "score",
               "shapley", "+", "drop", "zero")
METRICS = ("full", "emm", "event+lidar")  # the per-seed columns the spread is measured on


def snapshot(root: Path, profile: str) -> dict[str, str]:
    """The text of every CSV under `root/<profile>/` (relative path -> text), before the suite rewrites them."""
    base = root / profile
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(base.rglob("*.csv"))} if base.is_dir() else {}


def _rows(text: str) -> tuple[list[str], list[list[str]]]:
    reader = csv.reader(io.StringIO(text))
    rows = list(reader)
    return (rows[0], rows[1:]) if rows else ([], [])


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def seed_spread(texts: Iterable[str]) -> float | None:
    """The seed standard deviation of an mIoU-like score: per (row, protocol) of a per-seed table, the sample
    standard deviation over seeds of each of `METRICS`, pooled (root mean square) over every group with two
    or more seeds. None when no table has two seeds of one row."""
    variances, weights = [], []
    for text in texts:
        header, rows = _rows(text)
        if "seed" not in header:
            continue
        key_cols = [i for i, h in enumerate(header) if h in ("row", "method", "protocol")]
        for metric in METRICS:
            if metric not in header:
                continue
            j, groups = header.index(metric), {}
            for r in rows:
                v = _number(r[j]) if j < len(r) else None
                if v is not None:
                    groups.setdefault(tuple(r[i] for i in key_cols), []).append(v)
            for vals in groups.values():
                if len(vals) > 1:
                    variances.append(statistics.variance(vals))
                    weights.append(len(vals) - 1)
    if not weights:
        return None
    return math.sqrt(sum(v * w for v, w in zip(variances, weights)) / sum(weights))


def _is_score(column: str) -> bool:
    c = column.lower()
    return any(w in c for w in SCORE_WORDS) and not c.startswith(("share_", "weight_", "grad"))


@dataclass
class Check:
    """The comparison of one suite run with the committed figures."""

    spread: float | None  # the pooled seed standard deviation used (mIoU points)
    files: list[dict] = field(default_factory=list)  # per CSV: counts per category
    outside: list[dict] = field(default_factory=list)  # every number outside the spread

    @property
    def totals(self) -> dict[str, int]:
        keys = ("identical", "within seed spread", "outside")
        return {k: sum(f[k] for f in self.files) for k in keys}

    @property
    def reproduced(self) -> bool:
        return not self.outside and all(f["status"] == "compared" for f in self.files)


def compare(before: dict[str, str], root: Path, spread_texts: Sequence[str] = ()) -> Check:
    """Every number of the committed CSVs (`before`, from `snapshot`) against the files now under `root`."""
    after = {name: (root / name).read_text() for name in before if (root / name).is_file()}
    spread = seed_spread([*after.values(), *spread_texts])
    check = Check(spread)
    for name, old in before.items():
        entry = {"file": name, "identical": 0, "within seed spread": 0, "outside": 0, "status": "compared"}
        check.files.append(entry)
        if name not in after:
            entry["status"] = "not written by this run"
            continue
        h0, r0 = _rows(old)
        h1, r1 = _rows(after[name])
        if h0 != h1 or len(r0) != len(r1):
            entry["status"] = f"changed shape ({len(r0)} -> {len(r1)} rows)"
            continue
        for i, (a, b) in enumerate(zip(r0, r1)):
            for j, (x, y) in enumerate(zip(a, b)):
                vx, vy = _number(x), _number(y)
                if vx is None and vy is None:
                    continue
                column = h0[j] if j < len(h0) else str(j)
                if x == y:
                    entry["identical"] += 1
                elif vx is not None and vy is not None and spread is not None and _is_score(column) \
                        and abs(vy - vx) <= 2 * spread:
                    entry["within seed spread"] += 1
                else:
                    entry["outside"] += 1
                    label = next((c for c in a if _number(c) is None and c), f"row {i + 1}")
                    check.outside.append({"file": name, "row": label, "column": column, "committed": x, "now": y,
                                          "change": (vy - vx) if vx is not None and vy is not None else math.nan})
    return check


def format_check(check: Check, limit: int = 15) -> str:
    """The check as text for the terminal: one line per file, then the largest changes outside the spread."""
    spread = f"{check.spread:.2f}" if check.spread is not None else "unknown (no table with two seeds of a row)"
    lines = [f"Reproduction check against the committed figures (seed spread of an mIoU score: {spread} points; "
             f"'within' is at most 2x that)",
             f"{'file':<58}{'identical':>10}{'within':>8}{'outside':>9}  status"]
    for f in check.files:
        lines.append(f"{f['file']:<58}{f['identical']:>10}{f['within seed spread']:>8}{f['outside']:>9}  {f['status']}")
    t = check.totals
    lines.append(f"{'all':<58}{t['identical']:>10}{t['within seed spread']:>8}{t['outside']:>9}")
    if check.outside:
        top = sorted(check.outside, key=lambda r: -abs(r["change"]) if r["change"] == r["change"] else 0)[:limit]
        lines.append(f"largest changes outside the seed spread ({len(check.outside)} in all):")
        lines += [f"  {r['file']}: {r['row']} / {r['column']}: {r['committed']} -> {r['now']}" for r in top]
    lines.append("verdict: " + ("every number reproduced (identical or within the seed spread)" if check.reproduced
                                else "some numbers differ beyond the seed spread (above); see docs/RELIABILITY.md"))
    return "\n".join(lines)


def check_markdown(check: Check) -> list[str]:
    """The check as a report section (Markdown lines)."""
    from workbench.tables import markdown_table

    out = ["## Reproduction check", "", "```", format_check(check), "```", ""]
    if check.files:
        out += [markdown_table([{k: f[k] for k in ("file", "identical", "within seed spread", "outside", "status")}
                                for f in check.files]), ""]
    return out
