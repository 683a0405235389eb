"""The processes of a pipeline: torchrun's environment checked, torch.distributed's groups made.

Owns `PipelineWorld` (this process's rank, the world size, its device, the process groups)
and `join_world`: the checks that the process was started by torchrun (its RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT) with as many processes as pipeline stages, each a
one-line error that says how to launch; NVLink multicast switched off before NCCL starts
(NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1, where unset: the GPU machines need
it); the default process group (NCCL when every local process has a GPU of its own, else
gloo) for activations; a gloo group for the controller's metadata and the sampled tokens,
which the hosts read. Knows nothing of models or scheduling.

Timeouts: the process groups' (`timeout_s`) bound every wait that has no deadline of its own;
the controller and the stages give each receive its own (`Pipeline` in controller.py).
"""

from __future__ import annotations

import atexit
import datetime
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pipedecode.errors import PipedecodeError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
NCCL_DEFAULTS = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
DEFAULT_GROUP_TIMEOUT_S = 1800.0    # a stage may wait this long between generate calls


class LaunchError(PipedecodeError, ValueError):
    """The processes are not what `pipeline_parallel_size` asks for; the message says how."""


@dataclass(frozen=True)
class PipelineWorld:
    """This process's place: rank (= its stage), world_size (= stages), its torch device, the
    backend of `data` (activations) and `control` (gloo: metadata and tokens), the default
    group's store (failure reports) and every rank's (host, pid)."""

    rank: int
    world_size: int
    device: torch.device
    backend: str
    data: Any
    control: Any
    store: Any
    processes: tuple[tuple[str, int], ...]

    @property
    def is_driver(self) -> bool:
        return self.rank == 0


def check_environment(pipeline_parallel_size: int, environ=os.environ) -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables; LaunchError naming what is
    wrong and the command that is right."""
    n = pipeline_parallel_size
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise LaunchError(f"pipeline_parallel_size must be a positive integer, got {n!r}")
    launch = f"torchrun --nproc-per-node {n} -m pipedecode.cli generate ... " \
             f"--pipeline-parallel {n}"
    missing = [v for v in TORCHRUN_VARIABLES if v not in environ]
    if missing:
        raise LaunchError(f"pipeline_parallel_size={n} needs one process per stage started by "
                          f"torchrun ({', '.join(missing)} not set); run: {launch}")
    try:
        rank, world, local = (int(environ[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise LaunchError(f"torchrun's RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                          f"{[environ[v] for v in TORCHRUN_VARIABLES[:3]]}") from None
    if world != n:
        raise LaunchError(f"pipeline_parallel_size={n} needs {n} processes, but torchrun started "
                          f"{world}; run: {launch}")
    if not 0 <= rank < world:
        raise LaunchError(f"RANK {rank} is outside the world of {world} processes")
    return rank, world, local


def local_device(local_rank: int) -> torch.device:
    """This process's GPU (one per local process), made current, or the CPU where there are
    too few. Call it before anything touches CUDA (a device profile looked up, a tensor made),
    or rank k also opens a context on GPU 0."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1))
    if torch.cuda.is_available() and torch.cuda.device_count() >= local_world:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def join_world(pipeline_parallel_size: int, *,
               timeout_s: float = DEFAULT_GROUP_TIMEOUT_S) -> PipelineWorld:
    """This process in the pipeline's process groups (made once per process; a second call
    checks the world and makes a fresh control group)."""
    rank, world, local = check_environment(pipeline_parallel_size)
    for name, value in NCCL_DEFAULTS.items():
        os.environ.setdefault(name, value)
    device = local_device(local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        # no device_id: NCCL starts lazily, each pair of neighbours gets a communicator (and
        # a stream) of its own, so a stage's receive does not queue behind its send
        dist.init_process_group(backend, timeout=timeout)
        atexit.register(_leave)
    elif dist.get_world_size() != world:
        raise LaunchError(f"torch.distributed is already initialised with "
                          f"{dist.get_world_size()} processes, not {world}")
    backend = dist.get_backend()
    control = dist.new_group(backend="gloo", timeout=timeout)
    processes: list = [None] * world
    dist.all_gather_object(processes, (socket.gethostname(), os.getpid()), group=control)
    store = dist.distributed_c10d._get_default_store()
    return PipelineWorld(rank, world, device, backend, dist.group.WORLD, control, store,
                         tuple(tuple(p) for p in processes))


_BROKEN = {"pipeline": False}


def mark_broken() -> None:
    """A stage was lost: leave the process groups to the process's exit (destroying them
    would wait on the peer that is gone)."""
    _BROKEN["pipeline"] = True


def _leave() -> None:
    if dist.is_initialized() and not _BROKEN["pipeline"]:
        dist.destroy_process_group()
