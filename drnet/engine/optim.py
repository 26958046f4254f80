"""The optimizer of a training run: ``--opt sgd`` (momentum, ``--nesterov``) or ``--opt adamw``.

Weight decay: SGD decays every parameter, as the DRN and torchvision references do. AdamW decays
only weights of rank >= 2 (convolution and linear kernels), not BatchNorm scales and biases, as
timm does: AdamW's decay is not scaled by the gradient, so decaying the BatchNorm scales of a
short run mostly shrinks them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from drnet.errors import DrnetError

OPTIMIZERS = ("sgd", "adamw")


def build_optimizer(
    params: Iterable[nn.Parameter] | Iterable[dict],
    opt: str,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """``opt`` over ``params`` (parameters, or parameter groups as torch takes them)."""
    params = list(params)
    if opt == "sgd":
        if nesterov and momentum <= 0:
            raise DrnetError("--nesterov needs --momentum > 0")
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
        )
    if opt == "adamw":
        if nesterov:
            raise DrnetError("--nesterov applies to --opt sgd only")
        return torch.optim.AdamW(_decay_groups(params, weight_decay), lr=lr)
    raise DrnetError(f"--opt {opt!r} is not one of {', '.join(OPTIMIZERS)}")


def _decay_groups(params: list, weight_decay: float) -> list[dict]:
    """Split parameters (or groups) into decayed kernels and undecayed norms and biases."""
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    out = []
    for group in groups:
        members = list(group["params"])
        rest = {k: v for k, v in group.items() if k != "params"}
        decay = [p for p in members if p.ndim >= 2]
        no_decay = [p for p in members if p.ndim < 2]
        wd = rest.pop("weight_decay", weight_decay)
        if decay:
            out.append({**rest, "params": decay, "weight_decay": wd})
        if no_decay:
            out.append({**rest, "params": no_decay, "weight_decay": 0.0})
    return out
