"""Models: timm encoders per modality, fusion, SegFormer head (docs/METHOD.md, "Architecture"), and the
comparators of the paper's main table (CMNeXt, MAGIC)."""

from workbench import repro
from workbench.models.build import build_model, load_model
from workbench.models.cmnext import CMNeXt
from workbench.models.encoders import build_encoder, encoder_names
from workbench.models.magic import MAGIC, MagicOutput
from workbench.models.segmentor import PROTOCOLS, Segmentor, SegOutput

__all__ = ["build_encoder", "encoder_names", "build_model", "load_model", "Segmentor", "SegOutput", "PROTOCOLS",
           "CMNeXt", "MAGIC", "MagicOutput"]

repro.configure_torch()  # before any model runs: no dynamic threads; WORKBENCH_REPRO=1's pins checked and set
