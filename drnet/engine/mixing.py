"""MixUp and CutMix for classification batches (``--mixup-alpha``, ``--cutmix-alpha``).

torchvision's :class:`~torchvision.transforms.v2.MixUp` and
:class:`~torchvision.transforms.v2.CutMix` do the work, as in torchvision's classification
reference: with both enabled each batch gets one of them at random. Targets become class
probabilities ``[B, num_classes]``, which ``cross_entropy`` takes as they are (label smoothing
included).

The draws of a batch come from a generator seeded by ``(seed, epoch, iteration, rank)``, so a
resumed run mixes exactly as the uninterrupted one did, whatever happened before.
"""

from __future__ import annotations

import torch

from drnet.engine.data import sample_seed
from drnet.errors import DrnetError


class BatchMixer:
    """Mix a batch ``(images [B, C, H, W], labels int64 [B])``; see the module docstring."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
        from torchvision.transforms import v2  # here: the engine needs torchvision only to mix

        for name, alpha in (("--mixup-alpha", mixup_alpha), ("--cutmix-alpha", cutmix_alpha)):
            if not alpha >= 0:
                raise DrnetError(f"{name} must be >= 0, got {alpha}")
        choices = []
        if mixup_alpha > 0:
            choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if not choices:
            raise DrnetError("BatchMixer needs --mixup-alpha or --cutmix-alpha > 0")
        self.transform = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)
        self.num_classes = num_classes

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, seed: int, epoch: int, iteration: int,
        rank: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone (see drnet.engine.data.SeededDataset._get)
            torch.default_generator.manual_seed(sample_seed(seed + 7919 * rank, epoch, iteration))
            mixed, soft = self.transform(images, labels)
        return mixed, soft


def mixing_enabled(mixup_alpha: float, cutmix_alpha: float) -> bool:
    return mixup_alpha > 0 or cutmix_alpha > 0
