"""Model facts without running real compute: parameters, FLOPs, output stride, weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from drnet.models.registry import WEIGHTS, create_model, list_models


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """FLOPs of one forward pass (a multiply-add counts 2), counted by torch's FlopCounterMode.

    Works on a model built on the ``meta`` device, so nothing is computed.
    """
    device = next(model.parameters()).device
    x = torch.zeros(input_size, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def model_table(names: list[str] | None = None, image_size: int = 224) -> list[dict[str, Any]]:
    """One row per model: name, family, params, GFLOPs at ``image_size``, output stride, weights."""
    rows = []
    for name in names or list_models():
        with torch.device("meta"):
            model = create_model(name).eval()
        rows.append(
            {
                "name": name,
                "family": model.spec.family,
                "params": count_parameters(model),
                "gflops": count_flops(model, (1, 3, image_size, image_size)) / 1e9,
                "output_stride": model.output_stride,
                "weights": sorted(tag for model_name, tag in WEIGHTS if model_name == name),
            }
        )
    return rows
