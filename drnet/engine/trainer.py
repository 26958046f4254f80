"""The one training loop shared by every task.

Read top to bottom: set up (device, distributed, seed) -> data -> model -> optimizer and schedule
-> resume -> for each epoch: train, evaluate, log, checkpoint. A task (classification,
segmentation, ...) subclasses :class:`Task` and supplies what differs: datasets, model, loss and
metrics.

Reproducibility: training is a pure function of ``(seed, epoch, iteration)``. The shuffle order of
an epoch comes from ``seed + epoch``, the augmentation of a sample from ``(seed, epoch, index)``
(:mod:`drnet.engine.data`), and a checkpoint stores the global RNG state, so a run that is stopped
(at an epoch boundary, or mid-epoch by SIGTERM/SIGINT) and resumed ends with the same weights as
an uninterrupted one, whatever the number of data workers.

Batch size: ``TrainConfig.batch_size`` is the global batch, split evenly over the processes of a
``torchrun`` job (as the original code split it over GPUs with DataParallel).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from drnet.engine import distributed as D
from drnet.engine.checkpoint import (
    CHECKPOINT_BEST,
    CHECKPOINT_LAST,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from drnet.engine.data import SeededDataset, ShardedSampler
from drnet.engine.schedule import build_scheduler
from drnet.errors import CheckpointError, DataError, DrnetError
from drnet.models.weights import load_into


@dataclass
class TrainConfig:
    """Everything the engine needs besides the task. Every field has a default."""

    output_dir: str = "runs/train"
    epochs: int = 10
    batch_size: int = 8  # global batch, split over torchrun processes
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_mode: str = "poly"  # "poly" (per iteration, power 0.9) | "step" | "cosine"
    lr_step: int = 30  # epochs between x lr_gamma for "step"
    lr_gamma: float = 0.1
    poly_power: float = 0.9
    workers: int = 2
    device: str = "auto"  # auto -> cuda if available else cpu
    amp: bool = False  # autocast on GPU (bf16 when supported, else fp16 + GradScaler)
    seed: int = 0
    resume: str | None = None  # training checkpoint, or "auto" = output_dir/checkpoint_last.pth
    bn_sync: bool = False
    max_iters: int | None = None  # cap on iterations per epoch (tests, quick runs)
    eval_every: int = 1
    channels_last: bool = False
    grad_checkpoint: bool = False  # hook: calls model.set_grad_checkpointing(True) if it exists
    compile: bool = False
    skip_bad_samples: bool = False
    progress: bool = True  # tqdm bar on rank 0
    pin_memory: bool = True  # only used on CUDA
    handle_signals: bool = True  # SIGTERM/SIGINT -> checkpoint at the next iteration, then stop

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        raise NotImplementedError

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


class _StopFlag:
    """SIGTERM/SIGINT handler: ask the loop to stop after the current iteration."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _NoFlag:
    signum = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def autocast_context(device: torch.device, amp: bool):
    """``torch.autocast`` on CUDA when ``amp`` (bf16 if supported, else fp16), else a no-op."""
    if not amp or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _log(ctx: D.DistributedContext, message: str) -> None:
    if ctx.is_main:
        print(message, file=sys.stderr, flush=True)


def _resolve_resume(config: TrainConfig) -> Path | None:
    if not config.resume:
        return None
    if config.resume == "auto":
        path = Path(config.output_dir) / CHECKPOINT_LAST
        return path if path.is_file() else None
    return Path(config.resume)


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
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)


def _plain(obj: Any) -> Any:
    """JSON-able copy of ``obj`` (paths and other objects become strings), safe for
    ``torch.load(weights_only=True)``."""
    return json.loads(json.dumps(obj, default=str))


