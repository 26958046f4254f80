"""The demo's training data: scenes rendered in memory as ``torch.utils.data`` datasets.

They are the only thing the demo gives the library tasks (:class:`drnet.tasks.classify.
ClassificationTask`, :class:`drnet.tasks.segment.SegmentationTask`); models, losses, training and
evaluation are the library's. Training scenes are drawn from ``rounds`` rendered copies per item
(or fresh every time), so a short run rarely sees the same scene twice and stays a pure function
of the seed. The scenes already randomise item, position, scale, tint and background; the only
extra augmentation is a horizontal flip.

In-memory evaluation scenes are the same scenes that :mod:`drnet.data.scenes` writes to disk for
the same settings; the demo's final evaluations read the files on disk, as the CLI does.
:func:`prepare_data` is the demo's data stage: the normalisation statistics, the in-memory val
sets and the evaluation scenes on disk, gathered in a :class:`SceneData`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from drnet.data.scenes import (
    ClassificationScenes,
    SegmentationScenes,
    make_classification_scenes,
    make_segmentation_scenes,
)
from drnet.demo.recipes import Recipe

#: Fresh training scenes are drawn from this many "rounds" of the dataset's index range.
FRESH_ROUNDS = 1 << 20
# the activation probe's canvas at least: final maps of 16x16, where a gridding score can show
ACTIVATION_CANVAS = 128


def scene_statistics(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (of pixel values in [0, 1]) of uint8 images ``[N, H, W, 3]``."""
    pixels = images.reshape(-1, 3).astype(np.float64) / 255.0
    return [round(float(v), 6) for v in pixels.mean(0)], [round(float(v), 6) for v in pixels.std(0)]


def to_tensor(image: np.ndarray, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 ``[H, W, 3]`` -> normalised float ``[3, H, W]``."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    return (x - mean) / std


class torch_threads:
    """Run a block with ``threads`` torch threads (0: as it is), then restore the count."""

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads

    def __enter__(self) -> None:
        self.previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.previous)


class single_thread(torch_threads):
    """Run a block with one torch thread.

    One image at a time (localization, segmentation evaluation) is made of small operations,
    where a second thread mostly adds synchronisation; on a busy machine it costs up to 10x.
    """

    def __init__(self) -> None:
        super().__init__(1)


