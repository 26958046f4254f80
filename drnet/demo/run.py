"""``drnet demo``: the paper's three experiments in miniature, within a time budget.

:func:`run_demo` reads top to bottom:

1. set up (device, seed, the Fashion-MNIST items, normalisation statistics);
2. write the evaluation scenes to disk (``data/``: ``val`` and ``holdout`` ImageFolder trees with
   boxes, the layout of ``drnet data scenes``), which the localization library reads;
3. probe training and inference speed for a few iterations (and the number of torch threads)
   and *plan* the number of training scenes so that the whole run fits the budget (printed up
   front as the time estimate);
4. train each classifier with the shared engine on scenes rendered in memory, then score
   top-1/top-5 on the ``val`` scenes (test items) and weakly-supervised localization on them,
   with the box threshold chosen on the ``holdout`` scenes and the centred-box prior beside it;
5. re-plan with the time left, train each segmenter (backbone started from its classifier) and
   score mIoU beside the all-background baseline;
6. collect per-level activation maps and gridding scores;
7. write ``metrics.json`` and the self-contained ``report.html``.

Given its plan (the image counts and thread count in ``metrics.json``'s ``plan``), a run is a pure
function of the seed; the plan itself depends on the machine's speed, and ``cls_images``,
``seg_images`` and ``threads`` fix it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from drnet.data.fashion_mnist import CLASS_TITLES, ENV_VAR, PACKAGED
from drnet.data.scenes import (
    ClassificationScenes,
    SegmentationScenes,
    make_classification_scenes,
    make_segmentation_scenes,
)
from drnet.demo.data import (
    ClassificationSceneData,
    SegmentationSceneData,
    scene_statistics,
    single_thread,
)
from drnet.demo.recipes import Recipe, check_recipe, get_recipe
from drnet.engine import TrainConfig
from drnet.engine.checkpoint import CHECKPOINT_EMA, CHECKPOINT_LAST
from drnet.engine.distributed import resolve_device
from drnet.engine.precision import amp_dtype, autocast_context
from drnet.errors import DrnetError
from drnet.models.loading import ModelCard, load_model
from drnet.speed.inference import resolve_inference_dtype

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
#: Files and folders a demo run owns inside its output folder (removed when it runs again).
MARKER_FILE = ".drnet-demo"  # marks a folder as a demo's output (so it may be replaced)
OWNED = (METRICS_FILE, REPORT_FILE, "data", "models", "figures", "seeds.json", MARKER_FILE)
FLOORS = {"classification_top1": 0.70, "segmentation_miou": 0.20, "localization_margin": 0.05}
PER_IMAGE_BOX_OVERHEAD_S = 0.003  # PNG decode + box sweep of one localization image (measured)
REPORT_OVERHEAD_S = 4.0  # activation maps, figures, report
# the engine's own work per iteration (loss sync, schedule, progress bar, checkpoints), beyond
# the probed step and data pipeline: about 10% on 2 cores
ENGINE_OVERHEAD = 1.1


@dataclass
class DemoConfig:
    """What ``drnet demo`` takes. Every field has a default (the no-argument run)."""

    output_dir: str = "demo-out"
    paper: bool = False
    quick: bool = False
    budget_minutes: float | None = None  # None: the recipe's (6, or 60 with paper)
    device: str = "auto"
    seed: int = 0
    fashion_mnist: str | None = None  # None: $DRNET_FASHION_MNIST, else the packaged subset
    workers: int = 0
    threads: int | None = None  # torch threads (None: one, or more where the probe finds it pays)
    progress: bool = True
    seeds: int = 1  # run everything this many times (seed, seed + 1, ...), budget split
    cls_images: int | None = None  # fix the plan (training scenes per model)
    seg_images: int | None = None
    dtype: str = "auto"  # auto: bf16 training and inference where the device has it natively
    recipe: Recipe | None = field(default=None, repr=False)  # overrides paper/quick
    started: float | None = None  # time.monotonic() when the command started (None: now)


# ----------------------------------------------------------------------------------- helpers


logger = logging.getLogger(__name__)


def _say(message: str) -> None:
    logger.info("%s", message)


def _fmt_s(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not available on this platform
        return None


def _versions() -> dict[str, str]:
    import PIL
    import torchvision

    from drnet import __version__

    return {
        "drnet": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }


def _device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "type": device.type,
        "name": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def _item_source(config: DemoConfig) -> str:
    return config.fashion_mnist or os.environ.get(ENV_VAR) or PACKAGED


def _prepare_output(out: Path) -> None:
    """Make ``out``; clear what an earlier demo run left there, refuse a folder of other files."""
    if out.exists() and not out.is_dir():
        raise DrnetError(f"--output-dir {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER_FILE).is_file() and not (out / METRICS_FILE).is_file():
            raise DrnetError(
                f"--output-dir {out}: not empty and not an earlier demo's output; choose a new "
                "folder"
            )
        for path in [*(out / name for name in OWNED), *out.glob("seed-*")]:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER_FILE).write_text(
        "written by drnet demo; the folder is replaced by the next run\n"
    )


def process_age() -> float:
    """Seconds since this process started (0 where /proc is not available): the budget counts
    the command's start-up (importing torch) too."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class _Clock:
    """Wall time since the start, stage timings, and the budget."""

    def __init__(self, budget_s: float, start: float | None = None) -> None:
        self.start = time.monotonic() if start is None else start
        self.budget_s = budget_s
        self.stages: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def stage(self, name: str) -> _Stage:
        return _Stage(self, name)


class _Stage:
    def __init__(self, clock: _Clock, name: str) -> None:
        self.clock, self.name = clock, name

    def __enter__(self) -> _Stage:
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        spent = time.monotonic() - self.t0
        self.clock.stages[self.name] = round(self.clock.stages.get(self.name, 0.0) + spent, 3)


# ----------------------------------------------------------------------------------- data


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
    # val scenes on a canvas twice the training one (items at the training scale): the final
    # feature maps are 16x16 there, where a gridding score can show (8x8 maps are too small)
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
                _lcm(recipe.activation_images, 10),
                canvas=2 * recipe.cls_canvas,
                scale=recipe.cls_scale,
                seed=seed,
                source=source,
            ),
            cls_mean,
            cls_std,
        ),
    )


# ----------------------------------------------------------------------------------- planning


