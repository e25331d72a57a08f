"""The DeLiVER loader: RGB, depth (HHA or raw), event and LiDAR images with CARLA's 25 classes.

Implements docs/DATASETS.md "DeLiVER" (Zhang et al., CVPR 2023; the conventions of the reference
loader `jamycheung/DELIVER`): samples are listed from `img/*/<split>/*/*.png` and each companion is
the same path with `img` swapped for the modality's folder and `_rgb` for its suffix. Labels are
channel 0 of the semantic PNG, raw 1..25 -> classes 0..24, raw 0 and 255 -> ignore (255); the
reference gets the same result through uint8 wrap-around (`label[label == 255] = 0; label -= 1`),
done here explicitly. Two deliberate differences: the folder and suffix swaps act on the path below
`root` (so a root such as `/data/img_sets/` cannot be rewritten by accident), and the `case` filter
matches path components, not a substring of the path.

The case filter. The reference keeps the files whose path contains the case name as a substring, so
`case="rain"` also keeps every `train` file (and a root under `/mnt/sun/` matches "sun"). Here a
condition (cloud, fog, night, rain, sun) matches the condition folder `img/<condition>/...` exactly, and a
sensor-failure case (motionblur, overexposure, underexposure, lidarjitter, eventlowres) matches a
`_`-separated token of the scene folder or of the file name: DeLiVER marks a failure case with a suffix
on the scene folder (`MAP_<n>_point<k>_<case>`). The same rule sets each sample's `meta["case"]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from workbench.data.real import (
    IGNORE_INDEX,
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

CLASSES = ("Building", "Fence", "Other", "Pedestrian", "Pole", "RoadLine", "Road", "SideWalk", "Vegetation",
           "Cars", "Wall", "TrafficSign", "Sky", "Ground", "Bridge", "RailTrack", "GroundRail", "TrafficLight",
           "Static", "Dynamic", "Water", "Terrain", "TwoWheeler", "Bus", "Truck")
# CARLA's semantic colours, in class order (the reference loader's palette).
PALETTE = ((70, 70, 70), (100, 40, 40), (55, 90, 80), (220, 20, 60), (153, 153, 153), (157, 234, 50),
           (128, 64, 128), (244, 35, 232), (107, 142, 35), (0, 0, 142), (102, 102, 156), (220, 220, 0),
           (70, 130, 180), (81, 0, 81), (150, 100, 100), (230, 150, 140), (180, 165, 180), (250, 170, 30),
           (110, 190, 160), (170, 120, 50), (45, 60, 150), (145, 170, 100), (0, 0, 230), (0, 60, 100), (0, 0, 70))
MODALITIES = ("rgb", "depth", "event", "lidar")
CONDITIONS = ("cloud", "fog", "night", "rain", "sun")
CASES = ("motionblur", "overexposure", "underexposure", "lidarjitter", "eventlowres")
DEPTH_SOURCES = ("hha", "depth")
SUFFIX = {"rgb": "_rgb", "depth": "_depth", "event": "_event", "lidar": "_lidar", "label": "_semantic"}


def folder(key: str, depth_source: str = "hha") -> str:
    return {"rgb": "img", "depth": depth_source, "event": "event", "lidar": "lidar", "label": "semantic"}[key]


def case_matches(case: str, rel: Path) -> bool:
    """Whether a root-relative `img/<condition>/<split>/<scene>/<file>` path belongs to `case`: a condition
    is the condition folder, a failure case a `_`-separated token of the scene folder or file stem."""
    _, condition, _, scene, filename = rel.parts
    if case in CONDITIONS:
        return condition == case
    return case in scene.split("_") or case in Path(filename).stem.split("_")


def map_label(raw: torch.Tensor) -> torch.Tensor:
    """Raw semantic values -> classes: 1..25 -> 0..24; 0 (unlabelled) and 255 -> ignore."""
    label = raw - 1
    label[(raw == 0) | (raw == IGNORE_INDEX)] = IGNORE_INDEX
    return label


class DeliverDataset(RealDataset):
    name = "deliver"
    classes = CLASSES
    palette = PALETTE
    all_modalities = MODALITIES
    conditions = CONDITIONS
    cases = CASES
    layout = "img/, hha/, depth/, event/, lidar/ and semantic/ (each <condition>/<split>/MAP_*/<id>_<modality>_front.png)"
    options = ("depth_source",)
    resized_modalities = ("event",)  # eventlowres event images are smaller; `read` resizes them to the label
    label_fix = ("the semantic PNGs must hold CARLA's class id 1..25 in channel 0 (0 and 255 = ignore); "
                 "re-extract DeLiVER's semantic archive")

    def __init__(self, root, split: str = "train", modalities=None, transform=None, case: str | None = None,
                 aug_seed: int = 0, depth_source: str = "hha"):
        self.depth_source = depth_source
        super().__init__(root, split, modalities, transform, case=case, aug_seed=aug_seed, depth_source=depth_source)

    @classmethod
    def raw_label_ok(cls, values: torch.Tensor) -> torch.Tensor:
        """Raw 0 (unlabelled), 1..25 (the classes) and 255."""
        return (values == IGNORE_INDEX) | ((values >= 0) & (values <= len(CLASSES)))

    @classmethod
    def scan(cls, root: Path, split: str, modalities: Sequence[str], case: str | None = None,
             depth_source: str = "hha") -> Scan:
        if depth_source not in DEPTH_SOURCES:
            raise DataError(f"depth_source={depth_source!r} is not valid; choose 'hha' (3-channel HHA, the "
                             f"reference loader) or 'depth' (the raw depth/ folder)")
        if case is not None and case not in CONDITIONS + CASES:
            raise DataError(f"unknown DeLiVER case {case!r}; valid: {', '.join(CONDITIONS + CASES)} or None")
        scan = Scan()
        if not (root / "img").is_dir():
            scan.problems.append(Problem(
                f"img/ folder missing in {root}: DeLiVER samples are listed from img/<condition>/<split>/MAP_*/"
                f"<id>_rgb_front.png",
                "point root at the DELIVER folder that holds img/, hha/, depth/, event/, lidar/ and semantic/ "
                "(extract the DeLiVER archives there)"))
            return scan
        anchors = sorted(root.glob(f"img/*/{split}/*/*.png"))
        if not anchors:
            scan.problems.append(Problem(
                f"no {split} images in {root}/img/<condition>/{split}/MAP_*/*.png",
                f"extract DeLiVER's img archive so that img/<condition>/{split}/MAP_*/<id>_rgb_front.png exist "
                f"(conditions: {', '.join(CONDITIONS)})"))
            return scan
        rels = [a.relative_to(root) for a in anchors]
        if case is not None:
            rels = [r for r in rels if case_matches(case, r)]
            if not rels:
                scan.problems.append(Problem(
                    f"case {case!r} matches none of the {len(anchors)} {split} images (a condition matches the folder "
                    f"img/<condition>/, a failure case a '_' token of the scene folder MAP_*_<case> or file name)",
                    "choose a case present in this split (`python -m workbench data check ROOT --dataset deliver` "
                    "counts them) or case=None"))
                return scan

        keys = [*modalities, "label"]
        checked = []
        for key in keys:
            name = folder(key, depth_source)
            if (root / name).is_dir():
                checked.append(key)
                continue
            advice = (f"extract DeLiVER's {name} archive into {root} beside img/"
                      + (f", or leave {key} out of the modalities" if key != "label" else ""))
            if key == "depth":
                other = DEPTH_SOURCES[1 - DEPTH_SOURCES.index(depth_source)]
                if (root / other).is_dir():
                    advice += f", or read depth from the {other}/ folder that is there (depth_source={other!r})"
            scan.problems.append(Problem(
                f"{name}/ folder missing: {key} is read from {root}/{name}/<condition>/<split>/MAP_*/"
                f"<id>{SUFFIX[key]}_front.png", advice))

        listed = []
        for rel in rels:
            _, condition, _, scene, filename = rel.parts
            files = {key: (root / folder(key, depth_source) / condition / split / scene
                           / filename.replace("_rgb", SUFFIX[key]),) for key in keys}
            found = [c for c in CASES if case_matches(c, rel)]
            stem = filename.split("_rgb")[0]
            meta = {"dataset": "deliver", "split": split, "condition": condition, "case": found[0] if found else "none",
                    "file": f"{condition}/{split}/{scene}/{stem}"}
            listed.append(Record(files, meta))

        def fix(key: str) -> str:
            return (f"restore the missing {folder(key, depth_source)}/ files (every img/ file needs one, named with "
                    f"{SUFFIX[key]} in place of _rgb), or delete the samples' img/ files to drop them")

        absent = [k for k in keys if k not in checked]
        return split_by_completeness(root, split, listed, checked, absent, fix, scan)

    def read(self, record: Record) -> dict:
        out = {m: three_channels(read_image(record.files[m][0])) for m in self.modalities}
        label = map_label(read_label(record.files["label"][0]))
        # DeLiVER's event images can be smaller than the camera (eventlowres); nearest, as the reference.
        if "event" in out and out["event"].shape[-2:] != label.shape:
            out["event"] = F.interpolate(out["event"][None], size=tuple(label.shape), mode="nearest")[0]
        out["label"] = label
        return out
