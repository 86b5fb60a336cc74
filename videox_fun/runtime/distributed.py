"""Process-group set-up for multi-process inference launched by ``torchrun`` (one or many nodes).

``torchrun`` describes each process in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``); :func:`init_distributed` reads it and starts the default
process group: NCCL when the process has a GPU, gloo on CPUs (so everything here runs in tests).
A plain ``python script.py`` is a world of one and starts nothing.
"""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, world size, rank on its node, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group is (to be) started."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def dist_info_from_env(device: str | torch.device = "auto") -> DistInfo:
    """Read the torchrun environment. ``device`` ``auto``/``cuda`` picks ``cuda:LOCAL_RANK`` when CUDA exists."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        # One GPU per process: torchrun's LOCAL_RANK says which one on this node.
        device = torch.device("cuda", local_rank)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def backend_for(device: torch.device) -> str:
    """NCCL for GPU tensors, gloo for CPU tensors."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(device: str | torch.device = "auto") -> DistInfo:
    """Start the default process group from the torchrun environment (no-op in a world of one).

    Idempotent: a second call returns the same description. The group is destroyed at exit.
    """
    info = dist_info_from_env(device)
    if not info.distributed:
        return info
    if dist.is_initialized():
        if dist.get_world_size() != info.world_size or dist.get_rank() != info.rank:
            raise RuntimeError("a process group with a different rank / world size is already running")
        return info
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise RuntimeError("WORLD_SIZE > 1 but MASTER_ADDR / MASTER_PORT are not set: launch with torchrun")
    if info.device.type == "cuda":
        torch.cuda.set_device(info.device)
    dist.init_process_group(backend_for(info.device), rank=info.rank, world_size=info.world_size)
    atexit.register(destroy_distributed)
    logger.debug("rank %d/%d started (%s)", info.rank, info.world_size, backend_for(info.device))
    return info


def destroy_distributed() -> None:
    """Tear the default process group down if one is running."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def required_world_size(ulysses_degree: int, ring_degree: int, cfg_parallel: bool) -> int:
    """The process count a layout needs: ulysses x ring (x 2 with CFG parallelism)."""
    return ulysses_degree * ring_degree * (2 if cfg_parallel else 1)


def check_world_size(ulysses_degree: int, ring_degree: int, cfg_parallel: bool, world_size: int) -> None:
    """Fail with a message that states the required product when the layout does not fill the world."""
    for name, value in (("--ulysses-degree", ulysses_degree), ("--ring-degree", ring_degree)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    needed = required_world_size(ulysses_degree, ring_degree, cfg_parallel)
    if needed != world_size:
        product = f"ulysses-degree {ulysses_degree} x ring-degree {ring_degree}" + (
            " x 2 (cfg-parallel)" if cfg_parallel else ""
        )
        raise ValueError(
            f"{product} = {needed} processes, but the world size is {world_size}: the product must equal the "
            f"number of processes (launch with torchrun --nproc-per-node={needed}, or change the degrees)"
        )