def _interrupted(stop: Any, epoch: int, iteration: int, paths: dict) -> TrainingInterrupted:
    name = signal.Signals(stop.signum).name if stop.signum else "a signal"
    where = f"at epoch {epoch + 1} iteration {iteration}" if iteration else f"after epoch {epoch}"
    return TrainingInterrupted(
        f"stopped by {name} {where}; checkpoint {paths['checkpoint_last']} "
        f"(continue with --resume auto)"
    )


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def train(task: Task, config: TrainConfig) -> dict[str, Any]:
    """Train ``task`` as ``config`` says; returns a summary.

    The summary has ``best_metric``, ``best_epoch``, ``main_metric``, ``epochs`` (completed),
    ``last_metrics``, ``history`` (one dict per epoch) and the paths ``output_dir``,
    ``checkpoint_last``, ``checkpoint_best`` (None when there is no validation set), ``log_csv``,
    ``config_json``, and ``skipped_samples`` (bad samples skipped with ``skip_bad_samples``; each
    epoch's count is also in ``log.csv``).

    Raises :class:`TrainingInterrupted` after SIGTERM/SIGINT (a resumable checkpoint was written)
    and :class:`DrnetError` on a non-finite loss (the last good checkpoint is kept).
    """
    # ---- setup: device, distributed, seed -----------------------------------------------------
    ctx = D.init_distributed(config.device)
    return _train(task, config, ctx)


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


