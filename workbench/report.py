"""The suite's report: `figures/REPORT.md`, built once as Markdown, and `REPORT.html` converted from it.

It opens with a summary (one sentence that states the conclusion, computed from the headline table of EMM
and full-modality mIoU per method, then that table and the three figures that tell the story of modality
bias, each at full width), then the details: each notebook's status, every
table and figure the notebooks saved (`workbench.plotting.Figures` indexes under
`figures/<profile>/<notebook>/`), the versions and the trained runs with their configs. It names the
code's git commit and says plainly when the tree had uncommitted changes. Paths are relative to the
repository and nothing in it records when or how fast the suite ran, so a re-run of the same code
writes the same file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from workbench import repro
from workbench.checkpoint import git_commit, versions
from workbench.config import PRESETS, Config
from workbench.paths import REPO_ROOT, figures_dir, run_cache_dir
from workbench.runs import Run
from workbench.tables import markdown_table, markdown_to_html, read_csv

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
        for method in PRESETS:
            for seed in sorted(seeds):
                run = Run.of(method, profile, seed)
                wanted[run.dir] = run
                if run.teacher is not None:
                    wanted[run.teacher.dir] = run.teacher
    except Exception:  # a profile whose data cannot be described here: list nothing rather than fail the report
        return []
    out = []
    for d in sorted(run_cache_dir().glob("*")):
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
        return (f"git commit `{commit.removesuffix('+dirty')}` **with uncommitted changes**: tracked files outside "
                f"`figures/` differed from that commit when the suite ran, so these figures may not be reproducible "
                f"from it (commit the changes and run `make suite` again)")
    if commit == "unknown":
        return "git commit unknown (not a git checkout)"
    return f"git commit `{commit}` (no uncommitted changes outside `figures/`)"


# The summary's three figures, in the order that tells the story of modality bias: where each combination
# stands, what each modality adds, and what feedback did to the teacher. Each is a list of alternatives
# (notebook, saved name, the sentence under it); the first one present is shown, full width (side by side,
# three figures at a third of a 1200-pixel page each were too small to read).
STORY: tuple[tuple[tuple[str, str, str], ...], ...] = (
    (("03_combinations", "combination_heatmap",
      "Every modality combination: a robust model keeps its colour in the rows without RGB (R)."),),
    (("03_combinations", "shapley",
      "What each modality adds to the full-modality mIoU (Shapley values): a biased model leans on few sensors."),),
    (("07_feedback", "teacher_delta_drop", "The teacher before and after feedback, per combination."),
     ("08_claims", "claims", "The paper's claims, tested with paired seeds.")),
)


def _saved(entries: dict[str, list[dict]], notebook: str, name: str) -> dict | None:
    return next((e for e in entries.get(notebook, []) if e["name"] == name), None)


def _fmt(mean, std=None) -> str:
    if not isinstance(mean, (int, float)) or mean != mean:
        return "-"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if isinstance(std, (int, float)) and std == std and std > 0 else "")


def _headline_source(profile: str, entries: dict[str, list[dict]], root: Path) -> tuple[Path, str] | None:
    """The table the headline is read from: the ablation table (02) or else the combination summary (03)."""
    for notebook, name in (("02_ablations", "ablation_table"), ("03_combinations", "summary")):
        entry = _saved(entries, notebook, name)
        if entry is None or "csv" not in entry["files"]:
            continue
        path = root / profile / notebook / entry["files"]["csv"]
        if path.exists():
            return path, f"{profile}/{notebook}/{entry['files']['csv']}"
    return None


def headline_rows(profile: str, entries: dict[str, list[dict]], root: Path) -> tuple[list[dict], str]:
    """EMM and full-modality mIoU per method, one row per method, from the notebooks' saved tables: the
    ablation table (02, every row, mean ± std over seeds) or else the combination summary (03).
    Returns the rows and the file they were read from ("" when neither was saved)."""
    found = _headline_source(profile, entries, root)
    if found is None:
        return [], ""
    path, source = found
    by_method: dict[str, dict] = {}
    for r in read_csv(path):
        p = r["protocol"]
        row = by_method.setdefault(r["method"], {"method": r["method"]})
        if "emm_mean" in r:  # the ablation table: mean (± std) over seeds
            row["full"] = _fmt(r["full_mean"], r.get("full_std"))
            row[f"EMM {p}"] = _fmt(r["emm_mean"], r.get("emm_std"))
            if "paper_emm" in r:
                row["paper EMM / full (DeLiVER)"] = f"{_fmt(r['paper_emm'])} / {_fmt(r['paper_full'])}"
        else:
            row["full"] = _fmt(r["full"])
            row[f"EMM {p}"] = _fmt(r["emm"])
    order = ["method", "full", "EMM drop", "EMM zero", "paper EMM / full (DeLiVER)"]
    rows = [{k: row.get(k, "-") for k in order if any(k in x for x in by_method.values())}
            for row in by_method.values()]
    return rows, source


def _seeds_note(path: Path) -> str:
    """", one seed: ..." when the headline table rests on one seed (its `seeds` column), so that nobody reads a
    story into its gaps; "" otherwise (mean ± std over the seeds)."""
    seeds = {r.get("seeds") for r in read_csv(path)} if path.is_file() else set()
    if seeds == {1}:
        return (", **one seed**: gaps between these rows may be seed noise; the conclusion above rests on the "
                "paired seeds of notebook 08")
    return ""


# The claims the report's conclusion states, in order (notebook 08's table): what RobustSeg gives against the
# baseline trained as long, and what Anymodal Dropout and KD each add (docs/METHOD.md, "Controls").
CONCLUSION_CLAIMS = (("robustseg_vs_training", "RobustSeg's EMM against the baseline trained as long"),
                     ("robustseg_full_vs_training", "its full-modality mIoU against the same"),
                     ("dropout_vs_training", "Anymodal Dropout alone (EMM, against the same)"),
                     ("kd_vs_dropout", "KD beyond dropout (EMM)"),
                     ("kd_full_vs_dropout", "KD beyond dropout (full-modality mIoU)"))


def claims_conclusion(profile: str, entries: dict[str, list[dict]], root: Path) -> str:
    """The conclusion from notebook 08's paired claims when they rest on two or more seeds: each difference of
    `CONCLUSION_CLAIMS` under `drop` with its 95% interval and verdict. '' when there is no such table."""
    entry = _saved(entries, "08_claims", "claims_table")
    path = root / profile / "08_claims" / "claims.csv"
    if entry is None or not path.exists():
        return ""
    rows = {r["claim"]: r for r in read_csv(path) if r.get("protocol") == "drop"}
    parts = []
    for key, text in CONCLUSION_CLAIMS:
        r = rows.get(key)
        if r is None or int(r.get("seeds") or 0) < 2:
            continue
        parts.append(f"{text} {float(r['difference']):+.2f} [{float(r['ci_low']):+.2f}, {float(r['ci_high']):+.2f}] "
                     f"({r['verdict']})")
    if not parts:
        return ""
    n = int(next(iter(rows.values()))["seeds"])
    return (f"**Conclusion** ({profile} profile, `drop` protocol, {n} seeds paired by seed, mIoU points, 95% "
            f"intervals; notebook 08): " + "; ".join(parts) + ".")


def conclusion(profile: str, entries: dict[str, list[dict]], root: Path) -> str:
    """One sentence that states what the headline table shows, computed from it: under the drop protocol
    (else the first one saved), the method with the highest EMM against the baseline, in EMM and in
    full-modality mIoU. '' when there is no table or no baseline row."""
    found = _headline_source(profile, entries, root)
    if found is None:
        return ""
    rows = read_csv(found[0])
    protocols = [r["protocol"] for r in rows]
    protocol = "drop" if "drop" in protocols else (protocols[0] if protocols else None)
    mean = "_mean" if rows and "emm_mean" in rows[0] else ""
    scores = {r["method"]: (float(r[f"emm{mean}"]), float(r[f"full{mean}"]), int(r.get("seeds") or 1))
              for r in rows if r["protocol"] == protocol}
    if "baseline" not in scores or len(scores) < 2:
        return ""
    best = max((m for m in scores if m != "baseline"), key=lambda m: scores[m][0])
    (emm, full, seeds), (b_emm, b_full, _) = scores[best], scores["baseline"]
    over = f" (mean over {seeds} seeds)" if seeds > 1 else " (one seed: a difference of this size may be seed noise)"
    where = f"on the {profile} profile, {protocol} protocol{over}"
    if emm <= b_emm:
        return (f"**Conclusion:** {where}, no distilled method beats the baseline's EMM of {b_emm:.2f}; the best, "
                f"{best}, reaches {emm:.2f}.")
    cost = (f"while its full-modality mIoU moves {full - b_full:+.2f} ({full:.2f} vs {b_full:.2f})" if full < b_full
            else f"without losing full-modality mIoU ({full:.2f} vs {b_full:.2f})")
    return (f"**Conclusion:** {where}, {best} is the most robust to missing sensors: its EMM is {emm:.2f} against "
            f"the baseline's {b_emm:.2f} ({emm - b_emm:+.2f} points), {cost}.")


def summary_markdown(profile: str, entries: dict[str, list[dict]], root: Path) -> list[str]:
    """The report's first screen: the conclusion, the headline table and the three figures of the story,
    each full width with its sentence."""
    md = ["## Summary", ""]
    rows, source = headline_rows(profile, entries, root)
    said = claims_conclusion(profile, entries, root) or conclusion(profile, entries, root)
    if said:
        md += [said, ""]
    if rows:
        md += ["EMM (mean mIoU over every modality combination) and full-modality mIoU (%), per method and "
               f"missing-modality protocol (`drop`: absent sensors are not encoded; `zero`: zeroed and encoded). "
               f"From [{source}]({source}){_seeds_note(root / source)}.", "", markdown_table(rows), ""]
    else:
        md += ["(no headline table: run notebooks 02 or 03)", ""]
    figures = []
    for candidates in STORY:
        for notebook, name, text in candidates:
            e = _saved(entries, notebook, name)
            if e is not None and e["kind"] == "figure":
                figures.append((text, notebook, e))
                break
    for i, (text, notebook, e) in enumerate(figures, 1):
        md += [f"**{i}. {e['title']}.** {text} ({notebook}; details below)", "",
               f"![{e['title']}]({profile}/{notebook}/{e['files']['png']})", ""]
    return md


def build_markdown(outcomes: Sequence, profile: str, root: Path, threads: int | None = None,
                   check: Sequence[str] = ()) -> str:
    """The report: a one-screen summary, then every notebook's tables and figures, versions and runs.
    Nothing in it depends on when or how fast the suite ran, so a re-run writes the same file."""
    vers, commit = versions(), git_commit()
    runs = _runs(profile, outcomes)
    ran = [o.name for o in outcomes]
    entries = _entries(profile, ran, root)
    ok = sum(o.status == "ok" for o in outcomes)
    status_rows = [{"notebook": o.name, "status": o.status, "executed notebook": relative(o.executed),
                    "parameters": json.dumps(o.parameters)} for o in outcomes]
    md = [f"# RobustSeg workbench: notebook suite report ({profile})", "",
          f"Code: {_commit_line(commit)}. {ok}/{len(outcomes)} notebooks ok"
          + (f", each kernel with {threads} threads (CPU numbers repeat bit for bit at one thread count)."
             if threads else ".")
          + (" Numerical mode: repro (WORKBENCH_REPRO=1: the AVX2 code paths of ATen, oneDNN and MKL pinned, "
             "README \"Reproducibility\")." if repro.enabled() else " Numerical mode: default."), ""]
    failures = [o for o in outcomes if o.status != "ok"]
    if failures:  # first: the summary below may be incomplete
        md += ["## Failures", ""]
        for o in failures:
            md += [f"- **{o.name}** ({o.status}): {o.error}", f"  - executed notebook: `{relative(o.executed)}`",
                   "  - failing cell:", "", "```", o.cell or "-", "```", ""]
    md += summary_markdown(profile, entries, root)
    md += list(check)  # the reproduction check against the committed figures (workbench.selfcheck)
    md += ["# Details", "", "## Notebooks", "", markdown_table(status_rows), ""]
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


def write_report(outcomes: Sequence, profile: str, root: Path | None = None, threads: int | None = None,
                 check: Sequence[str] = ()) -> dict[str, Path]:
    """Write `REPORT.md` and `REPORT.html` (the same content) into `root` (default `figures/`); `threads`:
    the notebook kernels' thread count, said in the report; `check`: the reproduction check's section."""
    root = Path(root or figures_dir())
    root.mkdir(parents=True, exist_ok=True)
    md = build_markdown(outcomes, profile, root, threads, check)
    md_path, html_path = root / "REPORT.md", root / "REPORT.html"
    md_path.write_text(md)
    html_path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>RobustSeg suite report "
                         f"({profile})</title><style>{_STYLE}</style></head><body>{markdown_to_html(md)}</body></html>\n")
    return {"md": md_path, "html": html_path}
