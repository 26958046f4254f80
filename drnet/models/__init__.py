"""Models: every DRN variant and the ResNet baselines, built from specs by one builder."""

from drnet.models.drn import DRN, FeatureInfo
from drnet.models.loading import ModelCard, load_model, load_state_dict_file, logits_of
from drnet.models.registry import (
    SPECS,
    WEIGHTS,
    create_model,
    create_segmentation_model,
    get_spec,
    get_weights,
    list_models,
)
from drnet.models.segmentation import DRNSeg
from drnet.models.spec import LevelSpec, ModelSpec, StemSpec
from drnet.models.weights import Weights, load_into

__all__ = [
    "DRN",
    "DRNSeg",
    "FeatureInfo",
    "LevelSpec",
    "ModelSpec",
    "SPECS",
    "StemSpec",
    "WEIGHTS",
    "ModelCard",
    "Weights",
    "create_model",
    "create_segmentation_model",
    "get_spec",
    "get_weights",
    "list_models",
    "load_into",
    "load_model",
    "load_state_dict_file",
    "logits_of",
]
