"""Numbers shared across drnet: normalisation statistics and the segmentation ignore label.

Defined once here; other modules import them (and re-export the names they always had).
"""

from __future__ import annotations

# torchvision's ImageNet statistics (RGB, images scaled to [0, 1]): the classification default
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# the original code's Cityscapes info.json (RGB, [0, 1]); the official Cityscapes weights expect it
CITYSCAPES_MEAN = (0.290101, 0.328081, 0.286964)
CITYSCAPES_STD = (0.182954, 0.186566, 0.184475)

# segmentation label value that the loss and the metrics skip (padding, rotation corners, void)
IGNORE_INDEX = 255

__all__ = ["CITYSCAPES_MEAN", "CITYSCAPES_STD", "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD"]

#: ``--auto-augment`` policies, named as in torchvision's classification reference.
AUTO_AUGMENT_POLICIES = ("ta_wide", "ra", "augmix", "imagenet", "cifar10", "svhn")
