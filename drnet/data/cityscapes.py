"""Cityscapes: the 19 training classes and the labelIds -> trainIds conversion.

Cityscapes ships ``gtFine/<split>/<city>/*_gtFine_labelIds.png`` with 34 label ids; training uses
19 of them ("trainIds"), every other id becoming 255 (ignore). :func:`prepare_cityscapes` writes
``*_gtFine_labelTrainIds.png`` next to each ``*_labelIds.png`` (what cityscapesScripts'
``createTrainIdLabelImgs`` produces).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from drnet.atomic import atomic_save_image

# re-exported: drnet.cli.segment imports the Cityscapes statistics from here
from drnet.constants import CITYSCAPES_MEAN, CITYSCAPES_STD, IGNORE_INDEX  # noqa: F401
from drnet.data.palettes import CITYSCAPES_CLASSES
from drnet.data.walk import FolderWalk
from drnet.errors import DataError

CITYSCAPES_NUM_CLASSES = len(CITYSCAPES_CLASSES)

# label id -> train id for the 19 evaluated classes (cityscapesScripts' labels.py); all else 255
LABEL_ID_TO_TRAIN_ID = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}


def train_id_lut() -> np.ndarray:
    """A 256-entry lookup table label id -> train id (255 for unused ids)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map an array of Cityscapes label ids to train ids (uint8, 255 = ignore)."""
    return train_id_lut()[np.asarray(label_ids).astype(np.uint8)]


def prepare_cityscapes(
    root: str | os.PathLike,
    splits: tuple[str, ...] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Write a ``*_gtFine_labelTrainIds.png`` beside each ``*_gtFine_labelIds.png`` of Cityscapes.

    Args:
        root: the Cityscapes root (holding ``leftImg8bit/`` and ``gtFine/``).
        splits: sub-folders of ``gtFine`` to convert (default: all found).
        overwrite: rewrite files that already exist.
        progress: show a progress bar.

    Returns ``{"written": n, "skipped": m}``.
    """
    gt_root = Path(root) / "gtFine"
    if not gt_root.is_dir():
        raise DataError(f"{gt_root} does not exist (expected the Cityscapes gtFine folder)")
    dirs = [gt_root / s for s in splits] if splits else [gt_root]
    for d in dirs:
        if not d.is_dir():
            raise DataError(f"{d} does not exist")
    files = sorted(p for d in dirs for p in FolderWalk(d, pattern="*_gtFine_labelIds.png").files)
    if not files:
        raise DataError(f"no *_gtFine_labelIds.png files under {', '.join(map(str, dirs))}")
    lut = train_id_lut()
    written = skipped = 0
    iterator = files
    if progress:
        iterator = tqdm(files, desc="trainIds", unit="file")
    for path in iterator:
        target = path.with_name(path.name.replace("_labelIds.png", "_labelTrainIds.png"))
        if target.exists() and not overwrite:
            skipped += 1
            continue
        try:
            with Image.open(path) as im:
                label_ids = np.asarray(im)
        except OSError as exc:
            raise DataError(f"cannot read label {path}: {exc}") from exc
        if label_ids.ndim != 2:
            raise DataError(f"{path} is not a single-channel label image")
        outside = (label_ids < 0) | (label_ids >= len(lut))
        if outside.any():
            values = np.unique(label_ids[outside])[:8].tolist()
            raise DataError(
                f"{path} has label ids {values} outside 0..{len(lut) - 1}; expected Cityscapes "
                "labelIds (0..33, anything else up to 255 becomes 255 = ignore)"
            )
        atomic_save_image(lut[label_ids], target)
        written += 1
    return {"written": written, "skipped": skipped}