class _SceneData:
    """Normalisation and drawing training scenes.

    For training (``train=True``) item ``i`` is flipped with probability 0.5 and is one of
    ``rounds`` scenes of the same class, ``i + len * r`` for ``r`` in ``[0, rounds)``: with
    ``rounds=None`` a new scene every time it is drawn; with a number the rendered scenes are
    kept in memory and reused (rendering costs about a third of a small network's step). The
    draws come from the torch RNG, which the engine seeds per sample. Without ``train`` item
    ``i`` is scene ``i`` as it is.
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], train: bool, rounds: int | None
    ) -> None:
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(3, 1, 1)
        self.train = train
        self.rounds = rounds
        self.cache: dict[int, tuple] = {}

    def _render(self, index: int) -> tuple:
        raise NotImplementedError

    def _draw(self, index: int, length: int) -> tuple[tuple, bool]:
        """The rendered scene of item ``index`` and whether to flip it."""
        if not self.train:
            return self._render(index), False
        if self.rounds is None:
            index += length * int(torch.randint(FRESH_ROUNDS, ()))
            return self._render(index), bool(torch.rand(()) < 0.5)
        if self.rounds > 1:
            index += length * int(torch.randint(self.rounds, ()))
        if index not in self.cache:
            self.cache[index] = self._render(index)
        return self.cache[index], bool(torch.rand(()) < 0.5)


class ClassificationSceneData(Dataset, _SceneData):
    """``(image [3, H, W], target)`` from :class:`ClassificationScenes` (``train`` and
    ``rounds``: see :class:`_SceneData`)."""

    def __init__(
        self,
        scenes: ClassificationScenes,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = False,
        rounds: int | None = None,
    ) -> None:
        _SceneData.__init__(self, mean, std, train, rounds)
        if train and len(scenes) % 10:
            raise ValueError("training scenes keep their class only for a length divisible by 10")
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def _render(self, index: int) -> tuple:
        scene = self.scenes.render(index)
        return scene.image, self.scenes.label_to_target[scene.placements[0].label]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        (image, target), flip = self._draw(index, len(self.scenes))
        x = to_tensor(image, self.mean, self.std)
        return (x.flip(-1) if flip else x), target


class SegmentationSceneData(Dataset, _SceneData):
    """``(image [3, H, W], label int64 [H, W])`` from :class:`SegmentationScenes` (``train`` and
    ``rounds``: see :class:`_SceneData`). ``num_classes`` is what the segmentation evaluation
    reads."""

    def __init__(
        self,
        scenes: SegmentationScenes,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = False,
        rounds: int | None = None,
    ) -> None:
        _SceneData.__init__(self, mean, std, train, rounds)
        self.scenes = scenes
        self.num_classes = scenes.num_classes
        self.class_names = tuple(scenes.class_names)

    def __len__(self) -> int:
        return len(self.scenes)

    def _render(self, index: int) -> tuple:
        scene = self.scenes.render(index)
        return scene.image, scene.mask

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        (image, mask), flip = self._draw(index, len(self.scenes))
        x, label = to_tensor(image, self.mean, self.std), torch.from_numpy(mask.astype(np.int64))
        return (x.flip(-1), label.flip(-1)) if flip else (x, label)

    def name(self, index: int) -> str:
        return f"{index:06d}"


@dataclass
class SceneData:
    """The in-memory datasets and the on-disk evaluation scenes of a run."""

    source: str
    cls_mean: list[float]
    cls_std: list[float]
    seg_mean: list[float]
    seg_std: list[float]
    cls_val: ClassificationSceneData
    seg_val: SegmentationSceneData
    loc_dir: Path  # ImageFolder val/ and holdout/ with boxes (drnet data scenes, classification)
    seg_dir: Path  # list-file layout with info.json (drnet data scenes, segmentation)
    item_source: str
    # val scenes on a canvas of at least ACTIVATION_CANVAS (items at the training scale): the
    # final feature maps are 16x16 there, where a gridding score can show (6x6 maps are too small)
    activation_probe: ClassificationSceneData | None = None

    def cls_train(self, recipe: Recipe, length: int, seed: int) -> ClassificationSceneData:
        scenes = ClassificationScenes(
            "train",
            length,
            canvas=recipe.cls_canvas,
            scale=recipe.cls_scale,
            seed=seed,
            source=self.source,
        )
        return ClassificationSceneData(
            scenes, self.cls_mean, self.cls_std, train=True, rounds=recipe.scene_rounds
        )

    def seg_train(self, recipe: Recipe, length: int, seed: int) -> SegmentationSceneData:
        scenes = SegmentationScenes(
            "train",
            length,
            canvas=recipe.seg_canvas,
            items=recipe.seg_items,
            scale=recipe.seg_scale,
            seed=seed,
            source=self.source,
        )
        return SegmentationSceneData(
            scenes, self.seg_mean, self.seg_std, train=True, rounds=recipe.scene_rounds
        )


def prepare_data(recipe: Recipe, out: Path, seed: int, source: str, progress: bool) -> SceneData:
    """Normalisation statistics (from 256 training scenes of each kind), the in-memory val sets
    and the evaluation scenes on disk, in the layouts of ``drnet data scenes``: ``out/data``
    (``val``, ``holdout``, ``boxes_*.csv``) and ``out/data/segmentation`` (list files,
    ``info.json`` with the statistics of 128 training scenes)."""
    cls_probe = ClassificationScenes(
        "train", 256, canvas=recipe.cls_canvas, scale=recipe.cls_scale, seed=seed, source=source
    )
    cls_mean, cls_std = scene_statistics(cls_probe.arrays()[0])
    cls_val = ClassificationScenes(
        "val",
        recipe.cls_val,
        canvas=recipe.cls_canvas,
        scale=recipe.cls_scale,
        seed=seed,
        source=source,
    )
    seg_val = SegmentationScenes(
        "val",
        recipe.seg_val,
        canvas=recipe.seg_canvas,
        items=recipe.seg_items,
        scale=recipe.seg_scale,
        seed=seed,
        source=source,
    )
    loc_dir = out / "data"
    make_classification_scenes(
        loc_dir,
        0,
        recipe.cls_val,
        recipe.cls_holdout,
        canvas=recipe.cls_canvas,
        scale=recipe.cls_scale,
        seed=seed,
        box_format="csv",
        source=source,
        overwrite=True,
        progress=progress,
    )
    seg_dir = loc_dir / "segmentation"
    make_segmentation_scenes(
        seg_dir,
        128,
        recipe.seg_val,
        canvas=recipe.seg_canvas,
        items=recipe.seg_items,
        scale=recipe.seg_scale,
        seed=seed,
        source=source,
        progress=progress,
    )
    info = json.loads((seg_dir / "info.json").read_text())
    seg_mean, seg_std = info["mean"], info["std"]  # what evaluation normalises with
    return SceneData(
        source=source,
        cls_mean=cls_mean,
        cls_std=cls_std,
        seg_mean=seg_mean,
        seg_std=seg_std,
        cls_val=ClassificationSceneData(cls_val, cls_mean, cls_std),
        seg_val=SegmentationSceneData(seg_val, seg_mean, seg_std),
        loc_dir=loc_dir,
        seg_dir=seg_dir,
        item_source=cls_probe.pool.items.source,
        activation_probe=ClassificationSceneData(
            ClassificationScenes(
                "val",
                math.lcm(recipe.activation_images, 10),
                canvas=max(2 * recipe.cls_canvas, ACTIVATION_CANVAS),
                scale=recipe.cls_scale,
                seed=seed,
                source=source,
            ),
            cls_mean,
            cls_std,
        ),
    )