@dataclass
class Rates:
    """Seconds per image of one model, measured by :func:`probe`."""

    cls_train: float
    cls_infer: float  # batched inference
    cls_single: float  # one image at a time (localization)
    seg_train: float
    seg_single: float  # one image at a time (segmentation evaluation)
    cls_data: float = 0.0  # the data pipeline's share of cls_train (rendering, seeding, ...)
    seg_data: float = 0.0
    threads: int = 1  # the torch threads cls_train and seg_train were measured with
    cls_train_one: float = math.inf  # ... and with one thread
    seg_train_one: float = math.inf

    def with_one_thread(self) -> Rates:
        return dataclasses.replace(
            self, cls_train=self.cls_train_one, seg_train=self.seg_train_one, threads=1
        )

    def cls_fixed(self, recipe: Recipe) -> float:
        """Evaluation time around classification training: monitor sets, val, localization."""
        monitor = recipe.cls_epochs * min(recipe.cls_monitor, recipe.cls_val) * self.cls_infer
        # both box resolutions are scored (the default and the other, for the report)
        per_image = self.cls_single + PER_IMAGE_BOX_OVERHEAD_S
        loc = 2 * (recipe.cls_val + recipe.cls_holdout) * per_image
        return monitor + recipe.cls_val * self.cls_infer + loc

    def seg_fixed(self, recipe: Recipe) -> float:
        monitor = recipe.seg_epochs * min(recipe.seg_monitor, recipe.seg_val) * self.seg_single
        return monitor + recipe.seg_val * self.seg_single


def choose_threads(rates: dict[str, Rates], gain: float = 1.25) -> int:
    """More than one torch thread only where it is clearly faster for every model and task.

    On two cores shared with another busy process the threads of one operation wait for each
    other; that costs far more than the second core brings, so one thread is the safe choice.
    """
    threads = min(r.threads for r in rates.values())
    for r in rates.values():
        if r.cls_train * gain > r.cls_train_one or r.seg_train * gain > r.seg_train_one:
            return 1
    return threads


