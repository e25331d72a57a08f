"""Figures of the notebooks, and the folder they are saved to: every figure as PNG + PDF + the CSV behind it.

`Figures(notebook, profile)` owns a notebook's output folder `figures/<profile>/<notebook>/` (the
WORKBENCH_FIGURES override applies) and an `index.json` listing what it saved, in order, with titles
and captions; the suite's report (`workbench.report`) is built from those indexes. The plot functions
take plain numbers, arrays and rows (computed by `workbench.records`, `workbench.analysis` and the
evaluation engine) and return a matplotlib figure, or a plotly one. Nothing here computes a result.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from workbench import timing
from workbench.paths import notebook_figures_dir
from workbench.tables import Table, markdown_table, write_csv

MODALITY_COLOURS = {"rgb": "#d62728", "depth": "#1f77b4", "event": "#2ca02c", "lidar": "#9467bd"}

MODALITY_MARKERS = ("o", "s", "^", "D", "v", "P")

METHOD_COLOURS = {"baseline": "#7f7f7f", "basic_kd": "#ff7f0e", "ifv_single": "#bcbd22", "ifv_cross": "#8c564b",
                  "cpd": "#17becf", "ifv_cpd": "#e377c2", "hpd": "#1f77b4", "robustseg": "#d62728",
                  "anyseg": "#2ca02c", "anyseg_approx": "#98df8a", "cmnext": "#9467bd", "magic": "#ffbb78"}

def _colour(name: str, i: int) -> str:
    return METHOD_COLOURS.get(name, MODALITY_COLOURS.get(name, f"C{i % 10}"))

# File metadata of saved figures: no creation date (matplotlib stamps PDFs with the time they were written)
PDF_METADATA = {"CreationDate": None}
PNG_METADATA: dict[str, str | None] = {}


class Figures:
    """A notebook's figures and tables under `<root>/<profile>/<notebook>/`, with an index for the report.
    The root is `paths.notebook_figures_dir()`: `figures/` when the notebook suite runs the notebook,
    `runs/figures/` when it is run by hand (the committed figures are never overwritten from JupyterLab).

    Creating it starts a fresh index (a re-run lists only what it saved); files are overwritten."""

    def __init__(self, notebook: str, profile: str, root: str | Path | None = None, dpi: int = 130):
        self.notebook, self.profile, self.dpi = notebook, profile, dpi
        self.dir = Path(root or notebook_figures_dir()) / profile / notebook
        self.dir.mkdir(parents=True, exist_ok=True)
        self.entries: list[dict] = []
        self._write_index()

    def path(self, name: str) -> Path:
        return self.dir / name

    def _write_index(self) -> None:
        payload = {"notebook": self.notebook, "profile": self.profile, "entries": self.entries}
        (self.dir / "index.json").write_text(json.dumps(payload, indent=2))

    def _add(self, kind: str, name: str, title: str, caption: str, files: dict[str, Path], **extra) -> None:
        self.entries = [e for e in self.entries if e["name"] != name]
        self.entries.append({"kind": kind, "name": name, "title": title or name, "caption": caption,
                             "files": {k: str(Path(v).relative_to(self.dir)) for k, v in files.items()}, **extra})
        self._write_index()

    def save(self, fig, name: str, rows: Sequence[dict] | None = None, title: str = "", caption: str = ""):
        """`name`.png, `name`.pdf and (with `rows`) `name`.csv; returns the figure (the notebook shows it)."""
        files = {"png": self.dir / f"{name}.png", "pdf": self.dir / f"{name}.pdf"}
        with timing.timed("figures", f"{self.notebook}/{name}"):
            # no creation date in the files: the same figure saved twice gives the same bytes
            fig.savefig(files["png"], dpi=self.dpi, bbox_inches="tight", metadata=PNG_METADATA)
            fig.savefig(files["pdf"], bbox_inches="tight", metadata=PDF_METADATA)
            if rows is not None:
                files["csv"] = write_csv(self.dir / f"{name}.csv", rows)
            self._add("figure", name, title, caption, files)
        return fig

    def table(self, rows: Sequence[dict], name: str, title: str = "", caption: str = "", digits: int = 2) -> Table:
        """`name`.csv and `name`.md; returns a `Table` (shown as HTML in the notebook)."""
        files = {"csv": write_csv(self.dir / f"{name}.csv", rows), "md": self.dir / f"{name}.md"}
        files["md"].write_text(markdown_table(rows, digits) + "\n")
        self._add("table", name, title, caption, files, digits=digits)
        return Table(rows, title, digits)

    def plotly(self, fig, name: str, rows: Sequence[dict] | None = None, title: str = "", caption: str = ""):
        """An interactive page `name`.html (plotly.js written once beside it, so it opens offline)."""
        files = {"html": self.dir / f"{name}.html"}
        with timing.timed("figures", f"{self.notebook}/{name}"):
            # a fixed element id (plotly draws a random one), so a page saved twice is the same file
            fig.write_html(files["html"], include_plotlyjs="directory", full_html=True, div_id=f"plot-{name}")
            if rows is not None:
                files["csv"] = write_csv(self.dir / f"{name}.csv", rows)
            self._add("plotly", name, title, caption, files)
        return fig

def colorize(label, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8; ignored / out-of-range pixels black."""
    lab = np.asarray(label)
    pal = np.zeros((256, 3), np.uint8)
    pal[:len(palette)] = np.asarray(palette, np.uint8)
    return pal[np.clip(lab, 0, 255).astype(np.int64)]

