"""The one training loop shared by every task.

:func:`train` reads top to bottom: set up (device, distributed, seed, data, model, optimizer and
schedule) -> restore from a checkpoint -> for each epoch: train one epoch, evaluate, log and
checkpoint -> summary. A task (classification, segmentation, ...) subclasses :class:`Task` and
supplies what differs: datasets, model, loss and metrics.

Reproducibility: training is a pure function of ``(seed, epoch, iteration)``. The shuffle order of
an epoch comes from ``seed + epoch``, the augmentation of a sample from ``(seed, epoch, index)``
(:mod:`drnet.engine.data`), and a checkpoint stores the global RNG state, so a run that is stopped
(at an epoch boundary, or mid-epoch by SIGTERM/SIGINT, ``time_limit`` or ``should_stop``) and
resumed ends with the same weights as an uninterrupted one, whatever the number of data workers.

Batch size: ``TrainConfig.batch_size`` is the global batch, split evenly over the processes of a
``torchrun`` job (as the original code split it over GPUs with DataParallel).

Messages go to ``logging.getLogger("drnet.engine.trainer")`` on rank 0 (INFO: progress, WARNING:
ignored options and skipped samples); the CLI installs the handler that prints them.
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from drnet.engine import distributed as D
from drnet.engine.checkpoint import (
    CHECKPOINT_BEST,
    CHECKPOINT_EMA,
    CHECKPOINT_LAST,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from drnet.engine.data import SeededDataset, ShardedSampler, stop_signals_held, worker_init
from drnet.engine.ema import create_ema
from drnet.engine.layout import choose_channels_last
from drnet.engine.mixing import BatchMixer, mixing_enabled
from drnet.engine.optim import OPTIMIZERS, build_optimizer
from drnet.engine.precision import amp_dtype, amp_unavailable_reason, autocast_context
from drnet.engine.resume_checks import check_resume_position
from drnet.engine.rundir import RunFolderLock, atomic_write, check_run_folder, claim_run_folder
from drnet.engine.schedule import WARMUP_METHODS, IterationLR, build_scheduler
from drnet.engine.stop import SIGNAL, SignalFlag, StopCheck
from drnet.errors import CheckpointError, DataError, DrnetError
from drnet.models.weights import load_into

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything the engine needs besides the task. Every field has a default."""

    output_dir: str = "runs/train"
    epochs: int = 10
    batch_size: int = 8  # global batch, split over torchrun processes
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    opt: str = "sgd"  # "sgd" | "adamw" (see drnet.engine.optim)
    nesterov: bool = False
    lr_mode: str = "poly"  # "poly" (per iteration, power 0.9) | "step" | "cosine"
    lr_step: int = 30  # epochs between x lr_gamma for "step"
    lr_gamma: float = 0.1
    poly_power: float = 0.9
    lr_warmup_epochs: float = 0.0  # warm-up length in epochs (fractions allowed) ...
    lr_warmup_iters: int = 0  # ... or in iterations (wins when > 0)
    lr_warmup_method: str = "linear"  # "linear" | "constant"
    lr_warmup_decay: float = 0.01  # the lr factor the warm-up starts from
    label_smoothing: float = 0.0
    model_ema: bool = False  # keep an EMA of the weights: evaluated, saved as checkpoint_ema.pth
    model_ema_decay: float = 0.999  # per update, with timm's warm-up (see drnet.engine.ema)
    model_ema_steps: int = 1  # iterations between EMA updates
    model_ema_best: bool = False  # checkpoint_best.pth: the EMA, chosen on the EMA's metric
    mixup_alpha: float = 0.0  # classification: MixUp (torchvision.transforms.v2)
    cutmix_alpha: float = 0.0  # classification: CutMix; with both, one per batch at random
    log_interval: int = 10  # iterations between host syncs (loss, stop votes, progress text)
    workers: int = 2
    device: str = "auto"  # auto -> cuda if available else cpu
    amp: bool = False  # autocast: GPU bf16 (else fp16 + GradScaler), CPU bf16 where native
    seed: int = 0
    resume: str | None = None  # training checkpoint, or "auto" = output_dir/checkpoint_last.pth
    overwrite: bool = False  # replace a run already in output_dir (refused otherwise)
    bn_sync: bool = False
    max_iters: int | None = None  # cap on iterations per epoch (tests, quick runs)
    eval_every: int = 1
    channels_last: bool | str = "auto"  # True | False | "auto" (measured: drnet.engine.layout)
    grad_checkpoint: bool = False  # hook: calls model.set_grad_checkpointing(True) if it exists
    compile: bool = False
    skip_bad_samples: bool = False
    progress: bool = True  # tqdm bar on rank 0
    pin_memory: bool = True  # only used on CUDA
    handle_signals: bool = True  # SIGTERM/SIGINT -> checkpoint at the next iteration, then stop
    time_limit: float | None = None  # seconds from the start of train(): checkpoint, return
    save_every: int | None = None  # also write checkpoint_last.pth every N iterations (mid-epoch)
    dist_timeout: float = D.DEFAULT_DIST_TIMEOUT  # seconds a collective waits for other processes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The :class:`TrainConfig` fields that make up a training recipe (the model card keeps them).
RECIPE_FIELDS = (
    "epochs", "batch_size", "opt", "lr", "momentum", "nesterov", "weight_decay", "lr_mode",
    "lr_step", "lr_gamma", "lr_warmup_epochs", "lr_warmup_iters", "lr_warmup_method",
    "lr_warmup_decay", "label_smoothing", "model_ema", "model_ema_decay", "model_ema_steps",
    "mixup_alpha", "cutmix_alpha", "amp", "seed",
)  # fmt: skip


def recipe_of(config: TrainConfig) -> dict[str, Any]:
    """The recipe part of ``config``, for the model card (``model.json``'s ``training``)."""
    return {name: getattr(config, name) for name in RECIPE_FIELDS}


