"""The suite's report (`workbench.report`) and the commit it is stamped with (`checkpoint.git_commit`): a
one-screen summary first, paths relative to the repository, uncommitted changes said plainly, and the
same bytes when written twice; regenerated figures never make the code "dirty"."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from workbench import report  # noqa: E402
from workbench.checkpoint import git_commit  # noqa: E402
from workbench.paths import REPO_ROOT  # noqa: E402
from workbench.plotting import Figures  # noqa: E402
from workbench.suite import Outcome  # noqa: E402


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def test_git_commit_ignores_figures(tmp_path):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.org")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.csv").write_text("a\n1\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "code and figures")
    code = _git(tmp_path, "rev-parse", "HEAD")
    assert git_commit(tmp_path) == code
    (tmp_path / "figures" / "a.csv").write_text("a\n2\n")  # the suite rewrote a figure
    assert git_commit(tmp_path) == code, "rewritten figures are not uncommitted code"
    _git(tmp_path, "commit", "-qam", "figures only")
    assert _git(tmp_path, "rev-parse", "HEAD") != code
    assert git_commit(tmp_path) == code, "a commit of figures alone stamps the same code"
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == code + "+dirty"
    (tmp_path / "new.py").write_text("")  # untracked files do not count
    _git(tmp_path, "checkout", "-q", "code.py")
    assert git_commit(tmp_path) == code
    assert git_commit(tmp_path / "nowhere") == "unknown"


def _saved_notebooks(root: Path, profile: str = "smoke") -> None:
    """What notebooks 02, 03 and 07 save, with made-up numbers."""
    ab = Figures("02_ablations", profile, root=root)
    ab.table([{"method": m, "protocol": p, "seeds": 2, "emm_mean": emm + (p == "zero"), "emm_std": 0.5,
               "full_mean": full, "full_std": 0.25, "paper_emm": 40.0, "paper_full": 60.0}
              for m, emm, full in (("baseline", 20.0, 41.0), ("robustseg", 34.5, 40.5)) for p in ("drop", "zero")],
             "ablation_table")
    comb = Figures("03_combinations", profile, root=root)
    for name in ("combination_heatmap", "expectations", "shapley"):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [0, 1])
        comb.save(fig, name, rows=[{"x": 1}], title=f"title of {name}")
        plt.close(fig)
    fb = Figures("07_feedback", profile, root=root)
    fig, ax = plt.subplots(figsize=(2, 2))
    fb.save(fig, "teacher_delta_drop", rows=[{"x": 1}], title="Teacher before / after feedback (drop)")
    plt.close(fig)


@pytest.fixture
def report_root(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    root = tmp_path / "figures"
    _saved_notebooks(root)
    return root


def _outcomes(root: Path) -> list[Outcome]:
    return [Outcome(name, "ok", 1.5, REPO_ROOT / "runs" / "suite" / "smoke" / f"{name}.ipynb", {"profile": "smoke"})
            for name in ("02_ablations", "03_combinations", "07_feedback")]


def test_report_opens_with_the_summary(report_root, monkeypatch):
    monkeypatch.setattr(report, "git_commit", lambda: "abc123")
    md = report.write_report(_outcomes(report_root), "smoke", root=report_root, threads=2)["md"].read_text()
    summary, details = md.split("# Details")
    assert "each kernel with 2 threads" in summary
    assert "## Summary" in summary and "`abc123` (no uncommitted changes" in summary
    # the headline table: one row per method, EMM per protocol and full mIoU, mean ± std over seeds
    assert "| method | full | EMM drop | EMM zero | paper EMM / full (DeLiVER) |" in summary
    assert "| baseline | 41.00 ± 0.25 | 20.00 ± 0.50 | 21.00 ± 0.50 | 40.00 / 60.00 |" in summary
    assert "smoke/02_ablations/ablation_table.csv" in summary
    # the three figures of the story, in order; the expectations figure only in the details
    order = [summary.index(f"smoke/{p}.png") for p in
             ("03_combinations/combination_heatmap", "03_combinations/shapley", "07_feedback/teacher_delta_drop")]
    assert order == sorted(order) and "expectations.png" not in summary and "expectations.png" in details
    assert len(summary.splitlines()) < 40, "the summary fits one screen"
    assert str(REPO_ROOT) not in md and "/tmp" not in md, "paths are relative to the repository"
    html = (report_root / "REPORT.html").read_text()
    assert html.count("<img ") >= 4 and "<table" in html


def test_report_says_plainly_when_the_code_had_uncommitted_changes(report_root, monkeypatch):
    monkeypatch.setattr(report, "git_commit", lambda: "abc123+dirty")
    md = report.write_report(_outcomes(report_root), "smoke", root=report_root)["md"].read_text()
    head = md.split("## Summary")[0]
    assert "`abc123` **with uncommitted changes**" in head and "+dirty" not in head


def test_report_is_the_same_file_when_written_twice(report_root, monkeypatch):
    monkeypatch.setattr(report, "git_commit", lambda: "abc123")
    first = report.write_report(_outcomes(report_root), "smoke", root=report_root)["md"].read_bytes()
    time.sleep(1.1)
    slower = [Outcome(o.name, o.status, 99.0, o.executed, o.parameters) for o in _outcomes(report_root)]
    assert report.write_report(slower, "smoke", root=report_root)["md"].read_bytes() == first


def test_headline_falls_back_to_the_combination_summary(tmp_path):
    comb = Figures("03_combinations", "smoke", root=tmp_path)
    comb.table([{"method": "baseline", "protocol": p, "full": 41.0, "emm": e, "worst": 1.0}
                for p, e in (("drop", 20.0), ("zero", 13.0))], "summary")
    rows, source = report.headline_rows("smoke", report._entries("smoke", [], tmp_path), tmp_path)
    assert rows == [{"method": "baseline", "full": "41.00", "EMM drop": "20.00", "EMM zero": "13.00"}]
    assert source == "smoke/03_combinations/summary.csv"


def test_the_summary_states_its_conclusion_from_the_numbers(report_root, monkeypatch):
    """One sentence says what the headline table shows; it is computed from the saved table (other numbers,
    another sentence), never written in advance."""
    monkeypatch.setattr(report, "git_commit", lambda: "abc123")
    md = report.write_report(_outcomes(report_root), "smoke", root=report_root)["md"].read_text()
    summary = md.split("# Details")[0]
    assert ("**Conclusion:** on the smoke profile, drop protocol (mean over 2 seeds), robustseg is the most robust "
            "to missing sensors: its EMM is 34.50 against the baseline's 20.00 (+14.50 points), while its "
            "full-modality mIoU moves -0.50 (40.50 vs 41.00).") in summary
    assert summary.index("**Conclusion:**") < summary.index("| method |"), "the conclusion comes first"
    ab = Figures("02_ablations", "smoke", root=report_root)  # other numbers: the baseline stays ahead
    ab.table([{"method": m, "protocol": "drop", "seeds": 1, "emm_mean": emm, "full_mean": 40.0}
              for m, emm in (("baseline", 25.0), ("hpd", 24.0), ("robustseg", 22.5))], "ablation_table")
    md = report.write_report(_outcomes(report_root), "smoke", root=report_root)["md"].read_text()
    assert ("**Conclusion:** on the smoke profile, drop protocol (one seed: a difference of this size may be seed "
            "noise), no distilled method beats the baseline's EMM of 25.00; the best, hpd, reaches 24.00.") in md


def test_the_conclusion_comes_from_the_paired_claims_when_they_rest_on_seeds(report_root, monkeypatch):
    """With notebook 08's claim table over two or more seeds, the conclusion states its paired differences
    with their intervals and verdicts (the compute-matched controls), not one seed's ablation row."""
    monkeypatch.setattr(report, "git_commit", lambda: "abc123")
    cl = Figures("08_claims", "smoke", root=report_root)
    rows = [{"claim": c, "protocol": p, "seeds": 3, "difference": d, "ci_low": d - 1, "ci_high": d + 1,
             "verdict": "reproduced" if d - 1 > 0 else "inconclusive at this power"}
            for c, d in (("robustseg_vs_training", 6.5), ("robustseg_full_vs_training", -2.0),
                         ("dropout_vs_training", 5.0), ("kd_vs_dropout", 0.5)) for p in ("drop", "zero")]
    from workbench.tables import write_csv

    write_csv(cl.path("claims.csv"), rows)
    cl.table(rows, "claims_table")
    md = report.write_report(_outcomes(report_root), "smoke", root=report_root)["md"].read_text()
    assert ("**Conclusion** (smoke profile, `drop` protocol, 3 seeds paired by seed, mIoU points, 95% intervals; "
            "notebook 08): RobustSeg's EMM against the baseline trained as long +6.50 [+5.50, +7.50] (reproduced); "
            "its full-modality mIoU against the same -2.00 [-3.00, -1.00] (inconclusive at this power)") in md
    assert "KD beyond dropout (EMM) +0.50 [-0.50, +1.50]" in md


