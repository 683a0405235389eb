"""The executor's side of SM partitions: two streams on disjoint SM sets, and what was granted.

Owns `PartitionStreams` and `open_partition_streams(memory_sms, compute_sms, device)`. It asks
`pipedecode.runtime.partitions` (the partitions module, when present) first; otherwise it splits
the device's SMs once through the CUDA driver (`cuda.bindings`: one group of `memory_sms`, the
rest for compute, so the two green contexts never share an SM). Raises PartitionUnavailableError
with a sentence saying what to do when neither works. Knows nothing of kernels or schedules.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch

from pipedecode.errors import PartitionUnavailableError


@dataclass(frozen=True)
class PartitionStreams:
    memory_stream: Any          # torch.cuda.Stream on the memory partition
    compute_stream: Any         # torch.cuda.Stream on the compute partition
    memory_sms: int             # granted
    compute_sms: int            # granted
    requested_memory_sms: int
    requested_compute_sms: int
    source: str                 # "partitions" | "driver"
    handles: tuple = ()         # green contexts kept alive as long as the streams


def _from_partitions_module(memory_sms: int, compute_sms: int, device: torch.device):
    try:
        module = importlib.import_module("pipedecode.runtime.partitions")
    except ImportError:
        return None
    support = getattr(module, "partition_support", None)
    if support is not None:
        ok, reason = support()
        if not ok:
            raise PartitionUnavailableError(reason)
    maker = getattr(module, "make_partitions", None) or getattr(module, "split_sms", None)
    if maker is None:
        return None
    parts = maker(memory_sms=memory_sms, compute_sms=compute_sms)
    mem, comp = (parts.memory, parts.compute) if hasattr(parts, "memory") else parts
    return PartitionStreams(mem.stream, comp.stream, mem.granted_sms, comp.granted_sms,
                            memory_sms, compute_sms, "partitions", (parts,))


def _check(result: Any, what: str) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise PartitionUnavailableError(
            f"{what} failed with CUDA error {int(err)} ({err}); green contexts need CUDA 12.4+ "
            f"and a Hopper-class GPU: run in sequential mode")
    return rest[0] if len(rest) == 1 else rest


def _from_driver(memory_sms: int, compute_sms: int, device: torch.device) -> PartitionStreams:
    try:
        from cuda.bindings import driver as cu
    except ImportError as exc:
        raise PartitionUnavailableError(
            f"cuda.bindings is not installed ({exc}); install cuda-python to use SM partitions, "
            f"or run in sequential mode") from None
    torch.cuda.init()
    _check(cu.cuInit(0), "cuInit")
    dev = _check(cu.cuDeviceGet(device.index or 0), "cuDeviceGet")
    sm_type = cu.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM
    whole = _check(cu.cuDeviceGetDevResource(dev, sm_type), "cuDeviceGetDevResource")
    groups, _, rest = _check(cu.cuDevSmResourceSplitByCount(1, whole, 0, memory_sms),
                             "cuDevSmResourceSplitByCount")
    streams, contexts, granted = [], [], []
    for resource in (groups[0], rest):
        desc = _check(cu.cuDevResourceGenerateDesc([resource], 1), "cuDevResourceGenerateDesc")
        ctx = _check(cu.cuGreenCtxCreate(desc, dev,
                                         cu.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM),
                     "cuGreenCtxCreate")
        raw = _check(cu.cuGreenCtxStreamCreate(ctx, cu.CUstream_flags.CU_STREAM_NON_BLOCKING, 0),
                     "cuGreenCtxStreamCreate")
        contexts.append(ctx)
        streams.append(torch.cuda.ExternalStream(int(raw), device=device))
        granted.append(int(resource.sm.smCount))
    return PartitionStreams(streams[0], streams[1], granted[0], granted[1], memory_sms,
                            compute_sms, "driver", tuple(contexts))


def open_partition_streams(memory_sms: int, compute_sms: int,
                           device: torch.device | str = "cuda") -> PartitionStreams:
    """Streams on two disjoint SM partitions; PartitionUnavailableError where there are none."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise PartitionUnavailableError("SM partitions need a CUDA GPU; run in sequential mode")
    if memory_sms <= 0 or compute_sms <= 0:
        raise ValueError(f"memory_sms and compute_sms must be positive, got {memory_sms}, "
                         f"{compute_sms}")
    try:
        found = _from_partitions_module(memory_sms, compute_sms, device)
    except PartitionUnavailableError:
        raise
    except Exception:  # noqa: BLE001 - a maker of another shape: use the driver route
        found = None
    return found or _from_driver(memory_sms, compute_sms, device)
