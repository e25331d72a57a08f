"""The data checker: counts per split, condition and case, missing companion files, every file's header,
label values, and each problem with its fix, for a real dataset tree.

Implements the layouts of docs/DATASETS.md through each loader's `scan` (the same cheap existence
scan that a dataset runs when it is built), then reads the header of every modality and label file
(format, size, channels: an empty file, a GIF named .png or a map of the wrong size is a problem; with
`full`, every file is decoded completely) and decodes the labels to list the raw values found.
`add_arguments`/`run` are the command line `python -m workbench data check ROOT --dataset NAME`: it prints the
report and exits with 1 when there are problems.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from workbench.data import DATASETS
from workbench.data.real import Problem, RealDataset, Record, examples, read_label
from workbench.errors import ConfigError, UnknownName

REAL = {name: cls for name, cls in DATASETS.items() if issubclass(cls, RealDataset)}

DEFAULT_SPLITS = {"deliver": ("train", "val", "test"), "muses": ("train", "val"), "mcubes": ("train", "val")}
COUNTED = ("condition", "daytime", "case")  # metadata fields counted per split, where a dataset has them
RELEASE_SIZES = {("deliver", "val"): 2005}  # split sizes docs/DATASETS.md states, shown next to the count


@dataclass
class SplitReport:
    split: str
    samples: int  # listed from the anchor folder (or list file)
    complete: int  # with every companion file
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # meta field -> value -> samples
    missing: dict[str, list[str]] = field(default_factory=dict)  # key -> missing files, root-relative
    label_values: list[int] = field(default_factory=list)  # raw values in the labels read
    labels_read: int = 0
    headers_read: int = 0  # files whose header was read (all of each file with `full`)
    files: dict[str, dict[str, Counter]] = field(default_factory=dict)  # key -> {"channels", "sizes"} -> counts


@dataclass
class DataReport:
    dataset: str
    root: str
    modalities: tuple[str, ...]
    splits: dict[str, SplitReport] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        lines = [f"{self.dataset} at {self.root} (modalities: {', '.join(self.modalities)})"]
        for s in self.splits.values():
            release = RELEASE_SIZES.get((self.dataset, s.split))
            note = f" (the full release has {release:,})" if release and release != s.samples else ""
            lines.append(f"  {s.split}: {s.samples} samples, {s.complete} complete{note}")
            for key, counts in s.counts.items():
                lines.append(f"    {key}: " + ", ".join(f"{v} {n}" for v, n in sorted(counts.items())))
            for key, names in s.missing.items():
                lines.append(f"    missing {key} ({len(names)}): {examples(names, 10)}")
            for key, seen in s.files.items():
                n = sum(seen["channels"].values())
                channels = ", ".join(f"{c} channel{'s' if c != 1 else ''}" + (f" ({k})" if len(seen["channels"]) > 1 else "")
                                     for c, k in seen["channels"].most_common())
                sizes = ", ".join(f"{w}x{h}" + (f" ({k})" if len(seen["sizes"]) > 1 else "")
                                  for (w, h), k in seen["sizes"].most_common(3))
                more = f", ... ({len(seen['sizes'])} sizes)" if len(seen["sizes"]) > 3 else ""
                lines.append(f"    {key}: {n} files, {channels}, {sizes}{more}")
            if s.labels_read:
                lines.append(f"    raw label values ({s.labels_read} labels read): "
                             + ", ".join(map(str, s.label_values)))
        if self.ok:
            lines.append("No problems found.")
        else:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}".replace("\n", "\n  ") for p in self.problems]
        return "\n".join(lines)


def _label_values(cls: type[RealDataset], split: str, records, max_labels: int | None,
                  report: SplitReport, problems: list[Problem]) -> None:
    records = [r for r in records if "label" in r.files and r.files["label"][0].is_file()]
    if max_labels is not None and len(records) > max_labels:
        step = len(records) / max_labels  # spread over the split, not its first folder
        records = [records[int(i * step)] for i in range(max_labels)]
    found: set[int] = set()
    for record in records:
        path = record.files["label"][0]
        try:
            found.update(read_label(path).unique().tolist())
        except (OSError, ValueError) as e:
            problems.append(Problem(f"cannot decode label {path} ({e})", cls.label_fix))
            continue
        report.labels_read += 1
    report.label_values = sorted(found)
    values = torch.tensor(report.label_values, dtype=torch.long)
    bad = values[~cls.raw_label_ok(values)].tolist() if len(values) else []
    if bad:
        problems.append(Problem(f"{split} labels hold raw values outside the {cls.name} classes: {bad}",
                                cls.label_fix))


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def read_header(path: Path, full: bool = False) -> tuple[int, int, int]:
    """(width, height, channels) of an image or `.npy` file from its header (PIL reads no pixels until
    asked; numpy maps the array); `full` decodes the whole file. OSError / ValueError when it cannot."""
    if path.suffix == ".npy":
        a = np.load(path) if full else np.load(path, mmap_mode="r")
        if a.ndim not in (2, 3):
            raise ValueError(f"a {a.ndim}-D array, expected (H, W) or (H, W, C)")
        return a.shape[1], a.shape[0], 1 if a.ndim == 2 else a.shape[2]
    with Image.open(path) as im:
        expected = IMAGE_FORMATS.get(path.suffix.lower())
        if expected is not None and im.format != expected:
            raise ValueError(f"a {im.format} file named {path.suffix}")
        if full:
            im.load()
        return im.size[0], im.size[1], len(im.getbands())


def _reason(path: Path, e: Exception) -> str:
    if path.stat().st_size == 0:
        return "an empty file"
    if isinstance(e, UnidentifiedImageError):
        return "not an image PIL can read"
    return str(e).replace(str(path), "").strip(" :'") or type(e).__name__


def _headers(cls: type[RealDataset], root: Path, split: str, records: list[Record], modalities, full: bool,
             report: SplitReport, problems: list[Problem]) -> None:
    """Read the header of every file of `records`; sizes must equal the label's (except the modalities the
    loader resizes, whose aspect ratio must), channels must agree within a modality."""
    undecodable: dict[str, list[str]] = {}
    wrong_size: dict[str, list[str]] = {}
    seen: dict[str, dict[str, Counter]] = {}
    examples_of: dict[tuple[str, int], str] = {}  # (key, channels) -> a file, to point at the odd ones
    for record in records:
        label_size = None
        for key in ("label", *modalities):
            for path in record.files.get(key, ()):
                if not path.is_file():
                    continue  # a missing file is already a problem of the scan
                rel = path.relative_to(root).as_posix()
                try:
                    w, h, c = read_header(path, full)
                except (OSError, ValueError, EOFError) as e:
                    undecodable.setdefault(key, []).append(f"{rel} ({_reason(path, e)})")
                    continue
                report.headers_read += 1
                counts = seen.setdefault(key, {"channels": Counter(), "sizes": Counter()})
                counts["channels"][c] += 1
                counts["sizes"][(w, h)] += 1
                examples_of.setdefault((key, c), rel)
                if key == "label":
                    label_size = (w, h)
                elif label_size is not None and (w, h) != label_size:
                    ok = key in cls.resized_modalities and abs(w * label_size[1] - h * label_size[0]) <= max(w, h)
                    if not ok:
                        wrong_size.setdefault(key, []).append(
                            f"{rel} is {w}x{h}, its label {label_size[0]}x{label_size[1]}")
    report.files = {k: seen[k] for k in ("label", *modalities) if k in seen}
    for key, items in undecodable.items():
        problems.append(Problem(f"{split}: cannot decode {len(items)} {key} file(s): {examples(items, 5)}",
                                f"re-extract or re-export these {key} files from the dataset's archive"))
    for key, items in wrong_size.items():
        problems.append(Problem(f"{split}: {len(items)} {key} file(s) of another size than their label: "
                                f"{examples(items, 5)}",
                                f"re-export {key} on the camera's pixel grid (the label's size), or re-extract it"))
    for key, counts in seen.items():
        if len(counts["channels"]) > 1:
            listing = ", ".join(f"{k} with {c} (e.g. {examples_of[(key, c)]})"
                                for c, k in counts["channels"].most_common())
            problems.append(Problem(f"{split}: {key} files have different channel counts: {listing}",
                                    f"re-export the odd {key} files like the others"))


def check_dataset(root, name: str, splits=None, modalities=None, depth_source: str = "hha",
                  max_labels: int | None = None, full: bool = False) -> DataReport:
    """Scan `root` as dataset `name` for each split, read the header of every file (decode every file with
    `full`) and read its labels' values (at most `max_labels` per split, spread evenly; None = all).
    Argument errors raise; everything wrong in the tree is a problem."""
    if max_labels is not None and max_labels < 1:
        raise ConfigError(f"--max-labels {max_labels}: give at least 1 (labels decoded per split), or leave it out "
                          f"to decode every label")
    if name not in REAL:
        raise UnknownName(f"unknown real dataset {name!r}; valid: {', '.join(REAL)}")
    cls = REAL[name]
    modalities = tuple(modalities or cls.default_modalities or cls.all_modalities)
    unknown = [m for m in modalities if m not in cls.all_modalities]
    if unknown:
        raise ConfigError(f"unknown modality {unknown[0]!r} for {name}; valid: {', '.join(cls.all_modalities)}")
    splits = tuple(splits or DEFAULT_SPLITS[name])
    bad_splits = [s for s in splits if s not in cls.splits]
    if bad_splits:
        raise ConfigError(f"unknown split {bad_splits[0]!r} for {name}; valid: {', '.join(cls.splits)}")
    options = {"depth_source": depth_source} if "depth_source" in cls.options else {}
    if not options and depth_source != "hha":
        raise ConfigError(f"depth_source={depth_source!r} applies to DeLiVER only")

    root = Path(root).expanduser()
    report = DataReport(name, str(root), modalities)
    if not root.is_dir():
        report.problems.append(Problem(f"{root} is not a folder",
                                       f"point ROOT at the folder that holds {cls.layout}"))
        return report
    for split in splits:
        scan = cls.scan(root, split, modalities, **options)
        listed = scan.listed
        split_report = SplitReport(split, len(listed), len(scan.records), missing=scan.missing)
        for key in COUNTED:
            counts = Counter(r.meta[key] for r in listed if key in r.meta)
            if counts and set(counts) != {"none"}:
                split_report.counts[key] = dict(counts)
        for problem in scan.problems:
            if all(str(problem) != str(p) for p in report.problems):  # a missing folder hits every split
                report.problems.append(problem)
        _headers(cls, root, split, listed, modalities, full, split_report, report.problems)
        _label_values(cls, split, listed, max_labels, split_report, report.problems)
        report.splits[split] = split_report
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`python -m workbench data check ROOT --dataset NAME [...]`."""
    parser.description = ("Check a real dataset tree against its layout (docs/DATASETS.md): counts, missing "
                          "files, label values, and a fix for each problem. Exit status 1 when there are problems.")
    parser.add_argument("root", help="the dataset folder (e.g. data/DELIVER)")
    parser.add_argument("--dataset", required=True, choices=sorted(REAL), help="the layout to check")
    parser.add_argument("--split", dest="splits", action="append", choices=("train", "val", "test"),
                        help="a split to check (repeatable; default: deliver train/val/test, others train/val)")
    parser.add_argument("--modalities", nargs="+", help="modalities to check (default: the dataset's default set)")
    parser.add_argument("--depth-source", choices=("hha", "depth"), default="hha",
                        help="DeLiVER: the folder depth is read from")
    parser.add_argument("--max-labels", type=int, default=None,
                        help="decode at most N labels per split, spread evenly (default: all)")
    parser.add_argument("--full", action="store_true",
                        help="decode every file completely (default: the header of every file: format, size, channels)")


def run(args: argparse.Namespace) -> int:
    report = check_dataset(args.root, args.dataset, args.splits, args.modalities, args.depth_source, args.max_labels,
                           full=args.full)
    print(report)
    return 0 if report.ok else 1
