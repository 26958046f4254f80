"""Weight files: where they come from, how they are checked, and how they are loaded.

- :class:`Weights` describes one published weight file (URL, sha256 prefix, metadata and the
  eval preprocessing that goes with it), like torchvision's weights enums.
- :func:`resolve_weights_file` finds a file offline (a local directory) or downloads it (the
  official URL or a mirror), verifying its hash.
- Reading checkpoint files and runs is :mod:`drnet.models.loading`'s job.
- :func:`load_into` loads a state dict and, when it does not fit, says exactly which keys differ.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drnet.errors import CheckpointError

WEIGHTS_DIR_ENV = "DRNET_WEIGHTS_DIR"  # a local directory holding weight files by their names
WEIGHTS_MIRROR_ENV = "DRNET_WEIGHTS_MIRROR"  # a base URL (http(s):// or file://) serving them

# First key components of drnet's own state dicts (DRN, ResNet, DRNSeg): anything else in front
# of every key is a wrapper's attribute name (Lightning's ``model.``, DDP's ``module.`` ...).
DRNET_TOP_LEVEL = frozenset(
    {"conv1", "bn1", "fc", "base", "seg", "up", *(f"layer{i}" for i in range(10))}
)
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.[a-z]+$")


@dataclass(frozen=True)
class Weights:
    """One published weight file and what it needs to be used well."""

    model: str
    tag: str  # "imagenet", "cityscapes"
    file_name: str
    url: str
    hash_prefix: str | None
    task: str  # "classification" | "segmentation"
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_size: int | None = 256
    crop_size: int | None = 224
    source: str = ""
    license: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def transforms(self):
        """The eval preprocessing these weights expect (a ``transforms.v2`` pipeline)."""
        from torchvision.transforms import v2  # here: the models themselves need no torchvision

        steps: list = [v2.ToImage()]
        if self.resize_size:
            steps.append(v2.Resize(self.resize_size, antialias=True))
        if self.crop_size:
            steps.append(v2.CenterCrop(self.crop_size))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        return v2.Compose(steps)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_hash(path: str | Path, hash_prefix: str | None) -> None:
    """Raise :class:`CheckpointError` unless the file's sha256 starts with ``hash_prefix``."""
    if not hash_prefix:
        return
    actual = sha256_of(path)
    if not actual.startswith(hash_prefix.lower()):
        raise CheckpointError(
            f"hash mismatch for {path}: expected sha256 starting with {hash_prefix}, got "
            f"{actual[: max(len(hash_prefix), 8)]}; the file is corrupt or not the one expected "
            "(delete it and download again)"
        )


def hash_prefix_from_name(name: str) -> str | None:
    """The sha256 prefix torch.hub-style names carry (``drn_d_22-4bd2f8ea.pth`` -> ``4bd2f8ea``)."""
    match = _HASH_IN_NAME.search(name)
    return match.group(1) if match else None


def is_url(location: str) -> bool:
    return urllib.parse.urlparse(str(location)).scheme in ("http", "https", "file", "ftp")


def _cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def cache_path(url: str, hash_prefix: str | None = None) -> Path:
    """Where :func:`download` keeps ``url``: a folder named by a digest of the whole URL (and
    the expected hash), holding the file under its own name, so two URLs ending in the same
    name (``.../a/checkpoint_best.pth``, ``.../b/checkpoint_best.pth``) never share a file."""
    key = hashlib.sha256(f"{url}\n{(hash_prefix or '').lower()}".encode()).hexdigest()[:16]
    name = Path(urllib.parse.urlparse(url).path).name or "download.pth"  # ".../" has no name
    return _cache_dir() / key / name


def checkpoint_kind(path: str | Path) -> str | None:
    """``"torch"`` (a zip archive or a legacy pickle), ``"safetensors"``, or None when the file
    is something else (an HTML login or error page, a redirect notice, an empty answer)."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return "safetensors"
    return None


def _not_a_checkpoint(url: str, path: Path) -> CheckpointError:
    with open(path, "rb") as handle:
        head = handle.read(200)
    text = head.decode("utf-8", "replace").strip()
    looks = "an HTML page (a login or error page?)" if text[:1] == "<" else "not a checkpoint"
    shown = " ".join(text.split())[:60]
    return CheckpointError(
        f"the download of {url} is {looks}, starting {shown!r}; nothing was cached: check the "
        "URL (it must serve the .pth/.safetensors file itself)"
    )


def download(url: str, hash_prefix: str | None = None, progress: bool = True) -> Path:
    """Fetch ``url`` into torch.hub's cache (or use the cached copy), verifying ``hash_prefix``.

    ``file://`` URLs are read in place. The cache is keyed by the whole URL and the hash
    (:func:`cache_path`). The download goes to a temporary file that is renamed only once
    complete, verified and recognised as a checkpoint (:func:`checkpoint_kind`), so neither an
    interrupted download nor an HTML answer is ever cached.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        if not path.is_file():
            raise CheckpointError(f"weight file not found: {path} (from {url})")
        check_hash(path, hash_prefix)
        return path
    destination = cache_path(url, hash_prefix)
    if destination.is_file():
        if checkpoint_kind(destination) is not None:
            check_hash(destination, hash_prefix)
            return destination
        destination.unlink()  # left by an older drnet, which cached anything: fetch it again
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".partial"
    )
    os.close(handle)
    try:
        torch.hub.download_url_to_file(url, temporary, hash_prefix=None, progress=progress)
        if checkpoint_kind(temporary) is None:
            raise _not_a_checkpoint(url, Path(temporary))
        check_hash(temporary, hash_prefix)
        os.replace(temporary, destination)
    except (urllib.error.URLError, OSError) as exc:
        raise CheckpointError(
            f"could not download {url}: {exc}. Offline? Put the file in a directory and set "
            f"{WEIGHTS_DIR_ENV}=DIR (or pass weights_dir=DIR), or point {WEIGHTS_MIRROR_ENV} at "
            "a mirror"
        ) from exc
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return destination


