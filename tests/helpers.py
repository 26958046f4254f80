"""Helpers that several test files share: data trees, tiny checkpoints, running the CLI and
reading its errors.

Imported by name (``from helpers import make_list_dataset``: pytest puts ``tests/`` on
``sys.path``); the fixtures live in ``conftest.py``. Everything generated here is tiny and seeded,
so tests stay fast and exact.
"""

from __future__ import annotations

import csv
import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]

# narrow DRN widths (one per level): every level still exists, a forward pass takes milliseconds
TINY_CHANNELS = (8, 8, 16, 16, 32, 32, 32, 32)
TINY_ARG = ",".join(map(str, TINY_CHANNELS))  # the same widths as a ``--channels`` value
CPU = ("--device", "cpu", "--no-progress")  # CLI flags for quiet runs on the CPU


# ------------------------------------------------------------------------------------ threads
def torch_on_one_thread() -> Iterator[None]:
    """Run torch on one thread, then restore (a generator, for module-scoped fixtures).

    The tiny nets here gain nothing from threads, and on a busy shared CPU OpenMP's spinning
    threads made these tests 5x slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------- image files
def save_image(path: Path, array) -> Path:
    """Write ``array`` (values 0..255, ``[H, W]`` or ``[H, W, 3]``) as an image, making folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def truncate(path: Path) -> None:
    """Cut a file in half (a truncated image or checkpoint)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def make_imagefolder(
    root: Path,
    n_train: int = 2,
    n_val: int | None = None,
    classes: Sequence[str] = ("cat", "dog"),
    size: tuple[int, int] = (20, 20),
    seed: int = 0,
) -> Path:
    """ImageFolder splits ``root/{train,val}/<class>/<i>.png`` of random noise (``size`` = H, W);
    ``n_val`` defaults to ``n_train``."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_train if n_val is None else n_val)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                save_image(root / split / cls / f"{i}.png", rng.integers(0, 255, (*size, 3)))
    return root


# ----------------------------------------------------------------------- segmentation datasets
SEG_COLOURS = np.array([[90, 90, 90], [220, 40, 40], [40, 40, 220]], dtype=np.uint8)


def scene(rng: np.random.Generator, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with a red (class 1) and a blue (class 2) rectangle, a 255 border strip."""
    label = np.zeros((size, size), dtype=np.uint8)
    for cls in (1, 2):
        h, w = rng.integers(size // 4, size // 2, 2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        label[y : y + h, x : x + w] = cls
    image = SEG_COLOURS[label].astype(np.int16) + rng.integers(-20, 20, (size, size, 3))
    label[:, :2] = 255  # ignored pixels
    return image.clip(0, 255).astype(np.uint8), label


def make_list_dataset(root: Path, n_train: int = 8, n_val: int = 2, size: int = 40) -> Path:
    """The original list-file layout: info.json, {split}_images.txt, {split}_labels.txt."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        images, labels = [], []
        for i in range(n):
            image, label = scene(rng, size)
            Image.fromarray(image).save(root / "images" / f"{split}_{i}.png")
            Image.fromarray(label).save(root / "labels" / f"{split}_{i}.png")
            images.append(f"images/{split}_{i}.png")
            labels.append(f"labels/{split}_{i}.png")
        (root / f"{split}_images.txt").write_text("\n".join(images) + "\n")
        (root / f"{split}_labels.txt").write_text("\n".join(labels) + "\n")
    info = {"mean": [0.4, 0.3, 0.35], "std": [0.25, 0.2, 0.3], "classes": 3}
    (root / "info.json").write_text(json.dumps(info))
    return root


# ------------------------------------------------------------------- localization (shape trees)
SHAPE_COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}