def use_channels_last(recipe: Recipe, model_name: str) -> bool:
    """Whether ``model_name`` trains in channels-last layout: where the recipe asks for it and
    the engine allows it (:func:`drnet.engine.trainer.channels_last_is_safe`; the probe times the
    same layout the engine will use). The layout changes speed only, never the numbers."""
    if not recipe.channels_last:
        return False
    import drnet
    from drnet.engine.trainer import channels_last_is_safe

    model = drnet.create_model(
        model_name, num_classes=0, channels=recipe.model_channels(model_name)
    )
    return channels_last_is_safe(model)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    loss_fn,
    device: torch.device,
    warmup: int,
    timed: int,
    channels_last: bool = False,
    give_up_after: float = math.inf,
    amp: bool = False,
) -> float:
    """Seconds per image of an SGD step: the median over ``timed`` steps after ``warmup``.

    The median, not the mean, so that a moment of contention on a shared machine does not
    halve the plan; the first steps (memory allocation, kernel selection) are not timed. A
    timed step slower than ``give_up_after`` seconds ends the measurement: ``inf``.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    x, y = batch[0].to(device), batch[1].to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(warmup + timed):
        _sync(device)
        t0 = time.perf_counter()
        with autocast_context(device, amp):  # as the engine trains: bf16 where native
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        if time.perf_counter() - t0 > give_up_after:
            return math.inf
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times)) / len(x)


@torch.no_grad()
def _time_inference(
    model: nn.Module, x: torch.Tensor, device: torch.device, warmup: int, timed: int
) -> float:
    """Seconds per image of inference on ``x`` (median over ``timed`` calls)."""
    model.eval()
    x = x.to(device)
    times = []
    for i in range(warmup + timed):
        _sync(device)
        t0 = time.perf_counter()
        model(x)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times)) / len(x)


def _data_seconds(dataset, size: int, epochs: int, rounds: int | None) -> tuple[tuple, float]:
    """A training batch of ``size`` items, and the data pipeline's seconds per item seen.

    Items are drawn twice: the first time renders (and caches) the scenes, the second goes
    through what the engine adds (per-sample seeding, collation), so the cost per item seen is
    the second pass plus the rendering as often as it happens (:func:`render_share`).
    """
    from torch.utils.data import default_collate

    from drnet.engine.data import SeededDataset

    t0 = time.perf_counter()
    for i in range(size):
        dataset[i]
    first = (time.perf_counter() - t0) / size
    t0 = time.perf_counter()
    seeded = SeededDataset(dataset, 0)
    batch = default_collate([seeded[i] for i in range(size)])
    second = (time.perf_counter() - t0) / size
    seconds = second if rounds is None else second + first * render_share(rounds, epochs)
    return (batch[0], batch[1]), seconds


def probe(
    model_name: str,
    recipe: Recipe,
    data: SceneData,
    device: torch.device,
    seed: int,
    choose_threads: bool = True,
    amp: bool = False,
) -> Rates:
    """Time a few training steps (plus rendering the scenes) and inference of one model.

    With ``choose_threads`` (on the CPU) the training steps are also timed with one thread and
    the faster count is kept: on a machine busy with other jobs a second thread mostly waits.
    """
    import drnet
    from drnet.tasks.segment import segmentation_loss

    channels = recipe.model_channels(model_name)
    torch.manual_seed(seed)
    warmup, timed = (1, 1) if recipe.fixed_images else (2, 5)
    layout = use_channels_last(recipe, model_name)
    choose_threads = choose_threads and device.type == "cpu" and torch.get_num_threads() > 1

    def timed_steps(model, batch, loss_fn) -> tuple[float, float]:
        """Seconds per image with the current thread count and with one thread."""
        if not choose_threads:
            seconds = _time_steps(model, batch, loss_fn, device, warmup, timed, layout, amp=amp)
            return seconds, seconds
        with single_thread():
            one = _time_steps(model, batch, loss_fn, device, warmup, timed, layout, amp=amp)
        # more threads only pay when they are clearly faster: stop timing once they are not
        # (the first step may be slower: it sets up the threads' kernels)
        limit = 3.0 * one * len(batch[0])
        return _time_steps(model, batch, loss_fn, device, 1, timed, layout, limit, amp), one

    cls_set = data.cls_train(recipe, _lcm(recipe.cls_batch, 10), seed + 1)
    cls_batch, cls_data = _data_seconds(
        cls_set, recipe.cls_batch, recipe.cls_epochs, recipe.scene_rounds
    )
    classifier = drnet.create_model(model_name, num_classes=10, channels=channels).to(device)
    cls_train, cls_one = timed_steps(classifier, cls_batch, torch.nn.functional.cross_entropy)
    with single_thread():  # a safe upper bound whichever thread count is chosen
        cls_infer = _time_inference(classifier, cls_batch[0], device, 1, max(1, timed // 2))
        cls_single = _time_inference(classifier, cls_batch[0][:1], device, warmup, 2 * timed)

    seg_set = data.seg_train(recipe, recipe.seg_batch, seed + 1)
    seg_batch, seg_data = _data_seconds(
        seg_set, recipe.seg_batch, recipe.seg_epochs, recipe.scene_rounds
    )
    segmenter = drnet.create_segmentation_model(
        model_name, num_classes=data.seg_val.num_classes, channels=channels
    ).to(device)
    seg_train, seg_one = timed_steps(segmenter, seg_batch, segmentation_loss)
    with single_thread():
        seg_single = _time_inference(segmenter, seg_batch[0][:1], device, warmup, 2 * timed)
    k = ENGINE_OVERHEAD
    return Rates(
        cls_train=k * (cls_train + cls_data),
        cls_infer=cls_infer,
        cls_single=cls_single,
        seg_train=k * (seg_train + seg_data),
        seg_single=seg_single,
        cls_data=cls_data,
        seg_data=seg_data,
        threads=torch.get_num_threads(),
        cls_train_one=k * (cls_one + cls_data),
        seg_train_one=k * (seg_one + seg_data),
    )


def render_share(rounds: int | None, epochs: int) -> float:
    """Scenes rendered per scene seen: 1 when every draw is fresh; with ``rounds`` reused sets
    (see :class:`~drnet.demo.data.ClassificationSceneData`) the expected share of draws that
    meet a scene for the first time."""
    if rounds is None:
        return 1.0
    return rounds * (1 - (1 - 1 / rounds) ** epochs) / epochs


def _per_epoch(images: float, epochs: int, batch: int, minimum: int) -> int:
    """Training scenes per epoch: a multiple of the batch and of 10 (balanced classes)."""
    step = _lcm(batch, 10)
    per_epoch = max(minimum / epochs, images / epochs)
    return max(step, int(per_epoch // step) * step)


@dataclass
class Plan:
    """Training scenes per epoch for every model (the same for all models of a run)."""

    cls_per_epoch: int
    seg_per_epoch: int
    cls_epochs: int
    seg_epochs: int
    estimate_s: float  # the whole run, as planned
    stages_s: dict[str, float]

    @property
    def cls_images(self) -> int:
        return self.cls_per_epoch * self.cls_epochs

    @property
    def seg_images(self) -> int:
        return self.seg_per_epoch * self.seg_epochs


def make_plan(
    recipe: Recipe, rates: dict[str, Rates], elapsed: float, budget_s: float, config: DemoConfig
) -> Plan:
    """Share the time left after the fixed costs between classification and segmentation
    training, the same number of scenes for every model."""
    cls_fixed = sum(r.cls_fixed(recipe) for r in rates.values())
    seg_fixed = sum(r.seg_fixed(recipe) for r in rates.values())
    other = REPORT_OVERHEAD_S * len(rates)
    train_s = max(0.0, budget_s * recipe.safety - elapsed - cls_fixed - seg_fixed - other)
    cls_cost = sum(r.cls_train for r in rates.values())
    seg_cost = sum(r.seg_train for r in rates.values())
    cls_images = recipe.cls_share * train_s / cls_cost
    seg_images = (1 - recipe.cls_share) * train_s / seg_cost
    if recipe.fixed_images:
        cls_images, seg_images = recipe.fixed_images
    cls_images = min(cls_images, recipe.max_images[0])
    seg_images = min(seg_images, recipe.max_images[1])
    if config.cls_images:
        cls_images = config.cls_images
    if config.seg_images:
        seg_images = config.seg_images
    cls_per_epoch = _per_epoch(
        cls_images, recipe.cls_epochs, recipe.cls_batch, recipe.min_images[0]
    )
    seg_per_epoch = _per_epoch(
        seg_images, recipe.seg_epochs, recipe.seg_batch, recipe.min_images[1]
    )
    stages = {
        "classification_training": cls_per_epoch * recipe.cls_epochs * cls_cost,
        "classification_evaluation": cls_fixed,
        "segmentation_training": seg_per_epoch * recipe.seg_epochs * seg_cost,
        "segmentation_evaluation": seg_fixed,
        "activations_and_report": other,
    }
    return Plan(
        cls_per_epoch,
        seg_per_epoch,
        recipe.cls_epochs,
        recipe.seg_epochs,
        elapsed + sum(stages.values()),
        {k: round(v, 1) for k, v in stages.items()},
    )


# ----------------------------------------------------------------------------------- training


def _train_run(train_fn, task, train_config: TrainConfig) -> dict:
    """Train with the library (``train_fn``: :func:`drnet.tasks.classify.train_classifier` or
    :func:`drnet.tasks.segment.train_segmentation`); the engine stops by itself at
    ``train_config.time_limit`` (the budget's safety net), keeping the weights so far."""
    t0 = time.monotonic()
    summary = train_fn(task, train_config)
    if summary["stopped_early"]:
        _say(
            f"note: training stopped at its time limit ({_fmt_s(train_config.time_limit)}); "
            "using the weights so far"
        )
    return {
        "stopped_early": summary["stopped_early"],
        "history": summary["history"],
        "images_seen": summary["samples_seen"],
        # with --model-ema the average is the model the demo evaluates (and builds on)
        "checkpoint": Path(summary.get("checkpoint_ema") or summary["checkpoint_last"]),
        "run_dir": Path(summary["output_dir"]),
        "seconds": time.monotonic() - t0,
    }


def _slowdown(per_model: dict, rates: dict[str, Rates], plan: Plan) -> float:
    """Actual over probed seconds per classification training image (within 0.5..3)."""
    actual = probed = 0.0
    for m, entry in per_model.items():
        history = entry.get("classification", {}).get("history", [])
        seconds = sum(float(row.get("time_s", 0)) for row in history)
        if seconds and history:
            actual += seconds / (plan.cls_per_epoch * len(history))
            probed += rates[m].cls_train
    return min(3.0, max(0.5, actual / probed)) if probed else 1.0


def use_amp(config: DemoConfig, device: torch.device) -> bool:
    """Mixed precision for training: unless ``--dtype float32``, where the device has a fast
    low-precision dtype (bf16 on CPUs with native bf16; bf16/fp16 on CUDA)."""
    return config.dtype != "float32" and amp_dtype(device) is not None


def _train_config(
    recipe: Recipe,
    model_name: str,
    kind: str,
    out: Path,
    config: DemoConfig,
    device: torch.device,
    time_limit: float | None,
) -> TrainConfig:
    cls = kind == "classification"
    ema = recipe.cls_ema_decay if cls else recipe.seg_ema_decay
    return TrainConfig(
        output_dir=str(out),
        epochs=recipe.cls_epochs if cls else recipe.seg_epochs,
        batch_size=recipe.cls_batch if cls else recipe.seg_batch,
        lr=recipe.cls_lr if cls else recipe.seg_lr,
        lr_mode=recipe.cls_lr_mode if cls else recipe.seg_lr_mode,
        weight_decay=recipe.cls_weight_decay if cls else recipe.seg_weight_decay,
        opt=recipe.cls_opt if cls else recipe.seg_opt,
        lr_warmup_epochs=recipe.cls_warmup_epochs if cls else recipe.seg_warmup_epochs,
        label_smoothing=recipe.cls_label_smoothing if cls else recipe.seg_label_smoothing,
        model_ema=ema > 0,
        model_ema_decay=ema or 0.999,
        mixup_alpha=recipe.cls_mixup_alpha if cls else 0.0,
        cutmix_alpha=recipe.cls_cutmix_alpha if cls else 0.0,
        momentum=0.9,
        workers=config.workers,
        device=str(device),
        amp=use_amp(config, device),
        seed=config.seed,
        progress=config.progress,
        handle_signals=True,
        # measured by the engine (and cached per machine) where the recipe allows it
        channels_last="auto" if use_channels_last(recipe, model_name) else False,
        time_limit=time_limit,
        overwrite=True,  # each demo replaces the previous demo's models
    )


def train_classifier(
    model_name: str,
    recipe: Recipe,
    data: SceneData,
    plan: Plan,
    out: Path,
    config: DemoConfig,
    device: torch.device,
    time_limit: float | None,
) -> dict:
    """Train one classifier with the library task; returns the run's record."""
    from drnet.tasks.classify import ClassificationTask
    from drnet.tasks.classify import train_classifier as train_fn

    card = ModelCard(
        model=model_name,
        num_classes=10,
        class_names=list(data.cls_val.scenes.classes),
        channels=list(recipe.model_channels(model_name)),
        mean=list(data.cls_mean),
        std=list(data.cls_std),
        crop_size=recipe.cls_canvas,
        resize_size=recipe.cls_canvas,
    )
    train_set = data.cls_train(recipe, plan.cls_per_epoch, config.seed)
    monitor = Subset(data.cls_val, range(min(recipe.cls_monitor, recipe.cls_val)))
    task = ClassificationTask(card, train_set, monitor, eval_batch_size=64)
    settings = _train_config(recipe, model_name, "classification", out, config, device, time_limit)
    return {**_train_run(train_fn, task, settings), "card": card}


def evaluate_classification(
    run: dict,
    data: SceneData,
    out: Path,
    device: torch.device,
    progress: bool,
    dtype: str | None = None,
) -> tuple[nn.Module, dict]:
    """Top-1/top-5, per-class accuracy and the confusion matrix on the val scenes on disk,
    through the same functions as ``drnet classify eval`` (the inference fast path included)."""
    from drnet.tasks.classify import (
        evaluate_classifier,
        folder_dataset,
        write_classification_report,
    )

    model, card = load_model(run["checkpoint"], task="classification")
    dataset = folder_dataset(data.loc_dir / "val", card)
    result = evaluate_classifier(
        model, dataset, card.names(), device, batch_size=128, progress=progress, dtype=dtype
    )
    metrics = write_classification_report(result, out)
    metrics["samples"] = _classification_samples(model.to(device), card, data, device)
    return model, metrics


@torch.no_grad()
def _classification_samples(model: nn.Module, card: ModelCard, data: SceneData, device) -> list:
    """The report's sample predictions: the first two val scenes of each class."""
    images = torch.stack([data.cls_val[i][0] for i in range(20)])
    probabilities = model.eval()(images.to(device)).float().softmax(1).cpu()
    samples = []
    for i in range(20):
        p, c = probabilities[i].max(0)
        truth = data.cls_val[i][1]
        samples.append(
            {
                "index": i,
                "true": card.class_names[truth],
                "predicted": card.class_names[int(c)],
                "probability": round(float(p), 4),
                "correct": int(c) == truth,
            }
        )
    return samples


def evaluate_localization_stage(
    model: nn.Module,
    card,
    data: SceneData,
    out: Path,
    device: torch.device,
    progress: bool,
    dtype: str | None = None,
) -> dict:
    """The paper's protocol on the val scenes, threshold chosen on the holdout scenes, through
    the same function as ``drnet localize eval``."""
    from drnet.metrics import wilson_interval
    from drnet.tasks.boxes import BOX_RESOLUTIONS

    with single_thread():
        metrics = _evaluate_localization(model, card, data, out, device, progress, dtype=dtype)
        metrics["examples"] = localization_examples(
            model, card, data, out, metrics["threshold"], device
        )
        # both box resolutions on the same model: the default one above, the other beside it
        metrics["by_box_resolution"] = {metrics["box_resolution"]: _resolution_summary(metrics)}
        for resolution in BOX_RESOLUTIONS:
            if resolution != metrics["box_resolution"]:
                other = _evaluate_localization(
                    model, card, data, out / resolution, device, progress, resolution, dtype
                )
                metrics["by_box_resolution"][resolution] = _resolution_summary(other)
    n = metrics["num_images_scored"]
    hits = round((1 - metrics["top1_loc_err"]) * n)
    metrics["top1_accuracy_ci95"] = wilson_interval(hits, n)
    prior = metrics["centred_box_prior"]
    metrics["top1_accuracy"] = 1 - metrics["top1_loc_err"]
    metrics["top1_error"] = metrics["top1_loc_err"]
    metrics["top5_error"] = metrics["top5_loc_err"]
    metrics["gt_known_error"] = metrics["gt_known_loc_err"]
    prior["top1_accuracy"] = 1 - prior["top1_loc_err"]
    prior["gt_known_accuracy"] = 1 - prior["gt_known_loc_err"]
    return metrics


def _resolution_summary(metrics: dict) -> dict:
    """What the report shows per box resolution: accuracies on val and held-out, t, offset."""
    held_out = min(metrics["held_out_curve"] or [], key=lambda r: r["top1_loc_err"], default=None)
    return {
        "top1_accuracy": 1 - metrics["top1_loc_err"],
        "threshold": metrics["threshold"],
        "held_out_top1_accuracy": None if held_out is None else 1 - held_out["top1_loc_err"],
        "box_centre_offset": metrics.get("box_centre_offset"),
    }


@torch.no_grad()
def localization_examples(
    model: nn.Module, card, data: SceneData, out: Path, threshold: float, device, count: int = 20
) -> list[dict]:
    """Heatmap-and-box pictures of the first ``count`` val scenes (two per class), drawn at
    twice the scene size with the localization library's overlay; returns their captions."""
    import torch.nn.functional as F

    from drnet.data.classification import full_image_transform, load_rgb
    from drnet.data.fashion_mnist import CLASS_NAMES
    from drnet.tasks.boxes import iou
    from drnet.tasks.localize import (
        LocalizationSettings,
        class_heatmap,
        localize_image,
        render_overlay,
    )

    transform = full_image_transform(card.resize_size, card.mean, card.std)
    settings = LocalizationSettings(top_k=1)
    names = card.names()
    examples = []
    (out / "examples").mkdir(parents=True, exist_ok=True)
    for i in range(min(count, len(data.cls_val))):
        name = CLASS_NAMES[i % len(CLASS_NAMES)]  # scene i shows class i % 10
        image = load_rgb(data.loc_dir / "val" / name / f"{i:06d}.png")
        size = (image.height, image.width)
        target = names.index(name)
        result = localize_image(
            model, transform(image).to(device), size, [threshold], settings, extra_class=target
        )
        predicted = int(result.classes[0])
        box = result.boxes[0, 0]
        gt = torch.tensor(data.cls_val.scenes.render(i).placements[0].box, dtype=torch.float32)
        overlap = float(iou(box[None], gt[None])[0, 0])
        heat = class_heatmap(result, predicted)
        big = F.interpolate(heat[None, None], scale_factor=2, mode="bilinear")[0, 0]
        picture = render_overlay(image.resize((2 * size[1], 2 * size[0])), big, 2 * box, 2 * gt)
        path = out / "examples" / f"{i:06d}.png"
        picture.save(path)
        examples.append(
            {
                "image": f"val/{name}/{i:06d}.png",
                "picture": str(path.relative_to(out)),
                "true": name,
                "predicted": names[predicted],
                "probability": round(float(result.probabilities[0]), 4),
                "iou": round(overlap, 4),
                "correct": predicted == target and overlap > settings.iou_threshold,
            }
        )
    return examples


def _evaluate_localization(
    model,
    card,
    data: SceneData,
    out: Path,
    device,
    progress,
    resolution: str | None = None,
    dtype: str | None = None,
) -> dict:
    from drnet.tasks.localize import LocalizationSettings, evaluate_localization

    settings = LocalizationSettings(**({"box_resolution": resolution} if resolution else {}))
    return evaluate_localization(
        model,
        card,
        data.loc_dir / "val",
        data.loc_dir / "boxes_val.csv",
        out,
        threshold="auto",
        val_dir=data.loc_dir / "holdout",
        val_boxes_source=data.loc_dir / "boxes_holdout.csv",
        settings=settings,
        save_images=0,  # the report draws its own examples (two per class)
        device=device,
        workers=0,
        progress=progress,
        dtype=dtype,
    )


def train_segmenter(
    model_name: str,
    recipe: Recipe,
    data: SceneData,
    plan: Plan,
    out: Path,
    config: DemoConfig,
    device: torch.device,
    time_limit: float | None,
    backbone: Path | None,
) -> dict:
    """Train one segmenter with the library task (backbone from the classifier's checkpoint)."""
    import warnings

    from drnet.tasks.segment import SegmentationTask, train_segmentation

    card = ModelCard(
        model=model_name,
        num_classes=data.seg_val.num_classes,
        task="segmentation",
        class_names=list(data.seg_val.class_names),
        channels=list(recipe.model_channels(model_name)),
        mean=list(data.seg_mean),
        std=list(data.seg_std),
        crop_size=None,
        resize_size=None,
    )
    train_set = data.seg_train(recipe, plan.seg_per_epoch, config.seed)
    monitor = Subset(data.seg_val, range(min(recipe.seg_monitor, recipe.seg_val)))
    task = SegmentationTask(card, train_set, monitor, backbone_weights=backbone)
    settings = _train_config(recipe, model_name, "segmentation", out, config, device, time_limit)
    with warnings.catch_warnings():  # the classifier's fc is dropped on purpose
        warnings.simplefilter("ignore")
        return _train_run(train_segmentation, task, settings)


def background_baseline(confusion: torch.Tensor) -> dict:
    """mIoU and pixel accuracy of predicting background (class 0) everywhere, on the same
    pixels as ``confusion`` (rows = ground truth)."""
    from drnet.metrics import segmentation_metrics

    hist = torch.zeros_like(confusion)
    hist[:, 0] = confusion.sum(1)
    metrics = segmentation_metrics(hist)
    return {"miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"]}


