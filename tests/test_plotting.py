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