class Task:
    """What a task supplies to :func:`train`. Subclass and override the methods below.

    ``evaluate`` is called with the bare model (no DDP wrapper) in eval mode. By default it is
    called on rank 0 only while the other ranks wait; set ``distributed_eval = True`` to have it
    called on every rank, in which case it must shard the dataset itself (see
    :func:`drnet.engine.distributed.shard_indices`) and return the same reduced metrics everywhere.
    """

    name: str = "task"
    main_metric: str = "loss"  # key of evaluate()'s dict selecting the best model (higher = better)
    distributed_eval: bool = False
    find_unused_parameters: bool = False  # passed to DistributedDataParallel

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def train_dataset(self) -> Dataset:
        raise NotImplementedError

    def val_dataset(self) -> Dataset | None:
        return None

    def loss(self, output: Any, target: Any, label_smoothing: float = 0.0) -> torch.Tensor:
        """The training loss. ``target`` may be class probabilities ``[B, classes]`` when the
        task supports MixUp/CutMix (:meth:`mixing_classes`). A task whose ``loss`` has no
        ``label_smoothing`` parameter refuses ``--label-smoothing``."""
        raise NotImplementedError

    def mixing_classes(self) -> int | None:
        """The number of classes MixUp/CutMix mix targets over; None: the task cannot mix."""
        return None

    def evaluate(
        self, model: nn.Module, dataset: Dataset, config: TrainConfig, device: torch.device
    ) -> dict[str, float]:
        return {}

    def collate_fn(self):
        """A DataLoader ``collate_fn``, or None for the default."""
        return None

    def batch_to_device(self, batch: Any, device: torch.device, channels_last: bool = False):
        """Split a batch into ``(inputs, target)`` on ``device`` (default: batch[0], batch[1])."""
        inputs, target = batch[0], batch[1]
        non_blocking = device.type == "cuda"
        inputs = inputs.to(device, non_blocking=non_blocking)
        if channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if isinstance(target, torch.Tensor):
            target = target.to(device, non_blocking=non_blocking)
        return inputs, target

    def batch_size_of(self, inputs: Any) -> int:
        return len(inputs)

    def optim_parameters(self, model: nn.Module):
        """Parameters the optimizer updates: by default all that require grad."""
        return [p for p in model.parameters() if p.requires_grad]

    def describe(self) -> dict[str, Any]:
        """Task settings saved in ``config.json`` and in checkpoints (``"task"``), e.g. the
        architecture and number of classes, so a checkpoint alone can rebuild the model."""
        return {"name": self.name}


class TrainingInterrupted(DrnetError):
    """Training stopped on SIGTERM/SIGINT after writing a resumable checkpoint."""


# ------------------------------------------------------------------------------------ the loop