def evaluate_segmentation_stage(
    run: dict,
    data: SceneData,
    out: Path,
    device: torch.device,
    progress: bool,
    examples: int = 6,
    dtype: str | None = None,
) -> dict:
    """mIoU, per-class IoU, pixel accuracy on the val scenes on disk through the same function as
    ``drnet segment eval`` (``out/metrics.json``), the all-background baseline, and a few
    predictions (arrays kept for the report)."""
    from drnet.tasks.segment import run_evaluation

    with single_thread():
        metrics = run_evaluation(
            run["checkpoint"],
            data.seg_dir,
            "val",
            out,
            device=str(device),
            progress=progress,
            dtype=dtype,
        )
    confusion = torch.tensor(metrics["confusion_matrix"])
    names = list(data.seg_val.class_names)
    baseline = background_baseline(confusion)
    result = {
        "miou": metrics["miou"],
        "miou_ci95": metrics["miou_ci95"],
        "pixel_accuracy": metrics["pixel_accuracy"],
        "mean_accuracy": metrics["mean_accuracy"],
        "background_baseline_miou": baseline["miou"],
        "background_baseline_pixel_accuracy": baseline["pixel_accuracy"],
        "per_class_iou": {
            n: (None if math.isnan(v) else v) for n, v in zip(names, metrics["iou"], strict=True)
        },
        "class_names": names,
        "confusion_matrix": metrics["confusion_matrix"],
        "num_images": metrics["num_images"],
    }
    model, _ = load_model(run["checkpoint"], task="segmentation")
    model.to(device)
    samples = []
    with torch.no_grad():
        for i in range(min(examples, len(data.seg_val))):
            scene = data.seg_val.scenes.render(i)
            image, _ = data.seg_val[i]
            pred = model(image[None].to(device))["out"].argmax(1)[0].cpu().numpy()
            samples.append(
                {"image": scene.image, "label": scene.mask, "pred": pred.astype(np.uint8)}
            )
    return {**result, "_samples": samples}


