"""The shared training engine's command-line options, used by every ``... train`` command."""

from __future__ import annotations

import argparse
import math

from drnet.cli import float_in, non_negative_int, positive_int
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
    group.add_argument(
        "--opt", choices=("sgd", "adamw"), default="sgd",
        help="optimizer: SGD with momentum (decays every weight), or AdamW (decays "
        "convolution and linear kernels only, as timm does)",
    )  # fmt: skip
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    group.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    group.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay")
    hidden(group, "--wd", dest="weight_decay", type=float)
    _add_recipe_arguments(parser)
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
    layout = group.add_mutually_exclusive_group()
    layout.add_argument(
        "--channels-last", action="store_const", const=True, dest="channels_last",
        default="auto",
        help="train in the NHWC memory format (default: measured at the start, the faster of "
        "NCHW and NHWC on this machine; the choice is cached per machine, model and input size)",
    )  # fmt: skip
    layout.add_argument(
        "--no-channels-last", action="store_const", const=False, dest="channels_last",
        help="train in NCHW (no measurement)",
    )  # fmt: skip
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


def _add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """Warm-up, label smoothing, weight EMA, MixUp/CutMix: torchvision's references' names."""
    group = parser.add_argument_group("training recipe (names as in torchvision's references)")
    group.add_argument(
        "--lr-warmup-epochs", type=float_in(0), default=0.0, metavar="E",
        help="epochs of learning-rate warm-up before --lr-mode (fractions allowed; default 0)",
    )  # fmt: skip
    group.add_argument(
        "--lr-warmup-iters", type=non_negative_int, default=0, metavar="N",
        help="warm-up length in iterations instead (wins over --lr-warmup-epochs)",
    )  # fmt: skip
    group.add_argument(
        "--lr-warmup-method", choices=("linear", "constant"), default="linear",
        help="linear: from --lr-warmup-decay x lr up to lr; constant: --lr-warmup-decay x lr",
    )  # fmt: skip
    group.add_argument(
        "--lr-warmup-decay", type=float_in(0, 1, low_open=True), default=0.01,
        help="the lr factor the warm-up starts from (default 0.01)",
    )  # fmt: skip
    group.add_argument(
        "--label-smoothing", type=float_in(0, 1, high_open=True), default=0.0,
        help="label smoothing of the cross-entropy (torchvision's recipes use 0.1)",
    )  # fmt: skip
    group.add_argument(
        "--model-ema", action="store_true",
        help="keep an exponential moving average of the weights: evaluated every epoch "
        "(val_ema_* in log.csv) and saved as checkpoint_ema.pth",
    )  # fmt: skip
    group.add_argument(
        "--model-ema-decay", type=float_in(0, 1, high_open=True), default=0.999,
        help="EMA decay per update (with timm's warm-up: min(decay, (1+n)/(10+n)))",
    )  # fmt: skip
    group.add_argument(
        "--model-ema-steps", type=positive_int, default=1, metavar="N",
        help="iterations between EMA updates",
    )  # fmt: skip
    group.add_argument(
        "--model-ema-best", action="store_true",
        help="checkpoint_best.pth is the EMA, chosen on the EMA's validation metric",
    )  # fmt: skip
    group.add_argument(
        "--mixup-alpha", type=float_in(0), default=0.0,
        help="classification: MixUp with this Beta alpha (0: off; torchvision's recipes: 0.2)",
    )  # fmt: skip
    group.add_argument(
        "--cutmix-alpha", type=float_in(0), default=0.0,
        help="classification: CutMix with this alpha (0: off; recipes: 1.0); with MixUp, one "
        "of the two per batch",
    )  # fmt: skip
    group.add_argument(
        "--log-interval", type=positive_int, default=10, metavar="N",
        help="iterations between host syncs: the loss check, the stop vote under torchrun and "
        "the progress text",
    )  # fmt: skip
    hidden(group, "--print-freq", dest="log_interval", type=positive_int)


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
        opt=args.opt,
        nesterov=args.nesterov,
        lr_warmup_epochs=args.lr_warmup_epochs,
        lr_warmup_iters=args.lr_warmup_iters,
        lr_warmup_method=args.lr_warmup_method,
        lr_warmup_decay=args.lr_warmup_decay,
        label_smoothing=args.label_smoothing,
        model_ema=args.model_ema,
        model_ema_decay=args.model_ema_decay,
        model_ema_steps=args.model_ema_steps,
        model_ema_best=args.model_ema_best,
        mixup_alpha=args.mixup_alpha,
        cutmix_alpha=args.cutmix_alpha,
        log_interval=args.log_interval,
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
