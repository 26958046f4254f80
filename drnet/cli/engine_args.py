"""The shared training engine's command-line options, used by every ``... train`` command."""

from __future__ import annotations

import argparse
import math

from drnet.cli import positive_int
from drnet.cli.vocab import (
    add_batch_size,
    add_device,
    add_no_progress,
    add_output_dir,
    add_workers,
    hidden,
)


def _seconds(text: str) -> float:
    """An argparse ``type``: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


def add_engine_arguments(
    parser: argparse.ArgumentParser,
    *,
    output_dir: str,
    epochs: int,
    batch_size: int,
    lr: float,
    lr_mode: str,
    lr_step: int,
    workers: int = 4,
    output_aliases: tuple[str, ...] = (),
) -> None:
    """Add the options of :class:`drnet.engine.TrainConfig` with a task's defaults.

    ``output_aliases`` keeps flag names of the original scripts working (``--save_path``), as
    hidden aliases, like ``--step`` and ``--wd``.
    """
    group = parser.add_argument_group("training (shared engine)")
    add_output_dir(group, output_dir, "run directory", old=output_aliases)
    group.add_argument("--epochs", type=positive_int, default=epochs, help="training epochs")
    add_batch_size(group, batch_size, "global batch, split over torchrun processes")
    group.add_argument("--lr", type=float, default=lr, help="initial learning rate")
    group.add_argument(
        "--lr-mode", choices=("poly", "step", "cosine"), default=lr_mode,
        help="poly: (1 - it/total)^0.9 per iteration; step: x --lr-gamma every --lr-step "
        "epochs; cosine",
    )  # fmt: skip
    group.add_argument(
        "--lr-step", type=positive_int, default=lr_step,
        help="epochs between steps for --lr-mode step",
    )  # fmt: skip
    hidden(group, "--step", dest="lr_step", type=positive_int)
    group.add_argument("--lr-gamma", type=float, default=0.1, help="step factor")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    group.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay")
    hidden(group, "--wd", dest="weight_decay", type=float)
    add_workers(group, workers)
    add_device(group)
    group.add_argument(
        "--amp", action="store_true",
        help="mixed precision: bf16 (else fp16) on GPU, bf16 on CPUs with native bf16 "
        "(avx512_bf16/AMX); elsewhere float32 with a note",
    )  # fmt: skip
    group.add_argument("--seed", type=int, default=0, help="seed: same seed, same weights")
    group.add_argument(
        "--resume", help="training checkpoint to continue from, or 'auto' (the run's last one)"
    )
    group.add_argument(
        "--overwrite", action="store_true",
        help="train into an --output-dir that already holds a run (a checkpoint or log.csv), "
        "deleting that run's checkpoints and log.csv; without it such a folder is refused "
        "(continue the run with --resume auto instead)",
    )  # fmt: skip
    group.add_argument("--bn-sync", action="store_true", help="SyncBatchNorm under torchrun")
    group.add_argument("--max-iters", type=positive_int, help="cap iterations per epoch")
    group.add_argument("--eval-every", type=positive_int, default=1, help="validate every N epochs")
    group.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    group.add_argument(
        "--grad-checkpoint", action="store_true", help="recompute activations per level in "
        "backward: less memory, more compute",
    )  # fmt: skip
    group.add_argument("--compile", action="store_true", help="torch.compile the model")
    group.add_argument(
        "--skip-bad-samples", action="store_true",
        help="skip unreadable/invalid training samples (each named on stderr, counted in "
        "log.csv and the summary) instead of stopping",
    )  # fmt: skip
    add_no_progress(group)
    faults = parser.add_argument_group("faults (see 'Restarts' in docs/engine.md)")
    faults.add_argument(
        "--save-every", type=positive_int, metavar="N",
        help="also write checkpoint_last.pth every N iterations, mid-epoch (a crash then loses "
        "at most N iterations; torchrun --max-restarts resumes from it by itself)",
    )  # fmt: skip
    faults.add_argument(
        "--dist-timeout", type=_seconds, default=1800.0, metavar="SECONDS",
        help="under torchrun: how long a process waits for the others before it fails "
        "(default 1800)",
    )  # fmt: skip


def train_config(args: argparse.Namespace):
    """The :class:`drnet.engine.TrainConfig` for parsed engine options."""
    from drnet.engine import TrainConfig

    return TrainConfig(
        output_dir=args.output_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        lr_mode=args.lr_mode,
        lr_step=args.lr_step,
        lr_gamma=args.lr_gamma,
        workers=args.workers,
        device=args.device,
        amp=args.amp,
        seed=args.seed,
        resume=args.resume,
        overwrite=args.overwrite,
        bn_sync=args.bn_sync,
        max_iters=args.max_iters,
        eval_every=args.eval_every,
        channels_last=args.channels_last,
        grad_checkpoint=args.grad_checkpoint,
        compile=args.compile,
        skip_bad_samples=args.skip_bad_samples,
        progress=not args.no_progress,
        save_every=args.save_every,
        dist_timeout=args.dist_timeout,
    )
