"""The demo's two engine tasks: classification and segmentation on scenes rendered in memory.

They supply only what differs from the library tasks (:mod:`drnet.tasks.classify`,
:mod:`drnet.tasks.segment`): the data. Training scenes are rendered on the fly and *fresh every
epoch* (sample ``i`` of an epoch is scene ``i + length * k`` for a ``k`` drawn from the engine's
per-sample seed), so a short run never sees the same scene twice and stays a pure function of the
seed. The scenes already randomise item, position, scale, tint and background; the only extra
augmentation is a horizontal flip. Evaluation, the loss and the models are the libraries'.

Evaluation scenes are the same scenes that :func:`~drnet.data.scenes.make_classification_scenes`
writes to disk for the same settings, so the localization sweep (which reads ImageFolder trees)
and top-1 (computed here in memory) score the same images.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, get_worker_info

from drnet.data.scenes import ClassificationScenes, SegmentationScenes
from drnet.engine.trainer import Task, TrainConfig
from drnet.tasks.classify import ClassifierCard, evaluate_classifier
from drnet.tasks.segment import evaluate_segmentation, segmentation_loss

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
    """Normalisation, drawing training scenes, and the hard stop of a training run.

    For training (``train=True``) item ``i`` is flipped with probability 0.5 and is one of
    ``rounds`` scenes of the same class, ``i + len * r`` for ``r`` in ``[0, rounds)``: with
    ``rounds=None`` a new scene every time it is drawn; with a number the rendered scenes are
    kept in memory and reused (rendering costs about a third of a small network's step). The
    draws come from the torch RNG, which the engine seeds per sample. Without ``train`` item
    ``i`` is scene ``i`` as it is.

    When :attr:`deadline` (a ``time.monotonic()`` value) has passed, the next item drawn in the
    main process raises SIGTERM once: the engine's own graceful stop, which finishes the
    iteration, writes ``checkpoint_last.pth`` and raises
    :class:`~drnet.engine.TrainingInterrupted`. Drawing items in the main process (no data
    workers) means the signal always arrives inside the engine's loop, never outside it.
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], train: bool, rounds: int | None
    ) -> None:
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(3, 1, 1)
        self.train = train
        self.rounds = rounds
        self.cache: dict[int, tuple] = {}
        self.deadline: float | None = None
        self.deadline_hit = False

    def _render(self, index: int) -> tuple:
        raise NotImplementedError

    def _draw(self, index: int, length: int) -> tuple[tuple, bool]:
        """The rendered scene of item ``index`` and whether to flip it."""
        self._check_deadline()
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

    def _check_deadline(self) -> None:
        if self.deadline is None or self.deadline_hit or time.monotonic() < self.deadline:
            return
        if get_worker_info() is None and threading.current_thread() is threading.main_thread():
            self.deadline_hit = True
            signal.raise_signal(signal.SIGTERM)


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


class SceneClassificationTask(Task):
    """Classification of single-item scenes; the model is ``card.model`` at ``card.channels``."""

    name = "classification"
    main_metric = "top1"

    def __init__(
        self, card: ClassifierCard, train_set: ClassificationSceneData, val_set: Dataset | None
    ) -> None:
        self.card = card
        self.train_set = train_set
        self.val_set = val_set

    def build_model(self) -> nn.Module:
        import drnet

        channels = tuple(self.card.channels) if self.card.channels else None
        return drnet.create_model(
            self.card.model, num_classes=self.card.num_classes, channels=channels
        )

    def train_dataset(self) -> Dataset:
        return self.train_set

    def val_dataset(self) -> Dataset | None:
        return self.val_set

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target)

    def evaluate(
        self, model: nn.Module, dataset: Dataset, config: TrainConfig, device: torch.device
    ) -> dict[str, float]:
        loader = DataLoader(dataset, batch_size=max(64, config.batch_size), shuffle=False)
        result = evaluate_classifier(
            model, loader, self.card.class_names(), device, amp=config.amp, progress=False
        )
        metrics = result.metrics()
        return {k: metrics[k] for k in ("top1", "top5", "loss")}

    def describe(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"name": self.name, "source": "drnet demo scenes", **asdict(self.card)}


class SceneSegmentationTask(Task):
    """Segmentation of multi-item scenes with a DRNSeg; the backbone may start from a trained
    classifier's checkpoint (as the paper starts from ImageNet classifiers)."""

    name = "segment"
    main_metric = "miou"

    def __init__(
        self,
        arch: str,
        channels: Sequence[int] | None,
        train_set: SegmentationSceneData,
        val_set: SegmentationSceneData | None,
        backbone_checkpoint: str | Path | None = None,
    ) -> None:
        self.arch = arch
        self.channels = tuple(channels) if channels else None
        self.train_set = train_set
        self.val_set = val_set
        self.backbone_checkpoint = backbone_checkpoint
        self.num_classes = train_set.num_classes

    def build_model(self) -> nn.Module:
        import warnings

        import drnet

        with warnings.catch_warnings():  # the classifier's fc is dropped on purpose
            warnings.simplefilter("ignore")
            return drnet.create_segmentation_model(
                self.arch,
                num_classes=self.num_classes,
                channels=self.channels,
                backbone_checkpoint=self.backbone_checkpoint,
            )

    def train_dataset(self) -> Dataset:
        return self.train_set

    def val_dataset(self) -> Dataset | None:
        return self.val_set

    def loss(self, output: Any, target: Tensor) -> Tensor:
        return segmentation_loss(output, target)

    def evaluate(
        self, model: nn.Module, dataset: Dataset, config: TrainConfig, device: torch.device
    ) -> dict[str, float]:
        with single_thread():
            metrics = evaluate_segmentation(model, dataset, device, amp=config.amp)
        return {k: metrics[k] for k in ("miou", "pixel_accuracy", "mean_accuracy")}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": "drnet demo scenes",
            "arch": self.arch,
            "num_classes": self.num_classes,
            "channels": list(self.channels) if self.channels else None,
            "class_names": list(self.train_set.class_names),
            "mean": self.train_set.mean.flatten().tolist(),
            "std": self.train_set.std.flatten().tolist(),
            "backbone_checkpoint": str(self.backbone_checkpoint)
            if self.backbone_checkpoint
            else None,
        }
