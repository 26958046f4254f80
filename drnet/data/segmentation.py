"""Segmentation datasets in three layouts.

1. **List files** (the original code's layout): ``data_dir/info.json`` with ``mean`` and ``std``
   (optionally ``classes``), ``{split}_images.txt`` and ``{split}_labels.txt`` with one path per
   line, relative to ``data_dir``. The list files may live in a separate ``list_dir``.
2. **Cityscapes**: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with
   ``gtFine/{split}/{city}/*_gtFine_labelTrainIds.png`` (or ``*_trainIds.png``), 19 classes. Write
   the trainIds with ``drnet data cityscapes-prepare``.
3. **Folders**: ``images/{split}/`` + ``masks/{split}/`` (or ``{split}/images/`` +
   ``{split}/masks/``; ``labels`` is accepted for ``masks``), paired by file stem (and
   sub-folder).

Labels are single-channel PNGs of class indices (mode ``L``, ``P`` or ``I``); 255 = ignore. An item
is ``(image, label)``: by default a float ``[3, H, W]`` normalised image and an int64 ``[H, W]``
label, after the ``transforms`` (joint v2 transforms on ``tv_tensors.Image``/``Mask``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors

from drnet.constants import (
    CITYSCAPES_MEAN,
    CITYSCAPES_STD,
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
)
from drnet.data.cityscapes import CITYSCAPES_NUM_CLASSES
from drnet.data.images import as_rgb, failure_message, list_names
from drnet.data.palettes import CITYSCAPES_CLASSES
from drnet.data.text import read_json, read_lines
from drnet.data.transforms import segmentation_eval_transform
from drnet.data.walk import FolderWalk
from drnet.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
LAYOUTS = ("auto", "list", "cityscapes", "folder")
MASK_DIR_NAMES = ("masks", "labels", "annotations")


def read_image(path: str | os.PathLike) -> tv_tensors.Image:
    """An RGB image as a uint8 ``tv_tensors.Image`` ``[3, H, W]`` (upright, high bit depths
    scaled: :func:`drnet.data.images.as_rgb`); DataError names a bad file."""
    try:
        with Image.open(path) as im:
            array = np.asarray(as_rgb(im))
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {failure_message(exc)}") from None
    return tv_tensors.Image(torch.from_numpy(array.copy()).permute(2, 0, 1))


def read_label(path: str | os.PathLike) -> tv_tensors.Mask:
    """A label PNG of class indices as a ``tv_tensors.Mask`` ``[1, H, W]`` (uint8, or int64 for
    16/32-bit files). RGB(A) label images are refused: labels must be class indices."""
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA", "HSV"):
                raise DataError(
                    f"label {path} is an {im.mode} image; labels must be single-channel class "
                    f"indices (mode L, P or I), 255 = ignore. Convert colour-coded labels first"
                )
            array = np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"label {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read label {path}: {exc}") from None
    if array.ndim != 2:
        raise DataError(f"label {path} has shape {array.shape}; expected a single channel")
    tensor = torch.from_numpy(array.astype(np.uint8 if array.dtype == np.uint8 else np.int64))
    return tv_tensors.Mask(tensor[None])


def check_label(label: torch.Tensor, num_classes: int, path: object) -> None:
    """Raise DataError if ``label`` holds values outside ``[0, num_classes)`` other than 255."""
    if label.numel() == 0:
        return
    bad = (label >= num_classes) & (label != IGNORE_INDEX) | (label < 0)
    if bad.any():
        values = torch.unique(label[bad])[:8].tolist()
        raise DataError(
            f"label {path} has values {values} outside [0, {num_classes}) (255 = ignore); "
            f"check --num-classes or the label files"
        )


def require_labelled_pixels(dataset: SegmentationDataset, split: str) -> None:
    """Raise DataError when no label of ``dataset`` has a pixel other than 255: training would
    learn nothing (loss 0) and mIoU would be undefined. Stops at the first labelled pixel (one
    file for a normal split); unreadable labels are left to the training's own checks."""
    seen = 0
    for sample in dataset.samples:
        if sample.label is None:
            continue
        try:
            label = read_label(sample.label)
        except DataError:
            continue
        seen += 1
        if (label != IGNORE_INDEX).any():
            return
    if seen:
        raise DataError(
            f"split {split!r} of {dataset.root or 'the dataset'}: every pixel of its {seen} "
            f"label(s) is {IGNORE_INDEX} (ignored), nothing to learn from or score; check the "
            f"label files (class indices, {IGNORE_INDEX} = ignore; drnet data check lists them)"
        )


