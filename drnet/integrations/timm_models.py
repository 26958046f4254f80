"""drnet's models in timm's registry: ``timm.create_model("drn_d_22", ...)``.

Registered under drnet's names, except where timm already has a model of that name (its
``resnet18`` etc. stay timm's). The entry points accept timm's arguments (``pretrained``,
``pretrained_cfg`` including ``hf-hub:`` configs written by :mod:`drnet.integrations.hub`,
``num_classes``, ``features_only``, ``out_indices``, ``output_stride``, ``in_chans``,
``drop_rate``, ``global_pool``) and drnet's (``channels``, ``width_mult``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from drnet.errors import DrnetError

default_cfgs: dict[str, Any] = {}  # read by timm's register_model from this module
_registered: list[str] = []


def _as_dict(cfg: Any) -> dict[str, Any]:
    if cfg is None or isinstance(cfg, str):
        return {}
    if isinstance(cfg, dict):
        return dict(cfg)
    return dict(cfg.__dict__)  # timm's PretrainedCfg dataclass


def create_timm_model(
    name: str,
    pretrained: bool = False,
    pretrained_cfg: Any = None,
    pretrained_cfg_overlay: dict | None = None,
    cache_dir: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """The entry point behind each registered name (see the module docstring)."""
    import drnet
    from drnet.models.registry import _load_classifier_weights

    kwargs.pop("pretrained_model_args", None)
    if kwargs.pop("drnet_task", "classification") != "classification":
        raise DrnetError(
            f"{name}: this Hub model is a drnet segmentation model (DRNSeg), not a timm "
            "classifier: load it with drnet.from_pretrained"
        )
    if kwargs.pop("drop_path_rate", 0.0) or kwargs.pop("drop_block_rate", 0.0):
        raise DrnetError(f"{name}: drop_path_rate/drop_block_rate are not supported by DRNs")
    cfg = {**_as_dict(pretrained_cfg), **(pretrained_cfg_overlay or {})}
    hub_id = cfg.get("hf_hub_id") if cfg.get("source") == "hf-hub" else None
    local_dir = cfg.get("file") if cfg.get("source") == "local-dir" else None
    kwargs.setdefault("num_classes", cfg.get("num_classes") or 1000)
    if pretrained and (hub_id or local_dir):
        from drnet.integrations.hub import hub_state_dict

        model = drnet.create_model(name, **kwargs)
        state_dict = hub_state_dict(f"hf-hub:{hub_id}" if hub_id else local_dir, cache_dir)
        _load_classifier_weights(model, state_dict, _classes(state_dict), hub_id or local_dir)
    else:
        tag = pretrained_cfg if isinstance(pretrained_cfg, str) and pretrained_cfg else True
        model = drnet.create_model(name, pretrained=tag if pretrained else False, **kwargs)
    if cfg:  # a hub config's preprocessing describes its weights
        own = model.pretrained_cfg
        model.pretrained_cfg = {
            **own,
            **cfg,
            "input_size": tuple(cfg.get("input_size", own["input_size"])),
            "first_conv": own["first_conv"],
            "classifier": own["classifier"],
            "num_classes": model.num_classes,
        }
    return model


def _classes(state_dict: dict) -> int | None:
    bias = state_dict.get("fc.bias")
    return int(bias.shape[0]) if bias is not None else None


def _entry_point(name: str) -> Callable[..., nn.Module]:
    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create_timm_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"drnet's {name} (see drnet.create_model)."
    return entry


def _pretrained_cfgs(name: str) -> dict[str, dict]:
    """timm's ``arch.tag`` configs of a drnet model: one per published weight file."""
    from drnet.models.pretrained_cfg import cfg_from_weights, make_pretrained_cfg
    from drnet.models.registry import SPECS, WEIGHTS

    layout = SPECS[name].stem.layout
    first_conv = "layer0.0" if layout == "sequential" else "conv1"
    cfgs = {
        f"{name}.{tag}": cfg_from_weights(name, weights, first_conv)
        for (model, tag), weights in WEIGHTS.items()
        if model == name and weights.task == "classification"
    }
    if not cfgs:
        cfgs[name] = make_pretrained_cfg(name, num_classes=1000, first_conv=first_conv)
    for cfg in cfgs.values():
        cfg.pop("architecture", None), cfg.pop("tag", None)  # timm fills these in
    return cfgs


def register_timm_models() -> list[str]:
    """Register every drnet model timm does not already have; returns the names registered."""
    from timm.models import _registry, generate_default_cfgs, register_model

    from drnet.models.registry import SPECS

    module = sys.modules[__name__]
    for name in SPECS:
        if name in _registered:
            continue
        if _registry.is_model(name):  # timm's own (resnet18 ...): never overridden
            continue
        default_cfgs.update(generate_default_cfgs(_pretrained_cfgs(name)))
        setattr(module, name, register_model(_entry_point(name)))
        _registered.append(name)
    return list(_registered)
