"""The suite's report: `figures/REPORT.md`, built once as Markdown, and `REPORT.html` converted from it.

It lists each notebook's status, the versions and the code's git commit (saying plainly when the tree
had uncommitted changes), the trained runs the notebooks used with their configs, and then every
table and figure the notebooks saved (`workbench.plotting.Figures` indexes under
`figures/<profile>/<notebook>/`). Paths are relative to the repository, so the report reads the same
on every machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from workbench.checkpoint import git_commit, versions
from workbench.config import METHODS, Config
from workbench.paths import REPO_ROOT, figures_dir, runs_dir
from workbench.runs import Run
from workbench.tables import markdown_table, markdown_to_html

__all__ = ["write_report", "relative", "clock"]


def relative(path: str | Path | None) -> str:
    """A path relative to the repository when it is inside it (else as given)."""
    if path is None:
        return ""
    p = Path(path)
    try:
        return p.resolve().relative_to(REPO_ROOT.resolve()).as_posix()
    except ValueError:
        return str(p)


def clock(seconds: float) -> str:
    """Seconds as m:ss."""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def _runs(profile: str, outcomes: Sequence) -> list[dict]:
    """The cached runs the notebooks used: every method preset of this profile (and the students'
    teachers) at the seeds the notebooks ran with, identified by config hash, so sweeps and stale caches
    in the same folder stay out of the report."""
    seeds = {0}
    for o in outcomes:
        seeds.add(int(o.parameters.get("seed", 0)))
        seeds.update(int(x) for x in (o.parameters.get("seeds") or []))
    try:
        wanted = {}
        for method in METHODS:
            for seed in sorted(seeds):
                run = Run.of(method, profile, seed)
                wanted[run.dir] = run
                if run.teacher is not None:
                    wanted[run.teacher.dir] = run.teacher
    except Exception:  # a profile whose data cannot be described here: list nothing rather than fail the report
        return []
    out = []
    for d in sorted((runs_dir() / "cache").glob("*")):
        run = wanted.get(d)
        if run is None or not run.done:
            continue
        try:
            last_val = run.metrics().last_val
        except FileNotFoundError:
            last_val = {}
        cfg: Config = run.config
        out.append({"run": d.name, "method": cfg.name, "seed": cfg.train.seed, "hash": cfg.hash(),
                    "val_miou_full": last_val.get("val/miou_full", float("nan")),
                    "val_emm": last_val.get("val/emm", float("nan")), "config": cfg.to_json()})
    return out


def _entries(profile: str, ran: Sequence[str], root: Path) -> dict[str, list[dict]]:
    """What each notebook saved: those of this run first, then (after `--only`) the other notebooks'
    figures of this profile from an earlier run, so the report stays complete."""
    names = list(ran) + sorted(p.parent.name for p in (root / profile).glob("*/index.json") if p.parent.name not in ran)
    out = {}
    for name in names:
        index = root / profile / name / "index.json"
        if index.exists():
            out[name] = json.loads(index.read_text())["entries"]
    return out


def _commit_line(commit: str) -> str:
    if commit.endswith("+dirty"):
        return (f"git commit `{commit.removesuffix('+dirty')}`, with uncommitted changes to the code (the figures "
                f"may not match that commit)")
    return f"git commit `{commit}`"


def build_markdown(outcomes: Sequence, profile: str, seconds: float, root: Path) -> str:
    vers, commit = versions(), git_commit()
    runs = _runs(profile, outcomes)
    ran = [o.name for o in outcomes]
    entries = _entries(profile, ran, root)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    ok = sum(o.status == "ok" for o in outcomes)
    status_rows = [{"notebook": o.name, "status": o.status, "seconds": round(o.seconds, 1),
                    "executed notebook": relative(o.executed), "parameters": json.dumps(o.parameters)}
                   for o in outcomes]
    md = [f"# RobustSeg workbench: notebook suite report ({profile})", "",
          f"Generated {when}; {_commit_line(commit)}; suite time {clock(seconds)} ({ok}/{len(outcomes)} "
          f"notebooks ok).", "", "## Notebooks", "", markdown_table(status_rows), ""]
    failures = [o for o in outcomes if o.status != "ok"]
    if failures:
        md += ["## Failures", ""]
        for o in failures:
            md += [f"- **{o.name}** ({o.status}): {o.error}", f"  - executed notebook: `{relative(o.executed)}`",
                   "  - failing cell:", "", "```", o.cell or "-", "```", ""]
    for name, items in entries.items():
        md += [f"## {name}", ""] + ([] if name in ran else ["(not run this time: figures from an earlier run)", ""])
        for e in items:
            md += [f"### {e['title']}", ""] + ([e["caption"], ""] if e.get("caption") else [])
            files = {k: f"{profile}/{name}/{v}" for k, v in e["files"].items()}
            if e["kind"] == "figure":
                md += [f"![{e['title']}]({files['png']})", ""]
            elif e["kind"] == "table":
                md += [(root / files["md"]).read_text().strip(), ""]
            links = " · ".join(f"[{k.upper()}]({v})" for k, v in files.items() if k != "md")
            md += [f"Files: {links}", ""]
    run_rows = [{k: r[k] for k in ("method", "seed", "hash", "val_miou_full", "val_emm", "run")} for r in runs]
    md += ["## Versions", "", markdown_table([{"package": k, "version": str(v)} for k, v in vers.items()]), "",
           "## Trained runs and their configs", "", markdown_table(run_rows) if run_rows else "(none)", ""]
    for r in runs:
        md += [f"<details><summary>{r['run']} config</summary>", "", "```json", r["config"], "```", "", "</details>", ""]
    return "\n".join(md) + "\n"


_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}img{max-width:100%}"
          "table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
          "pre{background:#f6f6f6;padding:0.5em;overflow-x:auto}")


def write_report(outcomes: Sequence, profile: str, seconds: float, root: Path | None = None) -> dict[str, Path]:
    """Write `REPORT.md` and `REPORT.html` (the same content) into `root` (default `figures/`)."""
    root = Path(root or figures_dir())
    root.mkdir(parents=True, exist_ok=True)
    md = build_markdown(outcomes, profile, seconds, root)
    md_path, html_path = root / "REPORT.md", root / "REPORT.html"
    md_path.write_text(md)
    html_path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>RobustSeg suite report "
                         f"({profile})</title><style>{_STYLE}</style></head><body>{markdown_to_html(md)}</body></html>\n")
    return {"md": md_path, "html": html_path}
