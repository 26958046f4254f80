"""Data plumbing that makes training a pure function of ``(seed, epoch, iteration)``.

* :class:`ShardedSampler` shuffles with a generator seeded by ``seed + epoch`` (the order of
  :class:`~torch.utils.data.DistributedSampler`), keeps this rank's shard, and can start part-way
  through an epoch (resume after an interruption).
* :class:`SeededDataset` seeds the global RNGs from ``(seed, epoch, index)`` around each
  ``__getitem__``, so random augmentation of a sample does not depend on worker count, worker
  order or restarts. The caller's RNG state is restored afterwards.
* :func:`worker_init` is the ``worker_init_fn`` of the engine's loaders: workers leave
  SIGTERM/SIGINT to the main process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import random
import signal
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from drnet.errors import DataError

logger = logging.getLogger(__name__)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed mixed from ``(seed, epoch, index)`` (no collisions between neighbours)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> 1)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def worker_init(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: the worker ignores SIGTERM and SIGINT.

    torchrun's shutdown, SLURM pre-emption and Ctrl-C in a terminal signal the whole process
    group. Workers that died of it would take the main process down with them ("DataLoader
    worker ... killed by signal") before it could write its checkpoint; ignoring the signal
    lets the main process stop after the current iteration, which then shuts its workers down.
    Seeding needs nothing here (:class:`SeededDataset` seeds every sample).
    """
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # held by stop_signals_held() while forking
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold SIGTERM/SIGINT back while a DataLoader starts its workers (``iter(loader)``).

    A worker inherits the held signals and lets them go only once :func:`worker_init` ignores
    them, so a signal to the process group while workers start cannot kill one; this process
    receives its copy when the block ends.
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: nothing to hold
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class ShardedSampler(Sampler[int]):
    """Per-epoch shuffled indices for one rank, optionally skipping the first ``start`` of them.

    The permutation of ``range(length)`` depends only on ``seed + epoch``; it is padded (by
    repeating its head) to a multiple of ``world_size`` and rank ``r`` takes ``perm[r::world]``,
    like :class:`~torch.utils.data.DistributedSampler`.
    """

    def __init__(
        self,
        length: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip its first ``start`` samples of this rank."""
        self.epoch = epoch
        self.start = start

    def shard(self) -> list[int]:
        """This rank's indices for the current epoch, before skipping."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        per_rank = -(-self.length // self.world_size)
        total = per_rank * self.world_size
        while len(order) < total:
            order += order[: total - len(order)]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard()[self.start :])

    def __len__(self) -> int:
        return max(0, -(-self.length // self.world_size) - self.start)


class SeededDataset(Dataset):
    """Wrap ``dataset`` so item ``i`` of epoch ``e`` is drawn with RNGs seeded by ``(seed, e, i)``.

    Set :attr:`epoch` before building each epoch's DataLoader (workers get a copy of this object
    when the loader's iterator starts). With ``skip_bad_samples`` a :class:`DataError` raised by an
    item is logged as a warning (it names the file), counted in :meth:`skipped_count`, and the next
    index is used instead.
    """

    def __init__(self, dataset: Dataset, seed: int = 0, skip_bad_samples: bool = False) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0
        self.skip_bad_samples = skip_bad_samples
        # shared memory, so skips inside DataLoader worker processes are counted here too
        self._skipped = multiprocessing.Value("q", 0) if skip_bad_samples else None
        # one flag per index: a bad file is skipped again in every epoch (and whenever its
        # neighbour is bad), so the skips overcount the files
        size = len(dataset) if skip_bad_samples else 0  # type: ignore[arg-type]
        self._bad = multiprocessing.Array("b", size, lock=False) if skip_bad_samples else None

    def skipped_count(self) -> int:
        """How many bad samples were skipped so far (all epochs, all workers of this process)."""
        return int(self._skipped.value) if self._skipped is not None else 0

    def skipped_files(self) -> int:
        """How many distinct samples (files) were found bad so far, in this process."""
        return len(self.bad_indices())

    def bad_indices(self) -> list[int]:
        """The indices of the samples found bad so far, in this process (its loader workers
        included)."""
        if not self._bad:
            return []
        return np.flatnonzero(np.frombuffer(self._bad, dtype=np.int8)).tolist()

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _get(self, index: int):
        seed = sample_seed(self.seed, self.epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed also queues a lazy seed of every
            # accelerator's generator, recording a stack trace each time (about 0.6 ms per
            # device type, more than the augmentation itself); the CUDA RNG is not restored by
            # fork_rng(devices=[]) either, so seeding it here was a side effect
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)

    def __getitem__(self, index: int):
        if not self.skip_bad_samples:
            return self._get(index)
        n = len(self)
        for attempt in range(min(n, 100)):
            i = (index + attempt) % n
            try:
                return self._get(i)
            except DataError as exc:
                with self._skipped.get_lock():
                    self._skipped.value += 1
                self._bad[i] = 1
                logger.warning("skipping bad sample %d: %s", i, exc)
        raise DataError(
            f"{min(n, 100)} consecutive bad samples from index {index} on; giving up "
            "(run 'drnet data check' on the dataset)"
        )
