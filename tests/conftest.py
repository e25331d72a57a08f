"""Shared test set-up: offline timm, runs and figures in temporary folders, tiny configs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see workbench/__init__.py)

# workbench first: its thread settings, and WORKBENCH_REPRO=1's pinned code paths, before torch loads
import workbench  # noqa: E402,F401

# isort: split
import pytest  # noqa: E402
import torch  # noqa: E402

from workbench.config import apply_overrides, preset  # noqa: E402

# `make test` runs two pytest-xdist workers on the machine's two cores: one thread each (a worker's
# subprocesses, notebook kernels and servers keep their own settings; WORKBENCH_REPRO=1 keeps its pinned count)
if os.environ.get("PYTEST_XDIST_WORKER") and not workbench.repro.enabled():
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _isolated_runs(tmp_path_factory):
    """Runs and figures in the session's temporary folder, set before any fixture of any scope runs
    (a module-scoped fixture that trains must not write into the repository's runs/)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_RUNS", str(tmp_path_factory.getbasetemp() / "runs"))
        mp.setenv("WORKBENCH_FIGURES", str(tmp_path_factory.getbasetemp() / "figures"))
        yield


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture
def tiny_cfg():
    """The tiny preset, shrunk further so a training run takes about a second."""
    return apply_overrides(preset("tiny"), {"data.train_samples": 8, "data.val_samples": 4, "data.test_samples": 4,
                                            "train.epochs": 2})


@pytest.fixture
def tiny():
    """An untrained tiny RobustSeg-shaped model (eval mode) and its smoke config (4 test samples)."""
    from workbench.models import build_model

    cfg = apply_overrides(preset("robustseg", "smoke"), {"data.test_samples": 4})
    torch.manual_seed(0)
    model = build_model(cfg.model, ("rgb", "depth", "event", "lidar"), 12).eval()
    return model, cfg


# The longest modules first: with two pytest-xdist workers (`make test`, `--dist loadfile`) they start at once
# instead of ending the run alone on one worker. Stable sort: every other module keeps its order.
_LONG_FIRST = ("test_notebooks.py", "test_demo.py", "test_browser.py", "test_claims.py", "test_bench.py",
               "test_repro.py", "test_compare.py", "test_runs.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