def _train(task: Task, config: TrainConfig, ctx: D.DistributedContext) -> dict[str, Any]:
    _check_config(config)
    device = ctx.device
    out_dir = Path(config.output_dir)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    use_amp = config.amp and device.type == "cuda"
    if config.amp and not use_amp:
        _log(ctx, f"note: --amp ignored on {device.type}; training in float32")
    if config.batch_size % ctx.world_size:
        raise DrnetError(
            f"--batch-size {config.batch_size} is not divisible by the {ctx.world_size} processes"
        )
    batch_per_rank = config.batch_size // ctx.world_size
    torch.manual_seed(config.seed)  # same initial weights on every rank

    # ---- data ---------------------------------------------------------------------------------
    train_set = SeededDataset(task.train_dataset(), config.seed, config.skip_bad_samples)
    val_set = task.val_dataset()
    sampler = ShardedSampler(
        len(train_set), shuffle=True, seed=config.seed, rank=ctx.rank, world_size=ctx.world_size
    )
    iters_per_epoch = len(sampler) // batch_per_rank
    if iters_per_epoch == 0:
        raise DataError(
            f"the training set has {len(train_set)} samples ({len(sampler)} per process), fewer "
            f"than one batch of {batch_per_rank}; lower --batch-size"
        )
    if config.max_iters:
        iters_per_epoch = min(iters_per_epoch, config.max_iters)

    # ---- model --------------------------------------------------------------------------------
    model = task.build_model().to(device)
    if config.grad_checkpoint:
        if hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        else:
            _log(ctx, "note: this model has no gradient checkpointing; --grad-checkpoint ignored")
    if config.bn_sync and ctx.is_distributed:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:  # torch's SyncBatchNorm only synchronises GPU tensors
            _log(ctx, f"note: --bn-sync needs CUDA; ignored on {device.type}")
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    bare_model = model  # what checkpoints store and evaluate() receives

    # ---- optimizer and schedule ---------------------------------------------------------------
    optimizer = torch.optim.SGD(
        task.optim_parameters(model),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    scheduler = build_scheduler(
        optimizer,
        config.lr_mode,
        iters_per_epoch,
        config.epochs,
        config.lr_step,
        config.lr_gamma,
        config.poly_power,
    )
    scaler_enabled = use_amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler(device.type, enabled=scaler_enabled)

    # ---- resume -------------------------------------------------------------------------------
    start_epoch, start_iter, best_metric, best_epoch = 0, 0, None, None
    skip_carry = 0  # bad samples skipped in the part of the epoch done before an interruption
    resume_path = _resolve_resume(config)
    have_checkpoint = resume_path is not None  # a good checkpoint of this run exists
    if resume_path is not None:
        state = load_checkpoint(resume_path, map_location="cpu")
        # lists missing/unexpected/wrongly shaped keys (e.g. other --arch or --channels)
        load_into(bare_model, state["model"], strict=True, source=f"--resume {resume_path}")
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"{resume_path} does not fit this optimizer: {str(exc).splitlines()[0]}"
            ) from exc
        sched_state = dict(state.get("scheduler") or {})
        if sched_state:
            # keep the schedule's shape from the current config (e.g. more --epochs)
            sched_state["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
            sched_state["base_lrs"] = [config.lr] * len(optimizer.param_groups)
            scheduler.load_state_dict(sched_state)
            # the lr of the next step, from the current config (same value if it is unchanged)
            for group, fn in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
                group["initial_lr"] = config.lr
                group["lr"] = config.lr * fn(scheduler.last_epoch)
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, start_iter = int(state["epoch"]), int(state.get("iteration", 0))
        best_metric, best_epoch = state.get("best_metric"), state.get("best_epoch")
        skip_carry = int(state.get("skipped_samples") or 0) if start_iter else 0
        restore_rng_state(state.get("rng"))
        _log(ctx, f"resumed from {resume_path} at epoch {start_epoch} iteration {start_iter}")
        del state

    # ---- wrap: DDP, compile -------------------------------------------------------------------
    model_for_train: nn.Module = model
    if ctx.is_distributed:
        model_for_train = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters,
        )
    if config.compile:
        model_for_train = torch.compile(model_for_train)

    task_info = _plain(task.describe())
    resolved = {
        **config.to_dict(),
        "device_resolved": str(device),
        "world_size": ctx.world_size,
        "batch_per_process": batch_per_rank,
        "iters_per_epoch": iters_per_epoch,
        "amp_dtype": (
            ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if use_amp else None
        ),
        "task": task_info,
    }
    resolved = _plain(resolved)
    paths = {
        "output_dir": str(out_dir),
        "checkpoint_last": str(out_dir / CHECKPOINT_LAST),
        "checkpoint_best": None,
        "log_csv": str(out_dir / "log.csv"),
        "config_json": str(out_dir / "config.json"),
    }
    if ctx.is_main:
        with open(out_dir / "config.json", "w") as f:
            json.dump(resolved, f, indent=2, default=str)
    csv_log = _CsvLog(out_dir / "log.csv", start_epoch) if ctx.is_main else None
    history: list[dict[str, Any]] = list(csv_log.rows) if csv_log else []

    def checkpoint_state(epoch: int, iteration: int, skipped: int = 0) -> dict[str, Any]:
        return {
            "model": bare_model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "iteration": iteration,
            "config": resolved,
            "task": task_info,
            "rng": capture_rng_state(),
            "best_metric": best_metric,
            "best_epoch": best_epoch,
            "skipped_samples": skipped,  # inside a partly done epoch
        }

    def skipped_since(start: int) -> int:
        """Bad samples skipped since the count was ``start``, summed over processes."""
        count = torch.tensor([train_set.skipped_count() - start], dtype=torch.float64)
        D.all_reduce_sum(count)
        return int(count.item())

    # ---- epochs -------------------------------------------------------------------------------
    last_metrics: dict[str, float] = {}
    flag_ctx = _StopFlag() if config.handle_signals else _NoFlag()
    with flag_ctx as stop:
        for epoch in range(start_epoch, config.epochs):
            # -- train one epoch
            train_set.epoch = epoch
            skip_start = train_set.skipped_count()
            sampler.set_epoch(epoch, start=start_iter * batch_per_rank)
            loader = DataLoader(
                train_set,
                batch_size=batch_per_rank,
                sampler=sampler,
                num_workers=config.workers,
                collate_fn=task.collate_fn(),
                pin_memory=config.pin_memory and device.type == "cuda",
                drop_last=True,
                generator=torch.Generator().manual_seed(config.seed + epoch),
            )
            model_for_train.train()
            loss_sum, n_seen, t_start = 0.0, 0, time.perf_counter()
            epoch_lr = optimizer.param_groups[0]["lr"]  # lr of the epoch's first iteration
            t0 = t_start
            bar = None
            if ctx.is_main and config.progress:
                from tqdm.auto import tqdm

                bar = tqdm(
                    total=iters_per_epoch,
                    initial=start_iter,
                    desc=f"epoch {epoch + 1}/{config.epochs}",
                    dynamic_ncols=True,
                    leave=False,
                )
            iteration = start_iter
            stopped = stop_agreed = False
            for batch in loader:
                if iteration >= iters_per_epoch:
                    break
                inputs, target = task.batch_to_device(batch, device, config.channels_last)
                with autocast_context(device, use_amp):
                    output = model_for_train(inputs)
                    loss = task.loss(output, target)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                # one collective per step: summed loss + "someone was asked to stop"
                stats = torch.tensor(
                    [loss.detach().float().item(), 1.0 if stop.signum else 0.0],
                    dtype=torch.float64,
                )
                D.all_reduce_sum(stats)
                loss_value = stats[0].item() / ctx.world_size
                if not math.isfinite(loss_value):
                    if bar is not None:
                        bar.close()
                    kept = (
                        f"last good checkpoint: {paths['checkpoint_last']}, --resume auto "
                        "continues from it"
                        if have_checkpoint
                        else "no checkpoint was written yet"
                    )
                    raise DrnetError(
                        f"loss is {loss_value} at epoch {epoch + 1} batch {iteration + 1}; "
                        f"stopped ({kept}). Try a lower --lr, or check the data with "
                        "'drnet data check'"
                    )
                lr_used = optimizer.param_groups[0]["lr"]
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                iteration += 1
                n_batch = task.batch_size_of(inputs) * ctx.world_size
                loss_sum += loss_value * n_batch
                n_seen += n_batch
                if bar is not None:
                    now = time.perf_counter()
                    dt, t0 = max(now - t0, 1e-9), now  # includes data loading
                    bar.set_postfix(
                        loss=f"{loss_value:.4f}",
                        lr=f"{lr_used:.3g}",
                        img_s=f"{n_batch / dt:.1f}",
                        refresh=False,
                    )
                    bar.update(1)
                stop_agreed = stats[1].item() > 0
                if stop_agreed and iteration < iters_per_epoch:
                    stopped = True
                    break
            if bar is not None:
                bar.close()
            del loader
            epoch_skipped = skip_carry + skipped_since(skip_start) if config.skip_bad_samples else 0
            skip_carry = 0
            if stopped:
                if ctx.is_main:
                    save_checkpoint(
                        checkpoint_state(epoch, iteration, epoch_skipped), paths["checkpoint_last"]
                    )
                D.barrier()
                raise _interrupted(stop, epoch, iteration, paths)
            start_iter = 0
            elapsed = time.perf_counter() - t_start
            D.broadcast_buffers(bare_model)  # every rank evaluates and saves rank 0's statistics

            # -- evaluate
            metrics: dict[str, float] = {}
            do_eval = val_set is not None and (
                (epoch + 1) % max(1, config.eval_every) == 0 or epoch + 1 == config.epochs
            )
            if do_eval:
                bare_model.eval()
                if task.distributed_eval or ctx.is_main:
                    metrics = task.evaluate(bare_model, val_set, config, device)
                D.barrier()
                bare_model.train()
                last_metrics = metrics

            # -- log and checkpoint (rank 0 writes)
            value = metrics.get(task.main_metric)
            is_best = value is not None and (best_metric is None or value > best_metric)
            if is_best:
                best_metric, best_epoch = float(value), epoch + 1
            if ctx.is_main:
                row = {
                    "epoch": epoch + 1,
                    "train_loss": loss_sum / max(1, n_seen),
                    "lr": epoch_lr,
                    "time_s": elapsed,
                    "img_per_s": n_seen / max(elapsed, 1e-9),
                    **({"skipped_samples": epoch_skipped} if config.skip_bad_samples else {}),
                    **{f"val_{k}": v for k, v in metrics.items()},
                }
                state = checkpoint_state(epoch + 1, 0)
                save_checkpoint(state, paths["checkpoint_last"])
                if is_best:
                    save_checkpoint(state, out_dir / CHECKPOINT_BEST)
                del state
                csv_log.append({k: _fmt(v) for k, v in row.items()})
                history.append(row)
                shown = ", ".join(f"{k} {_fmt(v)}" for k, v in row.items() if k != "epoch")
                _log(ctx, f"epoch {epoch + 1}/{config.epochs}: {shown}")
            have_checkpoint = True
            D.barrier()
            if stop_agreed and epoch + 1 < config.epochs:
                raise _interrupted(stop, epoch + 1, 0, paths)

    if (out_dir / CHECKPOINT_BEST).is_file():
        paths["checkpoint_best"] = str(out_dir / CHECKPOINT_BEST)
    skipped_total = sum(int(float(row.get("skipped_samples") or 0)) for row in history)
    if skipped_total:
        _log(ctx, f"skipped {skipped_total} bad sample(s) in total (see the warnings above)")
    return {
        "main_metric": task.main_metric,
        "best_metric": best_metric,
        "best_epoch": best_epoch,
        "epochs": config.epochs,
        "last_metrics": last_metrics,
        "history": history,
        "skipped_samples": skipped_total,
        **paths,
    }
