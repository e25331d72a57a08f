"""Tables: the one CSV writer and reader, the one Markdown writer, and `Table` for notebooks.

Rows are lists of dicts; the header is the union of their keys in first-seen order. Floats are rounded
(6 digits in CSV, `digits` in Markdown). A `Table` shows as HTML in JupyterLab and Voila (the same
Markdown, converted by mistune) and as Markdown in a report.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

__all__ = ["write_csv", "read_csv", "csv_text", "markdown_table", "markdown_to_html", "Table"]


def _keys(rows: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def csv_text(rows: Sequence[dict], digits: int = 6) -> str:
    """Rows as CSV text (floats rounded to `digits`)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_keys(rows), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (round(v, digits) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def write_csv(path: str | Path, rows: Sequence[dict], digits: int = 6) -> Path:
    """Write rows as a CSV (creating the folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(csv_text(rows, digits))
    return path


def read_csv(path: str | Path) -> list[dict]:
    """A CSV as rows, with numbers parsed back to int / float."""
    def num(v: str):
        for t in (int, float):
            try:
                return t(v)
            except ValueError:
                pass
        return v

    with open(path, newline="") as f:
        return [{k: num(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _fmt(v, digits: int) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v).replace("|", "\\|")


def markdown_table(rows: Sequence[dict], digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table ("(empty)" for no rows)."""
    if not rows:
        return "(empty)"
    keys = _keys(rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r.get(k, ""), digits) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def markdown_to_html(text: str) -> str:
    """Markdown (with tables) to HTML, by mistune (a declared dependency)."""
    import mistune

    return mistune.create_markdown(plugins=["table"], escape=False)(text)


class Table:
    """A table a notebook displays (HTML) and a report embeds (Markdown)."""

    def __init__(self, rows: Sequence[dict], title: str = "", digits: int = 2):
        self.rows, self.title, self.digits = list(rows), title, digits

    def _repr_markdown_(self) -> str:
        return (f"**{self.title}**\n\n" if self.title else "") + markdown_table(self.rows, self.digits)

    def _repr_html_(self) -> str:
        return markdown_to_html(self._repr_markdown_())
