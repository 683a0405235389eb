"""SM partitions through CUDA green contexts: disjoint SM sets, each with its own stream.

Owns `partition_support()`, `make_partitions(memory_sms, compute_sms=None)` and the frozen
`Partition` / `PartitionPair` records (requested and granted SM counts, the granularity, a torch
stream bound to the partition). Nothing is kept in module globals: the green contexts live as
long as the records that hold them.

Two routes. The driver route (`cuda.bindings`) splits the device's SM resource once, so the two
partitions never share an SM, and reads the count the driver actually granted (Hopper: at least
8 SMs, in multiples of 8). The torch route (`torch.cuda.green_contexts.GreenContext.create`)
cuts each context from the whole device, so two of them overlap (measured on an H100: a 48-SM
and an 88-SM context shared 48 SMs); it serves single partitions where `cuda.bindings` is
missing, and pairs only when asked for by name, and its granted count is the rounding rule, not
a reading (`disjoint`, `granted_exact` say so). Where no disjoint pair can be made,
PartitionUnavailableError says why, and callers run sequentially. Knows nothing of kernels or
schedules.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

import torch

from pipedecode.errors import PartitionUnavailableError

_SEQUENTIAL = "; run sequentially (no partitions)"


@dataclass(frozen=True)
class Partition:
    """One SM partition and the stream whose kernels run only on its SMs."""

    requested_sms: int
    granted_sms: int
    granularity: int             # partitions come in multiples of this many SMs
    min_sms: int                 # the smallest partition the driver grants
    stream: Any                  # torch.cuda.Stream bound to the partition
    route: str                   # "driver", "torch" or "whole" (all SMs, an ordinary stream)
    granted_exact: bool          # granted_sms read from the driver, not inferred
    handle: Any = field(default=None, repr=False, compare=False)   # keeps the context alive


@dataclass(frozen=True)
class PartitionPair:
    """A memory partition and a compute partition (disjoint on the driver route)."""

    memory: Partition
    compute: Partition
    disjoint: bool

    def __iter__(self):
        return iter((self.memory, self.compute))


def cuda_driver():
    """cuda.bindings' driver module, or None where it is not installed."""
    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        return None
    from cuda.bindings import driver

    return driver


def _torch_green_contexts():
    try:
        from torch.cuda import green_contexts
    except ImportError:
        return None
    if not getattr(green_contexts, "SUPPORTED", hasattr(green_contexts, "GreenContext")):
        return None
    return green_contexts


def _gpu_problem(device_index: int | None) -> str | None:
    """Why this process cannot partition SMs on any route, or None."""
    if not torch.cuda.is_available():
        return "SM partitions need a CUDA GPU and none is visible" + _SEQUENTIAL
    index = torch.cuda.current_device() if device_index is None else device_index
    major, minor = torch.cuda.get_device_capability(index)
    if major < 9:
        return (f"SM partitions are supported here on Hopper (compute capability 9.0) and "
                f"newer; this GPU is {major}.{minor}" + _SEQUENTIAL)
    return None


def partition_support(device_index: int | None = None) -> tuple[bool, str]:
    """(True, "driver") where disjoint SM partitions can be made, else (False, why)."""
    problem = _gpu_problem(device_index)
    if problem:
        return False, problem
    index = torch.cuda.current_device() if device_index is None else device_index
    if cuda_driver() is not None:
        try:
            _split_info(index)
        except PartitionUnavailableError as exc:
            return False, str(exc)
        return True, "driver"
    if _torch_green_contexts() is not None:
        return False, ("cuda.bindings is not installed, and torch's green contexts are each cut "
                       "from the whole GPU, so two of them share SMs (on an H100 a 48-SM context "
                       "lay inside an 88-SM one); pip install cuda-python for disjoint partitions"
                       + _SEQUENTIAL)
    return False, ("neither cuda.bindings (pip install cuda-python) nor torch green contexts "
                   "(torch >= 2.11 built with CUDA >= 12.8) are available" + _SEQUENTIAL)


def _check(result: Any, what: str) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise PartitionUnavailableError(
            f"{what} failed with CUDA error {int(err)} ({getattr(err, 'name', err)}); green "
            f"contexts need driver CUDA 12.4+ and a GPU that supports them" + _SEQUENTIAL)
    return rest[0] if len(rest) == 1 else tuple(rest)


def _device_resource(index: int):
    cu = cuda_driver()
    torch.cuda.init()
    _check(cu.cuInit(0), "cuInit")
    dev = _check(cu.cuDeviceGet(index), "cuDeviceGet")
    whole = _check(cu.cuDeviceGetDevResource(dev, cu.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM),
                   "cuDeviceGetDevResource")
    return cu, dev, whole


def _split(cu, resource, sms: int):
    """(group, remaining) with group >= sms SMs, as the driver rounds it."""
    groups, _, rest = _check(cu.cuDevSmResourceSplitByCount(1, resource, 0, sms),
                             "cuDevSmResourceSplitByCount")
    return groups[0], rest


def _split_info(index: int) -> tuple[int, int, int]:
    """(total SMs, minimum partition, granularity) read from the driver."""
    cu, _, whole = _device_resource(index)
    total = int(whole.sm.smCount)
    smallest = int(_split(cu, whole, 1)[0].sm.smCount)
    next_up = int(_split(cu, whole, smallest + 1)[0].sm.smCount)
    return total, smallest, max(1, next_up - smallest)


