"""Image classification data: ImageFolder splits, the standard transforms, and predict inputs.

A split is a torchvision ImageFolder tree: ``<root>/<class_name>/<image>``; class indices follow
the sorted folder names. Training uses RandomResizedCrop + horizontal flip; evaluation resizes the
shorter side to ``resize_size`` (256) and takes the centre ``crop_size`` (224) crop, or, for
ten-crop testing, the four corner crops, the centre crop and their horizontal flips.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from drnet.constants import (  # default_resize_size: re-exported, it was defined here
    AUTO_AUGMENT_POLICIES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    default_resize_size,
)
from drnet.data.images import as_rgb, failure_message
from drnet.data.walk import FolderWalk
from drnet.errors import DataError


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB (upright, high bit depths scaled: :func:`drnet.data.images.as_rgb`),
    raising :class:`DataError` that names the file if it is unreadable."""
    try:
        with Image.open(path) as image:
            return as_rgb(image)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read the image ({failure_message(exc)})") from exc


def _to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


def train_transform(
    crop_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    min_scale: float = 0.08,
    auto_augment: str | None = None,
) -> v2.Compose:
    """RandomResizedCrop to ``crop_size`` (area ``min_scale``..1 of the image, the ImageNet
    recipe's 0.08 by default) + random horizontal flip, then ``auto_augment`` (see
    :func:`auto_augment_transform`), then normalise."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(crop_size, scale=(min_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            *([auto_augment_transform(auto_augment)] if auto_augment else []),
            *_to_normalized_tensor(mean, std),
        ]
    )


def auto_augment_transform(policy: str) -> v2.Transform:
    """torchvision's automatic augmentation ``policy``: ``ta_wide`` (TrivialAugmentWide),
    ``ra`` (RandAugment), ``augmix`` (AugMix), or an AutoAugment policy (``imagenet``,
    ``cifar10``, ``svhn``). It works on uint8 images, before normalisation."""
    if policy == "ta_wide":
        return v2.TrivialAugmentWide()
    if policy == "ra":
        return v2.RandAugment()
    if policy == "augmix":
        return v2.AugMix()
    if policy in ("imagenet", "cifar10", "svhn"):
        return v2.AutoAugment(v2.AutoAugmentPolicy(policy))
    raise DataError(f"--auto-augment {policy!r} is not one of {', '.join(AUTO_AUGMENT_POLICIES)}")


def eval_transform(
    crop_size: int = 224,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Resize the shorter side to ``resize_size`` (default ``crop_size / 0.875``, i.e. 256 for
    224), take the centre ``crop_size`` crop, then normalise."""
    if resize_size is None:
        resize_size = default_resize_size(crop_size)
    return v2.Compose(
        [
            v2.Resize(resize_size, antialias=True),
            v2.CenterCrop(crop_size),
            *_to_normalized_tensor(mean, std),
        ]
    )


