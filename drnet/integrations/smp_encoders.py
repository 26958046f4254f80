"""DRN encoders for segmentation_models_pytorch: ``smp.Unet("drn_d_22")``, DeepLabV3(+), ...

Each drnet model is an entry of SMP's documented encoder registry
(``segmentation_models_pytorch.encoders.encoders``; SMP's own names such as ``resnet18`` stay
SMP's). The encoder is a features-only :class:`~drnet.models.drn.DRN`, so its state_dict keys are
the drnet backbone's and drnet's classification weights load into it unchanged. It returns
SMP's ``depth + 1`` features: the input, then timm's stages at reductions 2, 4, 8, 16, 32 —
built at the output stride the decoder asks for: 32 for Unet/FPN/..., 8 or 16 for the DeepLab
family (the DRN's native 8 keeps the dilated levels); other strides are refused with one line.

Pretrained weights go through SMP's own ``encoder_weights`` mechanism, which reads
``config.json`` + ``model.safetensors`` of a Hub repository (``$DRNET_SMP_REPO``, default
``drnet/{name}.{tag}``) through huggingface_hub's cache. drnet hosts no such repository:
:func:`cache_encoder_weights` writes it into the local cache from drnet's published file (found
as ``create_model(pretrained=True)`` finds it: ``$DRNET_WEIGHTS_DIR``, a mirror, the official
URL; hash-checked) or from a file of your own, after which ``encoder_weights="imagenet"`` works
offline.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from drnet.errors import DrnetError
from drnet.models.drn import DRN

REPO_ENV = "DRNET_SMP_REPO"
DEFAULT_REPO = "drnet/{name}.{tag}"
_registered: list[str] = []


@functools.cache
def _encoder_class() -> type:
    from segmentation_models_pytorch.encoders._base import EncoderMixin

    class DRNEncoder(DRN, EncoderMixin):
        """A drnet backbone as an SMP encoder (see the module docstring)."""

        def __init__(
            self,
            name: str,
            channels: Sequence[int] | None = None,
            depth: int = 5,
            output_stride: int = 32,
            **_: Any,
        ) -> None:
            from drnet.models.registry import _spec_for

            if not 1 <= depth <= 5:
                raise ValueError(f"{name} encoder: depth must be 1..5, got {depth}")
            spec = _spec_for(name, channels, None)
            try:
                DRN.__init__(
                    self, spec, num_classes=0, features_only=True, output_stride=output_stride
                )
            except ValueError as exc:
                raise ValueError(f"{name} encoder: {exc}") from None
            self.name = name
            self._depth = depth
            self._in_channels = 3
            self._out_channels = [3, *self.feature_info.channels()]

        # DRN sets output_stride; SMP reads it as a property capped by the depth
        @property
        def output_stride(self) -> int:  # type: ignore[override]
            return min(self._output_stride, 2**self._depth)

        @output_stride.setter
        def output_stride(self, value: int) -> None:
            self._output_stride = value

        def make_dilated(self, output_stride: int) -> None:
            """The encoder is built at its output stride (SMP passes it to the constructor)."""
            if output_stride != self._output_stride:
                raise ValueError(
                    f"{self.name} encoder was built at output stride {self._output_stride}, "
                    f"not {output_stride}"
                )

        def get_stages(self) -> dict[int, list]:
            return {}

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            stages = self.forward_intermediates(
                x, list(range(self._depth)), stop_early=True, intermediates_only=True
            )
            return [x, *stages]

        def load_state_dict(self, state_dict: Mapping[str, Any], **kwargs: Any) -> Any:
            """drnet's classification weights too: their classifier ``fc`` is left out."""
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
            return super().load_state_dict(state_dict, **kwargs)

    return DRNEncoder


def _repo_id(name: str, tag: str) -> str:
    return os.environ.get(REPO_ENV, DEFAULT_REPO).format(name=name, tag=tag)


def register_smp_encoder(
    encoder_name: str, model: str | None = None, channels: Sequence[int] | None = None
) -> str:
    """Add (or replace) the SMP encoder ``encoder_name`` built from drnet's ``model`` (default:
    the same name) with optional level widths; returns the name. SMP's own encoders are never
    replaced."""
    from segmentation_models_pytorch.encoders import encoders

    from drnet.models.registry import WEIGHTS, get_spec

    model = model or encoder_name
    get_spec(model)
    if encoder_name in encoders and encoder_name not in _registered:
        raise DrnetError(f"{encoder_name!r} is one of SMP's own encoders: pick another name")
    tags = [t for (m, t), w in WEIGHTS.items() if m == model and w.task == "classification"]
    settings = {t: {"repo_id": _repo_id(encoder_name, t), "revision": None} for t in tags}
    params: dict[str, Any] = {"name": model}
    if channels is not None:
        params["channels"] = tuple(channels)
    encoders[encoder_name] = {
        "encoder": _encoder_class(),
        "pretrained_settings": settings,
        "params": params,
    }
    if encoder_name not in _registered:
        _registered.append(encoder_name)
    return encoder_name


def register_smp_encoders() -> list[str]:
    """Register every drnet model SMP does not already have; returns the names registered."""
    from segmentation_models_pytorch.encoders import encoders

    from drnet.models.registry import SPECS

    for name in SPECS:
        if name not in encoders:
            register_smp_encoder(name)
    return list(_registered)


def cache_encoder_weights(
    encoder_name: str,
    weights: str = "imagenet",
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Put the weights ``encoder_weights=weights`` of a DRN encoder into huggingface_hub's cache
    (``cache_dir``, default its ``HF_HUB_CACHE``) as the repository SMP reads; returns the
    snapshot folder. ``path``: a drnet/official classification checkpoint to use instead of
    the published file (any layout drnet reads)."""
    from huggingface_hub import constants
    from safetensors.torch import save
    from segmentation_models_pytorch.encoders import encoders

    from drnet.models.loading import load_state_dict_file
    from drnet.models.registry import get_weights
    from drnet.models.weights import resolve_weights_file

    entry = encoders.get(encoder_name)
    if entry is None or encoder_name not in _registered:
        raise DrnetError(f"{encoder_name!r} is not a drnet encoder registered with SMP")
    settings = entry["pretrained_settings"].get(weights)
    if settings is None:
        available = ", ".join(entry["pretrained_settings"]) or "none"
        raise DrnetError(f"{encoder_name}: no {weights!r} encoder weights (available: {available})")
    published = get_weights(entry["params"]["name"], weights)
    source = path if path is not None else resolve_weights_file(published)
    state = load_state_dict_file(source)
    state = {k: v.contiguous() for k, v in state.items() if not k.startswith("fc.")}
    blob = save(state, metadata={"format": "pt"})
    config = {
        "architecture": entry["params"]["name"],
        "input_space": "RGB",
        "input_range": [0, 1],
        "mean": list(published.mean),
        "std": list(published.std),
    }
    repo_id = settings["repo_id"]
    commit = hashlib.sha1(blob).hexdigest()  # a stand-in commit id: the content's
    repo_dir = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "model.safetensors").write_bytes(blob)
    (snapshot / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot
