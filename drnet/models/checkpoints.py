"""Checkpoint files: the one place drnet calls ``torch.load``, and the state dict inside.

- :func:`read_checkpoint` reads a file or URL (``weights_only=True``; a URL's hash, or the one
  asked for, is verified before anything is unpickled; ``.safetensors`` files too).
- :func:`extract_state_dict` unwraps every accepted layout (bare, the original code's, drnet's
  training checkpoints, Lightning, timm with EMA) and strips wrapper prefixes (``module.``,
  ``_orig_mod.``, ``model.``).
- :func:`load_state_dict_file` is the two together.

Downloads, caches and hashes are :mod:`drnet.models.weights`; the model card is
:mod:`drnet.models.card`; turning a checkpoint into a model is :mod:`drnet.models.loading`.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from drnet.errors import CheckpointError
from drnet.integrations.hub import load_safetensors
from drnet.models.weights import (
    DRNET_TOP_LEVEL,
    check_hash,
    download,
    hash_prefix_from_name,
    is_url,
)

logger = logging.getLogger("drnet.models.loading")  # the logger these messages always had

CHECKPOINT_NAMES = ("checkpoint_best.pth", "checkpoint_last.pth")


def read_checkpoint(location: str | os.PathLike, hash_prefix: str | None = None) -> Any:
    """The object stored in a checkpoint file or URL, read with ``weights_only=True``.

    URLs (``http(s)://``, ``file://``) are fetched into torch.hub's cache; ``hash_prefix`` (for
    URLs by default the prefix in the file name, as torch.hub names them) is verified before
    anything is unpickled. A file whose unpickling would run code is refused.
    """
    location = str(location)
    if location.lower().endswith(".safetensors") and not is_url(location):
        path = Path(location).expanduser()
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        check_hash(path, hash_prefix)
        return load_safetensors(path)
    if is_url(location):
        if hash_prefix is None:
            hash_prefix = hash_prefix_from_name(urllib.parse.urlparse(location).path)
        path = download(location, hash_prefix)
    else:
        path = Path(location).expanduser()
        if path.is_dir():
            raise CheckpointError(f"checkpoint path is a directory: {path}")
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        check_hash(path, hash_prefix)
    return _torch_load(path)


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (``PK``); the legacy format starts with a pickle opcode."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    return head[:2] == b"PK" or head[:1] == b"\x80"


def _torch_load(path: Path) -> Any:
    if not _looks_like_torch_file(path):
        raise CheckpointError(f"cannot read checkpoint {path}: it is not a PyTorch file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, unsafe globals, truncated zip files ...
        text = str(exc)
        if "Unsupported global" in text or "Unsupported operand" in text:
            raise CheckpointError(
                f"refusing to load {path}: it contains Python objects that would run code when "
                "unpickled (only tensors and plain containers are accepted). If you trust the "
                "file, re-save its state_dict with torch.save(model.state_dict(), ...)"
            ) from None
        message = text.strip().splitlines()[-1] if text.strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: {message} (truncated, or not a PyTorch file)"
        ) from None


EMA_KEYS = ("state_dict_ema", "model_ema", "ema")


class StateDict(dict):
    """A state dict that remembers the wrapper prefix stripped from its keys (for errors)."""

    prefix: str = ""


def _tensor_dict(inner: Any) -> bool:
    return (
        isinstance(inner, Mapping)
        and bool(inner)
        and all(isinstance(v, Tensor) for v in inner.values())
    )


def extract_state_dict(
    obj: Any, source: str = "checkpoint", ema: bool = False
) -> dict[str, Tensor]:
    """The model state dict inside any accepted checkpoint object.

    Accepts a bare state dict, the original code's ``{epoch, arch, state_dict, best_prec1}``,
    drnet's training checkpoints ``{"model": ...}``, Lightning's ``.ckpt`` and timm's training
    checkpoints (``{"state_dict": ..., "state_dict_ema": ...}``; ``ema=True`` takes the EMA
    weights and fails when there are none). A prefix in front of the keys that is not one of
    drnet's module names is a wrapper's and is stripped, repeatedly: ``module.`` (DDP),
    ``_orig_mod.`` (torch.compile), ``model.`` (a LightningModule's attribute) and the like.
    Among several prefixes, the one whose keys are a drnet state dict is taken when there is
    exactly one (a LightningModule's loss buffers are left out). The stripped prefix is kept in
    ``StateDict.prefix`` for error messages.
    """
    if isinstance(obj, Mapping):
        names = EMA_KEYS if ema else ("model", "state_dict", "model_state_dict")
        for key in names:
            if _tensor_dict(obj.get(key)):
                obj = obj[key]
                break
        else:
            if ema:
                raise CheckpointError(
                    f"{source} holds no EMA weights (none of {', '.join(EMA_KEYS)}; keys: "
                    f"{', '.join(map(str, list(obj)[:8]))})"
                )
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source} holds no state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{source} holds no tensors (top-level keys: {', '.join(map(str, list(obj)[:8]))})"
        )
    stripped = ""
    while any("." in str(k) for k in tensors):
        groups: dict[str, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            head, _, rest = str(key).partition(".")
            groups.setdefault(head, {})[rest] = value
        if set(groups) & DRNET_TOP_LEVEL:
            break
        # one wrapper attribute holding a drnet model (a LightningModule may also hold a loss)
        wrapped = [
            head
            for head, inner in groups.items()
            if len(groups) == 1 or {k.partition(".")[0] for k in inner} <= DRNET_TOP_LEVEL
        ]
        if len(wrapped) != 1:
            break
        head = wrapped[0]
        if len(groups) > 1:
            left = sorted(k for k in tensors if not str(k).startswith(head + "."))
            logger.info("%s: loading the keys under '%s.', leaving out %s", source, head, left)
        tensors = groups[head]
        stripped += head + "."
    result = StateDict(tensors)
    result.prefix = stripped
    return result


def load_state_dict_file(
    location: str | os.PathLike, hash_prefix: str | None = None, ema: bool = False
) -> dict[str, Tensor]:
    """The state dict in a checkpoint file or URL (see :func:`read_checkpoint`); ``ema``: its
    EMA weights (timm's ``state_dict_ema``)."""
    return extract_state_dict(read_checkpoint(location, hash_prefix), str(location), ema=ema)