# ----------------------------------------------------------------------------------- activations


def activation_analysis(
    model: nn.Module, data: SceneData, count: int, device: torch.device
) -> tuple[dict, dict]:
    """Per-level activations on ``count`` probe scenes (val items on a canvas twice the
    training one) and their gridding scores.

    Returns ``(scores, activations of the first scene)``; a level whose maps are smaller than
    8x8 has ``score`` None (:func:`drnet.analysis.gridding_scores`).
    """
    from drnet.analysis import collect_activations, gridding_scores

    model.eval()
    images = torch.stack([data.activation_probe[i][0] for i in range(count)]).to(device)
    acts = collect_activations(model, images)
    scores = gridding_scores(acts)
    first = {name: a[:1].cpu() for name, a in acts.items()}
    return scores, first


# ----------------------------------------------------------------------------------- the run


def run_demo(config: DemoConfig) -> dict:
    """Run the demo as ``config`` says; writes ``metrics.json`` and ``report.html`` into
    ``config.output_dir`` and returns the metrics."""
    if config.seeds < 1:
        raise DrnetError(f"--seeds must be at least 1; got {config.seeds}")
    if config.seeds > 1:
        from drnet.demo.seeds import run_seeds

        _prepare_output(Path(config.output_dir))
        return run_seeds(config, run_demo)
    threads = torch.get_num_threads()
    try:
        return _run_demo(config)
    finally:
        torch.set_num_threads(threads)  # the run may choose its own


