"""The MUSES loader: frame camera, event camera and LiDAR (radar optional) with the 19 Cityscapes classes.

Implements docs/DATASETS.md "MUSES" (Brödermann et al., ECCV 2024) with the conventions of the public
multi-modal loaders (RobustSeg/MAGIC lineage): samples are listed from
`frame_camera/<split>/<weather>/<daytime>/<id>_frame_camera.png`; a modality's file is the same path
with `frame_camera` replaced by the modality (`lidar/<split>/.../<id>_lidar.png`), and the label is
`gt_semantic/<split>/<weather>/<daytime>/<id>_gt_labelTrainIds.png`. Event camera, LiDAR and radar
must already be projected to the camera as PNGs (the official MUSES SDK does that); they are read
from `ROOT/<modality>/` or, as the SDK's output is often laid out, `ROOT/projected_to_rgb/<modality>/`.
Labels are Cityscapes trainIds 0..18 with 255 = ignore, kept as is: the reference loader turns 255
into class 0 (road), training on unlabelled pixels as road, which is a bug. Unlike the reference, the
images are not resized to 1024 x 1024 here (the transform resizes) and 16-bit projections are scaled
by 1/65535 to [0, 1] rather than min-max normalized per image (which would make a LiDAR range depend
on the farthest point of each scan).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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

CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
           "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
           (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
           (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32))
MODALITIES = ("frame_camera", "event_camera", "lidar", "radar")
DEFAULT_MODALITIES = ("frame_camera", "event_camera", "lidar")  # the paper's three; radar is opt-in
WEATHERS = ("clear", "fog", "rain", "snow")
DAYTIMES = ("day", "night")
SDK = "https://github.com/timbroed/MUSES"


def projected_dir(root: Path, modality: str, split: str) -> Path | None:
    """Where `modality`'s camera-projected PNGs of `split` are: ROOT/<m>/ or ROOT/projected_to_rgb/<m>/."""
    for base in (root / modality, root / "projected_to_rgb" / modality):
        if next((base / split).glob("*/*/*.png"), None) is not None:
            return base
    return None


def case_matches(case: str, weather: str, daytime: str) -> bool:
    return all(token in (weather, daytime) for token in case.split("_"))


class MusesDataset(RealDataset):
    name = "muses"
    classes = CLASSES
    palette = PALETTE
    all_modalities = MODALITIES
    default_modalities = DEFAULT_MODALITIES
    conditions = WEATHERS
    cases = ()
    daytimes = DAYTIMES
    layout = ("frame_camera/, gt_semantic/ and the projected event_camera/, lidar/ "
              "(each <split>/<weather>/<daytime>/<id>_<modality>.png)")
    label_fix = ("use the *_gt_labelTrainIds.png files (Cityscapes trainIds 0..18, 255 = ignore), "
                 "not *_gt_labelIds.png")

    @classmethod
    def scan(cls, root: Path, split: str, modalities: Sequence[str], case: str | None = None) -> Scan:
        if case is not None and not all(t in WEATHERS + DAYTIMES for t in case.split("_")):
            raise DataError(f"unknown MUSES case {case!r}; give a weather ({', '.join(WEATHERS)}), a time of day "
                             f"({', '.join(DAYTIMES)}) or both joined by '_' (e.g. 'fog_night'), or None")
        scan = Scan()
        anchors = sorted(root.glob(f"frame_camera/{split}/*/*/*.png"))
        if not anchors:
            where = "folder missing" if not (root / "frame_camera").is_dir() else f"has no {split} images"
            scan.problems.append(Problem(
                f"frame_camera/ {where}: MUSES samples are listed from {root}/frame_camera/{split}/<weather>/"
                f"<daytime>/*.png",
                "point root at the MUSES folder that holds frame_camera/ and gt_semantic/ (extract the "
                "RGB_Frame_Camera and Semantic_Annotations archives there)"))
            return scan
        rels = [a.relative_to(root) for a in anchors]
        if case is not None:
            rels = [r for r in rels if case_matches(case, r.parts[2], r.parts[3])]
            if not rels:
                scan.problems.append(Problem(
                    f"case {case!r} matches none of the {len(anchors)} {split} images",
                    "choose a weather/time of day present in this split or case=None"))
                return scan

        bases = {"frame_camera": root / "frame_camera", "label": root / "gt_semantic"}
        for m in modalities:
            if m == "frame_camera":
                continue
            base = projected_dir(root, m, split)
            if base is not None:
                bases[m] = base
                continue
            raw = (root / m).is_dir() and next((root / m).rglob("*.png"), None) is None
            scan.problems.append(Problem(
                f"{m}: no camera-projected PNGs for split {split!r} in {root}/{m}/{split}/ or "
                f"{root}/projected_to_rgb/{m}/{split}/" + (f" ({m}/ holds raw recordings, not PNGs)" if raw else ""),
                f"the official MUSES SDK ({SDK}) projects the raw {m} recordings to the frame camera as PNGs: run "
                f"its projection and save them as {m}/{split}/<weather>/<daytime>/<id>_{m}.png under the root, "
                f"or leave {m} out of the modalities"))
        if not (root / "gt_semantic" / split).is_dir():
            if split == "test":
                scan.problems.append(Problem(
                    "MUSES test labels are withheld (gt_semantic/test/ does not exist): the test split is scored "
                    "only by the benchmark server",
                    "evaluate on split='val', or submit test predictions to the MUSES benchmark"))
            else:
                scan.problems.append(Problem(
                    f"gt_semantic/{split}/ folder missing: labels are read from {root}/gt_semantic/{split}/<weather>/"
                    f"<daytime>/<id>_gt_labelTrainIds.png",
                    "extract MUSES' Semantic_Annotations archive so that gt_semantic/ sits beside frame_camera/"))
        checked = [k for k in (*modalities, "label") if k in bases and (k != "label" or (bases[k] / split).is_dir())]

        listed = []
        for rel in rels:
            _, _, weather, daytime, filename = rel.parts
            files = {k: (bases[k] / split / weather / daytime
                         / filename.replace("frame_camera", "gt_labelTrainIds" if k == "label" else k),)
                     for k in checked}
            stem = filename.removesuffix(".png").removesuffix("_frame_camera")
            meta = {"dataset": "muses", "split": split, "condition": weather, "daytime": daytime, "case": "none",
                    "file": f"{split}/{weather}/{daytime}/{stem}"}
            listed.append(Record(files, meta))

        def fix(key: str) -> str:
            name = "gt_semantic" if key == "label" else key
            suffix = "_gt_labelTrainIds" if key == "label" else f"_{key}"
            return (f"restore the missing {name} files (every frame_camera image <id>_frame_camera.png needs "
                    f"<id>{suffix}.png in the same <split>/<weather>/<daytime>/ folder), or remove those "
                    f"frame_camera images")

        absent = [k for k in (*modalities, "label") if k not in checked]
        return split_by_completeness(root, split, listed, checked, absent, fix, scan)

    def read(self, record: Record) -> dict:
        out = {m: three_channels(read_image(record.files[m][0])) for m in self.modalities}
        out["label"] = read_label(record.files["label"][0])
        return out
