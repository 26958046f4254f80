"""The shared training engine's command-line options, used by every ``... train`` command."""

from __future__ import annotations

import argparse

from drnet.cli import non_negative_int, positive_int


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

    ``output_aliases`` keeps flag names of the original scripts working (``--save_path``).
    """
    group = parser.add_argument_group("training (shared engine)")
    group.add_argument(
        "-o", "--output-dir", *output_aliases, dest="output_dir", default=output_dir,
        help=f"run directory (default {output_dir})",
    )  # fmt: skip
    group.add_argument("--epochs", type=positive_int, default=epochs)
    group.add_argument(
        "-b", "--batch-size", type=positive_int, default=batch_size,
        help=f"global batch, split over torchrun processes (default {batch_size})",
    )  # fmt: skip
    group.add_argument("--lr", type=float, default=lr, help=f"initial learning rate ({lr})")
    group.add_argument(
        "--lr-mode", choices=("poly", "step", "cosine"), default=lr_mode,
        help=f"poly: (1 - it/total)^0.9 per iteration; step: x --lr-gamma every --lr-step "
        f"epochs; cosine (default {lr_mode})",
    )  # fmt: skip
    group.add_argument(
        "--lr-step", "--step", dest="lr_step", type=positive_int, default=lr_step,
        help=f"epochs between steps for --lr-mode step (default {lr_step})",
    )  # fmt: skip
    group.add_argument("--lr-gamma", type=float, default=0.1, help="step factor (0.1)")
    group.add_argument("--momentum", type=float, default=0.9)
    group.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=1e-4)
    group.add_argument(
        "-j", "--workers", type=non_negative_int, default=workers, help="data loader processes"
    )
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    group.add_argument("--amp", action="store_true", help="mixed precision (bf16/fp16) on GPU")
    group.add_argument("--seed", type=int, default=0, help="seed: same seed, same weights")
    group.add_argument(
        "--resume", help="training checkpoint to continue from, or 'auto' (the run's last one)"
    )
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
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


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
        bn_sync=args.bn_sync,
        max_iters=args.max_iters,
        eval_every=args.eval_every,
        channels_last=args.channels_last,
        grad_checkpoint=args.grad_checkpoint,
        compile=args.compile,
        skip_bad_samples=args.skip_bad_samples,
        progress=not args.no_progress,
    )