@dataclass
class _DemoRun:
    """What the stages of a demo run share."""

    config: DemoConfig
    recipe: Recipe
    clock: _Clock
    device: torch.device
    out: Path
    load_start: list[float] | None
    data: SceneData | None = None
    rates: dict[str, Rates] = field(default_factory=dict)
    plan: Plan | None = None
    fixed_plan: bool = False
    per_model: dict[str, dict] = field(default_factory=dict)
    classifiers: dict[str, nn.Module] = field(default_factory=dict)
    slowdown: float = 1.0  # actual over probed training time, measured on classification

    @property
    def models_dir(self) -> Path:
        return self.out / "models"

    @property
    def amp(self) -> bool:
        return use_amp(self.config, self.device)

    @property
    def dtype(self) -> str:
        """What evaluation computes in: ``"bfloat16"`` or ``"float32"``."""
        return _dtype_name(resolve_inference_dtype(self.config.dtype, self.device))

    def precision(self) -> dict[str, str]:
        """``metrics.json``'s ``precision``: what was asked, and what training and evaluation
        computed in."""
        training = amp_dtype(self.device) if self.amp else torch.float32
        return {
            "requested": self.config.dtype,
            "training": _dtype_name(training),
            "evaluation": self.dtype,
        }

    @property
    def report_s(self) -> float:
        return REPORT_OVERHEAD_S * len(self.recipe.models)


def _run_demo(config: DemoConfig) -> dict:
    run = _set_up(config)
    with run.clock.stage("data"):
        _say(f"[1/6] generating scenes (items: {_item_source(config)}) ...")
        run.data = prepare_data(
            run.recipe, run.out, config.seed, _item_source(config), config.progress
        )
    _plan_run(run)
    for index, m in enumerate(run.recipe.models):
        _classification_stage(run, index, m)
    _replan_segmentation(run)
    for index, m in enumerate(run.recipe.models):
        _segmentation_stage(run, index, m)
    return _finish(run)


def _set_up(config: DemoConfig) -> _DemoRun:
    recipe = config.recipe or get_recipe(config.paper, config.quick)
    if config.budget_minutes is not None and config.budget_minutes <= 0:
        raise DrnetError(f"--budget-minutes must be positive; got {config.budget_minutes}")
    check_recipe(recipe)
    if config.workers < 0:
        raise DrnetError(f"--workers must be >= 0; got {config.workers}")
    clock = _Clock(60.0 * (config.budget_minutes or recipe.budget_minutes), config.started)
    if clock.elapsed() > 0.5:
        clock.stages["start_up"] = round(clock.elapsed(), 3)
    load_start = _load()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    out = Path(config.output_dir)
    _prepare_output(out)
    _say(
        f"drnet demo ({recipe.name} recipe): {', '.join(recipe.models)}; budget "
        f"{_fmt_s(clock.budget_s)} on {device.type} ({torch.get_num_threads()} threads); "
        f"load average {load_start}"
    )
    run = _DemoRun(config, recipe, clock, device, out, load_start)
    run.per_model = {
        m: {
            "model": m,
            "channels": list(recipe.model_channels(m)),
            "channels_last": use_channels_last(recipe, m),
        }
        for m in recipe.models
    }
    return run


def _plan_run(run: _DemoRun) -> None:
    """Probe each model's speed (and the thread count), then plan the training scenes."""
    config, recipe, clock = run.config, run.recipe, run.clock
    with clock.stage("probe"):
        _say("[2/6] measuring training speed ...")
        choose = config.threads is None and not recipe.fixed_images
        rates = {
            m: probe(m, recipe, run.data, run.device, config.seed, choose, run.amp)
            for m in recipe.models
        }
        threads = choose_threads(rates) if choose else torch.get_num_threads()
        if threads == 1:
            rates = {m: r.with_one_thread() for m, r in rates.items()}
        torch.set_num_threads(threads)
    run.rates = rates
    run.plan = plan = make_plan(recipe, rates, clock.elapsed(), clock.budget_s, config)
    _say(
        f"plan: {plan.cls_images:,} classification scenes ({plan.cls_epochs} epochs) and "
        f"{plan.seg_images:,} segmentation scenes ({plan.seg_epochs} epochs) per model"
    )
    for m, r in rates.items():
        _say(
            f"      {m}: {1 / r.cls_train:.0f} classification and {1 / r.seg_train:.0f} "
            f"segmentation scenes/s with {threads} torch thread{'s' if threads > 1 else ''}"
        )
    for stage, seconds in plan.stages_s.items():
        _say(f"      {stage.replace('_', ' '):<28} ~{_fmt_s(seconds)}")
    _say(f"estimated total: {_fmt_s(plan.estimate_s)} (budget {_fmt_s(clock.budget_s)})")
    # a plan fixed by hand (or by the quick recipe) is trained in full: no hard stop
    run.fixed_plan = bool(recipe.fixed_images or config.cls_images or config.seg_images)
    if run.fixed_plan:
        _say("note: the plan is fixed, so training is not stopped at the budget")


def _classification_stage(run: _DemoRun, index: int, m: str) -> None:
    """Train classifier ``m`` (the time limit keeps room for what follows), then score
    classification and localization."""
    recipe, rates, clock, config = run.recipe, run.rates, run.clock, run.config
    models = recipe.models
    min_cls, min_seg = recipe.min_images
    rest = models[index + 1 :]
    reserve = rates[m].cls_fixed(recipe) + run.report_s
    reserve += sum(rates[k].cls_fixed(recipe) + min_cls * rates[k].cls_train for k in rest)
    reserve += sum(r.seg_fixed(recipe) + min_seg * r.seg_train for r in rates.values())
    limit = None if run.fixed_plan else clock.left() - 1.3 * reserve - 5
    planned = run.plan.cls_images * rates[m].cls_train
    _say(f"[3/6] training classifier {m} ({index + 1}/{len(models)}): ~{_fmt_s(planned)}")
    run_dir = run.models_dir / m / "classification"
    with clock.stage("classification_training"):
        trained = train_classifier(
            m, recipe, run.data, run.plan, run_dir, config, run.device, limit
        )
    with clock.stage("classification_evaluation"):
        model, cls = evaluate_classification(
            trained, run.data, run_dir, run.device, config.progress, run.dtype
        )
    _say(f"      {m}: top-1 {cls['top1']:.3f}, top-5 {cls['top5']:.3f}")
    _say(f"[4/6] localization {m}: threshold on the holdout scenes, scored on val scenes")
    with clock.stage("localization"):
        loc = evaluate_localization_stage(
            model, trained["card"], run.data, run.models_dir / m / "localization", run.device,
            config.progress, run.dtype,
        )  # fmt: skip
    _say(
        f"      {m}: top-1 localization accuracy {loc['top1_accuracy']:.3f} at "
        f"t = {loc['threshold']:.2f}; centred-box prior "
        f"{loc['centred_box_prior']['top1_accuracy']:.3f}"
    )
    cls.update(_run_record(trained, run.plan.cls_images, 1 / rates[m].cls_train))
    run.per_model[m].update(classification=cls, localization=loc)
    run.classifiers[m] = model