@dataclass(frozen=True)
class Sample:
    image: Path
    label: Path | None
    name: str  # relative name used for output files (no extension)


def check_label_size(image: torch.Tensor, label: torch.Tensor, sample: Sample) -> None:
    """Raise DataError if ``label`` (``[1, H, W]``) is not the size of ``image`` (``[3, H, W]``)."""
    if label.shape[-2:] != image.shape[-2:]:
        raise DataError(
            f"label {sample.label} is {label.shape[-1]}x{label.shape[-2]} but image "
            f"{sample.image} is {image.shape[-1]}x{image.shape[-2]} (width x height)"
        )


class SegmentationDataset(Dataset):
    """Image/label pairs with joint transforms.

    Args:
        samples: the pairs (``label`` None for unlabeled images: the label is all 255).
        num_classes: labels are checked to lie in ``[0, num_classes)`` or be 255.
        mean: normalisation of this dataset (used by the default transforms and by callers).
        std: the same, the standard deviation.
        transforms: callable ``(Image, Mask) -> (image, label)``; default: normalise only.
        class_names: optional names of the classes.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        num_classes: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        transforms: Callable | None = None,
        class_names: Sequence[str] | None = None,
        root: str | os.PathLike | None = None,
    ) -> None:
        if not samples:
            raise DataError(f"no images found in {root or 'the dataset'}")
        self.samples = list(samples)
        self.num_classes = int(num_classes)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        if transforms is None:
            transforms = segmentation_eval_transform(self.mean, self.std)
        self.transforms = transforms
        self.class_names = tuple(class_names) if class_names else None
        self.root = Path(root) if root else None

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """The raw uint8 image and the checked label of item ``index``, before transforms."""
        sample = self.samples[index]
        image = read_image(sample.image)
        height, width = image.shape[-2:]
        if sample.label is None:
            blank = torch.full((1, height, width), IGNORE_INDEX, dtype=torch.uint8)
            return image, tv_tensors.Mask(blank)
        label = read_label(sample.label)
        check_label_size(image, label, sample)
        check_label(label, self.num_classes, sample.label)
        return image, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.transforms(*self.load(index))
        return image.as_subclass(torch.Tensor), label.as_subclass(torch.Tensor).long()[0]

    def name(self, index: int) -> str:
        return self.samples[index].name


# -- layout 1: list files ----------------------------------------------------------------------


def read_info(data_dir: str | os.PathLike) -> dict | None:
    """``data_dir/info.json`` as a dict (``mean``, ``std``, optional ``classes``), or None."""
    path = Path(data_dir) / "info.json"
    if not path.is_file():
        return None
    info = read_json(path, "dataset description")
    if not isinstance(info, dict):
        raise DataError(f"{path}: expected a JSON object with 'mean' and 'std'")
    for key in ("mean", "std"):
        value = info.get(key)
        if not (
            isinstance(value, list)
            and len(value) == 3
            and all(isinstance(v, (int, float)) for v in value)
        ):
            raise DataError(f"{path}: '{key}' must be a list of 3 numbers, found {value!r}")
    if min(info["std"]) <= 0:
        raise DataError(
            f"{path}: 'std' must be positive (it divides the image), found {info['std']}"
        )
    return info


def _read_list(path: Path) -> list[str]:
    lines = read_lines(path, "list file")
    if not lines:
        raise DataError(f"list file {path} is empty")
    return lines


def list_file_samples(
    data_dir: str | os.PathLike,
    split: str,
    list_dir: str | os.PathLike | None = None,
    require_labels: bool = True,
) -> list[Sample]:
    """Pairs from ``{split}_images.txt`` / ``{split}_labels.txt`` (paths relative to data_dir)."""
    data_dir = Path(data_dir)
    list_dir = Path(list_dir) if list_dir else data_dir
    images_txt = list_dir / f"{split}_images.txt"
    labels_txt = list_dir / f"{split}_labels.txt"
    if not images_txt.is_file():
        raise DataError(f"list file {images_txt} does not exist (split {split!r})")
    images = _read_list(images_txt)
    if labels_txt.is_file():
        labels: list[str | None] = list(_read_list(labels_txt))
        if len(labels) != len(images):
            raise DataError(
                f"{labels_txt} has {len(labels)} lines but {images_txt} has {len(images)}"
            )
    elif require_labels:
        raise DataError(f"list file {labels_txt} does not exist (needed for split {split!r})")
    else:
        labels = [None] * len(images)
    names = list_names(images, data_dir)  # never absolute, never "..": outputs stay in -o
    return [
        Sample(data_dir / img, data_dir / lab if lab else None, name)
        for img, lab, name in zip(images, labels, names, strict=True)
    ]


# -- layout 2: Cityscapes ----------------------------------------------------------------------


def cityscapes_label_hint(root: Path, image_dir: Path, image: Path) -> str:
    """The end of the message "no trainIds label for ``image``" (under ``image_dir`` =
    ``leftImg8bit/{split}``): its city's ``gtFine`` folder is missing (named), or only the raw
    labelIds are there (``cityscapes-prepare`` makes the trainIds), or just where it looked."""
    stem = image.name[: -len("_leftImg8bit.png")]
    gt_dir = root / "gtFine" / image_dir.name / image.parent.relative_to(image_dir)
    if not gt_dir.is_dir():
        return f": the folder {gt_dir} does not exist"
    looked = f" (looked for {gt_dir}/{stem}_gtFine_labelTrainIds.png or _trainIds.png)"
    if (gt_dir / f"{stem}_gtFine_labelIds.png").is_file():
        return f"{looked}; run: drnet data cityscapes-prepare --data-dir {root}"
    return looked


def cityscapes_samples(
    root: str | os.PathLike, split: str, require_labels: bool = True
) -> list[Sample]:
    """Pairs of ``leftImg8bit/{split}`` images and their ``gtFine`` trainIds labels."""
    root = Path(root)
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise DataError(f"{image_dir} does not exist (Cityscapes split {split!r})")
    images = FolderWalk(image_dir, pattern="*_leftImg8bit.png").files
    if not images:
        raise DataError(f"no *_leftImg8bit.png images under {image_dir}")
    samples = []
    for image in images:
        stem = image.name[: -len("_leftImg8bit.png")]
        gt_dir = root / "gtFine" / split / image.parent.relative_to(image_dir)
        label = None
        for suffix in ("_gtFine_labelTrainIds.png", "_gtFine_trainIds.png"):
            if (gt_dir / (stem + suffix)).is_file():
                label = gt_dir / (stem + suffix)
                break
        if label is None and require_labels:
            hint = cityscapes_label_hint(root, image_dir, image)
            raise DataError(f"no trainIds label for {image}{hint}")
        name = str(image.relative_to(image_dir).with_suffix(""))
        samples.append(Sample(image, label, name))
    return samples


# -- layout 3: image/mask folders --------------------------------------------------------------


def _images_in(folder: Path) -> dict[str, Path]:
    # no hidden files or folders (.ipynb_checkpoints, ._x.png), no link loops: FolderWalk
    return {
        str(p.relative_to(folder).with_suffix("")): p
        for p in FolderWalk(folder, IMAGE_EXTENSIONS).files
    }


def folder_samples(
    images_dir: str | os.PathLike,
    masks_dir: str | os.PathLike | None,
    require_labels: bool = True,
) -> list[Sample]:
    """Pairs of images and masks with the same relative path without extension."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"image folder {images_dir} does not exist")
    images = _images_in(images_dir)
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {images_dir}")
    masks = _images_in(Path(masks_dir)) if masks_dir and Path(masks_dir).is_dir() else {}
    if require_labels:
        if not masks:
            raise DataError(f"no masks for {images_dir} (looked in {masks_dir})")
        missing = [k for k in images if k not in masks]
        if missing:
            raise DataError(
                f"{len(missing)} image(s) in {images_dir} have no mask of the same name in "
                f"{masks_dir}: {', '.join(missing[:5])}"
            )
    return [Sample(path, masks.get(key), key) for key, path in images.items()]