def train(
    task: Task,
    config: TrainConfig,
    *,
    should_stop: Callable[[], bool] | None = None,
    write_files: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Train ``task`` as ``config`` says; returns a summary.

    The summary has ``best_metric``, ``best_epoch``, ``main_metric``, ``epochs`` (the configured
    number), ``last_metrics``, ``history`` (one dict per epoch) and the paths ``output_dir``,
    ``checkpoint_last``, ``checkpoint_best`` (None when there is no validation set), ``log_csv``,
    ``config_json``, and ``skipped_samples`` (bad samples skipped with ``skip_bad_samples``; each
    epoch's count is also in ``log.csv``). About this call: ``iterations``, ``samples_seen``
    (training samples, all processes), ``train_seconds`` (wall time of the training epochs, data
    loading included), ``stopped_early``, ``stop_reason`` and ``partial_epoch``.

    Stopping early: after every iteration the run checks ``config.time_limit`` (seconds since
    ``train`` was called) and ``should_stop()`` (called once per iteration, on every process;
    one True suffices). When either fires, the iteration is finished, ``checkpoint_last.pth`` is
    written (``resume="auto"`` continues bit-identically) and the summary is returned with
    ``stopped_early=True``, ``stop_reason`` ``"time_limit"`` or ``"should_stop"`` and
    ``partial_epoch`` = ``{"epoch", "iterations", "samples", "train_loss", "time_s"}`` (this
    call's part of the unfinished epoch). A stop on an epoch's last iteration lets that epoch be
    evaluated and logged, then ends the run (``partial_epoch`` None).

    The run folder: nothing is written into ``config.output_dir`` until the arguments, the model
    (and the checkpoint it resumes from) and the datasets are checked. A folder that already
    holds a run (:data:`drnet.engine.rundir.RUN_FILES`) is refused unless ``config.resume``
    continues it or ``config.overwrite`` replaces it (its checkpoints and ``log.csv`` are then
    removed). Rank 0 locks the folder for the whole call (a second training into it fails with
    one line naming the folder) and writes every file atomically. ``write_files(folder)`` is
    called on rank 0 once the folder is claimed, before the engine writes its own files: a task
    writes its own files there (``model.json``).

    Faults: ``config.save_every`` writes ``checkpoint_last.pth`` every N iterations too (with the
    epoch's running sums, so ``log.csv`` still gets one row covering the whole epoch). Under
    ``torchrun --max-restarts`` a restarted group resumes from it by itself (see
    :func:`drnet.engine.distributed.effective_resume`); rank 0 picks the checkpoint and every
    rank must read the same one (a shared output folder).

    Raises :class:`TrainingInterrupted` after SIGTERM/SIGINT (a resumable checkpoint was written)
    and :class:`DrnetError` on a non-finite loss (the last good checkpoint is kept).
    """
    lock = RunFolderLock(config.output_dir)
    try:
        return _train(task, config, should_stop, write_files, lock)
    finally:
        lock.release()


def _train(
    task: Task,
    config: TrainConfig,
    should_stop: Callable[[], bool] | None,
    write_files: Callable[[Path], None] | None,
    lock: RunFolderLock,
) -> dict[str, Any]:
    """The body of :func:`train`, which releases ``lock`` (the run folder's) however it ends."""
    started = time.perf_counter()
    _check_fault_options(config)
    ctx = D.init_distributed(config.device, config.dist_timeout)
    # a group that torchrun restarted continues its run (its folder holds one: say so)
    resume = D.effective_resume(config.resume, ctx.restart_count)
    config = dataclasses.replace(config, resume=resume)
    _check_config(config)
    run = _set_up(task, config, ctx)
    _restore(run)
    _wrap(run)
    _open_logs(run, lock, write_files)
    with SignalFlag(config.handle_signals) as signals:
        stops = StopCheck(signals, config.time_limit, should_stop, started)
        for epoch in range(run.start_epoch, config.epochs):
            done = _train_one_epoch(run, epoch, stops)
            if done.cut_short:  # the EMA file too: a stopped run's average is usable as it is
                _save(run, epoch, done.iteration, done.skipped, sums=done.sums(), ema_file=True)
                D.barrier()
                return _stop(run, done, signals)
            metrics = _evaluate(run, epoch)
            _log_epoch(run, done, metrics)
            if done.stop and epoch + 1 < config.epochs:
                return _stop(run, done, signals)
    return _summary(run)


@dataclass
class _Run:
    """What one call of :func:`train` works with: the objects :func:`_set_up` builds, the
    position in the run, the best metric so far and this call's counters."""

    task: Task
    config: TrainConfig
    ctx: D.DistributedContext
    use_amp: bool
    batch_per_rank: int
    iters_per_epoch: int
    train_set: SeededDataset
    val_set: Dataset | None
    sampler: ShardedSampler
    model: nn.Module  # the bare model: what checkpoints store and evaluate() receives
    optimizer: torch.optim.Optimizer
    scheduler: IterationLR
    scaler: torch.amp.GradScaler
    out_dir: Path
    paths: dict[str, Any]
    resolved: dict[str, Any]  # config.json, and "config" in checkpoints
    model_for_train: nn.Module | None = None  # DDP and/or compiled wrapper of model
    ema: nn.Module | None = None  # AveragedModel of model (--model-ema)
    mixer: BatchMixer | None = None  # MixUp/CutMix (--mixup-alpha, --cutmix-alpha)
    loss_kwargs: dict[str, Any] = field(default_factory=dict)  # label_smoothing when set
    best_is_ema: bool = False  # checkpoint_best.pth holds the EMA
    start_epoch: int = 0  # where training starts (a checkpoint's epoch and iteration)
    start_iter: int = 0
    skip_carry: int = 0  # bad samples skipped in the part of an epoch done before a restart
    epoch_sums: dict[str, float] | None = None  # that part's sums (see _EpochPass.sums)
    best_metric: float | None = None
    best_epoch: int | None = None
    have_checkpoint: bool = False  # a good checkpoint of this run exists
    csv_log: _CsvLog | None = None  # rank 0 only
    history: list[dict[str, Any]] = field(default_factory=list)
    last_metrics: dict[str, float] = field(default_factory=dict)
    iterations: int = 0  # counters of this call
    samples_seen: int = 0
    train_seconds: float = 0.0

    @property
    def device(self) -> torch.device:
        return self.ctx.device


@dataclass
class _EpochPass:
    """What one call of :func:`_train_one_epoch` did."""

    epoch: int  # 0-based
    first_lr: float  # lr of the pass's first iteration
    iteration: int  # position in the epoch when the pass ended
    iterations: int = 0  # iterations run by this pass
    samples: int = 0  # training samples, all processes
    loss_sum: float = 0.0  # sum of per-sample mean losses
    seconds: float = 0.0
    skipped: int = 0  # bad samples skipped in the epoch so far, all processes
    stop: str | None = None  # agreed reason to stop (see drnet.engine.stop.REASONS)
    cut_short: bool = False  # stopped before the epoch's last iteration
    started: float = field(default_factory=time.perf_counter)
    before: dict[str, float] = field(default_factory=dict)  # sums of the epoch's earlier part

    def sums(self, now: float | None = None) -> dict[str, float]:
        """The epoch's running sums so far (its earlier parts included), for a checkpoint."""
        seconds = self.seconds if now is None else now - self.started
        return {
            "first_lr": self.first_lr,
            "samples": self.before.get("samples", 0) + self.samples,
            "loss_sum": self.before.get("loss_sum", 0.0) + self.loss_sum,
            "seconds": self.before.get("seconds", 0.0) + seconds,
        }

    def row(self) -> dict[str, Any]:
        """The epoch's ``log.csv`` columns: the whole epoch, across restarts."""
        sums = self.sums()
        return {
            "train_loss": sums["loss_sum"] / max(1, sums["samples"]),
            "lr": sums["first_lr"],
            "time_s": sums["seconds"],
            "img_per_s": sums["samples"] / max(sums["seconds"], 1e-9),
        }


# ------------------------------------------------------------------------------------- set up


def _check_config(config: TrainConfig) -> None:
    """Refuse settings the loop cannot run with, naming the option (not a ZeroDivisionError)."""
    for option, value, lowest in (
        ("--batch-size", config.batch_size, 1),
        ("--epochs", config.epochs, 1),
        ("--workers", config.workers, 0),
    ):
        if value < lowest:
            raise DrnetError(f"{option} must be at least {lowest}, got {value}")
    if not (math.isfinite(config.lr) and config.lr >= 0):
        raise DrnetError(f"--lr must be a finite number >= 0, got {config.lr}")
    if config.time_limit is not None and not config.time_limit >= 0:
        raise DrnetError(f"time_limit must be a number of seconds >= 0, got {config.time_limit}")
    _check_recipe_options(config)


def _check_recipe_options(config: TrainConfig) -> None:
    """The recipe options (optimizer, warm-up, smoothing, EMA, mixing) in range, by flag name."""
    if config.opt not in OPTIMIZERS:
        raise DrnetError(f"--opt {config.opt!r} is not one of {', '.join(OPTIMIZERS)}")
    if config.lr_warmup_method not in WARMUP_METHODS:
        raise DrnetError(
            f"--lr-warmup-method {config.lr_warmup_method!r} is not one of "
            f"{', '.join(WARMUP_METHODS)}"
        )

    def refuse(option: str, bound: str, value: float) -> None:
        raise DrnetError(f"{option} must be {bound}, got {value}")

    for option, value, lowest in (
        ("--lr-warmup-epochs", config.lr_warmup_epochs, 0),
        ("--lr-warmup-iters", config.lr_warmup_iters, 0),
        ("--mixup-alpha", config.mixup_alpha, 0),
        ("--cutmix-alpha", config.cutmix_alpha, 0),
        ("--model-ema-steps", config.model_ema_steps, 1),
        ("--log-interval", config.log_interval, 1),
    ):
        if not (math.isfinite(value) and value >= lowest):
            refuse(option, f">= {lowest}", value)
    if not 0.0 < config.lr_warmup_decay <= 1.0:
        refuse("--lr-warmup-decay", "in (0, 1]", config.lr_warmup_decay)
    if not 0.0 <= config.label_smoothing < 1.0:
        refuse("--label-smoothing", "in [0, 1)", config.label_smoothing)
    if not 0.0 <= config.model_ema_decay < 1.0:
        refuse("--model-ema-decay", "in [0, 1)", config.model_ema_decay)
    if config.channels_last not in (True, False, "auto"):
        raise DrnetError(f"channels_last must be True, False or 'auto', got {config.channels_last}")


def _set_up(task: Task, config: TrainConfig, ctx: D.DistributedContext) -> _Run:
    """Seed, data, model, optimizer and schedule, output paths and the resolved config."""
    device = ctx.device
    out_dir = Path(config.output_dir)
    # fail fast, before the data is read; _open_logs checks again under the folder's lock
    check_run_folder(out_dir, resume=config.resume, overwrite=config.overwrite)
    use_amp = config.amp and amp_dtype(device) is not None
    if config.amp and not use_amp:
        _warn(ctx, f"note: --amp ignored: {amp_unavailable_reason(device)}; training in float32")
    if config.batch_size % ctx.world_size:
        raise DrnetError(
            f"--batch-size {config.batch_size} is not divisible by the {ctx.world_size} processes"
        )
    batch_per_rank = config.batch_size // ctx.world_size
    torch.manual_seed(config.seed)  # same initial weights on every rank
    train_set = SeededDataset(task.train_dataset(), config.seed, config.skip_bad_samples)
    val_set = task.val_dataset()
    sampler = ShardedSampler(
        len(train_set), shuffle=True, seed=config.seed, rank=ctx.rank, world_size=ctx.world_size
    )
    iters_per_epoch = _iters_per_epoch(len(train_set), len(sampler), batch_per_rank, config)
    model = task.build_model()
    safe = device.type != "cpu" or channels_last_is_safe(model)
    if config.channels_last is True and not safe:
        _warn(
            ctx,
            "note: --channels-last ignored: this model has a 1x1 stride-2 convolution on fewer "
            "than 16 channels, whose channels-last backward corrupts memory on torch's CPU kernels",
        )
    loss_kwargs = _loss_kwargs(task, config)
    use_cl = bool(config.channels_last) and safe
    layout = {"channels_last": use_cl, "measured": False}
    if config.channels_last == "auto" and safe:
        use_cl, layout = _measure_layout(task, model, train_set, batch_per_rank, ctx, use_amp)
    config = dataclasses.replace(config, channels_last=use_cl)  # inputs follow the model
    model = _prepare_model(model, config, ctx)
    optimizer = build_optimizer(
        task.optim_parameters(model), config.opt, config.lr, config.momentum,
        config.weight_decay, config.nesterov,
    )  # fmt: skip
    warmup_iters = config.lr_warmup_iters or round(config.lr_warmup_epochs * iters_per_epoch)
    scheduler = build_scheduler(
        optimizer, config.lr_mode, iters_per_epoch, config.epochs,
        config.lr_step, config.lr_gamma, config.poly_power,
        warmup_iters, config.lr_warmup_method, config.lr_warmup_decay,
    )  # fmt: skip
    scaler = torch.amp.GradScaler(
        device.type, enabled=use_amp and amp_dtype(device) == torch.float16
    )
    paths = {
        "output_dir": str(out_dir),
        "checkpoint_last": str(out_dir / CHECKPOINT_LAST),
        "checkpoint_best": None,
        "log_csv": str(out_dir / "log.csv"),
        "config_json": str(out_dir / "config.json"),
    }
    if config.model_ema:
        paths["checkpoint_ema"] = str(out_dir / CHECKPOINT_EMA)
    resolved = _resolved_config(task, config, ctx, use_amp, batch_per_rank, iters_per_epoch)
    resolved.update(lr_warmup_iters_resolved=warmup_iters, layout=layout)
    run = _Run(
        task, config, ctx, use_amp, batch_per_rank, iters_per_epoch, train_set, val_set, sampler,
        model, optimizer, scheduler, scaler, out_dir, paths, resolved,
    )  # fmt: skip
    run.loss_kwargs = loss_kwargs
    if config.model_ema:
        run.ema = create_ema(model, config.model_ema_decay)
    if mixing_enabled(config.mixup_alpha, config.cutmix_alpha):
        run.mixer = _mixer(task, config)
    return run


def _loss_kwargs(task: Task, config: TrainConfig) -> dict[str, Any]:
    """``{"label_smoothing": ...}`` for the task's loss when asked (refused if it cannot)."""
    if not config.label_smoothing:
        return {}
    if "label_smoothing" not in inspect.signature(task.loss).parameters:
        raise DrnetError(f"--label-smoothing: the {task.name} task's loss does not support it")
    return {"label_smoothing": config.label_smoothing}


def _mixer(task: Task, config: TrainConfig) -> BatchMixer:
    classes = task.mixing_classes()
    if not classes:
        raise DrnetError(
            f"--mixup-alpha/--cutmix-alpha: the {task.name} task cannot mix its targets "
            "(classification only)"
        )
    return BatchMixer(classes, config.mixup_alpha, config.cutmix_alpha)


def _measure_layout(
    task: Task,
    model: nn.Module,
    train_set: SeededDataset,
    batch_per_rank: int,
    ctx: D.DistributedContext,
    use_amp: bool,
) -> tuple[bool, dict[str, Any]]:
    """Rank 0 times NCHW against channels-last on the first batch (or reads the cached
    choice, :mod:`drnet.engine.layout`) and every rank follows it."""
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False, {"channels_last": False, "measured": False}
    record: dict[str, Any] | None = None
    if ctx.is_main:
        collate = task.collate_fn() or default_collate
        batch = collate([train_set[i] for i in range(min(batch_per_rank, len(train_set)))])
        inputs, target = task.batch_to_device(batch, ctx.device)
        probe = model.to(ctx.device)

        def step(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
            with autocast_context(ctx.device, use_amp):
                return task.loss(m(x), target)

        record = {"channels_last": False, "measured": False}
        if inputs.dim() == 4:
            _, record = choose_channels_last(probe, step, inputs, ctx.device, use_amp)
            record = {**record, "measured": True}
    record = D.broadcast_object(record)
    return bool(record["channels_last"]), record


def _iters_per_epoch(
    n_samples: int, per_rank: int, batch_per_rank: int, config: TrainConfig
) -> int:
    iters = per_rank // batch_per_rank
    if iters == 0:
        raise DataError(
            f"the training set has {n_samples} samples ({per_rank} per process), fewer "
            f"than one batch of {batch_per_rank}; lower --batch-size"
        )
    return min(iters, config.max_iters) if config.max_iters else iters


def channels_last_is_safe(model: nn.Module) -> bool:
    """False when ``model`` has a 1x1 stride-2 convolution on fewer than 16 input channels: the
    channels-last backward of that convolution corrupts the heap on torch 2.14's CPU kernels
    ("double free or corruption"; DRN-B/C at a quarter width have one). Layout changes speed
    only, never the numbers, so the engine then trains in NCHW."""
    return not any(
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (1, 1)
        and m.stride != (1, 1)
        and m.in_channels < 16
        for m in model.modules()
    )


def _prepare_model(model: nn.Module, config: TrainConfig, ctx: D.DistributedContext) -> nn.Module:
    """The task's model on the device, with the requested memory format and options."""
    model = model.to(ctx.device)
    if config.grad_checkpoint:
        if hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        else:
            _warn(ctx, "note: this model has no gradient checkpointing; --grad-checkpoint ignored")
    if config.bn_sync and ctx.is_distributed:
        if ctx.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:  # torch's SyncBatchNorm only synchronises GPU tensors
            _warn(ctx, f"note: --bn-sync needs CUDA; ignored on {ctx.device.type}")
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _resolved_config(
    task: Task,
    config: TrainConfig,
    ctx: D.DistributedContext,
    use_amp: bool,
    batch_per_rank: int,
    iters_per_epoch: int,
) -> dict[str, Any]:
    """What ``config.json`` and the checkpoints' ``"config"`` hold: the config as run."""
    dtype = amp_dtype(ctx.device) if use_amp else None
    return _plain(
        {
            **config.to_dict(),
            "device_resolved": str(ctx.device),
            "world_size": ctx.world_size,
            "batch_per_process": batch_per_rank,
            "iters_per_epoch": iters_per_epoch,
            "amp_dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
            "task": _plain(task.describe()),
        }
    )


def _check_fault_options(config: TrainConfig) -> None:
    """Refuse ``save_every`` < 1 and a ``dist_timeout`` that is not a finite number > 0."""
    if config.save_every is not None and config.save_every < 1:
        raise DrnetError(f"--save-every must be at least 1, got {config.save_every}")
    timeout = config.dist_timeout
    if not (timeout > 0 and math.isfinite(timeout)):
        raise DrnetError(f"--dist-timeout must be a number of seconds > 0, got {timeout}")


def _resolve_resume(config: TrainConfig, restarts: int = 0) -> Path | None:
    """The checkpoint to continue from: ``config.resume``, where ``"auto"`` is the run's last
    checkpoint (None when there is none yet). After ``restarts`` > 0 torchrun restarts the run's
    own last checkpoint wins over an explicit path (that was where the first attempt began)."""
    if not config.resume:
        return None
    last = Path(config.output_dir) / CHECKPOINT_LAST
    if config.resume == "auto" or (restarts > 0 and last.is_file()):
        return last if last.is_file() else None
    return Path(config.resume)


_SHARED_FOLDER = "multi-node training needs an output folder shared by every node"


def _resume_point(run: _Run) -> tuple[Path, dict[str, Any]] | None:
    """Rank 0 decides where to continue (file, epoch, iteration) and tells the other ranks;
    each reads that file and must find the same position there, else every rank fails with the
    first rank's reason (no rank trains from another epoch than the others)."""
    ctx = run.ctx
    decided: tuple[str, int, int] | str | None = None
    path, state = None, None
    if ctx.is_main:
        try:
            path = _resolve_resume(run.config, ctx.restart_count)
            state = load_checkpoint(path, map_location="cpu") if path is not None else None
            if state is not None:  # refuses a position with nothing to train
                check_resume_position(state, run.config, run.iters_per_epoch, path)
        except Exception as exc:  # tell the other ranks, which wait for rank 0's word
            if ctx.is_distributed:
                D.broadcast_object(f"rank 0 cannot resume: {exc}")
            raise
        if state is not None:
            decided = (str(path), int(state["epoch"]), int(state.get("iteration", 0)))
    decided = D.broadcast_object(decided)
    if isinstance(decided, str):  # rank 0 failed (and raised its own error)
        raise DrnetError(decided)
    if decided is None or not ctx.is_distributed:
        return (path, state) if state is not None else None
    problem = None
    if not ctx.is_main:
        path = Path(decided[0])
        state, problem = _read_resume_point(path, decided[1:], ctx.rank)
    problems = [p for p in D.all_gather_object(problem) if p]
    if problems:
        raise CheckpointError(problems[0])
    return path, state


def _read_resume_point(
    path: Path, position: tuple[int, int], rank: int
) -> tuple[dict[str, Any] | None, str | None]:
    """``(state, None)`` when this rank reads ``path`` at ``position`` (epoch, iteration), else
    ``(None, the reason)``."""
    try:
        state = load_checkpoint(path, map_location="cpu")
        found = (int(state["epoch"]), int(state.get("iteration", 0)))
    except Exception as exc:  # any reason: the other ranks wait for this one's word
        return None, f"rank {rank} cannot read {path} ({exc}): {_SHARED_FOLDER}"
    if found != tuple(position):
        return None, (
            f"rank {rank} reads {path} at epoch {found[0]} iteration {found[1]}, rank 0 at "
            f"epoch {position[0]} iteration {position[1]}: {_SHARED_FOLDER}"
        )
    return state, None


def _restore(run: _Run) -> None:
    """Continue from ``config.resume``: weights, optimizer, schedule, scaler, position, RNG."""
    point = _resume_point(run)
    if point is None:
        return
    path, state = point
    # lists missing/unexpected/wrongly shaped keys (e.g. other --arch or --channels)
    load_into(run.model, state["model"], strict=True, source=f"--resume {path}")
    try:
        run.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{path} does not fit this optimizer: {str(exc).splitlines()[0]}"
        ) from exc
    if state.get("scheduler"):  # the step count; the lr follows the current config
        run.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None and state.get("model_ema"):
        load_into(run.ema, state["model_ema"], strict=True, source=f"--resume {path} (EMA)")
    run.start_epoch, run.start_iter = int(state["epoch"]), int(state.get("iteration", 0))
    run.best_metric, run.best_epoch = state.get("best_metric"), state.get("best_epoch")
    run.skip_carry = int(state.get("skipped_samples") or 0) if run.start_iter else 0
    run.epoch_sums = state.get("epoch_sums") if run.start_iter else None
    run.have_checkpoint = True
    restore_rng_state(state.get("rng"))
    _info(run.ctx, f"resumed from {path} at epoch {run.start_epoch} iteration {run.start_iter}")


def _wrap(run: _Run) -> None:
    """The module that trains: DDP around the bare model under torchrun, compiled on request."""
    model: nn.Module = run.model
    if run.ctx.is_distributed:
        model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[run.device.index] if run.device.type == "cuda" else None,
            find_unused_parameters=run.task.find_unused_parameters,
        )
    if run.config.compile:
        model = torch.compile(model)
    run.model_for_train = model


def _open_logs(
    run: _Run, lock: RunFolderLock, write_files: Callable[[Path], None] | None = None
) -> None:
    """Everything is checked: rank 0 claims the run folder (creates and locks it, refuses another
    run in it), lets the task write its files, writes ``config.json`` and reopens ``log.csv`` up
    to the restored epoch. Nothing is written into the folder before this."""
    if not run.ctx.is_main:
        return
    config = run.config
    claim_run_folder(
        run.out_dir, resume=config.resume, overwrite=config.overwrite, lock=lock,
        write_files=write_files,
    )  # fmt: skip
    with atomic_write(run.paths["config_json"]) as f:
        json.dump(run.resolved, f, indent=2, default=str)
    run.csv_log = _CsvLog(Path(run.paths["log_csv"]), run.start_epoch)
    run.history = list(run.csv_log.rows)


# ------------------------------------------------------------------------------ one epoch


def _train_one_epoch(run: _Run, epoch: int, stops: StopCheck) -> _EpochPass:
    """Train from ``run.start_iter`` to the end of ``epoch``, or until a stop is agreed.

    The host waits for the device (and the processes for each other) only every
    ``config.log_interval`` iterations, before a checkpoint and at the epoch's end: the losses
    of the iterations in between are summed then, checked for NaN/inf (the error names the
    first bad batch) and the stop votes counted. A single process looks at its own stop votes
    every iteration, which costs no collective."""
    run.train_set.epoch = epoch
    skip_start = run.train_set.skipped_count()
    run.sampler.set_epoch(epoch, start=run.start_iter * run.batch_per_rank)
    with stop_signals_held():  # the workers start here; they leave these signals to us
        batches = iter(_loader(run, epoch))
    run.model_for_train.train()
    done = _EpochPass(epoch, run.optimizer.param_groups[0]["lr"], iteration=run.start_iter)
    if run.epoch_sums:  # resumed mid-epoch: the row covers the part before the restart too
        done.before, done.first_lr = run.epoch_sums, float(run.epoch_sums["first_lr"])
    bar = _progress_bar(run, epoch)
    pending = _PendingLosses(run.config.log_interval)
    t_start = done.started = time.perf_counter()
    try:
        for batch in batches:
            if done.iteration >= run.iters_per_epoch:
                break
            inputs, target = _prepare_batch(run, batch, epoch, done.iteration)
            pending.add(_train_step(run, inputs, target, epoch, done.iteration), done.iteration)
            n_batch = run.task.batch_size_of(inputs) * run.ctx.world_size
            done.iteration += 1
            done.iterations += 1
            done.samples += n_batch
            save_due = _save_due(run, epoch, done.iteration)
            sync_due = pending.full() or save_due or done.iteration >= run.iters_per_epoch
            votes = stops.votes() if sync_due or not run.ctx.is_distributed else None
            if sync_due or (votes is not None and any(votes)):
                loss_sum, done.stop = _sync(run, pending, votes, stops, epoch)
                done.loss_sum += loss_sum * n_batch
                if bar is not None:
                    _show_steps(bar, done, pending.last_mean, run.optimizer)
            elif bar is not None:
                bar.update(1)
            if done.stop and done.iteration < run.iters_per_epoch:
                done.cut_short = True
                break
            if save_due:
                skipped = 0
                if run.config.skip_bad_samples:  # a collective: every rank saves here
                    skipped = run.skip_carry + _skipped_since(run, skip_start)
                _save(run, epoch, done.iteration, skipped, sums=done.sums(time.perf_counter()))
                run.have_checkpoint = True
    finally:
        if bar is not None:
            bar.close()
    del batches  # stops the workers
    if run.config.skip_bad_samples:
        done.skipped = run.skip_carry + _skipped_since(run, skip_start)
    done.seconds = time.perf_counter() - t_start
    run.skip_carry, run.start_iter, run.epoch_sums = 0, 0, None
    run.iterations += done.iterations
    run.samples_seen += done.samples
    run.train_seconds += done.seconds
    return done


class _PendingLosses:
    """The per-iteration losses (device tensors) since the last host sync."""

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.losses: list[torch.Tensor] = []
        self.first_iteration = 0
        self.last_mean = math.nan  # mean loss over processes of the last synced stretch

    def add(self, loss: torch.Tensor, iteration: int) -> None:
        if not self.losses:
            self.first_iteration = iteration
        self.losses.append(loss)

    def full(self) -> bool:
        return len(self.losses) >= self.interval


def _sync(run: _Run, pending: _PendingLosses, votes: list[float], stops: StopCheck, epoch: int):
    """One host sync and one collective: the pending losses summed over processes (checked for
    NaN/inf) and this process's stop ``votes``. Returns ``(sum of the mean losses, agreed stop
    reason)``."""
    votes = torch.tensor(votes, dtype=torch.float64)
    losses = torch.stack(pending.losses).to("cpu", torch.float64) if pending.losses else votes[:0]
    stats = D.all_reduce_sum(torch.cat([losses, votes]))
    per_step = stats[: len(losses)] / run.ctx.world_size
    bad = (~torch.isfinite(per_step)).nonzero()
    if len(bad):
        index = int(bad[0])
        raise _non_finite(run, float(per_step[index]), epoch, pending.first_iteration + index)
    pending.last_mean = float(per_step.mean()) if len(per_step) else math.nan
    pending.losses = []
    return float(per_step.sum()), stops.agreed(stats[len(losses) :].tolist())


def _prepare_batch(run: _Run, batch, epoch: int, iteration: int):
    """The batch on the device in the run's layout, mixed (MixUp/CutMix) when asked."""
    inputs, target = run.task.batch_to_device(batch, run.device, run.config.channels_last)
    if run.mixer is not None:
        inputs, target = run.mixer(inputs, target, run.config.seed, epoch, iteration, run.ctx.rank)
        if run.config.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, target


def _save_due(run: _Run, epoch: int, iteration: int) -> bool:
    """Whether ``--save-every`` asks for a checkpoint after ``iteration`` iterations of
    ``epoch`` (counted over the run, so restarts keep the rhythm; an epoch's end always saves)."""
    every = run.config.save_every
    if not every or iteration >= run.iters_per_epoch:
        return False
    return (epoch * run.iters_per_epoch + iteration) % every == 0


def _train_step(run: _Run, inputs, target, epoch: int, iteration: int) -> torch.Tensor:
    """Forward, backward, step (and the EMA update when due); returns the loss, detached, on
    the device (no host sync)."""
    with autocast_context(run.device, run.use_amp):
        output = run.model_for_train(inputs)
        loss = run.task.loss(output, target, **run.loss_kwargs)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.ema is not None:
        step = epoch * run.iters_per_epoch + iteration + 1  # counted over the run: resumable
        if step % run.config.model_ema_steps == 0:
            run.ema.update_parameters(run.model)
    return loss.detach().float()


def _loader(run: _Run, epoch: int) -> DataLoader:
    return DataLoader(
        run.train_set,
        batch_size=run.batch_per_rank,
        sampler=run.sampler,
        num_workers=run.config.workers,
        collate_fn=run.task.collate_fn(),
        pin_memory=run.config.pin_memory and run.device.type == "cuda",
        drop_last=True,
        generator=torch.Generator().manual_seed(run.config.seed + epoch),
        worker_init_fn=worker_init,  # SIGTERM to the process group reaches only the main process
    )


def _progress_bar(run: _Run, epoch: int) -> tqdm | None:
    if not (run.ctx.is_main and run.config.progress):
        return None
    return tqdm(
        total=run.iters_per_epoch,
        initial=run.start_iter,
        desc=f"epoch {epoch + 1}/{run.config.epochs}",
        dynamic_ncols=True,
        leave=False,
    )


def _show_steps(bar: tqdm, done: _EpochPass, loss: float, optimizer) -> None:
    """The bar after a sync: the last stretch's mean loss, the lr, images/s so far."""
    rate = done.samples / max(time.perf_counter() - done.started, 1e-9)  # data loading included
    lr = optimizer.param_groups[0]["lr"]
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.1f}", refresh=False)
    bar.update(done.iteration - bar.n)


def _skipped_since(run: _Run, start: int) -> int:
    """Bad samples skipped since the count was ``start``, summed over processes."""
    count = torch.tensor([run.train_set.skipped_count() - start], dtype=torch.float64)
    D.all_reduce_sum(count)
    return int(count.item())


def _non_finite(run: _Run, loss: float, epoch: int, iteration: int) -> DrnetError:
    kept = (
        f"last good checkpoint: {run.paths['checkpoint_last']}, --resume auto continues from it"
        if run.have_checkpoint
        else "no checkpoint was written yet"
    )
    return DrnetError(
        f"loss is {loss} at epoch {epoch + 1} batch {iteration + 1}; stopped ({kept}). "
        "Try a lower --lr, or check the data with 'drnet data check'"
    )


# --------------------------------------------------------------- evaluate, log, checkpoint


def _evaluate(run: _Run, epoch: int) -> dict[str, float]:
    """The task's metrics on the validation set when due (empty dict otherwise)."""
    D.broadcast_buffers(run.model)  # every rank evaluates and saves rank 0's statistics
    if run.ema is not None:
        D.broadcast_buffers(run.ema)
    config = run.config
    due = (epoch + 1) % max(1, config.eval_every) == 0 or epoch + 1 == config.epochs
    if run.val_set is None or not due:
        return {}
    run.model.eval()
    metrics: dict[str, float] = {}
    if run.task.distributed_eval or run.ctx.is_main:
        metrics = run.task.evaluate(run.model, run.val_set, config, run.device)
        if run.ema is not None:  # the average, under the same names with "ema_" in front
            ema_metrics = run.task.evaluate(run.ema.module, run.val_set, config, run.device)
            metrics.update({f"ema_{k}": v for k, v in ema_metrics.items()})
    D.barrier()
    run.model.train()
    run.last_metrics = metrics
    return metrics


def _log_epoch(run: _Run, done: _EpochPass, metrics: dict[str, float]) -> None:
    """Track the best metric; rank 0 checkpoints, appends to ``log.csv`` and logs the epoch."""
    epoch = done.epoch + 1
    prefix = "ema_" if run.ema is not None and run.config.model_ema_best else ""
    value = metrics.get(prefix + run.task.main_metric)
    is_best = value is not None and (  # a nan best (e.g. mIoU of no pixels) is beaten by any value
        run.best_metric is None or math.isnan(run.best_metric) or value > run.best_metric
    )
    if is_best:
        run.best_metric, run.best_epoch = float(value), epoch
    if run.ctx.is_main:
        row = {
            "epoch": epoch,
            **done.row(),
            **({"skipped_samples": done.skipped} if run.config.skip_bad_samples else {}),
            **{f"val_{k}": v for k, v in metrics.items()},
        }
        _save(run, epoch, 0, best=is_best)
        run.csv_log.append({k: _fmt(v) for k, v in row.items()})
        run.history.append(row)
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in row.items() if k != "epoch")
        _info(run.ctx, f"epoch {epoch}/{run.config.epochs}: {shown}")
    run.have_checkpoint = True
    D.barrier()


def _save(
    run: _Run,
    epoch: int,
    iteration: int,
    skipped: int = 0,
    best: bool = False,
    sums: dict[str, float] | None = None,
    ema_file: bool | None = None,
) -> None:
    """Rank 0 writes ``checkpoint_last.pth`` (and ``checkpoint_best.pth`` when ``best``):
    ``epoch`` epochs and ``iteration`` more iterations done, ``skipped`` bad samples in them;
    ``sums``: those iterations' running sums (:meth:`_EpochPass.sums`) for the epoch's row."""
    if not run.ctx.is_main:
        return
    state = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "epoch": epoch,
        "iteration": iteration,
        "config": run.resolved,
        "task": run.resolved["task"],
        "rng": capture_rng_state(),
        "best_metric": run.best_metric,
        "best_epoch": run.best_epoch,
        "skipped_samples": skipped,  # inside a partly done epoch
        "epoch_sums": sums if iteration else None,
    }
    if run.ema is not None:
        state["model_ema"] = run.ema.state_dict()  # the average and its update count
    save_checkpoint(state, run.paths["checkpoint_last"])
    ema_state = None
    if ema_file is None:
        ema_file = not iteration  # epoch ends (and stops): the average as a model of its own
    if run.ema is not None and ema_file:
        ema_state = {k: v for k, v in state.items() if k != "model_ema"}
        ema_state.update(model=run.ema.module.state_dict(), ema=True)
        save_checkpoint(ema_state, run.paths["checkpoint_ema"])
    if best:
        use_ema = ema_state is not None and run.config.model_ema_best
        save_checkpoint(ema_state if use_ema else state, run.out_dir / CHECKPOINT_BEST)


# ------------------------------------------------------------------------------ the end


def _stop(run: _Run, done: _EpochPass, signals: SignalFlag) -> dict[str, Any]:
    """End the run early after ``done`` (its checkpoint is written): raise for a signal, else
    return the summary."""
    epoch, iteration = (done.epoch, done.iteration) if done.cut_short else (done.epoch + 1, 0)
    where = f"at epoch {epoch + 1} iteration {iteration}" if iteration else f"after epoch {epoch}"
    resume = f"checkpoint {run.paths['checkpoint_last']} (continue with --resume auto)"
    if done.stop == SIGNAL:
        raise TrainingInterrupted(f"stopped by {signals.name()} {where}; {resume}")
    cause = "at the time limit" if done.stop == "time_limit" else "as should_stop() asked"
    _info(run.ctx, f"stopped {cause} {where}; {resume}")
    partial = None
    if done.cut_short:  # this call's part of the epoch
        loss = done.loss_sum / max(1, done.samples)
        partial = {"epoch": epoch + 1, "iterations": done.iterations, "samples": done.samples,
                   "train_loss": loss, "time_s": done.seconds}  # fmt: skip
    return _summary(run, done.stop, partial)


def _summary(
    run: _Run, stop_reason: str | None = None, partial_epoch: dict | None = None
) -> dict[str, Any]:
    if (run.out_dir / CHECKPOINT_BEST).is_file():
        run.paths["checkpoint_best"] = str(run.out_dir / CHECKPOINT_BEST)
    skipped_total = sum(int(float(row.get("skipped_samples") or 0)) for row in run.history)
    skipped_files = 0
    if run.config.skip_bad_samples:  # the same on every rank: the gather below is collective
        every_rank = D.all_gather_object(run.train_set.bad_indices())
        skipped_files = len(set().union(*map(set, every_rank)))
    if skipped_total:
        _warn(
            run.ctx,
            f"skipped {skipped_total} bad sample(s) of {skipped_files} file(s) in total (see the "
            "warnings above)",
        )
    return {
        "main_metric": run.task.main_metric,
        "best_metric": run.best_metric,
        "best_epoch": run.best_epoch,
        "epochs": run.config.epochs,
        "last_metrics": run.last_metrics,
        "history": run.history,
        "skipped_samples": skipped_total,
        "skipped_files": skipped_files,
        "stopped_early": stop_reason is not None,
        "stop_reason": stop_reason,
        "samples_seen": run.samples_seen,
        "iterations": run.iterations,
        "train_seconds": run.train_seconds,
        "partial_epoch": partial_epoch,
        **run.paths,
    }


# ------------------------------------------------------------------------------- helpers


def _info(ctx: D.DistributedContext, message: str) -> None:
    if ctx.is_main:
        logger.info(message)


def _warn(ctx: D.DistributedContext, message: str) -> None:
    if ctx.is_main:
        logger.warning(message)


class _CsvLog:
    """``log.csv``: one row per epoch; on resume rows after the checkpoint's epoch are dropped."""

    def __init__(self, path: Path, keep_epochs: int) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if keep_epochs > 0 and path.is_file():
            with open(path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= keep_epochs]

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        fields: list[str] = []
        for r in self.rows:
            fields += [k for k in r if k not in fields]
        with atomic_write(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)


def _plain(obj: Any) -> Any:
    """JSON-able copy of ``obj`` (paths and other objects become strings), safe for
    ``torch.load(weights_only=True)``."""
    return json.loads(json.dumps(obj, default=str))


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