def resolve_weights_file(
    weights: Weights,
    weights_dir: str | os.PathLike | None = None,
    mirror: str | None = None,
    progress: bool = True,
) -> Path:
    """Find the file of ``weights``: a local directory first, then a mirror, then the official URL.

    ``weights_dir`` / ``mirror`` default to the environment variables ``DRNET_WEIGHTS_DIR`` and
    ``DRNET_WEIGHTS_MIRROR``. The known hash is verified whichever way the file comes.
    """
    weights_dir = weights_dir or os.environ.get(WEIGHTS_DIR_ENV)
    mirror = mirror or os.environ.get(WEIGHTS_MIRROR_ENV)
    if weights_dir:
        local = Path(weights_dir) / weights.file_name
        if local.is_file():
            check_hash(local, weights.hash_prefix)
            return local
        if not mirror:
            raise CheckpointError(
                f"{weights.file_name} not found in weights directory {weights_dir} "
                f"(download it from {weights.url})"
            )
    url = mirror.rstrip("/") + "/" + weights.file_name if mirror else weights.url
    return download(url, weights.hash_prefix, progress=progress)


# -- fitting a state dict to a model --------------------------------------------------------------


def _summarise(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def key_mismatch_report(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], ignore: tuple[str, ...] = ()
) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys, and ``key: checkpoint shape vs model shape`` mismatches."""
    expected = model.state_dict()

    def ignored(key: str) -> bool:
        return key.endswith("num_batches_tracked") or any(key.startswith(p) for p in ignore)

    missing = [k for k in expected if k not in state_dict and not ignored(k)]
    unexpected = [k for k in state_dict if k not in expected and not ignored(k)]
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} in file vs {tuple(v.shape)} in model"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape and not ignored(k)
    ]
    return missing, unexpected, shapes


def load_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    strict: bool = True,
    source: str = "checkpoint",
    ignore: tuple[str, ...] = (),
) -> None:
    """Load ``state_dict`` into ``model``, explaining any mismatch.

    Missing ``num_batches_tracked`` buffers (checkpoints saved in 2017) are filled in. Keys that
    start with one of ``ignore`` are left out on both sides (e.g. ``("fc.",)`` to keep a fresh
    classifier). With ``strict=True`` any other difference raises :class:`CheckpointError` listing
    the missing, unexpected and wrongly shaped keys.
    """
    stripped = getattr(state_dict, "prefix", "")
    state_dict = {k: v for k, v in state_dict.items() if not any(k.startswith(p) for p in ignore)}
    missing, unexpected, shapes = key_mismatch_report(model, state_dict, ignore)
    if strict and (missing or unexpected or shapes):
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_summarise(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_summarise(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_summarise(shapes, 6)}")
        hint = _prefix_hint(model, unexpected, stripped) or _mismatch_hint(missing, unexpected)
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: " + "; ".join(parts) + hint
        )
    own = model.state_dict()
    filled = dict(state_dict)
    for key, value in own.items():
        if key not in filled and (key.endswith("num_batches_tracked") or key.startswith(ignore)):
            filled[key] = value
    if not strict:
        filled = {k: v for k, v in filled.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(filled, strict=strict)


def _prefix_hint(model: nn.Module, unexpected: list[str], stripped: str) -> str:
    """Name the prefix the keys carry (or had stripped) when that is why they do not fit."""
    own = {k.partition(".")[0] for k in model.state_dict()}
    heads = {k.partition(".")[0] for k in unexpected if "." in k}
    foreign = sorted(heads - own - DRNET_TOP_LEVEL)
    if foreign:
        found = ", ".join(f"'{p}.'" for p in foreign[:4])
        return (
            f" (the checkpoint's keys carry the prefix {found}"
            + (f" after '{stripped}' was stripped" if stripped else "")
            + ": saved from a wrapper or another architecture?)"
        )
    if stripped:
        return f" (the wrapper prefix '{stripped}' was stripped from every key)"
    return ""


def _mismatch_hint(missing: list[str], unexpected: list[str]) -> str:
    if any(k.startswith("base.") for k in unexpected) and not any(
        k.startswith("base.") for k in missing
    ):
        return " (a segmentation checkpoint? load it with create_segmentation_model)"
    if any(k.startswith("base.") for k in missing) and not any(
        k.startswith("base.") for k in unexpected
    ):
        return (
            " (this looks like a classification checkpoint: pass it as the backbone, "
            "e.g. create_segmentation_model(..., backbone_checkpoint=PATH))"
        )
    if missing and unexpected and len(missing) == len(unexpected):
        return " (same number of keys on both sides: was it saved from another architecture?)"
    return ""


def warn_new_classifier(model_name: str, file_classes: int, num_classes: int) -> None:
    warnings.warn(
        f"{model_name}: weights have {file_classes} classes, model has {num_classes}; the "
        "backbone is loaded and the classifier is freshly initialised",
        stacklevel=3,
    )
