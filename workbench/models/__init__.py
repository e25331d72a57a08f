"""Models: timm encoders per modality, fusion, SegFormer head (METHOD.md, "Architecture")."""

from workbench.models.cmnext import CMNeXt
from workbench.models.encoders import build_encoder, encoder_names
from workbench.models.magic import MAGIC, MagicOutput
from workbench.models.segmentor import PROTOCOLS, Segmentor, SegOutput, build_model

__all__ = ["build_encoder", "encoder_names", "build_model", "Segmentor", "SegOutput", "PROTOCOLS",
           "CMNeXt", "MAGIC", "MagicOutput"]
