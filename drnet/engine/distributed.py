"""Distributed setup from the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

A process started without those variables is a single-process run (rank 0 of 1). Under
``torchrun`` the process group uses NCCL on CUDA and Gloo on the CPU.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

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


def init_distributed(device: str = "auto") -> DistributedContext:
    """Read the torchrun environment, pick the device and join the process group if needed.

    The group is created once per process and kept (train, then evaluate, reuse it: creating a
    second one in the same process is unreliable with Gloo); it is destroyed at exit.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistributedContext(0, 1, 0, dev, False)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, init_method="env://", **kwargs)
        atexit.register(_destroy_at_exit)
        owns = True
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns)


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