def error_image(error) -> np.ndarray:
    """samples.error_map (0 correct, 1 wrong, 2 ignored) -> white / red / grey."""
    cols = np.array([[235, 235, 235], [200, 30, 30], [120, 120, 120]], np.uint8)
    return cols[np.asarray(error)]

def modality_image(x) -> np.ndarray:
    """A [0, 1] modality tensor (C, H, W) -> (H, W, 3) float for display (1 channel repeated)."""
    a = np.asarray(x, np.float32)
    a = np.repeat(a, 3, 0) if a.shape[0] == 1 else a[:3]
    return np.clip(a.transpose(1, 2, 0), 0, 1)

def png_bytes(img: np.ndarray, scale: int = 1) -> bytes:
    """An (H, W, 3) uint8 or [0, 1] float image as PNG bytes, enlarged `scale` x (nearest)."""
    from PIL import Image

    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    if scale > 1:
        a = a.repeat(scale, 0).repeat(scale, 1)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()

def _as_uint8(img) -> np.ndarray:
    a = np.asarray(img)
    return a if a.dtype == np.uint8 else (np.clip(a, 0, 1) * 255).round().astype(np.uint8)

def save_png(path: str | Path, img: np.ndarray, scale: int = 1) -> Path:
    """An (H, W, 3) uint8 or [0, 1] float image written as a PNG (folders created), enlarged `scale` x."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(img, scale))
    return path

def tile_images(images: Sequence[np.ndarray], captions: Sequence[str] = (), scale: int = 1, gap: int = 4) -> np.ndarray:
    """Images of one height side by side (each enlarged `scale` x, nearest), `gap` white pixels apart, with
    a caption strip above each (PIL's built-in font); returns (H', W', 3) uint8."""
    from PIL import Image, ImageDraw

    tiles = [_as_uint8(t) for t in images]
    tiles = [np.repeat(t[..., None], 3, -1) if t.ndim == 2 else t for t in tiles]
    tiles = [t.repeat(scale, 0).repeat(scale, 1) if scale > 1 else t for t in tiles]
    h = max(t.shape[0] for t in tiles)
    strip = 14 if captions else 0
    width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
    canvas = np.full((h + strip, width, 3), 255, np.uint8)
    x = 0
    for t in tiles:
        canvas[strip:strip + t.shape[0], x:x + t.shape[1]] = t
        x += t.shape[1] + gap
    if captions:
        im = Image.fromarray(canvas)
        draw = ImageDraw.Draw(im)
        x = 0
        for t, text in zip(tiles, captions):
            draw.text((x + 2, 1), str(text), fill=(0, 0, 0))
            x += t.shape[1] + gap
        canvas = np.asarray(im)
    return canvas

def legend_image(classes: Sequence[str], palette, swatch: int = 12) -> np.ndarray:
    """The colour legend of a class palette as an image: one row per class, its colour swatch and its name
    (PIL's built-in font); (H, W, 3) uint8, white background."""
    from PIL import Image, ImageDraw

    row = swatch + 4
    width = swatch + 10 + 7 * max(len(str(c)) for c in classes)
    im = Image.new("RGB", (width, row * len(classes) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for i, (name, colour) in enumerate(zip(classes, palette)):
        y = 2 + i * row
        draw.rectangle([2, y, 2 + swatch - 1, y + swatch - 1], fill=tuple(int(c) for c in colour), outline=(0, 0, 0))
        draw.text((swatch + 6, y + 1), str(name), fill=(0, 0, 0))
    return np.asarray(im)


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])

def legend_patches(classes: Sequence[str], palette) -> list:
    from matplotlib.patches import Patch

    return [Patch(color=np.asarray(c) / 255, label=n) for n, c in zip(classes, palette)]

def plot_loss_curves(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], window: int = 1):
    """One panel per loss term, a line per run: `curves` is term -> run -> (step, value) as
    `records.curves` gives it (smoothed over `window` steps, said in the title). Log scale when a
    panel's values span more than 50x."""
    terms = list(curves)
    cols = min(4, len(terms))
    rows = math.ceil(len(terms) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.7 * rows), squeeze=False)
    runs = list(dict.fromkeys(name for per_run in curves.values() for name in per_run))
    for ax, term in zip(axes.flat, terms):
        for name, (x, y) in curves[term].items():
            ax.plot(x, y, label=name, color=f"C{runs.index(name)}")
        ax.set_title(term.removeprefix("train/"))
        ax.set_xlabel("step")
        ys = np.concatenate([y for _, y in curves[term].values()]) if curves[term] else np.zeros(0)
        if ys.size and np.all(ys > 0) and ys.max() / max(ys.min(), 1e-12) > 50:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"training losses (moving average over {window} steps)" if window > 1 else "training losses")
    fig.tight_layout()
    return fig


