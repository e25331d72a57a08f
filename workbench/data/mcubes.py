"""The MCubeS loader: colour, angle and degree of linear polarization, and NIR with 20 material classes.

Implements docs/DATASETS.md "MCubeS" (Liang et al., CVPR 2022; the conventions of the public
multi-modal loaders, MMSFormer lineage): sample names come from `list_folder/{train,test}.txt` (val
reads test.txt, as the reference does); `image` is `polL_color/<name>.png`, `aolp` stacks
`polL_aolp_sin/<name>.npy` and `polL_aolp_cos/<name>.npy` as (sin, cos, sin), `dolp` repeats
`polL_dolp/<name>.npy` to 3 channels, `nir` repeats `NIR_warped/<name>.png`, and the label is
`GT/<name>.png` (material ids 0..19, 255 = ignore). The left 192 columns, outside the NIR camera's
view, are cropped from everything (1224 -> 1032 wide).

Scaling of the .npy modalities (the reference feeds them raw): sin and cos of the AoLP lie in
[-1, 1] and are mapped to [0, 1] by (x + 1) / 2, a fixed affine map that loses nothing and keeps
every modality in the [0, 1] range the other datasets use; the DoLP is a fraction, already in
[0, 1], and is only clipped. Non-finite values (polarization is undefined where a pixel is black)
become 0 so that one bad pixel cannot turn a loss into NaN. PNGs are / 255, or / 65535 if 16-bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from workbench.data.real import (
    Problem,
    RealDataset,
    Record,
    Scan,
    read_image,
    read_label,
    split_by_completeness,
    three_channels,
)
from workbench.errors import DataError

CLASSES = ("asphalt", "concrete", "metal", "road_marking", "fabric", "glass", "plaster", "plastic", "rubber",
           "sand", "gravel", "ceramic", "cobblestone", "brick", "grass", "wood", "leaf", "water", "human", "sky")
PALETTE = ((44, 160, 44), (31, 119, 180), (255, 127, 14), (214, 39, 40), (140, 86, 75), (127, 127, 127),
           (188, 189, 34), (255, 152, 150), (23, 190, 207), (174, 199, 232), (196, 156, 148), (197, 176, 213),
           (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229), (57, 59, 121), (107, 110, 207),
           (156, 158, 222), (99, 121, 57))
MODALITIES = ("image", "aolp", "dolp", "nir")
LEFT_CROP = 192  # columns without NIR coverage, dropped by the reference loader
FILES = {  # key -> (folder, extension) per file; aolp has two
    "image": (("polL_color", ".png"),),
    "aolp": (("polL_aolp_sin", ".npy"), ("polL_aolp_cos", ".npy")),
    "dolp": (("polL_dolp", ".npy"),),
    "nir": (("NIR_warped", ".png"),),
    "label": (("GT", ".png"),),
}
LIST_FILE = {"train": "train.txt", "val": "test.txt", "test": "test.txt"}


def read_npy(path: Path) -> torch.Tensor:
    """A polarization map (H, W) as float32 with non-finite values set to 0."""
    a = np.load(path).astype(np.float32)
    if a.ndim == 3:
        a = a[..., 0]
    return torch.from_numpy(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0))


class MCubeSDataset(RealDataset):
    name = "mcubes"
    classes = CLASSES
    palette = PALETTE
    all_modalities = MODALITIES
    conditions = ()
    cases = ()
    layout = "list_folder/, polL_color/, polL_aolp_sin/, polL_aolp_cos/, polL_dolp/, NIR_warped/ and GT/"
    label_fix = "GT/*.png must hold material ids 0..19 (255 = ignore); re-extract MCubeS' GT folder"

    @classmethod
    def scan(cls, root: Path, split: str, modalities: Sequence[str], case: str | None = None) -> Scan:
        if case is not None:
            raise DataError(f"MCubeS has no conditions or cases to filter by; got case={case!r}, use case=None")
        scan = Scan()
        list_file = root / "list_folder" / LIST_FILE[split]
        if not list_file.is_file():
            scan.problems.append(Problem(
                f"list_folder/{LIST_FILE[split]} missing in {root}: MCubeS splits come from list_folder/"
                f"{{train,test}}.txt (val reads test.txt)",
                "point root at the MCubeS folder (multimodal_dataset/) that holds list_folder/ beside polL_color/, "
                "or write the split's sample names there, one per line"))
            return scan
        # A line may carry more columns after the name (the reference keeps the first).
        names = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        if not names:
            scan.problems.append(Problem(f"list_folder/{LIST_FILE[split]} lists no samples",
                                         "write the split's sample names there, one per line"))
            return scan

        keys = [*modalities, "label"]
        checked = []
        for key in keys:
            absent = [f for f, _ in FILES[key] if not (root / f).is_dir()]
            if not absent:
                checked.append(key)
                continue
            scan.problems.append(Problem(
                f"{', '.join(a + '/' for a in absent)} folder missing: {key} is read from "
                f"{' and '.join(f'{root}/{f}/<name>{e}' for f, e in FILES[key])}",
                f"extract MCubeS' {', '.join(absent)} folder(s) into {root}"
                + (f", or leave {key} out of the modalities" if key != "label" else "")))

        listed = [Record({k: tuple(root / f / f"{n}{e}" for f, e in FILES[k]) for k in keys},
                         {"dataset": "mcubes", "split": split, "condition": "none", "case": "none", "file": n})
                  for n in names]

        def fix(key: str) -> str:
            return (f"restore the missing {key} files, or remove their names from list_folder/{LIST_FILE[split]}")

        absent = [k for k in keys if k not in checked]
        return split_by_completeness(root, split, listed, checked, absent, fix, scan)

    def read(self, record: Record) -> dict:
        out = {}
        for m in self.modalities:
            files = record.files[m]
            if m == "aolp":
                sin, cos = (read_npy(p) for p in files)
                x = ((torch.stack([sin, cos, sin]) + 1) / 2).clamp(0, 1)  # [-1, 1] -> [0, 1]
            elif m == "dolp":
                x = read_npy(files[0]).clamp(0, 1).expand(3, -1, -1)
            else:
                x = three_channels(read_image(files[0]))
            out[m] = x[..., LEFT_CROP:].contiguous()
        label = read_label(record.files["label"][0])
        if label.shape[-1] <= LEFT_CROP:
            raise DataError(f"the label is {label.shape[-1]} pixels wide; MCubeS crops the left {LEFT_CROP} "
                             f"columns, so images must be wider (1224 in the release)")
        out["label"] = label[..., LEFT_CROP:].contiguous()
        return out
