"""`workbench.predict` and `python -m workbench predict`: a tiny checkpoint on a synthetic split and on the
replica DeLiVER tree (trained on it for two steps: one batch of two per epoch), the files it writes, its error messages, and the
one-pass engine against one forward per subset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_real_datasets import make_deliver, make_muses, save

import workbench
from workbench.cli import main as cli_main
from workbench.config import apply_overrides, preset
from workbench.data import DATASETS, build_dataset
from workbench.errors import CheckpointError, DataError, MissingFile, UnknownName
from workbench.predict import parse_subsets, predict, predict_subsets
from workbench.runs import Run
from workbench.tables import read_csv
from workbench.train import train


@pytest.fixture(scope="module")
def synthetic_ckpt(tmp_path_factory):
    cfg = apply_overrides(preset("tiny"), {"data.train_samples": 8, "data.val_samples": 4, "data.test_samples": 6,
                                           "train.epochs": 1})
    return train(cfg, tmp_path_factory.mktemp("synthetic_run"), progress=False).checkpoint


@pytest.fixture(scope="module")
def deliver_tree(tmp_path_factory):
    """The replica DeLiVER tree and a checkpoint trained on it for two steps (3 train samples, batch 2)."""
    root = make_deliver(tmp_path_factory.mktemp("deliver") / "DELIVER")
    cfg = apply_overrides(preset("tiny"), {"data.dataset": "deliver", "data.root": str(root), "data.eval_size": 32,
                                           "data.batch_size": 2, "train.epochs": 2})
    res = train(cfg, tmp_path_factory.mktemp("deliver_run"), progress=False)
    assert Run.at(res.checkpoint).state()["step"] == 2
    return root, res.checkpoint


def _colours(path) -> set[tuple[int, int, int]]:
    return {tuple(c) for c in np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)}


def test_predict_on_a_synthetic_split(synthetic_ckpt, tmp_path):
    out = tmp_path / "pred"
    res = workbench.predict(synthetic_ckpt, "test", out, modalities=["rgb,depth", "lidar, event"], progress=False)
    assert [s for s in res.subsets] == [("rgb", "depth", "event", "lidar"), ("rgb", "depth"), ("event", "lidar")]
    rows = read_csv(out / "per_sample.csv")
    assert len(rows) == 6 and [r["sample"] for r in rows][:2] == ["test_000000", "test_000001"]
    assert {"miou_RDEL", "miou_RD", "miou_EL", "condition", "case"} <= set(rows[0])
    assert all(0 <= r["miou_RD"] <= 100 for r in rows)
    palette = {tuple(c) for c in DATASETS["synthetic"].palette}
    for sub in ("RDEL", "RD", "EL"):
        for r in rows:
            pred = out / sub / f"{r['sample']}_prediction.png"
            assert np.asarray(Image.open(pred)).shape[:2] == (32, 32)
            assert _colours(pred) <= palette, "predictions are drawn in the dataset's palette"
            assert _colours(out / sub / f"{r['sample']}_error.png") <= {(235, 235, 235), (200, 30, 30), (120, 120, 120)}
            assert (out / sub / f"{r['sample']}_inputs.png").stat().st_size > 0
    summary = read_csv(out / "summary.csv")
    assert [s["subset"] for s in summary] == ["RDEL", "RD", "EL"] and all(s["samples"] == 6 for s in summary)
    mean = np.mean([r["miou_EL"] for r in rows])
    assert summary[2]["mean_sample_miou"] == pytest.approx(mean, abs=1e-4)


def test_one_pass_equals_one_forward_per_subset(synthetic_ckpt, tmp_path):
    model = Run.at(synthetic_ckpt).model()
    batch = next(iter(Run.at(synthetic_ckpt).loader("test", batch_size=6)))
    inputs = {m: batch[m] for m in model.modalities}
    subsets = parse_subsets(["rgb", "depth,lidar", "rgb,event,lidar"], model.modalities)
    for protocol in ("drop", "zero"):
        fast = predict_subsets(model, inputs, subsets, protocol, one_pass=True)
        slow = predict_subsets(model, inputs, subsets, protocol, one_pass=False)
        for s in subsets:
            assert torch.equal(fast[s], slow[s]), f"{protocol} {s}"
    a = predict(synthetic_ckpt, "test", tmp_path / "a", ["rgb"], "zero", one_pass=True, images=False, progress=False)
    b = predict(synthetic_ckpt, "test", tmp_path / "b", ["rgb"], "zero", one_pass=False, images=False, progress=False)
    assert a.rows == b.rows and a.summary == b.summary


def test_predict_on_the_replica_deliver_tree(deliver_tree, tmp_path, capsys):
    root, ckpt = deliver_tree
    out = tmp_path / "pred"
    rc = cli_main(["predict", str(ckpt), "--input", str(root), "--out", str(out), "--modalities", "rgb,depth",
                   "--split", "val", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "RDEL" in printed and "RD" in printed and "3 sample(s)" in printed
    rows = read_csv(out / "per_sample.csv")
    assert [r["file"] for r in rows] == ["fog/val/MAP_3_point7/000200", "fog/val/MAP_3_point7/000250",
                                         "sun/val/MAP_4_point1_lidarjitter/000300"]
    assert rows[2]["case"] == "lidarjitter" and rows[0]["condition"] == "fog"
    name = rows[0]["sample"]
    assert name == "fog_val_MAP_3_point7_000200"
    pred = out / "RD" / f"{name}_prediction.png"
    expected = build_dataset("deliver", "val", root=root, eval_size=32)[0]["label"].shape
    assert np.asarray(Image.open(pred)).shape[:2] == tuple(expected), "at the evaluation resolution"
    assert _colours(pred) <= {tuple(c) for c in DATASETS["deliver"].palette}
    assert (out / "RD" / f"{name}_error.png").exists() and (out / "RDEL" / f"{name}_inputs.png").exists()
    default = predict(ckpt, root, tmp_path / "default", progress=False)  # no --split: the test split
    assert default.source.endswith("(test split)") and len(default.rows) == 1


def test_errors_name_what_is_wrong(deliver_tree, synthetic_ckpt, tmp_path, capsys):
    root, ckpt = deliver_tree
    with pytest.raises(MissingFile, match="no/such/folder"):
        predict(ckpt, tmp_path / "no/such/folder", tmp_path / "o", progress=False)
    with pytest.raises(UnknownName, match="unknown modality 'radar'.*rgb, depth, event, lidar"):
        predict(ckpt, root, tmp_path / "o", modalities=["rgb,radar"], progress=False)
    muses = make_muses(tmp_path / "MUSES")
    with pytest.raises(CheckpointError, match="laid out like muses.*trained on deliver"):
        predict(ckpt, muses, tmp_path / "o", progress=False)
    with pytest.raises(CheckpointError, match="synthetic benchmark.*laid out like deliver"):
        predict(synthetic_ckpt, root, tmp_path / "o", progress=False)

    bad = tmp_path / "bad"
    make_deliver(bad)
    lidar = bad / "lidar/rain/test/MAP_5_point2/000350_lidar_front.png"
    save(lidar, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=f"{lidar}: lidar is 8x8 pixels but its label .* is 20x16"):
        predict(ckpt, bad, tmp_path / "o", progress=False)
    save(lidar, np.zeros((16, 20, 3), np.uint8))
    rgb = bad / "img/rain/test/MAP_5_point2/000350_rgb_front.png"
    save(rgb, np.zeros((16, 20), np.uint8))  # grey: one channel
    with pytest.raises(DataError, match=f"{rgb}: the rgb image has 1 channel"):
        predict(ckpt, bad, tmp_path / "o", progress=False)

    rc = cli_main(["predict", str(ckpt), "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: input") and "missing" in err
    assert cli_main(["predict", str(ckpt), "--input", str(root), "--out", str(tmp_path / "o"),
                     "--modalities", "thermal"]) == 2


def test_workbench_predict_is_lazy_and_callable():
    import subprocess
    import sys

    code = ("import sys, workbench; assert 'torch' not in sys.modules, 'import workbench loads torch'; "
            "f = workbench.predict; assert callable(f) and 'torch' in sys.modules; "
            "from workbench.predict import predict; assert workbench.predict is sys.modules['workbench.predict']")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tile_images_places_tiles_and_captions():
    from workbench.plotting import tile_images

    a = np.zeros((4, 5, 3), np.uint8)
    b = np.ones((4, 3, 3), np.float32)  # [0, 1] float -> 255
    out = tile_images([a, b], ["a", "b"], scale=2, gap=4)
    assert out.shape == (14 + 8, 10 + 4 + 6, 3) and out.dtype == np.uint8
    assert (out[14:, :10] == 0).all() and (out[14:, 14:] == 255).all() and (out[14:, 10:14] == 255).all()
    assert (out[:14] < 255).any(), "captions are drawn above the tiles"
    assert tile_images([a]).shape == (4, 5, 3)


def test_evaluate_every_protocol_on_the_replica_deliver_tree(deliver_tree, capsys):
    """`evaluate --protocol all` on a checkpoint trained on the replica DeLiVER tree: combinations, per
    condition and per case (DeLiVER's folders), RMM and NM tables, and one sensor-failure case alone."""
    from workbench.cli import main

    _, ckpt = deliver_tree
    assert main(["evaluate", str(ckpt), "--protocol", "all", "--rates", "0.5", "--levels", "low", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "EMM" in out and "Shapley (drop)" in out
    assert "per condition (drop)" in out and "per case (zero)" in out
    assert "RMM r=0.5" in out and "Expectation_p0.2" in out and "NM (seed 0" in out
    assert main(["evaluate", str(ckpt), "--case", "rain", "--protocol", "drop", "--quiet"]) == 0  # the test scene
    assert "(rain)" in capsys.readouterr().out


def test_bad_counts_and_an_out_file_are_one_clear_line(synthetic_ckpt, tmp_path, capsys):
    """`--limit -1` wrote empty CSVs with exit 0, `--batch-size 0` fell back to the run's, and an `--out` that
    names a file ended in a traceback; each is now refused before the model is loaded."""
    (tmp_path / "file").write_text("x")
    cases = [(["--limit", "-1"], ["--limit -1 must be a whole number of at least 1"]),
             (["--limit", "0"], ["--limit 0 must be"]),
             (["--batch-size", "0"], ["--batch-size 0 must be", "the run's batch size"]),
             (["--out", str(tmp_path / "file")], [f"{tmp_path / 'file'} is a file, not a folder"])]
    for extra, words in cases:
        argv = ["predict", str(synthetic_ckpt), "--input", "test", "--out", str(tmp_path / "pred"), *extra, "--quiet"]
        assert cli_main(argv) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert all(w in err for w in words), (extra, err)
        assert not (tmp_path / "pred").exists()


def test_what_the_input_may_be_is_said_the_same_way_everywhere(synthetic_ckpt, deliver_tree, tmp_path):
    """A synthetic-trained checkpoint reads split names only: the folder, file and missing-input messages all
    say so (one used to offer "a folder laid out like synthetic")."""
    root, ckpt = deliver_tree
    (tmp_path / "file.png").write_bytes(b"x")
    (tmp_path / "folder").mkdir()
    messages = []
    for source in (tmp_path / "folder", tmp_path / "file.png", tmp_path / "missing"):
        with pytest.raises((CheckpointError, DataError, MissingFile)) as e:
            predict(synthetic_ckpt, source, tmp_path / "o", progress=False)
        messages.append(str(e.value))
    for m in messages:
        assert "give a split name of its synthetic benchmark (test, val, train); a checkpoint trained on the " \
               "synthetic benchmark reads no folder" in m and "laid out like synthetic" not in m, m
    with pytest.raises(MissingFile, match="give a folder laid out like deliver \\(its dataset\\), or a split name"):
        predict(ckpt, tmp_path / "missing", tmp_path / "o", progress=False)


def test_predictions_come_with_a_colour_legend(synthetic_ckpt, tmp_path):
    from workbench.plotting import legend_image

    out = tmp_path / "pred"
    predict(synthetic_ckpt, "test", out, limit=1, progress=False)
    ds = DATASETS["synthetic"]
    legend = np.asarray(Image.open(out / "legend.png").convert("RGB"))
    assert np.array_equal(legend, legend_image(ds.classes, ds.palette))
    colours = _colours(out / "legend.png")
    assert {tuple(c) for c in ds.palette} <= colours, "every class colour has its swatch"
    # the legend is drawn row by row, a swatch per class in class order
    for i, colour in enumerate(ds.palette):
        assert tuple(legend[2 + i * 16 + 6, 6]) == tuple(colour)
    panel = np.asarray(Image.open(out / "RDEL" / "test_000000_inputs.png").convert("RGB"))
    assert panel.shape[1] > legend.shape[1] and np.array_equal(panel[:legend.shape[0], -legend.shape[1]:], legend)
