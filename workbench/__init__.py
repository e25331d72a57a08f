"""RobustSeg workbench: robust multi-modal semantic segmentation (RobustSeg, CVPR 2026).

Subpackages: `data` (synthetic benchmark and real loaders), `models` (timm encoders, fusion,
SegFormer head), `losses` (CE/OHEM, KD, prototypes, IFV, ASM), `train` (the one training loop),
`evaluate` (all-combination evaluation), `plotting`, `suite` (papermill runner); `workbench.predict(...)`
runs a trained model on a dataset folder or split (`workbench.predict`).
"""

import os

# Nothing is fetched at run time: timm must never reach the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# OpenMP threads that wait for work sleep instead of spinning: on a shared or busy CPU, spinning threads
# burn the cores other jobs need (measured by `python -m workbench bench contention`). Read once, when
# torch first loads OpenMP, so it must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# No thread team shrinks with the machine's load (OMP_DYNAMIC, MKL_DYNAMIC), and with WORKBENCH_REPRO=1 the
# math libraries' CPU code paths are pinned (`workbench.repro`): also read when torch loads them.
from workbench import repro as _repro  # noqa: E402

_repro.apply_environment()

__version__ = "0.1.0"


def __getattr__(name: str):
    """`workbench.predict(checkpoint, input, out, ...)`: imported on first use (the package itself imports no
    torch); the module `workbench.predict` is callable and calls `workbench.predict.predict`."""
    if name == "predict":
        import importlib

        return importlib.import_module("workbench.predict")
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
