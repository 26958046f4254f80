"""Tiny generated segmentation datasets for the segmentation tests (imported by test modules)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

TINY_CHANNELS = (8, 8, 16, 16, 32, 32, 32, 32)
COLOURS = np.array([[90, 90, 90], [220, 40, 40], [40, 40, 220]], dtype=np.uint8)


def scene(rng: np.random.Generator, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with a red (class 1) and a blue (class 2) rectangle, a 255 border strip."""
    label = np.zeros((size, size), dtype=np.uint8)
    for cls in (1, 2):
        h, w = rng.integers(size // 4, size // 2, 2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        label[y : y + h, x : x + w] = cls
    image = COLOURS[label].astype(np.int16) + rng.integers(-20, 20, (size, size, 3))
    label[:, :2] = 255  # ignored pixels
    return image.clip(0, 255).astype(np.uint8), label


def make_list_dataset(root: Path, n_train: int = 8, n_val: int = 2, size: int = 40) -> Path:
    """The original list-file layout: info.json, {split}_images.txt, {split}_labels.txt."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        images, labels = [], []
        for i in range(n):
            image, label = scene(rng, size)
            Image.fromarray(image).save(root / "images" / f"{split}_{i}.png")
            Image.fromarray(label).save(root / "labels" / f"{split}_{i}.png")
            images.append(f"images/{split}_{i}.png")
            labels.append(f"labels/{split}_{i}.png")
        (root / f"{split}_images.txt").write_text("\n".join(images) + "\n")
        (root / f"{split}_labels.txt").write_text("\n".join(labels) + "\n")
    info = {"mean": [0.4, 0.3, 0.35], "std": [0.25, 0.2, 0.3], "classes": 3}
    (root / "info.json").write_text(json.dumps(info))
    return root


def one_thread():
    """Generator for a module-scoped fixture: run torch on one thread, then restore.

    The tiny nets here gain nothing from threads, and on a busy shared CPU OpenMP's spinning
    threads made these tests 5x slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
