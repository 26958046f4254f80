"""Distributed setup from the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

A process started without those variables is a single-process run (rank 0 of 1). Under
``torchrun`` the process group uses NCCL on CUDA and Gloo on the CPU.

Restarts: when ``torchrun --max-restarts N`` restarts the group after a failure it sets
``TORCHELASTIC_RESTART_COUNT`` > 0; :func:`effective_resume` turns that into ``resume="auto"``.
The group then meets on a fresh key prefix of torchrun's store (see :func:`_rendezvous`).
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from drnet.errors import DrnetError


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_process_group: bool = False  # True when :func:`init_distributed` created the group
    restart_count: int = 0  # torchrun restarts of this job so far (the highest over all ranks)

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` into a :class:`torch.device`.

    ``"auto"`` picks CUDA when available, else the CPU. Under ``torchrun`` a bare ``"cuda"`` means
    the GPU numbered ``LOCAL_RANK``.
    """
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise DrnetError(
            f"--device {device!r} is not a device name (auto, cpu, cuda, cuda:N)"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DrnetError(f"--device {device!r} asked for CUDA, but no CUDA GPU is available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


DEFAULT_DIST_TIMEOUT = 1800.0  # seconds a collective may wait for the other processes


def init_distributed(
    device: str = "auto", timeout: float | None = DEFAULT_DIST_TIMEOUT
) -> DistributedContext:
    """Read the torchrun environment, pick the device and join the process group if needed.

    The group is created once per process and kept (train, then evaluate, reuse it: creating a
    second one in the same process is unreliable with Gloo); it is destroyed at exit.
    ``timeout`` (seconds) bounds how long a collective waits for a missing process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistributedContext(0, 1, 0, dev, False, restart_count())
    if timeout is not None and not (timeout > 0 and timeout < float("inf")):
        raise DrnetError(f"--dist-timeout must be a number of seconds > 0, got {timeout}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
        wait = timedelta(seconds=timeout or DEFAULT_DIST_TIMEOUT)
        store, rank, size = _rendezvous(wait)
        dist.init_process_group(
            backend=backend, store=store, rank=rank, world_size=size, timeout=wait, **kwargs
        )
        atexit.register(_destroy_at_exit)
        owns = True
        _agree_restart_count(dev)
    restarts = _AGREED.get("restarts", restart_count())  # the group may be the caller's own
    rank, size = dist.get_rank(), dist.get_world_size()
    return DistributedContext(rank, size, local_rank, dev, owns, restarts)


_AGREED: dict[str, int] = {}  # "restarts": the group's restart count, agreed at its creation


def restart_count() -> int:
    """How often torchrun restarted this process's group (``TORCHELASTIC_RESTART_COUNT``; 0
    outside torchrun). Only this node's count: nodes that restart because another one failed
    do not count it, so :func:`init_distributed` agrees on the highest over all ranks."""
    try:
        return max(0, int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
    except ValueError:
        return 0


def _agree_restart_count(device: torch.device) -> None:
    count = torch.tensor([restart_count()], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        count = count.to(device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    _AGREED["restarts"] = int(count.item())


def _rendezvous(timeout: timedelta):
    """``(store, rank, world_size)`` for the group, from torchrun's environment (``env://``).

    torchrun's agent keeps one store for the whole job and its workers share it
    (``TORCHELASTIC_USE_AGENT_STORE``); after a restart the keys that the dead workers wrote
    (their Gloo addresses) are still there, and a new worker that reads one first connects to
    a closed port ("Gloo connectFullMesh failed ... Connection refused", 3 restarts in 5).
    Each restart therefore uses its own key prefix. Without a shared store (``torchrun`` with
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``) the store is new each time and needs none.
    """
    store, rank, size = next(dist.rendezvous("env://", timeout=timeout))
    store.set_timeout(timeout)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        store = dist.PrefixStore(f"drnet/{restart_count()}", store)
    return dist.PrefixStore("default_pg", store), rank, size


def effective_resume(config_resume: str | None, restarts: int | None = None) -> str | None:
    """The ``resume`` setting to train with: ``"auto"`` after a torchrun restart.

    ``restarts`` defaults to :func:`restart_count`. A restarted group continues from the run's
    last checkpoint (none yet: it starts afresh) instead of training from epoch 1 over it; an
    explicit checkpoint path is kept (the trainer prefers the run's own last checkpoint to it
    once that exists).
    """
    restarts = restart_count() if restarts is None else restarts
    if restarts > 0 and not config_resume:
        return "auto"
    return config_resume


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable; no-op in a single process)."""
    if get_world_size() <= 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if get_world_size() <= 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _destroy_at_exit() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def destroy_distributed(ctx: DistributedContext) -> None:
    """Leave the process group now if :func:`init_distributed` created it (else it is left at
    exit). Do not initialise another one in this process afterwards."""
    if ctx.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (no-op in a single process).

    CPU tensors are moved to the GPU and back when the backend (NCCL) needs it.
    """
    if get_world_size() > 1:
        if tensor.device.type == "cpu" and dist.get_backend() == "nccl":
            on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
            tensor.copy_(on_gpu.cpu())
        else:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``module``'s buffers (BatchNorm running statistics) from rank ``src`` to all ranks.

    DDP broadcasts buffers before each forward, so after the last step of an epoch every rank
    holds the statistics of its own last batch; this makes them equal again before evaluation.
    """
    if get_world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src)


def shard_indices(length: int) -> range:
    """The indices ``rank, rank + world, ...`` of a dataset of ``length`` owned by this rank.

    Used for distributed evaluation: each rank scores its shard, then results are summed.
    """
    return range(get_rank(), length, get_world_size())
