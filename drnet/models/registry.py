"""The one place that names the variants, their weights and their hashes.

Each variant is a :class:`~drnet.models.spec.ModelSpec` built by :class:`~drnet.models.drn.DRN`;
each published weight file is a :class:`~drnet.models.weights.Weights` entry.

DRN-A dilation schedules (:data:`DRN_A_SCHEDULES`; dilation of the 3x3 convs, block by block):

=================================== ========= ======================== =========================
variants                            schedule  layer3                   layer4
=================================== ========= ======================== =========================
drn_a_18, drn_a_34, drn_a_50        released  first block 1, others 2  first block 1, others 4
drn_a_18_paper, ..._34_, ..._50_    paper     every conv 2             first 3x3 conv 2, others 4
=================================== ========= ======================== =========================

"released" is the official drn_a_50's layout; DRN-A-50 keeps it by default for parity with the
released code, its weights and its outputs. No code was released for DRN-A-18/34: they keep the
same layout by default so that existing checkpoints keep their meaning. "paper" follows the
equations of the paper's section 2. The schedules are separate names rather than a keyword of
:func:`create_model` because model cards and checkpoints rebuild a model from its name alone and
both schedules share every state_dict key, so a keyword would be lost silently on reload.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal

from drnet.constants import CITYSCAPES_MEAN, CITYSCAPES_STD, IMAGENET_MEAN, IMAGENET_STD
from drnet.errors import DrnetError
from drnet.models.checkpoints import load_state_dict_file
from drnet.models.drn import DRN
from drnet.models.pretrained_cfg import cfg_from_weights
from drnet.models.segmentation import DRNSeg
from drnet.models.spec import LevelSpec, ModelSpec, StemSpec
from drnet.models.weights import (
    Weights,
    load_into,
    resolve_weights_file,
    warn_new_classifier,
)

DRN_CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)
RESNET_CHANNELS = (64, 128, 256, 512)


def drn_spec(family: str, layers: Sequence[int], block: str = "basic") -> ModelSpec:
    """DRN-B/C/D: eight levels, output stride 8 (docs/design.md, "The spec format").

    Levels 5 and 6 dilate every conv by 2 and 4 (the released code; the paper draws the first
    conv of level 6 with dilation 2, which is ``first_dilation=(2, 4)`` on that level).
    """
    plain = "conv" if family == "D" else "basic"  # DRN-D: levels 1, 2, 7, 8 are plain convs
    tail_residual = family == "B"  # DRN-C/D drop the shortcuts of levels 7-8, DRN-B keeps them
    c = DRN_CHANNELS
    levels = (
        LevelSpec(plain, layers[0], c[0]),
        LevelSpec(plain, layers[1], c[1], stride=2),
        LevelSpec(block, layers[2], c[2], stride=2),
        LevelSpec(block, layers[3], c[3], stride=2),
        LevelSpec(block, layers[4], c[4], dilation=2),
        LevelSpec(block, layers[5], c[5], dilation=4),
        LevelSpec(plain, layers[6], c[6], dilation=2, residual=tail_residual),
        LevelSpec(plain, layers[7], c[7], dilation=1, residual=tail_residual),
    )
    stem = StemSpec(c[0], layout="sequential" if family == "D" else "separate")
    return ModelSpec(family=family, stem=stem, levels=levels, classifier="conv")


DilationSchedule = Literal["released", "paper"]


def resnet_spec(
    layers: Sequence[int], block: str, dilated: bool, schedule: DilationSchedule = "released"
) -> ModelSpec:
    """A torchvision-layout ResNet; ``dilated=True`` gives DRN-A (output stride 8).

    ``schedule`` picks DRN-A's dilations (see :data:`DRN_A_SCHEDULES`); dilation has no
    parameters, so both schedules have the same state_dict keys and shapes.
    """
    c = RESNET_CHANNELS
    if dilated:
        tail = _drn_a_levels(layers, block, schedule)
    else:
        tail = (
            LevelSpec(block, layers[2], c[2], stride=2),
            LevelSpec(block, layers[3], c[3], stride=2),
        )
    levels = (LevelSpec(block, layers[0], c[0]), LevelSpec(block, layers[1], c[1], stride=2), *tail)
    stem = StemSpec(64, layout="separate", stride=2, maxpool=True)
    family = "A" if dilated else "ResNet"
    return ModelSpec(family=family, stem=stem, levels=levels, classifier="linear")


def _drn_a_levels(
    layers: Sequence[int], block: str, schedule: DilationSchedule
) -> tuple[LevelSpec, LevelSpec]:
    """DRN-A's layer3 and layer4: stride 1, dilation 2 and 4, first blocks per ``schedule``."""
    c = RESNET_CHANNELS
    if schedule == "released":
        # The official drn_a_50 (and its weights): the first block of layer3/4 is not dilated.
        first3: tuple[int, int] | None = (1, 1)
        first4: tuple[int, int] | None = (1, 1)
    elif schedule == "paper":
        # Paper sec. 2: G4 is (G4_i *2 f4_i) for all i; G5 is (G5_1 *2 f5_1), then *4 for i >= 2.
        first3 = None
        # The first 3x3 conv of layer4 (the one that had the stride) gets 2. A Bottleneck has one
        # 3x3 conv and it reads the second entry, so both entries are 2 there.
        first4 = (2, 4) if block == "basic" else (2, 2)
    else:
        raise ValueError(f"unknown DRN-A dilation schedule {schedule!r}: use 'released' or 'paper'")
    return (
        LevelSpec(block, layers[2], c[2], dilation=2, first_dilation=first3),
        LevelSpec(block, layers[3], c[3], dilation=4, first_dilation=first4),
    )


