"""RobustSeg workbench: robust multi-modal semantic segmentation (RobustSeg, CVPR 2026).

Subpackages: `data` (synthetic benchmark and real loaders), `models` (timm encoders, fusion,
SegFormer head), `losses` (CE/OHEM, KD, prototypes, IFV, ASM), `train` (the one training loop),
`evaluate` (all-combination evaluation), `plotting`, `suite` (papermill runner).
"""

import os

# Nothing is fetched at run time: timm must never reach the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"