def _replan_segmentation(run: _DemoRun) -> None:
    """Segmentation gets the time classification left (at the speed it turned out to have)."""
    recipe, rates, plan = run.recipe, run.rates, run.plan
    run.slowdown = slowdown = _slowdown(run.per_model, rates, plan)
    if run.fixed_plan:
        return
    seg_cost = sum(r.seg_train for r in rates.values()) * slowdown
    fixed_left = sum(r.seg_fixed(recipe) for r in rates.values()) * slowdown + run.report_s
    available = run.clock.budget_s * recipe.safety - run.clock.elapsed() - fixed_left
    images = min(available / seg_cost, recipe.max_images[1])
    plan.seg_per_epoch = _per_epoch(
        images, recipe.seg_epochs, recipe.seg_batch, recipe.min_images[1]
    )
    _say(
        f"re-plan with the time left: {plan.seg_images:,} segmentation scenes per model "
        f"(~{_fmt_s(plan.seg_images * seg_cost)})"
    )


def _segmentation_stage(run: _DemoRun, index: int, m: str) -> None:
    """Train segmenter ``m`` (backbone from its classifier), then score it."""
    recipe, rates, slowdown = run.recipe, run.rates, run.slowdown
    models, min_seg = recipe.models, recipe.min_images[1]
    rest = models[index + 1 :]
    reserve = rates[m].seg_fixed(recipe) * slowdown + run.report_s
    reserve += sum(
        (rates[k].seg_fixed(recipe) + min_seg * rates[k].seg_train) * slowdown for k in rest
    )
    limit = None if run.fixed_plan else run.clock.left() - 1.3 * reserve - 5
    planned = run.plan.seg_images * rates[m].seg_train * slowdown
    backbone = None
    if recipe.seg_from_classifier:
        folder = run.models_dir / m / "classification"
        ema = folder / CHECKPOINT_EMA  # the classifier the demo evaluated
        backbone = ema if ema.is_file() else folder / CHECKPOINT_LAST
    _say(f"[5/6] training segmenter {m} ({index + 1}/{len(models)}): ~{_fmt_s(planned)}")
    run_dir = run.models_dir / m / "segmentation"
    with run.clock.stage("segmentation_training"):
        trained = train_segmenter(
            m, recipe, run.data, run.plan, run_dir, run.config, run.device, limit, backbone
        )
    with run.clock.stage("segmentation_evaluation"):
        seg = evaluate_segmentation_stage(
            trained, run.data, run_dir, run.device, run.config.progress, dtype=run.dtype
        )
    _say(
        f"      {m}: mIoU {seg['miou']:.3f} (all-background baseline "
        f"{seg['background_baseline_miou']:.3f})"
    )
    seg.update(_run_record(trained, run.plan.seg_images, 1 / rates[m].seg_train))
    seg["backbone_from_classifier"] = backbone is not None
    run.per_model[m]["segmentation"] = seg


def _finish(run: _DemoRun) -> dict:
    """Activation maps and gridding scores, ``metrics.json`` and the report."""
    from drnet.demo.report import write_report

    _say("[6/6] activation maps, gridding scores and the report ...")
    clock, out = run.clock, run.out
    activations: dict[str, dict] = {}
    with clock.stage("activations"):
        for m, model in run.classifiers.items():
            scores, first = activation_analysis(
                model, run.data, run.recipe.activation_images, run.device
            )
            run.per_model[m]["gridding"] = scores
            activations[m] = first
    metrics = _assemble(
        run.config, run.recipe, run.plan, run.rates, run.per_model, run.data, run.device, clock,
        run.load_start,
    )  # fmt: skip
    metrics["precision"] = run.precision()
    figures = out / "figures"
    with clock.stage("report"):
        write_report(out, metrics, run.per_model, activations, run.data, figures)
        metrics["timings"] = {**clock.stages, "total": round(clock.elapsed(), 2)}
        metrics["wall_seconds"] = round(clock.elapsed(), 2)
        metrics["load_average"]["end"] = _load()
        metrics["within_budget"] = clock.elapsed() <= clock.budget_s
        # the report shows the timings too: write it again with the final numbers (fast)
        write_report(out, metrics, run.per_model, activations, run.data, figures)
    _write_json(out / METRICS_FILE, metrics)
    return metrics


def _run_record(run: dict, images: int, images_per_s: float) -> dict:
    """What ``metrics.json`` keeps of a training run."""
    return {
        "images_seen": run["images_seen"],
        "images_planned": images,
        "epochs": len(run["history"]),
        "stopped_early": run["stopped_early"],
        "training_seconds": round(run["seconds"], 2),
        "images_per_s": round(run["images_seen"] / max(run["seconds"], 1e-9), 1),
        "history": run["history"],
        "probed_images_per_s": round(images_per_s, 1),
    }