DRN_A_SCHEDULES: dict[str, DilationSchedule] = {
    "drn_a_18": "released",
    "drn_a_34": "released",
    "drn_a_50": "released",
    "drn_a_18_paper": "paper",
    "drn_a_34_paper": "paper",
    "drn_a_50_paper": "paper",
}
"""The dilation schedule of each DRN-A variant (the table in this module's docstring)."""

SPECS: dict[str, ModelSpec] = {
    "drn_a_18": resnet_spec((2, 2, 2, 2), "basic", dilated=True),
    "drn_a_34": resnet_spec((3, 4, 6, 3), "basic", dilated=True),
    "drn_a_50": resnet_spec((3, 4, 6, 3), "bottleneck", dilated=True),
    "drn_a_18_paper": resnet_spec((2, 2, 2, 2), "basic", dilated=True, schedule="paper"),
    "drn_a_34_paper": resnet_spec((3, 4, 6, 3), "basic", dilated=True, schedule="paper"),
    "drn_a_50_paper": resnet_spec((3, 4, 6, 3), "bottleneck", dilated=True, schedule="paper"),
    "drn_b_26": drn_spec("B", (1, 1, 2, 2, 2, 2, 1, 1)),
    "drn_b_42": drn_spec("B", (1, 1, 3, 4, 6, 3, 1, 1)),
    "drn_c_26": drn_spec("C", (1, 1, 2, 2, 2, 2, 1, 1)),
    "drn_c_42": drn_spec("C", (1, 1, 3, 4, 6, 3, 1, 1)),
    "drn_c_58": drn_spec("C", (1, 1, 3, 4, 6, 3, 1, 1), "bottleneck"),
    "drn_d_22": drn_spec("D", (1, 1, 2, 2, 2, 2, 1, 1)),
    "drn_d_24": drn_spec("D", (1, 1, 2, 2, 2, 2, 2, 2)),
    "drn_d_38": drn_spec("D", (1, 1, 3, 4, 6, 3, 1, 1)),
    "drn_d_40": drn_spec("D", (1, 1, 3, 4, 6, 3, 2, 2)),
    "drn_d_54": drn_spec("D", (1, 1, 3, 4, 6, 3, 1, 1), "bottleneck"),
    "drn_d_56": drn_spec("D", (1, 1, 3, 4, 6, 3, 2, 2), "bottleneck"),
    "drn_d_105": drn_spec("D", (1, 1, 3, 4, 23, 3, 1, 1), "bottleneck"),
    "drn_d_107": drn_spec("D", (1, 1, 3, 4, 23, 3, 2, 2), "bottleneck"),
    "resnet18": resnet_spec((2, 2, 2, 2), "basic", dilated=False),
    "resnet34": resnet_spec((3, 4, 6, 3), "basic", dilated=False),
    "resnet50": resnet_spec((3, 4, 6, 3), "bottleneck", dilated=False),
    "resnet101": resnet_spec((3, 4, 23, 3), "bottleneck", dilated=False),
}

_DRN_URL = "http://dl.yf.io/drn/"
_TV_URL = "https://download.pytorch.org/models/"
_DRN_SOURCE = "Yu, Koltun, Funkhouser, Dilated Residual Networks, CVPR 2017 (github.com/fyu/drn)"
_TV_SOURCE = "torchvision ImageNet ResNet weights (loaded unchanged into the same key layout)"


