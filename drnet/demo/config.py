"""What ``drnet demo`` is given (:class:`DemoConfig`), the files it owns in its output folder,
and how it reports progress (one line per step through the ``drnet`` logger)."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from drnet.data.fashion_mnist import ENV_VAR, PACKAGED
from drnet.demo.recipes import Recipe
from drnet.errors import DrnetError

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
MARKER_FILE = ".drnet-demo"  # marks a folder as a demo's output (so it may be replaced)
#: Files and folders a demo run owns inside its output folder (removed when it runs again).
OWNED = (METRICS_FILE, REPORT_FILE, "data", "models", "figures", "seeds.json", MARKER_FILE)

logger = logging.getLogger("drnet.demo.run")  # the logger the demo's lines always came from


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


def say(message: str) -> None:
    """One line of the demo's progress."""
    logger.info("%s", message)


def fmt_s(seconds: float) -> str:
    """``"4 min 05 s"`` or ``"42 s"``."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def item_source(config: DemoConfig) -> str:
    """Where the Fashion-MNIST items come from: ``--fashion-mnist``, else
    ``$DRNET_FASHION_MNIST``, else the packaged subset."""
    return config.fashion_mnist or os.environ.get(ENV_VAR) or PACKAGED


def prepare_output(out: Path) -> None:
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
