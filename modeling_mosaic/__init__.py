"""MOSAIC: a multi-modal masked-encoder foundation model for galaxy data.

Importing the package registers the model with transformers' Auto classes, so `AutoModel.from_pretrained`
loads a MOSAIC checkpoint without `trust_remote_code` wherever the package is installed.
"""

from transformers import AutoConfig, AutoModel

from .configuration_mosaic import MosaicConfig
from .masking import MosaicMaskingCollator
from .modalities import MODALITIES, MODALITY_NAMES, Modality, get_modality
from .modeling_mosaic import MosaicModel, MosaicModelOutput, MosaicPreTrainedModel

AutoConfig.register("mosaic", MosaicConfig, exist_ok=True)
AutoModel.register(MosaicConfig, MosaicModel, exist_ok=True)

__all__ = [
    "MODALITIES",
    "MODALITY_NAMES",
    "Modality",
    "MosaicConfig",
    "MosaicMaskingCollator",
    "MosaicModel",
    "MosaicModelOutput",
    "MosaicPreTrainedModel",
    "get_modality",
]