def _imagenet(model: str, file_name: str, base_url: str, source: str, license: str) -> Weights:
    hash_prefix = file_name.rsplit("-", 1)[1].split(".")[0]
    return Weights(
        model=model,
        tag="imagenet",
        file_name=file_name,
        url=base_url + file_name,
        hash_prefix=hash_prefix,
        task="classification",
        num_classes=1000,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        source=source,
        license=license,
    )


def _cityscapes(model: str, file_name: str) -> Weights:
    return Weights(
        model=model,
        tag="cityscapes",
        file_name=file_name,
        url=_DRN_URL + file_name,
        hash_prefix=None,  # published without a hash in the name
        task="segmentation",
        num_classes=19,
        mean=CITYSCAPES_MEAN,
        std=CITYSCAPES_STD,
        resize_size=None,
        crop_size=None,
        source=_DRN_SOURCE,
        license="BSD-3-Clause",
    )


WEIGHTS: dict[tuple[str, str], Weights] = {
    (w.model, w.tag): w
    for w in [
        _imagenet("drn_c_26", "drn_c_26-ddedf421.pth", _DRN_URL, _DRN_SOURCE, "BSD-3-Clause"),
        _imagenet("drn_c_42", "drn_c_42-9d336e8c.pth", _DRN_URL, _DRN_SOURCE, "BSD-3-Clause"),
        _imagenet("drn_c_58", "drn_c_58-0a53a92c.pth", _DRN_URL, _DRN_SOURCE, "BSD-3-Clause"),
        _imagenet("drn_d_22", "drn_d_22-4bd2f8ea.pth", _DRN_URL, _DRN_SOURCE, "BSD-3-Clause"),
        _imagenet("drn_d_38", "drn_d_38-eebb45f0.pth", _DRN_URL, _DRN_SOURCE, "BSD-3-Clause"),
        _imagenet("drn_d_54", "drn_d_54-0e0534ff.pth", _DRN_URL, _DRN_SOURCE, "BSD-3-Clause"),
        _imagenet("drn_d_105", "drn_d_105-12b40979.pth", _DRN_URL, _DRN_SOURCE, "BSD-3-Clause"),
        # DRN-A shares torchvision's ResNet keys, so it takes torchvision's ImageNet weights.
        _imagenet("drn_a_18", "resnet18-f37072fd.pth", _TV_URL, _TV_SOURCE, "BSD-3-Clause"),
        _imagenet("drn_a_34", "resnet34-b627a593.pth", _TV_URL, _TV_SOURCE, "BSD-3-Clause"),
        _imagenet("drn_a_50", "resnet50-19c8e357.pth", _TV_URL, _TV_SOURCE, "BSD-3-Clause"),
        # Dilation has no parameters: the paper-schedule DRN-As take the same files.
        _imagenet("drn_a_18_paper", "resnet18-f37072fd.pth", _TV_URL, _TV_SOURCE, "BSD-3-Clause"),
        _imagenet("drn_a_34_paper", "resnet34-b627a593.pth", _TV_URL, _TV_SOURCE, "BSD-3-Clause"),
        _imagenet("drn_a_50_paper", "resnet50-19c8e357.pth", _TV_URL, _TV_SOURCE, "BSD-3-Clause"),
        _imagenet("resnet18", "resnet18-f37072fd.pth", _TV_URL, _TV_SOURCE, "BSD-3-Clause"),
        _imagenet("resnet34", "resnet34-b627a593.pth", _TV_URL, _TV_SOURCE, "BSD-3-Clause"),
        _imagenet("resnet50", "resnet50-0676ba61.pth", _TV_URL, _TV_SOURCE, "BSD-3-Clause"),
        _imagenet("resnet101", "resnet101-63fe2227.pth", _TV_URL, _TV_SOURCE, "BSD-3-Clause"),
        _cityscapes("drn_d_22", "drn_d_22_cityscapes.pth"),
        _cityscapes("drn_d_38", "drn_d_38_cityscapes.pth"),
        _cityscapes("drn_d_105", "drn-d-105_ms_cityscapes.pth"),
    ]
}


def list_models(filter: str = "", pretrained: bool = False) -> list[str]:  # noqa: A002
    """Registered model names, optionally matching a wildcard ``filter`` and having weights."""
    names = sorted(SPECS, key=_natural_key)
    if filter:
        pattern = filter if any(ch in filter for ch in "*?[") else f"*{filter}*"
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    if pretrained:
        names = [n for n in names if any(model == n for model, _ in WEIGHTS)]
    return names