def plot_val_curves(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]):
    """Validation mIoU per epoch, a panel per key (val/miou_full, val/emm, val/worst): `curves` is
    key -> run -> (epoch, mIoU) as `records.curves(..., x="epoch")` gives it."""
    keys = list(curves)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.8 * len(keys), 3), squeeze=False)
    runs = list(dict.fromkeys(name for per_run in curves.values() for name in per_run))
    for ax, key in zip(axes[0], keys):
        for name, (x, y) in curves[key].items():
            ax.plot(x, y, marker="o", label=name, color=f"C{runs.index(name)}")
        ax.set_title(key.removeprefix("val/"))
        ax.set_xlabel("epoch")
        ax.set_ylabel("mIoU (%)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_primary_frequency(freq: dict[str, dict], title: str = "ASM primary modality frequency"):
    """Left: per step, the share of the batch for which each modality was primary (smoothed).
    Right: per validation interval, per sample (solid) and per batch (dashed, feedback)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    for i, (m, d) in enumerate(freq.items()):
        c = _colour(m, i)
        a.plot(d["step"], d["per_step"], color=c, label=m)
        x, y = d["val"]
        b.plot(x, y, marker="o", color=c, label=f"{m} (per sample)")
        x, y = d["val_batch"]
        if len(x):
            b.plot(x, y, marker="x", ls="--", color=c, label=f"{m} (per batch)")
    a.set(xlabel="step", ylabel="share of samples", title="per step", ylim=(-0.05, 1.05))
    b.set(xlabel="epoch", ylabel="frequency", title="per validation interval", ylim=(-0.05, 1.05))
    a.legend(fontsize=8)
    b.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    return fig

def grouped_bars(ax, groups: Sequence[str], series_: dict[str, Sequence[float]], errors: dict | None = None,
                 hatches: dict | None = None, colours: dict | None = None, fmt: str | None = None) -> None:
    """Bars for each group (x) and series (colour)."""
    k = len(series_)
    width = 0.8 / max(k, 1)
    x = np.arange(len(groups))
    for i, (name, vals) in enumerate(series_.items()):
        err = None if errors is None else errors.get(name)
        bars = ax.bar(x + (i - (k - 1) / 2) * width, vals, width, yerr=err, capsize=2, label=name,
                      color=(colours or {}).get(name, _colour(name, i)), hatch=(hatches or {}).get(name))
        if fmt:
            ax.bar_label(bars, fmt=fmt, fontsize=6, rotation=90, padding=1)
    ax.set_xticks(x, groups, rotation=30, ha="right")

def plot_ablation(summary: Sequence[dict], paper: dict[str, tuple[float, float]] | None = None):
    """EMM and full-modality mIoU per ablation row (mean +- std over seeds) per protocol, beside the
    paper's DeLiVER numbers (hatched; another dataset, so compare the ordering, not the level)."""
    methods = list(dict.fromkeys(r["method"] for r in summary))
    protocols = sorted({r["protocol"] for r in summary})
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for ax, key, pi in zip(axes, ("emm", "full"), (0, 1)):
        vals, errs, hatch, cols = {}, {}, {}, {}
        for j, p in enumerate(protocols):
            rows = {r["method"]: r for r in summary if r["protocol"] == p}
            vals[f"ours ({p})"] = [rows[m][f"{key}_mean"] if m in rows else np.nan for m in methods]
            errs[f"ours ({p})"] = [rows[m][f"{key}_std"] if m in rows else 0 for m in methods]
            cols[f"ours ({p})"] = f"C{j}"
        if paper:
            vals["paper (DeLiVER, B0)"] = [paper.get(m, (np.nan, np.nan))[pi] for m in methods]
            hatch["paper (DeLiVER, B0)"] = "//"
            cols["paper (DeLiVER, B0)"] = "#cccccc"
        grouped_bars(ax, methods, vals, errs, hatch, cols, fmt="%.1f")
        ax.margins(y=0.12)
        ax.set_title("EMM (mean over combinations)" if key == "emm" else "full modality")
        ax.set_ylabel("mIoU (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig

def plot_combination_heatmaps(matrices: dict[str, tuple[list[str], list[str], np.ndarray]]):
    """One heatmap per protocol: combinations (rows) x methods (columns), mIoU annotated."""
    n = len(matrices)
    first = next(iter(matrices.values()))
    fig, axes = plt.subplots(1, n, figsize=(1.0 + 1.1 * len(first[1]) * n + 1.5, 0.38 * len(first[0]) + 1.6),
                             squeeze=False)
    vmax = max(float(np.nanmax(m[2])) for m in matrices.values())
    for ax, (protocol, (combos, methods, mat)) in zip(axes[0], matrices.items()):
        im = ax.imshow(mat, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_yticks(range(len(combos)), combos)
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                ax.text(j, i, f"{mat[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if mat[i, j] < 0.6 * vmax else "black")
        ax.set_title(f"protocol: {protocol}")
    fig.colorbar(im, ax=axes[0].tolist(), label="mIoU (%)", shrink=0.8)
    return fig

def plot_method_bars(rows: Sequence[dict], group_key: str, value_key: str, title: str,
                     panel_key: str = "protocol", ylabel: str = "mIoU (%)"):
    """Grouped bars: one panel per `panel_key`, groups `group_key`, a bar per method."""
    panels = list(dict.fromkeys(r[panel_key] for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.4), squeeze=False)
    for ax, p in zip(axes[0], panels):
        sub = [r for r in rows if r[panel_key] == p]
        groups = list(dict.fromkeys(r[group_key] for r in sub))
        methods = list(dict.fromkeys(r["method"] for r in sub))
        vals = {m: [next((r[value_key] for r in sub if r["method"] == m and r[group_key] == g), np.nan)
                    for g in groups] for m in methods}
        grouped_bars(ax, groups, vals)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_title(f"{panel_key}: {p}")
        ax.set_ylabel(ylabel)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig

def plot_param_distance(rows: Sequence[dict], title: str = "teacher weights: after feedback vs before"):
    """Relative L2 change per encoder / fusion / head, with the fraction of parameters that moved."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 1), 3.4))
    parts = [r["part"] for r in rows]
    vals = [r["relative"] for r in rows]
    bars = ax.bar(parts, vals, color=[_colour(p.split("/")[-1], i) for i, p in enumerate(parts)])
    for b, r in zip(bars, rows):
        ax.annotate(f"{100 * r['changed_fraction']:.0f}% moved", (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("||after - before|| / ||before||")
    ax.tick_params(axis="x", labelrotation=30)
    ax.margins(y=0.15)
    ax.set_title(title)
    fig.tight_layout()
    return fig

def plot_delta(rows: Sequence[dict], protocol: str, highlight: str = "EL"):
    """Before/after bars per combination for one protocol; the highlighted combination is marked."""
    sub = [r for r in rows if r["protocol"] == protocol]
    combos = [r["combo"] for r in sub]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(combos) + 2), 3.4))
    grouped_bars(ax, combos, {"before feedback": [r["before"] for r in sub],
                              "after feedback": [r["after"] for r in sub]},
                 colours={"before feedback": "#7f7f7f", "after feedback": "#d62728"})
    if highlight in combos:
        i = combos.index(highlight)
        ax.axvspan(i - 0.45, i + 0.45, color="gold", alpha=0.3, zorder=0)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"teacher, every combination ({protocol} protocol)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

def plot_tsne(embeddings: dict[str, tuple[np.ndarray, object]], classes: Sequence[str], palette,
              title: str = "t-SNE of per-modality features"):
    """Rows: models; left column coloured by class, right by modality (marker = modality)."""
    n = len(embeddings)
    fig, axes = plt.subplots(n, 2, figsize=(10, 4.2 * n), squeeze=False)
    pal = np.asarray(palette, float) / 255
    for (name, (emb, pts)), (a, b) in zip(embeddings.items(), axes):
        for j, m in enumerate(pts.modalities):
            sel = pts.modality == j
            mk = MODALITY_MARKERS[j % len(MODALITY_MARKERS)]
            a.scatter(emb[sel, 0], emb[sel, 1], c=pal[pts.cls[sel]], s=10, marker=mk, linewidths=0)
            b.scatter(emb[sel, 0], emb[sel, 1], c=_colour(m, j), s=10, marker=mk, linewidths=0, label=m)
        a.set_title(f"{name}: by class")
        b.set_title(f"{name}: by modality")
        _off(a)
        _off(b)
    axes[0, 1].legend(fontsize=8, markerscale=2)
    present = sorted({int(c) for _, pts in embeddings.values() for c in np.unique(pts.cls)})
    fig.legend(handles=[legend_patches(classes, palette)[c] for c in present], loc="lower center",
               ncol=min(6, len(present)), fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04, 1, 0.98))
    return fig

def tsne_plotly(embeddings: dict[str, tuple[np.ndarray, object]], classes: Sequence[str], palette):
    """Interactive t-SNE: one panel per model, colour = class, symbol = modality, hover = sample."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(embeddings)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names)
    symbols = ("circle", "square", "triangle-up", "diamond", "triangle-down", "cross")
    for col, name in enumerate(names, 1):
        emb, pts = embeddings[name]
        for j, m in enumerate(pts.modalities):
            sel = pts.modality == j
            cols = [f"rgb{tuple(palette[c])}" for c in pts.cls[sel]]
            text = [f"{name}<br>class {classes[c]}<br>modality {m}<br>sample {s}"
                    for c, s in zip(pts.cls[sel], pts.sample[sel])]
            fig.add_trace(go.Scattergl(x=emb[sel, 0], y=emb[sel, 1], mode="markers", name=m, legendgroup=m,
                                       showlegend=col == 1, text=text, hoverinfo="text",
                                       marker={"color": cols, "symbol": symbols[j % len(symbols)], "size": 6,
                                               "line": {"width": 0}}), row=1, col=col)
    fig.update_layout(height=480, width=max(520, 460 * len(names)), title="t-SNE of per-modality features "
                      "(colour: class, symbol: modality)", legend_title="modality")
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return fig

def plot_ifv_sample(inputs: dict, label, preds: dict, maps: dict[str, dict], b: int, classes, palette,
                    title: str = ""):
    """Row 0: the inputs, the label and each model's prediction. Then one row per modality: the IFV
    maps of every stage for each model (brighter = closer to the class prototype)."""
    mods = list(inputs)
    models = list(maps)
    stages = sorted(next(iter(maps.values()))[mods[0]])
    ncols = max(len(mods) + 1 + len(preds), len(models) * len(stages))
    fig, axes = plt.subplots(1 + len(mods), ncols, figsize=(1.7 * ncols, 1.8 * (1 + len(mods))), squeeze=False)
    for ax in axes.flat:
        _off(ax)
        ax.set_frame_on(False)
    row = axes[0]
    for j, m in enumerate(mods):
        row[j].imshow(modality_image(inputs[m]))
        row[j].set_title(m, fontsize=8)
    row[len(mods)].imshow(colorize(label, palette))
    row[len(mods)].set_title("label", fontsize=8)
    for j, (name, p) in enumerate(preds.items()):
        row[len(mods) + 1 + j].imshow(colorize(p, palette))
        row[len(mods) + 1 + j].set_title(f"{name}\nprediction", fontsize=8)
    im = None
    for r, m in enumerate(mods, 1):
        for mi, name in enumerate(models):
            for si, s in enumerate(stages):
                ax = axes[r, mi * len(stages) + si]
                im = ax.imshow(maps[name][m][s]["ifv"][b], cmap="magma", vmin=-1, vmax=1)
                ax.set_title(f"{name} {m}\nIFV stage {s + 1}", fontsize=7)
    if im is not None:
        fig.colorbar(im, ax=axes[1:].ravel().tolist(), shrink=0.6, label="cos(f, CFM)")
    fig.suptitle(title, fontsize=10)
    return fig

def plot_cfm_sample(maps: dict[str, dict], b: int, stage: int, title: str = ""):
    """Per modality (rows) and model: the stage features and their center feature map, coloured in one
    shared PCA basis per panel pair (a CFM replaces every labelled pixel by its class prototype)."""
    models = list(maps)
    mods = list(next(iter(maps.values())))
    fig, axes = plt.subplots(len(mods), 2 * len(models), figsize=(1.9 * 2 * len(models), 1.9 * len(mods)),
                             squeeze=False)
    for r, m in enumerate(mods):
        for mi, name in enumerate(models):
            d = maps[name][m][stage]
            for k, key in enumerate(("feature_rgb", "cfm_rgb")):
                ax = axes[r, 2 * mi + k]
                ax.imshow(d[key][b])
                _off(ax)
                ax.set_title(f"{name} {m}\n{'features' if k == 0 else 'CFM'} (stage {stage + 1})", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig

VERDICT_COLOURS = {"reproduced": "#2ca02c", "contradicted": "#d62728", "inconclusive at this power": "#7f7f7f"}


def plot_claims(rows: Sequence[dict], title: str = "The paper's claims: paired differences over seeds",
                panel: str = "protocol"):
    """One panel per protocol (or per value of another key, `panel`, e.g. "regime"): each claim's difference
    a - b (points, 95% CI bars, coloured by verdict) beside the paper's difference (hollow diamonds; DeLiVER,
    so compare signs and order, not size)."""
    protocols = list(dict.fromkeys(r[panel] for r in rows))
    claims = list(dict.fromkeys(r["claim"] for r in rows))
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.2 * len(protocols), 0.55 * len(claims) + 1.6),
                             squeeze=False, sharey=True)
    for ax, protocol in zip(axes[0], protocols):
        sub = {r["claim"]: r for r in rows if r[panel] == protocol}
        for i, c in enumerate(claims):
            r = sub.get(c)
            if r is None:  # a claim this panel's table lacks
                continue
            lo, hi = r["ci_low"], r["ci_high"]
            err = None if not (math.isfinite(lo) and math.isfinite(hi)) else [[r["difference"] - lo], [hi - r["difference"]]]
            ax.errorbar(r["difference"], i, xerr=err, fmt="o", color=VERDICT_COLOURS.get(r["verdict"], "k"), capsize=3)
            paper = r.get("paper", "")
            if isinstance(paper, (int, float)) and math.isfinite(paper):
                ax.plot(paper, i, marker="D", mfc="none", mec="black", ls="none")
            if r.get("expected", "> 0") not in ("> 0", "< 0"):
                ax.plot([float(r["expected"].split()[1])] * 2, [i - 0.3, i + 0.3], color="black", lw=1, ls=":")
        ax.axvline(0, color="black", lw=0.6)
        ax.set_yticks(range(len(claims)), claims)
        ax.set_xlabel("difference a - b (mIoU points)")
        ax.set_title(f"{panel}: {protocol}")
    axes[0][0].invert_yaxis()  # once: the panels share the y axis, so a second call would flip it back
    handles = [plt.Line2D([], [], marker="o", ls="none", color=c, label=v) for v, c in VERDICT_COLOURS.items()]
    handles.append(plt.Line2D([], [], marker="D", ls="none", mfc="none", mec="black", label="paper (DeLiVER)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def plot_comparison_grid(rows: Sequence[tuple[str, dict[str, dict]]], palette, title: str = ""):
    """One row per input state, several models side by side: every modality as the models saw it, the
    label, then each model's prediction and errors; each model's sample mIoU at the row's left.
    `rows`: (state name, {model name: sample output with inputs, label, pred, error, miou})."""
    first = rows[0][1]
    models = list(first)
    mods = list(next(iter(first.values()))["inputs"])
    heads = [*mods, "label"] + [f"{k}\n{h}" for k in models for h in ("prediction", "errors")]
    ncols = len(heads)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.3 * ncols, 1.4 * len(rows) + 0.4), squeeze=False)
    for r, (name, outs) in enumerate(rows):
        ref = outs[models[0]]
        ims = [modality_image(ref["inputs"][m]) for m in mods] + [colorize(ref["label"], palette)]
        for k in models:
            ims += [colorize(outs[k]["pred"], palette), error_image(outs[k]["error"])]
        for c, (img, head) in enumerate(zip(ims, heads)):
            ax = axes[r, c]
            ax.imshow(img)
            _off(ax)
            if r == 0:
                ax.set_title(head, fontsize=7)
        scores = "\n".join(f"{k} {outs[k]['miou']:.1f}" for k in models)
        axes[r, 0].set_ylabel(f"{name}\n{scores}", fontsize=6.5, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return fig


def plot_robustness_curves(rows: Sequence[dict], clean: dict[str, float] | None = None):
    """Left: RMM, mIoU against the zeroing rate (solid: the mean over the 15 corrupted sets, dashed: the
    expectations); right: NM, mIoU per noise level, with each model's clean full-modality mIoU at "clean".
    `rows` as `analysis.robustness_rows` gives them; `clean`: method -> clean mIoU for the NM panel."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for i, m in enumerate(methods):
        c = _colour(m, i)
        rmm = [r for r in rows if r["method"] == m and r["protocol"] == "rmm"]
        for metric in dict.fromkeys(r["metric"] for r in rmm):
            pts = [r for r in rmm if r["metric"] == metric]
            a.plot([float(r["x"]) for r in pts], [r["miou"] for r in pts], color=c,
                   ls="-" if metric == "Avg" else ":", marker="o" if metric == "Avg" else None,
                   label=f"{m}" if metric == "Avg" else None)
        nm = [r for r in rows if r["method"] == m and r["protocol"] == "nm"]
        xs = (["clean"] if clean else []) + [r["x"] for r in nm]
        ys = ([clean[m]] if clean else []) + [r["miou"] for r in nm]
        b.plot(xs, ys, color=c, marker="o", label=m)
    a.set(xlabel="RMM zeroing rate r", ylabel="mIoU (%)", title="RMM (solid: Avg over sets; dotted: E[p])")
    b.set(xlabel="NM level", ylabel="mIoU (%)", title="NM (salt-and-pepper + Gaussian noise)")
    a.legend(fontsize=8)
    fig.tight_layout()
    return fig