def _granted_by_rule(sms: int, total: int, major: int) -> tuple[int, int, int]:
    """(granted, minimum, granularity) by the documented rule, where the driver is not asked."""
    step = 8 if major >= 9 else 2
    return min(total, max(step, -(-sms // step) * step)), step, step


def _driver_partitions(memory_sms: int, compute_sms: int | None, index: int) -> PartitionPair:
    cu, dev, whole = _device_resource(index)
    total, smallest, step = _split_info(index)
    group, rest = _split(cu, whole, memory_sms)
    if compute_sms is not None and compute_sms < int(rest.sm.smCount):
        rest, _ = _split(cu, rest, compute_sms)
    parts = []
    for requested, resource in ((memory_sms, group), (compute_sms, rest)):
        desc = _check(cu.cuDevResourceGenerateDesc([resource], 1), "cuDevResourceGenerateDesc")
        ctx = _check(cu.cuGreenCtxCreate(desc, dev,
                                         cu.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM),
                     "cuGreenCtxCreate")
        raw = _check(cu.cuGreenCtxStreamCreate(ctx, cu.CUstream_flags.CU_STREAM_NON_BLOCKING, 0),
                     "cuGreenCtxStreamCreate")
        stream = torch.cuda.ExternalStream(int(raw), device=torch.device("cuda", index))
        granted = int(resource.sm.smCount)
        parts.append(Partition(requested or granted, granted, step, smallest, stream, "driver",
                               True, handle=(ctx, raw)))
    return PartitionPair(parts[0], parts[1], disjoint=True)


def _torch_partition(requested: int, index: int) -> Partition:
    gcm = _torch_green_contexts()
    if gcm is None:
        raise PartitionUnavailableError("torch has no green contexts here (torch >= 2.11 built "
                                        "with CUDA >= 12.8 needed)" + _SEQUENTIAL)
    total = torch.cuda.get_device_properties(index).multi_processor_count
    granted, smallest, step = _granted_by_rule(requested, total,
                                               torch.cuda.get_device_capability(index)[0])
    try:
        ctx = gcm.GreenContext.create(num_sms=requested, device_id=index)
        stream = ctx.Stream()
    except (RuntimeError, TypeError) as exc:
        raise PartitionUnavailableError(
            f"torch could not create a green context of {requested} SMs ({exc})"
            + _SEQUENTIAL) from None
    return Partition(requested, granted, step, smallest, stream, "torch", False, handle=ctx)


def _torch_partitions(memory_sms: int, compute_sms: int | None, index: int) -> PartitionPair:
    total = torch.cuda.get_device_properties(index).multi_processor_count
    rest = compute_sms if compute_sms is not None else total - memory_sms
    return PartitionPair(_torch_partition(memory_sms, index), _torch_partition(rest, index),
                         disjoint=False)


def make_partitions(memory_sms: int, compute_sms: int | None = None, *,
                    device_index: int | None = None, route: str | None = None) -> PartitionPair:
    """A memory partition of >= memory_sms SMs and a disjoint compute partition (default: the rest).

    Needs the driver route (cuda.bindings). route="torch" forces torch's green contexts, which
    overlap (the pair says disjoint=False): for experiments only. Raises
    PartitionUnavailableError where partitions cannot be made; ValueError for bad counts.
    """
    if route not in (None, "driver", "torch"):
        raise ValueError(f"route must be 'driver' or 'torch', got {route!r}")
    if route == "torch":
        problem = _gpu_problem(device_index)
        if problem:
            raise PartitionUnavailableError(problem)
    else:
        ok, reason = partition_support(device_index)
        if not ok:
            raise PartitionUnavailableError(reason)
    index = torch.cuda.current_device() if device_index is None else device_index
    total = torch.cuda.get_device_properties(index).multi_processor_count
    if memory_sms <= 0 or memory_sms >= total:
        raise ValueError(f"memory_sms must be in 1..{total - 1}, got {memory_sms}")
    if compute_sms is not None and (compute_sms <= 0 or memory_sms + compute_sms > total):
        raise ValueError(f"compute_sms must be positive and memory_sms + compute_sms <= {total}, "
                         f"got {memory_sms} + {compute_sms}")
    if route == "torch":
        return _torch_partitions(memory_sms, compute_sms, index)
    return _driver_partitions(memory_sms, compute_sms, index)


def make_partition(sm_count: int, *, device_index: int | None = None) -> Partition:
    """One partition of >= sm_count SMs (driver route, else one torch green context); a request
    of all SMs or more gives an ordinary stream ("whole")."""
    problem = _gpu_problem(device_index)
    if problem:
        raise PartitionUnavailableError(problem)
    index = torch.cuda.current_device() if device_index is None else device_index
    total = torch.cuda.get_device_properties(index).multi_processor_count
    if sm_count <= 0:
        raise ValueError(f"sm_count must be positive, got {sm_count}")
    if sm_count >= total:
        return Partition(sm_count, total, 1, total, torch.cuda.Stream(index), "whole", True)
    if cuda_driver() is not None:
        return make_partitions(sm_count, device_index=index).memory
    return _torch_partition(sm_count, index)