def ten_crop_transform(
    crop_size: int = 224,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Ten-crop testing (the DRN paper's Table 1): resize the shorter side to ``resize_size``
    (default as :func:`eval_transform`), normalise, then the four corner ``crop_size`` crops and
    the centre crop (``FiveCrop``, in its order: top-left, top-right, bottom-left, bottom-right,
    centre) followed by their horizontal flips, stacked as ``[10, 3, crop, crop]``."""
    if resize_size is None:
        resize_size = default_resize_size(crop_size)
    if resize_size < crop_size:
        # FiveCrop cannot pad like CenterCrop does; say so before a worker fails on image one
        raise DataError(
            f"ten-crop needs resize size >= crop size, got resize {resize_size} < crop {crop_size}"
        )
    return v2.Compose(
        [
            v2.Resize(resize_size, antialias=True),
            *_to_normalized_tensor(mean, std),
            v2.FiveCrop(crop_size),
            with_flips,
        ]
    )


def with_flips(crops: Sequence[Tensor]) -> Tensor:
    """``[3, h, w]`` crops and their horizontal flips as one ``[2 * len(crops), 3, h, w]`` tensor.

    Flipping the crops rather than cropping the flipped image (``TenCrop``) keeps the flipped
    centre crop the exact mirror of the centre crop when the margin is odd. A module-level
    function, so DataLoader workers can pickle the transform.
    """
    stacked = torch.stack(list(crops))
    return torch.cat([stacked, stacked.flip(-1)])


def full_image_transform(
    resize_size: int | None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Resize the shorter side to ``resize_size`` (``None`` or 0: keep the size), no crop, then
    normalise. Used by localization and heatmaps, which need the whole image."""
    steps = [v2.Resize(resize_size, antialias=True)] if resize_size else []
    return v2.Compose([*steps, *_to_normalized_tensor(mean, std)])


class ImageFolder(datasets.ImageFolder):
    """torchvision's ImageFolder, walked by :class:`drnet.data.walk.FolderWalk`: hidden folders
    (``.ipynb_checkpoints``) are not classes, hidden files (macOS's ``._x.png``) are not images,
    and links to folders are never followed into a loop (torchvision's
    ``os.walk(followlinks=True)`` counted each image once per link, and two links to ``.`` never
    ended). A broken link named like an image stays in, so that reading it names it."""

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        classes = sorted(
            e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith(".")
        )
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {name: i for i, name in enumerate(classes)}

    @staticmethod
    def make_dataset(
        directory: str | os.PathLike,
        class_to_idx: dict[str, int] | None = None,
        extensions: str | tuple[str, ...] | None = None,
        is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        if class_to_idx is None:
            raise ValueError("class_to_idx is required")
        if isinstance(extensions, str):
            extensions = (extensions,)
        samples = []
        for name in sorted(class_to_idx):
            found = FolderWalk(Path(directory) / name, extensions or IMG_EXTENSIONS).files
            found = [p for p in found if is_valid_file is None or is_valid_file(str(p))]
            if not found and not allow_empty:
                raise FileNotFoundError(f"Found no valid file for the class {name}.")
            samples += [(str(p), class_to_idx[name]) for p in found]
        return samples


def image_folder(root: str | Path, transform: Callable | None = None) -> datasets.ImageFolder:
    """An ImageFolder split (:class:`ImageFolder`) whose errors name the folder; unreadable
    images name the file."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found; expected <root>/<class_name>/<image>")
    try:
        return ImageFolder(str(root), transform=transform, loader=load_rgb)
    except FileNotFoundError as exc:
        empty = sorted(
            p.name
            for p in root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and not FolderWalk(p, IMG_EXTENSIONS).files
        )
        found = (
            f"class folder(s) without images: {', '.join(empty[:8])}; add images or remove them"
            if empty
            else "no class folders with images"
        )
        raise DataError(
            f"{root}: {found} (expected <root>/<class_name>/<image>, extensions "
            f"{', '.join(IMG_EXTENSIONS)})"
        ) from exc


def relative_key(path: str | Path, root: str | Path) -> str:
    """The key of an image in a split: its path relative to the split root, ``/``-separated."""
    return Path(path).relative_to(root).as_posix()


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files from a mix of files and folders (folders searched recursively, sorted)."""
    found: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            images = FolderWalk(item, IMG_EXTENSIONS).files
            if not images:
                raise DataError(f"{item}: no images found (extensions {', '.join(IMG_EXTENSIONS)})")
            found.extend(images)
        elif item.is_file():
            found.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    if not found:
        raise DataError("no input images given")
    return found


class ImageFiles(Dataset):
    """Images from paths, for prediction: item ``i`` is ``(transform(image), i, (H, W))`` where
    ``(H, W)`` is the original size."""

    def __init__(self, paths: Sequence[str | Path], transform: Callable | None = None):
        self.paths = [Path(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int, tuple[int, int]]:
        image = load_rgb(self.paths[index])
        size = (image.height, image.width)
        if self.transform is not None:
            image = self.transform(image)
        return image, index, size


def short_output_names(paths: Sequence[str | Path]) -> list[str]:
    """Short, unique, file-system-safe names for output files, one per path (stem, then
    ``parent_stem``, then an index suffix when still ambiguous). The predict commands name their
    outputs with :func:`drnet.data.images.unique_names` instead."""
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    names = [
        stem if stems.count(stem) == 1 else f"{p.parent.name}_{stem}"
        for p, stem in zip(paths, stems, strict=True)
    ]
    seen: dict[str, int] = {}
    result = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        result.append(safe if count == 0 else f"{safe}_{count}")
    return result


def __getattr__(name: str) -> object:
    # ``unique_names`` of earlier releases, kept for one release under its new name: the one
    # ``unique_names`` is drnet.data.images.unique_names (another rule, for predict outputs)
    if name == "unique_names":
        import warnings

        warnings.warn(
            "drnet.data.classification.unique_names is now short_output_names",
            DeprecationWarning,
            stacklevel=2,
        )
        return short_output_names
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