def _shape_box(rng: random.Random, width: int, height: int, aligned: bool) -> tuple[int, ...]:
    """``(x, y, w, h)`` of a rectangle inside the image; on the 8-px grid when ``aligned``."""
    if aligned:  # the stride-8 box can be exact
        w, h = 8 * rng.randint(2, 3), 8 * rng.randint(2, 3)
        return 8 * rng.randint(0, (width - w) // 8), 8 * rng.randint(0, (height - h) // 8), w, h
    w, h = rng.randint(12, 24), rng.randint(12, 24)
    return rng.randint(0, width - w), rng.randint(0, height - h), w, h


def make_shape_tree(
    root: Path,
    splits: dict[str, int] | None = None,
    sizes: tuple[tuple[int, int], ...] = ((40, 48), (37, 45)),
    seed: int = 0,
    aligned: bool = False,
) -> Path:
    """``root/<split>/<colour>/<n>.png``: one filled rectangle of the class colour on a dark
    background; ``root/boxes.csv`` lists every box (image paths relative to ``root``)."""
    splits = splits or {"train": 6, "holdout": 3, "val": 3}
    rng = random.Random(seed)
    rows = []
    for split, count in splits.items():
        for name, colour in SHAPE_COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                height, width = sizes[n % len(sizes)]
                image = Image.new("RGB", (width, height), (20, 20, 20))
                x, y, w, h = _shape_box(rng, width, height, aligned)
                image.paste(colour, (x, y, x + w, y + h))
                image.save(folder / f"{n:03d}.png")
                rows.append([f"{split}/{name}/{n:03d}.png", x, y, x + w, y + h, name])
    with (root / "boxes.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "x1", "y1", "x2", "y2", "label"])
        writer.writerows(rows)
    return root


# ------------------------------------------------------------------------------------ models
#: CLI flags of the tiny 3-class DRNSeg that :func:`save_tiny_pair` writes
TINY_SEG_ARGS = ("--model", "drn_d_22", "--channels", TINY_ARG, "--num-classes", "3")


def save_tiny_pair(root: Path, **classifiers: int) -> dict[str, Path]:
    """A tiny 3-class segmenter ``root/seg.pth`` and a 3-class classifier ``root/cls.pth``, plus
    ``name=classes`` more classifiers ``root/name.pth``; returns ``{name: path}``."""
    save_tiny_model(root / "seg.pth", 3, segmentation=True)
    paths = {"seg": root / "seg.pth"}
    for name, classes in {"cls": 3, **classifiers}.items():
        save_tiny_model(root / f"{name}.pth", classes)
        paths[name] = root / f"{name}.pth"
    return paths


def save_tiny_model(
    path: Path,
    num_classes: int,
    segmentation: bool = False,
    channels: Sequence[int] = TINY_CHANNELS,
    model: str = "drn_d_22",
) -> nn.Module:
    """Save the state dict of a freshly initialised tiny classifier (or DRNSeg) at ``path``."""
    import drnet

    create = drnet.create_segmentation_model if segmentation else drnet.create_model
    net = create(model, num_classes=num_classes, channels=tuple(channels))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return net


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|``: how far ``a`` strays from the reference ``b``."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# ---------------------------------------------------------------------- running the command
def run_cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    """``drnet ARGV`` in this process: (exit code, stdout, stderr)."""
    from drnet.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _child_env(**extra: str) -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH (children import this tree)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def drnet_process(argv: Sequence[object], log: Path) -> subprocess.Popen:
    """``python -m drnet ARGV`` on one thread; stdout and stderr go to ``log``."""
    env = _child_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log, "w") as handle:  # the child keeps its own copy of the file descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "drnet", *map(str, argv)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log.parent,
        )


def wait_for_file(path: Path, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Wait until ``path`` exists while ``process`` (logging to ``log``) still runs."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"no {path.name} after {timeout:.0f} s"
        time.sleep(0.005)


def free_port() -> int:
    """A TCP port that was free a moment ago (for torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(
    script: str, args: list[str], nproc: int = 2, timeout: int = 120
) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=NPROC SCRIPT ARGS`` on this machine; asserts it succeeded."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        script,
        *args,
    ]
    proc = subprocess.run(
        cmd, env=_child_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# ---------------------------------------------------------------------------------- CLI errors
def one_error_line(rc: int, err: str, *names: object, exit_code: int | None = 2) -> str:
    """Exactly one ``drnet: error:`` line on stderr, naming each of ``names``, no traceback, and
    exit status ``exit_code`` (``None``: any non-zero status); returns the line."""
    assert rc != 0 if exit_code is None else rc == exit_code, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("drnet: error:")]
    assert len(lines) == 1, err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def usage_error_line(argv: Sequence[str], capsys) -> str:
    """Run the CLI on ``argv``, expecting argparse's usage error (exit 2, no traceback); returns
    the error line."""
    from drnet.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    return err.splitlines()[-1]
