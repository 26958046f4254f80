"""``model.pretrained_cfg``: the plain dict timm's data pipeline reads (``resolve_data_config``).

Every drnet model carries one, whether or not timm is installed: the published weights' values
for a pretrained model, a run's :class:`~drnet.models.loading.ModelCard` values (crop size,
mean/std, classes) for a model loaded from a run, ImageNet's 224 px defaults otherwise. The keys
are timm's ``PretrainedCfg`` fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drnet.constants import IMAGENET_MEAN, IMAGENET_STD

DEFAULT_CROP = 224
DEFAULT_RESIZE = 256


def make_pretrained_cfg(
    architecture: str,
    *,
    num_classes: int,
    first_conv: str,
    classifier: str = "fc",
    in_chans: int = 3,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_size: int | None = DEFAULT_CROP,
    resize_size: int | None = DEFAULT_RESIZE,
    tag: str | None = None,
    url: str | None = None,
    label_names: Sequence[str] | None = None,
    license: str | None = None,  # noqa: A002
    **extra: Any,
) -> dict[str, Any]:
    """A timm-style pretrained config.

    ``crop_size``/``resize_size`` are drnet's eval preprocessing (resize the shorter side, centre
    crop); timm writes the same as ``input_size`` and ``crop_pct = crop / resize``. Without a
    crop size (segmentation: whole images) the input size is the 224 px default, not fixed, and
    nothing is cropped.
    """
    crop = crop_size or DEFAULT_CROP
    crop_pct = crop_size / resize_size if crop_size and resize_size else 1.0
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "tag": tag,
        "url": url or "",
        "hf_hub_id": None,
        "source": "drnet",
        "num_classes": num_classes,
        "input_size": (in_chans, crop, crop),
        "fixed_input_size": False,  # fully convolutional, adaptive pooling
        "interpolation": "bilinear",  # torchvision's Resize default, which drnet's eval uses
        "crop_pct": crop_pct,
        "crop_mode": "center",
        "mean": tuple(float(v) for v in mean),
        "std": tuple(float(v) for v in std),
        "first_conv": first_conv,
        "classifier": classifier,
        "license": license,
    }
    if label_names:
        cfg["label_names"] = list(label_names)
    cfg.update(extra)
    return cfg


def cfg_from_weights(architecture: str, weights: Any, first_conv: str, **kw: Any) -> dict:
    """The config of published :class:`~drnet.models.weights.Weights` (``num_classes`` and
    other keywords override theirs)."""
    kw.setdefault("num_classes", weights.num_classes)
    return make_pretrained_cfg(
        architecture,
        first_conv=first_conv,
        mean=weights.mean,
        std=weights.std,
        crop_size=weights.crop_size,
        resize_size=weights.resize_size,
        tag=weights.tag,
        url=weights.url,
        label_names=weights.meta.get("categories"),
        license=weights.license,
        **kw,
    )


def cfg_from_card(card: Any, first_conv: str, **kw: Any) -> dict:
    """The config of a run's :class:`~drnet.models.loading.ModelCard`."""
    return make_pretrained_cfg(
        card.model,
        num_classes=card.num_classes,
        first_conv=first_conv,
        mean=card.mean,
        std=card.std,
        crop_size=card.crop_size,
        resize_size=card.resize_size,
        label_names=card.class_names or None,
        **kw,
    )