def find_folder_split(data_dir: Path, split: str) -> tuple[Path, Path | None] | None:
    """``(images_dir, masks_dir)`` of ``split`` for the folder layout, or None."""
    for masks_name in MASK_DIR_NAMES:
        for images, masks in (
            (data_dir / "images" / split, data_dir / masks_name / split),
            (data_dir / split / "images", data_dir / split / masks_name),
        ):
            if images.is_dir() and masks.is_dir():
                return images, masks
    for images in (data_dir / "images" / split, data_dir / split / "images"):
        if images.is_dir():
            return images, None
    return None


# -- one entry point ---------------------------------------------------------------------------


def detect_layout(data_dir: str | os.PathLike, split: str = "train") -> str:
    """``"list"``, ``"cityscapes"`` or ``"folder"`` for ``data_dir`` (DataError if none fits)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir} does not exist")
    if (data_dir / f"{split}_images.txt").is_file() or (data_dir / "info.json").is_file():
        return "list"
    if (data_dir / "leftImg8bit").is_dir():
        return "cityscapes"
    if find_folder_split(data_dir, split) is not None:
        return "folder"
    raise DataError(
        f"cannot tell the layout of {data_dir}: expected {split}_images.txt + info.json (list "
        f"files), leftImg8bit/ + gtFine/ (Cityscapes), or images/{split}/ + masks/{split}/"
    )


def dataset_info(data_dir: str | os.PathLike, layout: str = "auto", split: str = "train") -> dict:
    """``layout``, ``mean``, ``std``, ``num_classes`` (or None) and ``class_names`` of a dataset.

    ``info.json`` wins wherever it exists; Cityscapes defaults to its own statistics and 19
    classes; otherwise ImageNet statistics.
    """
    data_dir = Path(data_dir)
    if layout == "auto":
        layout = detect_layout(data_dir, split)
    if layout not in LAYOUTS:
        raise DataError(f"--layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    info = read_info(data_dir) or {}
    if layout == "list" and not info:
        raise DataError(f"{data_dir / 'info.json'} does not exist (needs 'mean' and 'std')")
    city = layout == "cityscapes"
    mean = info.get("mean") or (CITYSCAPES_MEAN if city else IMAGENET_MEAN)
    std = info.get("std") or (CITYSCAPES_STD if city else IMAGENET_STD)
    num_classes = info.get("classes", info.get("num_classes"))
    if num_classes is None and city:
        num_classes = CITYSCAPES_NUM_CLASSES
    names = info.get("class_names") or (CITYSCAPES_CLASSES if city else None)
    return {
        "layout": layout,
        "mean": tuple(mean),
        "std": tuple(std),
        "num_classes": int(num_classes) if num_classes is not None else None,
        "class_names": tuple(names) if names else None,
    }


def open_segmentation_dataset(
    data_dir: str | os.PathLike,
    split: str,
    num_classes: int | None = None,
    transforms: Callable | None = None,
    layout: str = "auto",
    list_dir: str | os.PathLike | None = None,
    require_labels: bool = True,
) -> SegmentationDataset:
    """Open split ``split`` of the dataset at ``data_dir`` in any of the three layouts.

    Args:
        num_classes: number of classes (default: ``info.json``'s ``classes``; 19 for Cityscapes).
        transforms: joint transforms; default: whole image, normalised with the dataset's stats.
        layout: ``auto`` (detect), ``list``, ``cityscapes`` or ``folder``.
        list_dir: where the list files are, if not in ``data_dir`` (list layout).
        require_labels: raise if a label is missing (False for prediction on unlabeled splits).
    """
    data_dir = Path(data_dir)
    if layout == "auto" and list_dir and (Path(list_dir) / f"{split}_images.txt").is_file():
        layout = "list"
    info = dataset_info(data_dir, layout, split)
    layout = info["layout"]
    if num_classes is None:
        num_classes = info["num_classes"]
    if num_classes is None:
        raise DataError(f"the number of classes of {data_dir} is unknown: pass --num-classes")
    if layout == "list":
        samples = list_file_samples(data_dir, split, list_dir, require_labels)
    elif layout == "cityscapes":
        samples = cityscapes_samples(data_dir, split, require_labels)
    else:
        found = find_folder_split(data_dir, split)
        if found is None:
            raise DataError(f"no images/{split}/ or {split}/images/ folder in {data_dir}")
        samples = folder_samples(found[0], found[1], require_labels)
    names = (
        info["class_names"]
        if info["class_names"] and len(info["class_names"]) == num_classes
        else None
    )
    dataset = SegmentationDataset(
        samples, num_classes, info["mean"], info["std"], transforms, names, root=data_dir
    )
    dataset.layout = layout
    return dataset