def test_the_summary_figures_are_full_width_with_their_own_sentences(report_root, monkeypatch):
    """Three figures side by side were thumbnails too small to read at 1400 pixels; each now has a line of
    its own, at the page's width, under its one sentence (no caption naming another figure)."""
    monkeypatch.setattr(report, "git_commit", lambda: "abc123")
    paths = report.write_report(_outcomes(report_root), "smoke", root=report_root)
    summary = paths["md"].read_text().split("# Details")[0]
    images = [line for line in summary.splitlines() if "![" in line]
    assert len(images) == 3 and all(line.startswith("![") for line in images), images
    assert "| ![" not in summary and "(or the paper's claims" not in summary
    assert "**3. Teacher before / after feedback (drop).** The teacher before and after feedback, per " \
           "combination. (07_feedback; details below)" in summary
    html = paths["html"].read_text()
    assert "td img{max-width" not in html and "img{max-width:100%}" in html


def test_a_one_seed_headline_table_says_so(tmp_path):
    """A headline table over one seed is labelled as such (its gaps may be seed noise); over seeds it is not."""
    ab = Figures("02_ablations", "smoke", root=tmp_path)
    ab.table([{"method": "baseline", "protocol": "drop", "seeds": 1, "emm_mean": 20.0, "full_mean": 40.0}],
             "ablation_table")
    assert "**one seed**" in report._seeds_note(tmp_path / "smoke/02_ablations/ablation_table.csv")
    ab.table([{"method": "baseline", "protocol": "drop", "seeds": 3, "emm_mean": 20.0, "full_mean": 40.0}],
             "ablation_table")
    assert report._seeds_note(tmp_path / "smoke/02_ablations/ablation_table.csv") == ""