def _natural_key(name: str) -> tuple:
    head, _, tail = name.rpartition("_") if "_" in name else ("resnet", "", name[6:])
    return (head, int(tail) if tail.isdigit() else 0, name)


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered model (unknown names raise :class:`DrnetError` with suggestions)."""
    key = name.lower().replace("-", "_")
    if key not in SPECS:
        close = difflib.get_close_matches(key, SPECS, n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DrnetError(
            f"unknown model {name!r}{hint} (run `drnet models` or drnet.list_models() for all)"
        )
    return SPECS[key]


def get_weights(name: str, tag: str | bool = "imagenet") -> Weights:
    """The weight entry ``tag`` ("imagenet", "cityscapes") of model ``name``."""
    get_spec(name)
    key = (name.lower().replace("-", "_"), "imagenet" if tag is True else str(tag))
    if key not in WEIGHTS:
        have = sorted(t for m, t in WEIGHTS if m == key[0])
        available = f"available: {', '.join(have)}" if have else "no weights are published for it"
        raise DrnetError(f"no {key[1]!r} weights for {name} ({available})")
    return WEIGHTS[key]


def _spec_for(name: str, channels: Sequence[int] | None, width_mult: float | None) -> ModelSpec:
    spec = get_spec(name)
    if channels is not None:
        try:
            spec = spec.with_channels(channels)
        except ValueError as exc:
            raise DrnetError(f"{name}: {exc}") from None
    if width_mult is not None:
        spec = spec.with_width(width_mult)
    return spec


def create_model(
    name: str,
    pretrained: bool | str = False,
    num_classes: int = 1000,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    out_map: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    channels: Sequence[int] | None = None,
    width_mult: float | None = None,
    weights_dir: str | os.PathLike | None = None,
    weights_mirror: str | None = None,
    spec: ModelSpec | None = None,
    **kwargs: Any,
) -> DRN:
    """Build a classification model (timm/torchvision style).

    Args:
        name: a registered name (see :func:`list_models`), e.g. ``"drn_d_22"``.
        pretrained: load the published weights (``True`` = ImageNet; or a tag). Looked up in
            ``weights_dir`` / ``$DRNET_WEIGHTS_DIR`` first, then ``weights_mirror`` /
            ``$DRNET_WEIGHTS_MIRROR``, then the official URL; the sha256 prefix is verified.
            With another ``num_classes`` the backbone is kept and the classifier re-initialised.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        features_only: return the feature maps of timm's five stages (nominal reductions 2, 4,
            8, 16, 32; ``model.feature_info`` has their channels, reductions and modules; see
            :class:`DRN`).
        out_indices: the stages (0..4) returned with ``features_only``.
        out_map: ``forward`` returns the dense class map (no global pooling): the paper's
            weakly-supervised localization mode. Any model also has ``forward_map(x)``.
        checkpoint_path: a local path or URL of weights to load (any accepted layout).
        channels: per-level widths replacing the defaults (8 for DRN-B/C/D, 4 for ResNet/DRN-A).
        width_mult: scale all widths (minimum 8 channels).
        spec: build this spec instead of the registered one (custom dilation schedules etc.).
        **kwargs: passed to :class:`DRN` (``in_chans``, ``output_stride`` 8/16/32,
            ``drop_rate``, ``global_pool``).
    """
    model_spec = spec if spec is not None else _spec_for(name, channels, width_mult)
    model = DRN(
        model_spec,
        num_classes=num_classes,
        out_map=out_map,
        features_only=features_only,
        out_indices=out_indices,
        **kwargs,
    )
    model.name = name
    model.pretrained_cfg["architecture"] = name
    if pretrained:
        if channels is not None or width_mult is not None or spec is not None:
            raise DrnetError(f"{name}: pretrained weights exist only for the default widths")
        weights = get_weights(name, pretrained)
        path = resolve_weights_file(weights, weights_dir, weights_mirror)
        _load_classifier_weights(model, load_state_dict_file(path), weights.num_classes, name)
        model.pretrained_cfg = cfg_from_weights(
            name,
            weights,
            model.pretrained_cfg["first_conv"],
            num_classes=model.num_classes,
            input_size=model.pretrained_cfg["input_size"],
        )
    if checkpoint_path is not None:
        state_dict = load_state_dict_file(checkpoint_path)
        _load_classifier_weights(model, state_dict, _classes_in(state_dict), str(checkpoint_path))
    return model


def _classes_in(state_dict: dict) -> int | None:
    bias = state_dict.get("fc.bias")
    return int(bias.shape[0]) if bias is not None else None


def _load_classifier_weights(
    model: DRN, state_dict: dict, file_classes: int | None, source: str
) -> None:
    ignore: tuple[str, ...] = ()
    if model.features_only or model.num_classes <= 0:
        ignore = ("fc.",)
    elif file_classes is not None and file_classes != model.num_classes:
        warn_new_classifier(source, file_classes, model.num_classes)
        ignore = ("fc.",)
    load_into(model, state_dict, strict=True, source=source, ignore=ignore)


def create_segmentation_model(
    backbone: str,
    num_classes: int,
    pretrained_backbone: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    pretrained: bool | str = False,
    backbone_checkpoint: str | os.PathLike | None = None,
    output: str = "dict",
    channels: Sequence[int] | None = None,
    width_mult: float | None = None,
    weights_dir: str | os.PathLike | None = None,
    weights_mirror: str | None = None,
) -> DRNSeg:
    """Build DRNSeg (``base.*``, ``seg.*``, ``up.*``) on a registered backbone.

    Args:
        backbone: backbone name, e.g. ``"drn_d_22"``.
        num_classes: segmentation classes.
        pretrained_backbone: start the backbone from its ImageNet weights.
        checkpoint_path: a DRNSeg checkpoint (path or URL) to load, e.g. the official
            ``drn_d_22_cityscapes.pth`` or a drnet training checkpoint. A classification
            checkpoint is also accepted here: it initialises the backbone (with a warning).
        pretrained: load the published segmentation weights (``True``/"cityscapes").
        backbone_checkpoint: a classification checkpoint for the backbone.
        output: ``"dict"`` -> ``{"out": logits}``; ``"official"`` -> ``(log_softmax, low-res)``.
        channels: backbone widths (see :func:`create_model`).
        width_mult: backbone width multiplier (see :func:`create_model`).
    """
    model_backbone = create_model(
        backbone,
        pretrained=pretrained_backbone,
        num_classes=0,  # DRNSeg keeps no classifier; a checkpoint's fc is ignored
        channels=channels,
        width_mult=width_mult,
        weights_dir=weights_dir,
        weights_mirror=weights_mirror,
        checkpoint_path=backbone_checkpoint,
    )
    model = DRNSeg(model_backbone, num_classes, output=output)  # type: ignore[arg-type]
    model.name = backbone
    model.pretrained_cfg["architecture"] = backbone
    if pretrained:
        weights = get_weights(backbone, "cityscapes" if pretrained is True else pretrained)
        path = resolve_weights_file(weights, weights_dir, weights_mirror)
        load_segmentation_state(model, load_state_dict_file(path), str(path))
        model.pretrained_cfg = cfg_from_weights(
            backbone, weights, model.pretrained_cfg["first_conv"], classifier="seg"
        )
    if checkpoint_path is not None:
        load_segmentation_state(model, load_state_dict_file(checkpoint_path), str(checkpoint_path))
    return model


def load_segmentation_state(model: DRNSeg, state_dict: dict, source: str) -> None:
    """Load a DRNSeg state dict, or (with a warning) a classification one into ``base``."""
    if not any(k.startswith(("base.", "seg.")) for k in state_dict):
        warnings.warn(
            f"{source} is a classification checkpoint: it initialises the backbone only",
            stacklevel=3,
        )
        state_dict = backbone_to_base_keys(model, state_dict, source)
        load_into(model, state_dict, strict=True, source=source, ignore=("seg.", "up."))
        return
    if "up.weight" not in state_dict:  # e.g. saved with the torch-upsampling variant
        state_dict = {**state_dict, "up.weight": model.up.weight.detach().clone()}
    load_into(model, state_dict, strict=True, source=source)


def backbone_to_base_keys(model: DRNSeg, state_dict: dict, source: str) -> dict:
    """Rename classification keys (``layer1.0.conv1.weight``) to DRNSeg's (``base.3.0...``)."""
    reference = DRN(model.backbone_spec, num_classes=0)
    names = [*reference.stem_names, *(["maxpool"] if reference.spec.stem.maxpool else [])]
    names += reference.level_names
    index_of = {name: i for i, name in enumerate(names)}
    renamed = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        if head == "fc":
            continue
        if head not in index_of:
            raise DrnetError(f"{source}: unexpected key {key!r} for a {model.name} backbone")
        renamed[f"base.{index_of[head]}.{rest}"] = value
    return renamed


__all__ = [
    "DRN_A_SCHEDULES",
    "SPECS",
    "WEIGHTS",
    "create_model",
    "create_segmentation_model",
    "get_spec",
    "get_weights",
    "list_models",
]
