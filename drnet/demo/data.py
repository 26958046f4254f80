"""The demo's training data: scenes rendered in memory as ``torch.utils.data`` datasets.

They are the only thing the demo gives the library tasks (:class:`drnet.tasks.classify.
ClassificationTask`, :class:`drnet.tasks.segment.SegmentationTask`); models, losses, training and
evaluation are the library's. Training scenes are drawn from ``rounds`` rendered copies per item
(or fresh every time), so a short run rarely sees the same scene twice and stays a pure function
of the seed. The scenes already randomise item, position, scale, tint and background; the only
extra augmentation is a horizontal flip.

In-memory evaluation scenes are the same scenes that :mod:`drnet.data.scenes` writes to disk for
the same settings; the demo's final evaluations read the files on disk, as the CLI does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from drnet.data.scenes import ClassificationScenes, SegmentationScenes

#: Fresh training scenes are drawn from this many "rounds" of the dataset's index range.
FRESH_ROUNDS = 1 << 20


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
