"""Training checkpoints: written atomically, read with ``weights_only=True``.

A training checkpoint is a dict with the keys ``model`` (state dict of the bare model, no
``module.`` prefix), ``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (epochs completed),
``iteration`` (iterations completed inside ``epoch``; 0 at an epoch boundary), ``config``
(the resolved :class:`~drnet.engine.trainer.TrainConfig` as a dict), ``task`` (what the task
needs to rebuild its model: architecture, classes...), ``rng`` and ``best_metric``.

A file is written to a temporary name in the same directory, flushed to disk, then renamed over
the target with :func:`os.replace` (:func:`drnet.atomic.atomic_write`), so a reader never
sees a half-written checkpoint.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drnet.atomic import atomic_write
from drnet.errors import CheckpointError
from drnet.models.checkpoints import read_checkpoint

CHECKPOINT_LAST = "checkpoint_last.pth"
CHECKPOINT_BEST = "checkpoint_best.pth"
CHECKPOINT_EMA = "checkpoint_ema.pth"  # the weights' moving average (--model-ema)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        torch.save(state, f)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """Read a training checkpoint written by :func:`save_checkpoint` (``weights_only=True``,
    through :func:`drnet.models.checkpoints.read_checkpoint`; tensors land on the CPU, the only
    ``map_location`` accepted)."""
    if str(map_location) != "cpu":
        raise ValueError(f"map_location must be 'cpu', got {map_location!r}")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    state = read_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(
            f"{path} is not a drnet training checkpoint (expected a dict with 'model', "
            f"'optimizer', 'epoch'...); to start from weights only use --weights"
        )
    return state


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, Python ``random``, NumPy), checkpoint-safe."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any] | None) -> None:
    """Restore what :func:`capture_rng_state` returned (missing parts are left alone)."""
    if not state:
        return
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "python" in state:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "numpy" in state:
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
