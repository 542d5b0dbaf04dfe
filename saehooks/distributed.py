"""One home for ``torch.distributed``: rank, world size, start-up under ``torchrun``,
reductions of the float64 running sums, and how rows are split between ranks.

Everything here is a no-op in a single process (no process group), so callers write
one code path: ``all_reduce_(t)`` leaves ``t`` alone when the job has one process.
Launch with PyTorch's own launcher::

    torchrun --nproc_per_node 2 -m saehooks.training ...

The backend is ``gloo`` on CPU and ``nccl`` when CUDA is in use; every collective has
a timeout, so a rank that dies makes the others fail with an error instead of hanging.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import Tensor

from saehooks.errors import InputError

DEFAULT_TIMEOUT_S = 300.0
"""Seconds a collective waits for the other ranks before the job fails."""

_OPS = {"sum": "SUM", "min": "MIN", "max": "MAX"}


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the job (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0, the rank that writes files and logs."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when ``torchrun`` (``torch.distributed.run``) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ
    )


def init_from_env(device: str | torch.device | None = None, timeout_s: float | None = None) -> bool:
    """Join the process group ``torchrun`` describes in the environment.

    Args:
        device: the device this rank computes on; ``cuda`` devices pick the ``nccl``
            backend (and this rank's GPU is ``LOCAL_RANK``), anything else ``gloo``.
        timeout_s: seconds a collective may wait (default :data:`DEFAULT_TIMEOUT_S`,
            or the ``SAEHOOKS_DIST_TIMEOUT`` environment variable).

    Returns:
        True if a process group of more than one process is active afterwards.

    Raises:
        InputError: not started by ``torchrun`` (no ``RANK``/``WORLD_SIZE`` in the
            environment); launch with ``torchrun --nproc_per_node N ...``.
    """
    if is_distributed():
        return True
    if not launched_by_torchrun():
        raise InputError(
            "distributed training needs the environment torchrun sets (RANK, WORLD_SIZE, "
            "MASTER_ADDR); launch with `torchrun --nproc_per_node N -m saehooks.training ...`"
        )
    if int(os.environ["WORLD_SIZE"]) == 1:
        return False
    if timeout_s is None:
        timeout_s = float(os.environ.get("SAEHOOKS_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(
        backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s)
    )
    return True


def all_reduce_(tensor: Tensor, op: str = "sum") -> Tensor:
    """Reduce ``tensor`` over all ranks in place (``sum``, ``min`` or ``max``); a
    no-op in a single process. CPU tensors under ``nccl`` travel through the GPU.

    Returns:
        ``tensor``, holding the reduced value on every rank.
    """
    if not is_distributed():
        return tensor
    reduce_op = getattr(dist.ReduceOp, _OPS[op])
    return _in_place(tensor, lambda t: dist.all_reduce(t, op=reduce_op))


def _in_place(tensor: Tensor, collective) -> Tensor:
    """Run the in-place ``collective(t)`` on ``tensor``; under ``nccl`` a tensor off the
    GPU travels there and back (nccl only moves CUDA tensors)."""
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        moved = tensor.cuda()
        collective(moved)
        tensor.copy_(moved.cpu())
    else:
        collective(tensor)
    return tensor


def shard_range(n: int, rank_: int | None = None, world: int | None = None) -> range:
    """The contiguous block of ``range(n)`` that rank ``rank_`` of ``world`` owns: sizes
    differ by at most one, earlier ranks take the larger blocks, and the blocks cover
    ``range(n)`` exactly once in order."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return range(start, start + base + (1 if r < extra else 0))


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def broadcast_(tensor: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``tensor`` on every rank with rank ``src``'s value, in place (a no-op
    in a single process). CPU tensors under ``nccl`` travel through the GPU.

    Returns:
        ``tensor``.
    """
    if not is_distributed():
        return tensor
    return _in_place(tensor, lambda t: dist.broadcast(t, src=src))


def all_gather(tensor: Tensor) -> list[Tensor]:
    """Every rank's ``tensor`` (same shape and dtype on all ranks), in rank order;
    ``[tensor]`` in a single process."""
    if not is_distributed():
        return [tensor]
    nccl = dist.get_backend() == "nccl" and tensor.device.type != "cuda"
    local = tensor.cuda() if nccl else tensor.contiguous()
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return [p.to(tensor.device) for p in parts] if nccl else parts


def gather_object(obj: object, dst: int = 0) -> list[object] | None:
    """Every rank's picklable ``obj`` in rank order on rank ``dst`` (None on the others);
    ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    out: list[object] | None = [None] * world_size() if rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out
