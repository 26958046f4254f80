"""DRNSeg: a DRN backbone, a 1x1 ``seg`` classifier and a fixed bilinear ``up`` (docs/design.md).

State-dict layout is the official one: ``base.<k>.*`` (the backbone without pool and fc),
``seg.weight``/``seg.bias`` and ``up.weight``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from drnet.integrations import hub
from drnet.models.drn import DRN, checkpoint_module
from drnet.models.pretrained_cfg import make_pretrained_cfg


def bilinear_kernel(size: int = 16) -> torch.Tensor:
    """The 2-D bilinear up-sampling kernel of the official code (outer product of a tent profile).

    For ``size=16`` the 1-D profile is (1, 3, 5, ..., 15, 15, ..., 3, 1) / 16.
    """
    factor = (size + 1) // 2
    center = (2 * factor - 1 - factor % 2) / (2.0 * factor)
    profile = 1 - (torch.arange(size, dtype=torch.float64) / factor - center).abs()
    return torch.outer(profile, profile).float()


class DRNSeg(nn.Module):
    """Semantic segmentation with a DRN backbone.

    Args:
        backbone: a :class:`DRN` (its stem and levels become ``base``; pool and fc are dropped).
        num_classes: segmentation classes.
        output: ``"dict"`` (default) returns ``{"out": logits [N, C, H, W]}`` at the input size
            (torchvision's convention); ``"official"`` returns the original code's pair
            ``(log_softmax(up(seg(f))), seg(f))``, the first cropped to the input size.
    """

    def __init__(
        self,
        backbone: DRN,
        num_classes: int,
        output: Literal["dict", "official"] = "dict",
    ) -> None:
        super().__init__()
        if output not in ("dict", "official"):
            raise ValueError(f"output must be 'dict' or 'official', got {output!r}")
        self.output = output
        self.num_classes = num_classes
        self.output_stride = backbone.output_stride
        self.base = nn.Sequential(*backbone.body_modules())
        self.seg = nn.Conv2d(backbone.out_dim, num_classes, kernel_size=1, bias=True)
        nn.init.normal_(self.seg.weight, 0.0, (2.0 / num_classes) ** 0.5)
        nn.init.zeros_(self.seg.bias)
        stride = backbone.output_stride
        self.up = nn.ConvTranspose2d(
            num_classes,
            num_classes,
            kernel_size=2 * stride,
            stride=stride,
            padding=stride // 2,
            groups=num_classes,
            bias=False,
        )
        with torch.no_grad():
            self.up.weight.copy_(bilinear_kernel(2 * stride).expand_as(self.up.weight))
        # Fixed, not trained; still a real state_dict entry, and a checkpoint's value is honoured.
        self.up.weight.requires_grad_(False)
        self.backbone_spec = backbone.spec
        self.num_stem_modules = len(backbone.stem_modules())
        self.grad_checkpointing = False
        stem_conv = "base.0.0" if backbone.spec.stem.layout == "sequential" else "base.0"
        self.pretrained_cfg = make_pretrained_cfg(
            backbone.pretrained_cfg["architecture"],
            num_classes=num_classes,
            first_conv=stem_conv,
            classifier="seg",
            crop_size=None,
        )

    def save_pretrained(self, directory: Any, **kwargs: Any) -> Any:
        """Write the Hugging Face Hub layout (``model.safetensors``, ``config.json``,
        ``README.md``) into ``directory``; see :func:`drnet.integrations.hub.save_pretrained`."""
        return hub.save_pretrained(self, directory, **kwargs)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward, per level (the stem counts as one level)."""
        self.grad_checkpointing = enable

    def _run_base(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.grad_checkpointing and self.training and torch.is_grad_enabled()):
            return self.base(x)
        modules = list(self.base)
        x = checkpoint_module(nn.Sequential(*modules[: self.num_stem_modules]), x)
        for level in modules[self.num_stem_modules :]:
            x = checkpoint_module(level, x)
        return x

    def forward_logits_lowres(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at the backbone's resolution (1/8 for DRN): ``seg(base(x))``."""
        return self.seg(self._run_base(x))

    def upsample(self, low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Up-sample low-resolution scores with ``up`` and crop to ``size``.

        ``up`` gives ``stride * ceil(size / stride)``, never less than ``size``. Under
        ``torch.export``/``torch.compile`` the crop is a negative pad: a slice makes the tracer
        guard on ``size <= 8 * ceil(size / 8)``, which it cannot prove, and specialise height and
        width to multiples of 8. Eager keeps the slice (a view, no copy of the logits).
        """
        full = self.up(low)
        if torch.compiler.is_compiling():
            return F.pad(full, (0, size[1] - full.shape[-1], 0, size[0] - full.shape[-2]))
        return full[..., : size[0], : size[1]]

    def forward(self, x: torch.Tensor):
        low = self.forward_logits_lowres(x)
        logits = self.upsample(low, x.shape[-2:])
        if self.output == "official":
            return F.log_softmax(logits, dim=1), low
        return {"out": logits}
