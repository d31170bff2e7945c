"""Data-parallel training under torchrun, and the same code path as a single process.

torchrun starts one process per device and tells each who it is through the environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Without those variables everything
here degrades to a single process: no process group, no wrapping, barriers are no-ops. Only
rank 0 writes files (checkpoints, plots, metrics) and draws the progress bar.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
from dataclasses import dataclass
from typing import Iterator, List, Mapping, Optional, Union

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo",
    "dist_info",
    "distributed",
    "resolve_device",
    "wrap_model",
    "unwrap_model",
    "barrier",
    "all_reduce_mean",
    "gather_digests",
    "state_digest",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from None


def dist_info() -> DistInfo:
    """Who this process is, from torchrun's environment (a single process when absent)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise RuntimeError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def resolve_device(kind: str, info: DistInfo) -> torch.device:
    """``auto`` -> this process's GPU when there is one, else the CPU."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda requested but no CUDA device is available")
        index = info.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


@contextlib.contextmanager
def distributed(device: torch.device, info: Optional[DistInfo] = None) -> Iterator[DistInfo]:
    """Join the process group for the duration of the block (nothing to join when single).

    NCCL for GPUs, gloo for CPUs. The group is destroyed on the way out (on an error only
    with gloo, see below); torchrun then stops the other ranks when this one exits.
    """
    info = dist_info() if info is None else info
    if not info.is_distributed or dist.is_initialized():
        yield info
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size, **kwargs)
    try:
        yield info
    except BaseException:
        # NCCL's teardown is collective: destroying the group while the other ranks still sit in
        # a collective hangs this rank too (torchtitan #1342), and a hung rank keeps torchrun from
        # stopping the job. gloo's teardown is local, so it is cleaned up.
        if backend == "gloo":
            dist.destroy_process_group()
        raise
    # DDP's reducer sits in reference cycles; collect it while the group and the interpreter
    # are alive, else its pending gloo work is freed during interpreter shutdown and aborts
    # the process. Then leave together, so no rank tears down while rank 0 (which also hosts
    # the rendezvous store) still writes.
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` when distributed; ``model`` itself otherwise.

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts from
    the same weights whatever its local initialisation was.
    """
    if not info.is_distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def barrier(info: DistInfo) -> None:
    if info.is_distributed and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``value`` over ranks (``value`` itself when single)."""
    if not info.is_distributed:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def state_digest(model: Union[nn.Module, Mapping[str, torch.Tensor]]) -> str:
    """SHA-256 over a state dict (names, dtypes, shapes and bytes), independent of key order.

    ``model`` is a module or a state dict (e.g. a loaded ``.safetensors`` file).
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def gather_digests(digest: str, info: DistInfo, device: torch.device) -> List[str]:
    """Every rank's hex digest, in rank order (tensors only; nothing is pickled)."""
    if not info.is_distributed:
        return [digest]
    raw = torch.tensor(list(bytes.fromhex(digest)), dtype=torch.uint8, device=device)
    parts = [torch.empty_like(raw) for _ in range(info.world_size)]
    dist.all_gather(parts, raw)
    return [bytes(p.cpu().tolist()).hex() for p in parts]
