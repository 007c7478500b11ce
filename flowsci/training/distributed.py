"""Process-group plumbing for multi-process training (torch.distributed, used through DDP).

`flowsci train` started by `torchrun --nproc_per_node N` finds WORLD_SIZE, RANK and
LOCAL_RANK in its environment; `session(device)` then joins the process group (NCCL on CUDA,
each rank on cuda:LOCAL_RANK; gloo on CPU) on first use; it is left when the process exits.
Without those variables (or with WORLD_SIZE=1) everything here is a no-op and rank 0 of a
world of 1 is returned, so the single-process code path is unchanged.

Data split: every rank draws the same global batch indices from the shared seeded generator
and keeps its contiguous slice `rank_slice(global_batch)` of global_batch / world_size rows;
DDP averages the gradients, so with a loss that is a mean over the batch the update equals
the single-process one up to float round-off.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank in [0, world_size); local_rank picks the GPU."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """The torchrun environment (WORLD_SIZE, RANK, LOCAL_RANK); a world of 1 without it."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ.get("RANK", "0")), world,
                    int(os.environ.get("LOCAL_RANK", "0")))


def active() -> bool:
    """True when a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def info() -> DistInfo:
    """This process's rank and world size (world of 1 when no group is initialised)."""
    if not active():
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(),
                    int(os.environ.get("LOCAL_RANK", "0")))


def is_main() -> bool:
    return info().is_main


def world_size() -> int:
    return info().world_size


def init(device: torch.device) -> bool:
    """Join the torchrun process group (backend nccl for CUDA, gloo otherwise), once per
    process: the group then lives until the process exits (`teardown` runs at exit), because
    re-initialising a group inside one torchrun process can hang.

    Returns True when this call initialised it; False when there is no torchrun world or
    the group already exists."""
    env = env_info()
    if env.world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device.type == "cuda":
        torch.cuda.set_device(env.local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", env.local_rank))
    else:
        dist.init_process_group("gloo")
    atexit.register(teardown)
    return True


def barrier() -> None:
    if active():
        dist.barrier()


def teardown() -> None:
    """Leave the process group (at exit; each training already ended with a barrier)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[DistInfo]:
    """The block runs in the torchrun process group when torchrun started us (joined on
    first use, left at exit), alone otherwise; yields this process's DistInfo."""
    init(device)
    yield info()


def rank_slice(global_batch: int, where: DistInfo | None = None) -> slice:
    """This rank's contiguous rows of a global batch: [r * b, (r + 1) * b), b = B / world.
    ConfigError when the global batch does not divide by the world size."""
    where = where or info()
    b, rest = divmod(global_batch, where.world_size)
    if rest:
        raise ConfigError(f"training.batch_size = {global_batch} must be divisible by the "
                          f"number of processes ({where.world_size})")
    return slice(where.rank * b, (where.rank + 1) * b)


def global_rows(draw, n_local: int) -> torch.Tensor:
    """Random rows drawn for the global batch and sliced to this rank, so that every rank's
    draws (and the shared RNG's state afterwards) match a single-process run.

    draw: n -> Tensor [n, ...] using the shared (identically seeded) RNG; n_local: this rank's
    batch. Returns [n_local, ...]."""
    where = info()
    if where.world_size == 1:
        return draw(n_local)
    full = draw(n_local * where.world_size)
    return full[where.rank * n_local:(where.rank + 1) * n_local]


def mean_across(values: torch.Tensor) -> torch.Tensor:
    """Average a small float64 tensor over the ranks (NaN anywhere gives NaN everywhere)."""
    if not active():
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def fork_seed(seed: int) -> int:
    """A per-rank seed for randomness that need not match a single-process run (e.g. the
    Hutchinson probes): `seed` shifted by the rank."""
    return int(seed) + info().rank
