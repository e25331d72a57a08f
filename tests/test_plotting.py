"""`workbench.plotting`: saving figures and tables with their index, and images."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from workbench import plotting as P  # noqa: E402


def test_figures_save_png_pdf_csv_and_index(tmp_path):
    figs = P.Figures("99_test", "smoke", root=tmp_path)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    figs.save(fig, "line", rows=[{"x": 0, "y": 1.0}, {"x": 1, "y": 0.0}], title="A line", caption="c")
    table = figs.table([{"a": 1, "b": 0.12345}], "tab", title="T")
    plt.close(fig)
    for name in ("line.png", "line.pdf", "line.csv", "tab.csv", "tab.md"):
        assert (figs.dir / name).stat().st_size > 0
    index = json.loads((figs.dir / "index.json").read_text())
    assert [e["name"] for e in index["entries"]] == ["line", "tab"]
    assert index["entries"][0]["files"] == {"png": "line.png", "pdf": "line.pdf", "csv": "line.csv"}
    assert "0.12" in table._repr_html_() and "| a | b |" in table._repr_markdown_()
    P.Figures("99_test", "smoke", root=tmp_path)  # a re-run starts a fresh index
    assert json.loads((figs.dir / "index.json").read_text())["entries"] == []


def test_images():
    lab = np.array([[0, 1], [255, 11]])
    img = P.colorize(lab, ((1, 2, 3), (4, 5, 6)))
    assert img.dtype == np.uint8 and img[0, 1].tolist() == [4, 5, 6] and img[1, 0].tolist() == [0, 0, 0]
    assert P.error_image(np.array([[0, 1, 2]])).shape == (1, 3, 3)
    assert P.modality_image(torch.rand(1, 4, 5)).shape == (4, 5, 3)
    png = P.png_bytes(np.zeros((4, 4, 3), np.uint8), scale=3)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_saving_the_same_figure_twice_gives_identical_bytes(tmp_path):
    """No creation dates or random ids in the files: a re-run of the suite rewrites the committed figures
    byte for byte (the PDF backend stamps the time, plotly draws a random element id)."""
    import time

    import plotly.graph_objects as go

    def save(root):
        figs = P.Figures("99_test", "smoke", root=root)
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 0, 2], label="a")
        ax.legend()
        figs.save(fig, "line", rows=[{"x": 0, "y": 1.0}], title="A line")
        plt.close(fig)
        figs.table([{"a": 1, "b": 0.5}], "tab")
        figs.plotly(go.Figure(go.Scatter(x=[0, 1], y=[1, 0])), "page")
        return figs.dir

    first = save(tmp_path / "a")
    time.sleep(1.1)  # the PDF date has a resolution of one second
    second = save(tmp_path / "b")
    names = sorted(p.name for p in first.iterdir())
    assert {"line.png", "line.pdf", "line.csv", "tab.md", "page.html", "index.json"} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), f"{name} differs between two saves"


def test_only_the_suite_writes_the_committed_figures(tmp_path, monkeypatch):
    """A notebook run by hand (no WORKBENCH_FIGURES in its kernel) writes under runs/figures; the suite sets
    WORKBENCH_FIGURES for its kernels to figures/ (before, notebook 06 run in JupyterLab overwrote
    tracked files under figures/quick/)."""
    from workbench import suite
    from workbench.paths import REPO_ROOT, figures_dir, notebook_figures_dir, runs_dir

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("WORKBENCH_FIGURES")
    tracked = REPO_ROOT / "figures" / "quick" / "06_sliders"
    before = {p.name: p.stat().st_mtime_ns for p in tracked.iterdir()} if tracked.exists() else {}
    figs = P.Figures("06_sliders", "quick")
    assert figs.dir == runs_dir() / "figures" / "quick" / "06_sliders" == tmp_path / "runs" / "figures" / "quick" / \
        "06_sliders"
    figs.table([{"a": 1}], "state_miou")
    assert (figs.dir / "state_miou.csv").exists()
    assert ({p.name: p.stat().st_mtime_ns for p in tracked.iterdir()} if tracked.exists() else {}) == before
    # the suite: its kernels (which inherit its environment) write to figures_dir()
    monkeypatch.setattr(suite, "ensure_kernel", lambda threads=None: "python3")
    suite.run_suite([], tmp_path / "notebooks", tmp_path / "executed", "tiny")
    assert notebook_figures_dir() == figures_dir() == REPO_ROOT / "figures"