def _assemble(config, recipe, plan, rates, per_model, data, device, clock, load_start) -> dict:
    """``metrics.json``: the main model's sections at the top level, every model in ``models``,
    the paper table in ``comparison``."""
    main = recipe.models[-1] if "drn_d_22" not in recipe.models else "drn_d_22"
    public = {m: {k: v for k, v in entry.items()} for m, entry in per_model.items()}
    for entry in public.values():
        if "segmentation" in entry:
            entry["segmentation"] = {
                k: v for k, v in entry["segmentation"].items() if not k.startswith("_")
            }
    top = public[main]
    cls, loc, seg = top["classification"], top["localization"], top["segmentation"]
    prior = loc["centred_box_prior"]
    floors = {
        "classification_top1": {
            "value": cls["top1"],
            "ci95": cls.get("top1_ci95"),
            "floor": FLOORS["classification_top1"],
            "pass": cls["top1"] >= FLOORS["classification_top1"],
        },
        "segmentation_miou": {
            "value": seg["miou"],
            "ci95": seg.get("miou_ci95"),
            "floor": FLOORS["segmentation_miou"],
            "background_baseline": seg["background_baseline_miou"],
            "pass": seg["miou"] >= FLOORS["segmentation_miou"],
        },
        "localization_top1_vs_prior": {
            "value": loc["top1_accuracy"],
            "ci95": loc.get("top1_accuracy_ci95"),
            "prior": prior["top1_accuracy"],
            "prior_box_only": prior["gt_known_accuracy"],
            "margin": FLOORS["localization_margin"],
            "floor": prior["top1_accuracy"] + FLOORS["localization_margin"],
            "pass": loc["top1_accuracy"] >= prior["top1_accuracy"] + FLOORS["localization_margin"],
        },
    }
    comparison = []
    for m, entry in public.items():
        levels = entry.get("gridding", {})
        final = list(levels)[-1] if levels else None
        score = levels[final] if final else {}
        cls_m, seg_m = entry["classification"], entry["segmentation"]
        comparison.append(
            {
                "model": m,
                "channels": entry["channels"],
                "classification_images_seen": cls_m.get("images_seen"),
                "segmentation_images_seen": seg_m.get("images_seen"),
                "stopped_early": bool(cls_m.get("stopped_early") or seg_m.get("stopped_early")),
                "classification_error": 1 - cls_m["top1"],
                "classification_error_ci95": _error_interval(cls_m.get("top1_ci95")),
                "top5_error": 1 - entry["classification"]["top5"],
                "top1_localization_error": entry["localization"]["top1_error"],
                "top1_localization_error_ci95": _error_interval(
                    entry["localization"].get("top1_accuracy_ci95")
                ),
                "centred_box_prior_error": entry["localization"]["centred_box_prior"][
                    "top1_loc_err"
                ],
                "miou": seg_m["miou"],
                "miou_ci95": seg_m.get("miou_ci95"),
                "gridding_level": final,
                "gridding_map": f"{score['height']}x{score['width']}" if score else None,
                "gridding_score": score.get("score"),
                "gridding_chance": score.get("chance"),
                "gridding_lattice_share": score.get("lattice_share"),
                "gridding_share_chance": score.get("lattice_share_chance"),
            }
        )
    return {
        "drnet_demo": recipe.name,
        "main_model": main,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seed": config.seed,
        "quick": recipe.name.endswith("quick"),
        "budget_seconds": clock.budget_s,
        "estimate_seconds": round(plan.estimate_s, 1),
        "device": _device_info(device),
        "versions": _versions(),
        "load_average": {"start": load_start, "end": None},
        "recipe": recipe.to_dict(),
        "plan": {
            "classification_images": plan.cls_images,
            "classification_per_epoch": plan.cls_per_epoch,
            "segmentation_images": plan.seg_images,
            "segmentation_per_epoch": plan.seg_per_epoch,
            "threads": torch.get_num_threads(),
            "stages_seconds": plan.stages_s,
            "rates_seconds_per_image": {m: asdict(r) for m, r in rates.items()},
        },
        "data": {
            "item_source": data.item_source,
            "classification": {
                "canvas": recipe.cls_canvas,
                "scale": list(recipe.cls_scale),
                "val_scenes": recipe.cls_val,
                "holdout_scenes": recipe.cls_holdout,
                "mean": data.cls_mean,
                "std": data.cls_std,
                "scenes_dir": str(data.loc_dir),
            },
            "segmentation": {
                "canvas": recipe.seg_canvas,
                "items": list(recipe.seg_items),
                "scale": list(recipe.seg_scale),
                "val_scenes": recipe.seg_val,
                "mean": data.seg_mean,
                "std": data.seg_std,
            },
            "class_titles": list(CLASS_TITLES),
        },
        "classification": cls,
        "localization": loc,
        "segmentation": seg,
        "gridding": top.get("gridding", {}),
        "floors": floors,
        "floors_missed": missed_floors(floors, cls, seg, config, clock.budget_s, load_start),
        "comparison": comparison,
        "models": public,
        "timings": dict(clock.stages),
    }


_FLOOR_WORDS = {
    "classification_top1": ("classification top-1", "classification"),
    "localization_top1_vs_prior": ("top-1 localization accuracy", "classification"),
    "segmentation_miou": ("segmentation mIoU", "segmentation"),
}


def missed_floors(
    floors: dict, cls: dict, seg: dict, config: DemoConfig, budget_s: float, load: list | None
) -> list[dict[str, str]]:
    """For each floor the run missed: one sentence saying why (the training scenes seen, their
    rate, the machine and its load) and the command that gives the model more training."""
    from drnet.engine.layout import cpu_signature

    missed = []
    machine = f"{torch.get_num_threads()} torch thread(s) of {cpu_signature()}"
    if load:
        machine += f", load {load[0]:.1f} at the start"
    minutes = max(2 * budget_s / 60, 1.0)
    command = f"drnet demo --budget-minutes {minutes:.0f}"
    if config.seed:
        command += f" --seed {config.seed}"
    for key, (label, stage) in _FLOOR_WORDS.items():
        entry = floors[key]
        if entry["pass"]:
            continue
        run = cls if stage == "classification" else seg
        seen, rate = run.get("images_seen") or 0, run.get("images_per_s") or 0.0
        missed.append(
            {
                "floor": key,
                "why": (
                    f"{label} {entry['value']:.3f} is below its floor {entry['floor']:.3f}: the "
                    f"{stage} model saw {seen:,} training scenes at {rate:.0f} scenes/s on "
                    f"{machine}, too few for this budget ({budget_s / 60:.0f} min) on this machine"
                ),
                "fix": command,
            }
        )
    return missed


def _error_interval(accuracy_interval: list[float] | None) -> list[float] | None:
    """The error's interval from the accuracy's (``1 - high``, ``1 - low``)."""
    if not accuracy_interval:
        return None
    low, high = accuracy_interval
    return [1 - high, 1 - low]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return str(obj)


def _clean(obj: Any) -> Any:
    """NaN -> None (strict JSON), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(_clean(json.loads(json.dumps(data, default=_json_default))), indent=2)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def summary_lines(metrics: dict, output_dir: str | os.PathLike) -> list[str]:
    """What ``drnet demo`` prints at the end: the floors, the paper table, the files."""
    floors = metrics["floors"]
    c, s, lf = (
        floors["classification_top1"],
        floors["segmentation_miou"],
        floors["localization_top1_vs_prior"],
    )

    def mark(ok: bool) -> str:
        return "ok" if ok else "BELOW FLOOR"

    def value(entry: dict) -> str:
        interval = entry.get("ci95")
        shown = f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "[no interval]"
        return f"{entry['value']:.3f} {shown}"

    lines = [
        f"drnet demo ({metrics['drnet_demo']}): {metrics['main_model']}, "
        f"{metrics['wall_seconds']:.0f} s (budget {metrics['budget_seconds']:.0f} s)",
        f"  classification top-1        {value(c)}   floor {c['floor']:.2f}   {mark(c['pass'])}",
        f"  top-1 localization accuracy {value(lf)}   centred-box prior {lf['prior']:.3f}"
        f" (+{lf['margin']:.2f} needed)   {mark(lf['pass'])}",
        f"  segmentation mIoU           {value(s)}   floor {s['floor']:.2f}   "
        f"all-background {s['background_baseline']:.3f}   {mark(s['pass'])}",
    ]
    lines += [f"  why: {m['why']}; fix: {m['fix']}" for m in metrics.get("floors_missed", [])]
    if len(metrics["comparison"]) > 1:
        lines.append("")
        lines.append(
            f"  {'model':<10} {'cls err':>8} {'loc err':>8} {'prior':>8} {'mIoU':>7} "
            f"{'gridding':>9}"
        )
        for row in metrics["comparison"]:
            grid = row["gridding_score"]
            lines.append(
                f"  {row['model']:<10} {row['classification_error']:>8.3f} "
                f"{row['top1_localization_error']:>8.3f} {row['centred_box_prior_error']:>8.3f} "
                f"{row['miou']:>7.3f} {'n/a' if grid is None else f'{grid:.3f}':>9}"
            )
    out = Path(output_dir)
    lines.append(f"report: {out / REPORT_FILE}   metrics: {out / METRICS_FILE}")
    return lines
