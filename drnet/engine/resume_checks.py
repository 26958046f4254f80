"""Where a resumed training would continue, checked before it continues (``--resume``).

A checkpoint records how far its run got (``epoch`` epochs done, ``iteration`` more batches of
the next one). Resumed with other settings, that position can mean nothing is left to train or
lie past the end of an epoch; :func:`check_resume_position` refuses the first in one line and
says what the engine does about the second, so a resume never silently trains nothing.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from drnet.errors import CheckpointError

logger = logging.getLogger(__name__)


def check_resume_position(
    state: dict[str, Any], config: Any, iters_per_epoch: int, path: str | os.PathLike
) -> str | None:
    """Check the position of the training checkpoint ``state`` (read from ``path``) against a
    run of ``config.epochs`` epochs (a :class:`drnet.engine.trainer.TrainConfig`) of
    ``iters_per_epoch`` iterations. Called on the process that reads the checkpoint first (rank
    0), before anything is loaded or written.

    Raises :class:`CheckpointError` when the checkpoint records no ``epoch`` (nothing says where
    to continue) or is already at or past ``epochs`` (nothing left to train: the message gives
    the checkpoint's epoch and how to train longer). Returns a note to show the user when the
    checkpoint's ``iteration`` lies past the end of its epoch (a larger ``--batch-size``, a lower
    ``--max-iters`` or fewer samples than when it was saved): the engine then takes that epoch as
    done, evaluates and logs it, and goes on with the next one; the note is also logged as a
    warning. Otherwise returns None.
    """
    epochs = int(config.epochs)
    if state.get("epoch") is None:
        raise CheckpointError(
            f"--resume {path}: the checkpoint records no epoch, so there is no position to "
            f"continue from; start a new run from its weights with --weights {path}"
        )
    epoch, iteration = int(state["epoch"]), int(state.get("iteration") or 0)
    if epoch >= epochs:
        where = f"in epoch {epoch + 1}" if iteration else f"after {epoch} epoch(s)"
        raise CheckpointError(
            f"--resume {path}: the checkpoint is {where}, already at or past --epochs "
            f"{epochs}, so nothing is left to train; to train longer, pass a larger --epochs "
            f"(e.g. --epochs {epoch + (2 if iteration else 1)}) with --resume"
        )
    if iteration and iteration >= iters_per_epoch:
        after = f"goes on with epoch {epoch + 2}" if epoch + 1 < epochs else "ends (last epoch)"
        note = (
            f"--resume {path}: the checkpoint stopped at iteration {iteration} of epoch "
            f"{epoch + 1}, but an epoch now has {iters_per_epoch} iteration(s) (--batch-size, "
            f"--max-iters or the data changed): epoch {epoch + 1} is taken as done (no more "
            f"batches), evaluated and logged, and training {after}"
        )
        logger.warning(note)
        return note
    return None
