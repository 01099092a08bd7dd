"""MOSAIC: a multi-modal masked-encoder foundation model for galaxy data."""

from .modalities import MODALITIES, MODALITY_NAMES, Modality, get_modality

__all__ = ["MODALITIES", "MODALITY_NAMES", "Modality", "get_modality"]
