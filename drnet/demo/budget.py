"""The demo's budget and plan: probe each model's speed, then choose the number of training
scenes so that the whole run fits the time budget.

:func:`probe` times a few training steps (and the data pipeline, and inference) of each model
with :mod:`drnet.timing`; :func:`make_plan` shares the time left after the fixed costs
(evaluation, localization, the report) between classification and segmentation training, the
same number of scenes for every model; :func:`segmentation_images` re-plans segmentation with the
time classification left, at the speed it turned out to have; each training gets a hard time
limit (:func:`time_limit`) that keeps room for what follows it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

import drnet
from drnet.demo.config import DemoConfig
from drnet.demo.data import SceneData, single_thread
from drnet.demo.recipes import Recipe
from drnet.engine.data import SeededDataset
from drnet.engine.precision import autocast_context
from drnet.engine.trainer import channels_last_is_safe
from drnet.tasks.segment import segmentation_loss
from drnet.timing import StageClock, Stopwatch, measure

PER_IMAGE_BOX_OVERHEAD_S = 0.003  # PNG decode + box sweep of one localization image (measured)
REPORT_OVERHEAD_S = 4.0  # activation maps, figures, report: per model
# the engine's own work per iteration (loss sync, schedule, progress bar, checkpoints), beyond
# the probed step and data pipeline: about 10% on 2 cores
ENGINE_OVERHEAD = 1.1
#: More torch threads must make every model's training this much faster to be used.
THREAD_GAIN = 1.25
#: Timing more threads stops once a step takes this many times the one-thread step.
THREAD_GIVE_UP = 3.0
#: (warm-up, timed) steps of the probe; a plan fixed by the recipe needs no real measurement.
PROBE_STEPS = (2, 5)
FIXED_PLAN_PROBE_STEPS = (1, 1)
#: A training's time limit keeps this multiple of what must still follow it, plus the margin.
RESERVE_FACTOR = 1.3
RESERVE_MARGIN_S = 5.0
#: The measured over probed training speed is trusted within these bounds.
SLOWDOWN_BOUNDS = (0.5, 3.0)


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


def choose_threads(rates: dict[str, Rates], gain: float = THREAD_GAIN) -> int:
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
    model = drnet.create_model(
        model_name, num_classes=0, channels=recipe.model_channels(model_name)
    )
    return channels_last_is_safe(model)


def _time_steps(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    loss_fn: Callable,
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
    step slower than ``give_up_after`` seconds ends the measurement: ``inf``.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    x, y = batch[0].to(device), batch[1].to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with autocast_context(device, amp):  # as the engine trains: bf16 where native
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    times = measure(step, timed, warmup, device, give_up_after=give_up_after)
    return float(np.median(times)) / len(x)


@torch.no_grad()
def _time_inference(
    model: nn.Module, x: torch.Tensor, device: torch.device, warmup: int, timed: int
) -> float:
    """Seconds per image of inference on ``x`` (median over ``timed`` calls)."""
    model.eval()
    x = x.to(device)
    times = measure(lambda: model(x), timed, warmup, device)
    return float(np.median(times)) / len(x)


def _data_seconds(dataset, size: int, epochs: int, rounds: int | None) -> tuple[tuple, float]:
    """A training batch of ``size`` items, and the data pipeline's seconds per item seen.

    Items are drawn twice: the first time renders (and caches) the scenes, the second goes
    through what the engine adds (per-sample seeding, collation), so the cost per item seen is
    the second pass plus the rendering as often as it happens (:func:`render_share`).
    """
    with Stopwatch() as rendering:
        for i in range(size):
            dataset[i]
    with Stopwatch() as seeding:
        seeded = SeededDataset(dataset, 0)
        batch = default_collate([seeded[i] for i in range(size)])
    first, second = rendering.seconds / size, seeding.seconds / size
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
    channels = recipe.model_channels(model_name)
    torch.manual_seed(seed)
    warmup, timed = FIXED_PLAN_PROBE_STEPS if recipe.fixed_images else PROBE_STEPS
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
        limit = THREAD_GIVE_UP * one * len(batch[0])
        return _time_steps(model, batch, loss_fn, device, 1, timed, layout, limit, amp), one

    cls_set = data.cls_train(recipe, math.lcm(recipe.cls_batch, 10), seed + 1)
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


def per_epoch(images: float, epochs: int, batch: int, minimum: int) -> int:
    """Training scenes per epoch: a multiple of the batch and of 10 (balanced classes)."""
    step = math.lcm(batch, 10)
    share = max(minimum / epochs, images / epochs)
    return max(step, int(share // step) * step)


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
    cls_per_epoch = per_epoch(cls_images, recipe.cls_epochs, recipe.cls_batch, recipe.min_images[0])
    seg_per_epoch = per_epoch(seg_images, recipe.seg_epochs, recipe.seg_batch, recipe.min_images[1])
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


def report_seconds(recipe: Recipe) -> float:
    """The planned seconds of the activation maps, figures and report."""
    return REPORT_OVERHEAD_S * len(recipe.models)


def classification_reserve(recipe: Recipe, rates: dict[str, Rates], index: int) -> float:
    """Seconds that must follow training classifier ``index``: its evaluation, the classifiers
    after it at their minimum scenes, every segmenter at its minimum, and the report."""
    min_cls, min_seg = recipe.min_images
    model = recipe.models[index]
    rest = recipe.models[index + 1 :]
    reserve = rates[model].cls_fixed(recipe) + report_seconds(recipe)
    reserve += sum(rates[k].cls_fixed(recipe) + min_cls * rates[k].cls_train for k in rest)
    reserve += sum(r.seg_fixed(recipe) + min_seg * r.seg_train for r in rates.values())
    return reserve


def segmentation_reserve(
    recipe: Recipe, rates: dict[str, Rates], index: int, slowdown: float
) -> float:
    """Seconds that must follow training segmenter ``index`` (at the measured ``slowdown``):
    its evaluation, the segmenters after it at their minimum scenes, and the report."""
    min_seg = recipe.min_images[1]
    model = recipe.models[index]
    rest = recipe.models[index + 1 :]
    reserve = rates[model].seg_fixed(recipe) * slowdown + report_seconds(recipe)
    reserve += sum(
        (rates[k].seg_fixed(recipe) + min_seg * rates[k].seg_train) * slowdown for k in rest
    )
    return reserve


def time_limit(clock: StageClock, reserve: float) -> float:
    """A training's hard stop: the time left, less a margin over what must still follow."""
    return clock.left() - RESERVE_FACTOR * reserve - RESERVE_MARGIN_S


def slowdown(per_model: dict, rates: dict[str, Rates], plan: Plan) -> float:
    """Actual over probed seconds per classification training image (within
    :data:`SLOWDOWN_BOUNDS`)."""
    actual = probed = 0.0
    for m, entry in per_model.items():
        history = entry.get("classification", {}).get("history", [])
        seconds = sum(float(row.get("time_s", 0)) for row in history)
        if seconds and history:
            actual += seconds / (plan.cls_per_epoch * len(history))
            probed += rates[m].cls_train
    low, high = SLOWDOWN_BOUNDS
    return min(high, max(low, actual / probed)) if probed else 1.0


def segmentation_images(
    recipe: Recipe, rates: dict[str, Rates], clock: StageClock, slowdown: float
) -> tuple[float, float]:
    """Segmentation training scenes per model that fit the time left (at the measured
    ``slowdown``), and the seconds one scene of every model costs."""
    seg_cost = sum(r.seg_train for r in rates.values()) * slowdown
    fixed_left = sum(r.seg_fixed(recipe) for r in rates.values()) * slowdown
    fixed_left += report_seconds(recipe)
    available = clock.budget_s * recipe.safety - clock.elapsed() - fixed_left
    return min(available / seg_cost, recipe.max_images[1]), seg_cost
